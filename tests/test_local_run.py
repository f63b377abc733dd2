"""The README's local-run command shows a first sync end to end (on free ports here)."""
import subprocess
import sys

from conftest import ROOT


def test_the_local_run_shows_a_started_sync_then_a_cooldown():
    run = subprocess.run(
        [sys.executable, "-m", "emulators.local", "--once", "--random-ports"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    started, cooldown = run.stdout.index("HTTP 202"), run.stdout.index("HTTP 429")
    assert started < cooldown and '"outcome": "started"' in run.stdout


def test_the_local_run_prints_a_line_per_invocation_and_reset_grants_the_next_sync(tmp_path):
    """Serving (not --once): the timers run on their schedules (here the watcher every 2 s), each
    HTTP call, timer tick and telemetry event is a line as it happens, and POST /admin/reset makes
    the next sync a granted one."""
    import os
    import re
    import threading
    import time

    import requests

    env = {**os.environ, "SYNC_WATCH_SCHEDULE": "*/2 * * * * *", "SYNC_SCHEDULE": "0 0 0 1 1 *", "SYNC_TARGETS": "autopilot"}
    # Its own Azurite data: the checkout's .azurite/ is the developer's local run.
    proc = subprocess.Popen([sys.executable, "-m", "emulators.local", "--random-ports", "--state", str(tmp_path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()

    def wait_for(pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(lines) if re.search(pattern, line)), None)
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(lines)}")

    try:
        base = wait_for(r"^App API").split()[-1].removesuffix("/api")
        wait_for(r"Serving on")
        assert requests.post(f"{base}/admin/reset", timeout=30).json()["reset"] is True
        wait_for(r"POST /admin/reset -> 200 \(\d+ ms\)")
        assert requests.post(f"{base}/api/sync/autopilot", timeout=30).status_code == 202
        wait_for(r"POST /api/sync/autopilot -> 202 \(\d+ ms\)")
        wait_for(r"sync +autopilot +started: Graph 204 in \d+ ms, by http")
        wait_for(r"timer sync_watch \(\d+ ms\)")  # on its schedule
        requests.post(f"{base}/admin/functions/sync_timer", timeout=30)  # the sync timer now, as Core Tools allows
        wait_for(r"sync +autopilot +scheduled: no Graph call, by timer; fires at ")  # inside the cooldown
        wait_for(r"timer +tick: 1 scheduled")
        wait_for(r"timer sync_timer \(admin API\) \(\d+ ms\)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
