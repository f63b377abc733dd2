"""What every benchmark's report shares: the machine it ran on, and RESULTS.md, where each
benchmark writes its own section between ``<!-- NAME: begin -->`` and ``<!-- NAME: end -->``
markers, leaving the rest of the file as it is."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> dict[str, str]:
    """The CPU model, core count, Python version and OS of this run."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(), "os": platform.platform()}


def write_section(path: Path, text: str, begin: str, end: str) -> None:
    """Replace the section between ``begin`` and ``end`` with ``text`` (which carries both
    markers), or add it at the end; the rest of the file stays unchanged."""
    current = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in current and end in current:
        head, _, rest = current.partition(begin)
        _, _, tail = rest.partition(end)
        updated = head + text.rstrip("\n") + tail
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    path.write_text(updated if updated.endswith("\n") else updated + "\n")


def publish(text: str, out: str, begin: str, end: str) -> None:
    """Print a benchmark's section and write it into ``out`` (a RESULTS.md; ``-``: print only)."""
    print(text)
    if out != "-":
        write_section(Path(out), text, begin, end)
