"""Telemetry without an SDK (issue #14): what Microsoft's OpenTelemetry distro for Azure Monitor
(``azure-monitor-opentelemetry``) would add to the cold start and to each record, measured side by
side with the app's own structured records (``shared.common.telemetry.emit``: ``IntuneSync {json}`` in a
plain log record) in the same run, on this machine.

    python -m bench.telemetry                # full run; installs the distro in bench/.work/venv-otel, writes its section of RESULTS.md
    python -m bench.telemetry --smoke --out -   # no install, few runs (the test suite's smoke run)

1. cold start: fresh processes, each with ``azure.functions`` loaded first (the worker has it before it
   loads any app), then ``import function_app`` (ours) or ``configure_azure_monitor(...)`` and then
   ``import function_app`` (the distro's documented way on Functions). Bytecode is compiled by a first,
   discarded run of each; then 7 runs each, alternating. Both run in the same virtual environment
   (the app's packages plus the distro), so only the import and the call differ. The connection string
   points at an unreachable local endpoint; statsbeat is off; FUNCTIONS_WORKER_RUNTIME and
   WEBSITE_SITE_NAME are set as on Azure (so the distro skips the VM metadata probe). Every child has a timeout.
2. per record: ``emit("sync", ...)`` with the fields of a granted sync against one plain
   ``logger.info("sync %s ...", ...)`` line carrying the same information, both through a handler on the
   root logger that formats the record (what the worker's forwarding handler does first); then the
   same ``emit`` in a process where ``configure_azure_monitor`` is active (its handler on the root logger too).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import results  # noqa: E402  (after the path: run as a script too)

RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN, END = "<!-- bench/telemetry.py: begin -->", "<!-- bench/telemetry.py: end -->"
DISTRO = "azure-monitor-opentelemetry"
CONNECTION_STRING = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/"
# As on Azure Functions (the app needs only AzureWebJobsStorage to import); the distro must not be a no-op,
# nor send statsbeat to Microsoft, nor probe the VM metadata endpoint (it skips it on Functions).
ENV = {
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "FUNCTIONS_WORKER_RUNTIME": "python",
    "WEBSITE_SITE_NAME": "intune-sync-bench",
    "OTEL_SDK_DISABLED": "false",
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
}
TIMEOUT = 120

# One fresh process: azure.functions first (outside the clock), then the app, with or without the distro.
CHILD = """
import json, sys, time
import azure.functions
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
t1 = t2 = t0
if {otel!r}:
    from azure.monitor.opentelemetry import configure_azure_monitor
    t1 = time.perf_counter()
    configure_azure_monitor(connection_string={cs!r})
    t2 = time.perf_counter()
import function_app
t3 = time.perf_counter()
hwm = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
print(json.dumps({{"sdk_import": t1 - t0, "sdk_configure": t2 - t1, "app": t3 - t2, "total": t3 - t0, "hwm_kb": hwm}}), flush=True)
"""


# --- 1. cold start ------------------------------------------------------------------------------


def cold_run(python: Path, otel: bool) -> dict[str, float]:
    """One fresh process; 'ready' is its wall time from spawn to the app imported, 'exit' until it ended."""
    env = {**os.environ, **ENV}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    code = CHILD.format(root=str(ROOT), otel=otel, cs=CONNECTION_STRING)
    started = time.perf_counter()
    child = subprocess.Popen([str(python), "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the app is imported (or the child dies)
        ready = time.perf_counter() - started
        _, err = child.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise RuntimeError(f"cold start child ({'distro' if otel else 'app'}) did not end within {TIMEOUT} s") from None
    if child.returncode != 0 or not line.strip():
        raise RuntimeError(f"cold start child failed ({child.returncode}): {err[-2000:]}")
    figures: dict[str, float] = json.loads(line)
    return {**figures, "ready": ready, "exit": time.perf_counter() - started}


def cold_start(python: Path, runs: int, with_otel: bool) -> dict[str, list[dict[str, float]]]:
    kinds = [False, True] if with_otel else [False]
    for otel in kinds:  # compiles and caches the bytecode of everything either one imports
        cold_run(python, otel)
    figures: dict[str, list[dict[str, float]]] = {"ours": [], "otel": []}
    for _ in range(runs):
        for otel in kinds:
            figures["otel" if otel else "ours"].append(cold_run(python, otel))
    return figures


# --- 2. per record -----------------------------------------------------------------------------


class FormatOnly(logging.Handler):
    """Formats every record and drops it: what the worker's forwarding handler does before gRPC."""

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


def per_record(records: int, repeats: int, otel: bool) -> dict[str, float]:
    """Median µs per record: emit and the plain line, through a formatting handler on the root logger
    at INFO (as in the worker); with otel, the distro's handler is on the root logger as well."""
    if otel:
        os.environ.update(ENV)
        from azure.monitor.opentelemetry import configure_azure_monitor

        configure_azure_monitor(connection_string=CONNECTION_STRING)
    from shared.common.model import Outcome, Trigger
    from shared.common.telemetry import emit

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handler = FormatOnly()
    root.addHandler(handler)
    plain = logging.getLogger("intune_sync.plain")
    now = datetime(2026, 11, 25, 10, 3, tzinfo=UTC)
    fields: dict[str, Any] = {
        "trigger": Trigger.HTTP, "caller": "power-automate", "target": "autopilot", "unit": "autopilot", "tenant": None,
        "outcome": Outcome.STARTED, "attempted": True, "httpStatus": 204,
        "graphRequestId": "5f1c9a2e-7b3d-4e8f-a1c2-3d4e5f6a7b8c", "clientRequestId": "0e9d8c7b-6a5f-4e3d-2c1b-0a9f8e7d6c5b",
        "durationMs": 412, "errorCode": None,
        "message": "sync of autopilot started; next sync allowed at 2026-11-25T10:13:00Z",
        "nextAllowedAt": now + timedelta(minutes=10), "scheduledAt": None,
    }

    def ours() -> None:
        emit("sync", **fields)

    def baseline() -> None:
        plain.info("sync %s via %s by %s: %s (attempted %s, HTTP %s, request-id %s, client-request-id %s, %s ms, error %s): "
                   "%s; next allowed at %s", "autopilot", "http", "power-automate", "started", True, 204,
                   fields["graphRequestId"], fields["clientRequestId"], 412, None, fields["message"],
                   fields["nextAllowedAt"].isoformat())

    times: dict[str, list[float]] = {"emit": [], "plain": []}
    try:
        for fn in (ours, baseline):  # warm up
            for _ in range(min(records, 200)):
                fn()
        for _ in range(repeats):
            for name, fn in (("emit", ours), ("plain", baseline)):
                started = time.perf_counter()
                for _ in range(records):
                    fn()
                times[name].append((time.perf_counter() - started) / records * 1e6)
    finally:
        root.removeHandler(handler)
    return {name: statistics.median(values) for name, values in times.items()}


def per_record_otel(python: Path, records: int, repeats: int) -> dict[str, float]:
    """per_record with the distro configured, in its virtual environment (a child process, with a timeout)."""
    run = subprocess.run([str(python), "-m", "bench.telemetry", "--child-records", str(records), "--repeats", str(repeats)],
                         cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"per-record child with the distro failed: {run.stderr[-2000:]}")
    result: dict[str, float] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


# --- report ------------------------------------------------------------------------------------


def median_of(runs: list[dict[str, float]], key: str, scale: float = 1000) -> float:
    return statistics.median(r[key] for r in runs) * scale


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "not measured (smoke)"
    return f"{value:,.{0 if value >= 100 else 1 if value >= 10 else 2}f} {unit}"


def ratio(ours: float | None, baseline: float | None) -> str:
    return "—" if ours is None or baseline is None or not baseline else f"{ours / baseline:.2f}×"


def report(figures: dict[str, Any], smoke: bool, seconds: float) -> str:

    m = results.machine()
    cold, records = figures["cold"], figures["records"]
    otel_runs = cold["otel"] or None
    ours_ms = median_of(cold["ours"], "total")
    otel_ms = median_of(otel_runs, "total") if otel_runs else None
    sdk_import = median_of(otel_runs, "sdk_import") if otel_runs else None
    sdk_configure = median_of(otel_runs, "sdk_configure") if otel_runs else None
    ready_ours = median_of(cold["ours"], "ready")
    ready_otel = median_of(otel_runs, "ready") if otel_runs else None
    rss_ours = median_of(cold["ours"], "hwm_kb", 1 / 1024)
    rss_otel = median_of(otel_runs, "hwm_kb", 1 / 1024) if otel_runs else None
    mb_app, mb_otel = figures.get("mb_app"), figures.get("mb_otel")
    otel_records = figures.get("records_otel")
    runs = len(cold["ours"])
    rows = [
        ("Installed dependencies (site-packages)", fmt(mb_app, "MB"), fmt(mb_otel, "MB"), ratio(mb_app, mb_otel),
         "the app's requirements.txt; + the distro and what it pulls in"),
        ("Cold start: app loaded in a fresh process (azure.functions already loaded)", fmt(ours_ms, "ms"),
         fmt(otel_ms, "ms"), ratio(ours_ms, otel_ms), "baseline: configure_azure_monitor(...), then import function_app"),
        ("— of which importing the distro", "—", fmt(sdk_import, "ms"), "—", ""),
        ("— of which configure_azure_monitor(...)", "—", fmt(sdk_configure, "ms"), "—", "unreachable endpoint; live metrics on (its default)"),
        ("Process spawn to app loaded (wall)", fmt(ready_ours, "ms"), fmt(ready_otel, "ms"), ratio(ready_ours, ready_otel),
         "interpreter start included"),
        ("Peak RSS of that process", fmt(rss_ours, "MB"), fmt(rss_otel, "MB"), ratio(rss_ours, rss_otel), ""),
        ("Per record: emit (JSON in the message) vs a plain log line", fmt(records["emit"], "µs"), fmt(records["plain"], "µs"),
         ratio(records["emit"], records["plain"]), "same information; a formatting handler on the root logger"),
        ("Per record: emit, without vs with the distro active", fmt(records["emit"], "µs"),
         fmt(otel_records["emit"] if otel_records else None, "µs"),
         ratio(records["emit"], otel_records["emit"] if otel_records else None),
         "the caller's thread; the distro exports from its own thread besides"),
    ]
    if otel_records:
        rows.append(("Per record: plain log line, with the distro active", "—", fmt(otel_records["plain"], "µs"), "—", ""))
    lines = [
        BEGIN,
        "## Telemetry: structured records without an SDK (issue #14)",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
        f"{m['os']}; {seconds:.0f} s in all{' (smoke run: no distro installed, few runs)' if smoke else ''}. "
        f"Command: `.venv/bin/python -m bench.telemetry` (after `scripts/setup.sh`). Cold start: median of {runs} fresh "
        "processes each, alternating, bytecode compiled beforehand, "
        + ("in the test environment. " if smoke else
           f"both in one virtual environment (the app's packages plus `{DISTRO}` {figures.get('distro_version', '')}); "
           "connection string to an unreachable local endpoint, statsbeat off, `FUNCTIONS_WORKER_RUNTIME`/`WEBSITE_SITE_NAME` "
           "set as on Azure. ") +
        f"Per record: median of {figures['repeats']} × {figures['n_records']:,} records.",
        "",
        "| Measure | Ours (no SDK) | Baseline | Ratio | Note |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows],
        "",
        conclusion(ours_ms, otel_ms, mb_app, mb_otel, records, otel_records),
        END,
    ]
    return "\n".join(lines) + "\n"


def conclusion(ours_ms: float, otel_ms: float | None, mb_app: float | None, mb_otel: float | None,
               records: dict[str, float], otel_records: dict[str, float] | None) -> str:
    if otel_ms is None or mb_app is None or mb_otel is None or otel_records is None:
        return ("Smoke run: the distro was not installed, so there is no verdict here; the full run "
                "(`python -m bench.telemetry`) measures it.")
    extra = otel_ms - ours_ms
    verdict = "It does not pay" if extra > 0.25 * ours_ms else "It would be affordable"
    return (
        f"**{verdict}.** The distro adds **{extra:,.0f} ms** to every cold start ({otel_ms / ours_ms:.1f}× the app's own "
        f"load), {mb_otel - mb_app:,.0f} MB to the deployment, and makes each record "
        f"{otel_records['emit'] / records['emit']:.1f}× as dear on the calling thread ({records['emit']:.0f} → "
        f"{otel_records['emit']:.0f} µs) plus an exporter thread. On Flex Consumption, which scales from zero and adds "
        "instances under load, every new instance pays that cold start before its first answer. What it would buy: "
        "the fields as `customDimensions` columns instead of `parse_json(substring(message, 11))` (the same fields, one "
        "KQL line apart), dependency telemetry for Graph and Table Storage calls (requests/urllib3 instrumentation) and "
        "live metrics. What it would not: the worker still forwards every log record to the host, so each trace would "
        "reach Application Insights twice unless the host's logging were turned down; and `emit`'s `extra` holds one "
        "dict, which the exporter would write as a single string property (its `str()`), so the fields would have to be "
        "flattened into `extra` to become columns. Our own record is "
        f"{records['emit'] / records['plain']:.0f}× a plain log line ({records['emit']:.0f} against {records['plain']:.0f} µs), "
        "mostly the scrubbing of every string against credentials (four regular expressions), the price of never logging "
        "a secret: a few records per invocation, a fraction of a millisecond against Graph round trips of a hundred "
        "milliseconds or more. The structured message stays: one log record, no SDK, and the workbook and alert read it "
        "with `parse_json` either way."
    )


def write_section(path: Path, text: str) -> None:
    """This benchmark's section of RESULTS.md, replaced (bench/results.py)."""
    results.write_section(path, text, BEGIN, END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="no distro install, few runs (for the test suite)")
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per cold-start variant")
    parser.add_argument("--records", type=int, default=20_000, help="records per timed repeat")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per record variant")
    parser.add_argument("--out", default=str(RESULTS), help="RESULTS.md to write this benchmark's section in ('-' for none)")
    parser.add_argument("--child-records", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_records is not None:  # in the distro's virtual environment: per_record with it configured
        print(json.dumps(per_record(args.child_records, args.repeats, otel=True)), flush=True)
        return 0
    if args.smoke:
        args.runs, args.records, args.repeats = 1, 300, 2
    started = time.perf_counter()
    figures: dict[str, Any] = {"n_records": args.records, "repeats": args.repeats}
    if args.smoke:
        python = Path(sys.executable)
        print("1. cold start (smoke: no distro)", flush=True)
        figures["cold"] = cold_start(python, args.runs, with_otel=False)
    else:
        from bench.run import WORK, site_packages_mb, venv

        WORK.mkdir(parents=True, exist_ok=True)
        print(f"setting up virtual environments (the app's; the app's + {DISTRO})…", flush=True)
        app_python = venv("venv-app", ["-r", str(ROOT / "requirements.txt")])
        python = venv("venv-otel", ["-r", str(ROOT / "requirements.txt"), DISTRO])
        figures["mb_app"], figures["mb_otel"] = site_packages_mb(app_python), site_packages_mb(python)
        figures["distro_version"] = subprocess.run(
            [str(python), "-c", f"from importlib.metadata import version; print(version({DISTRO!r}))"],
            capture_output=True, text=True, check=True).stdout.strip()
        print(f"  site-packages: {figures['mb_app']:.1f} MB vs {figures['mb_otel']:.1f} MB", flush=True)
        print("1. cold start", flush=True)
        figures["cold"] = cold_start(python, args.runs, with_otel=True)
    print("2. per record", flush=True)
    figures["records"] = per_record(args.records, args.repeats, otel=False)
    if not args.smoke:
        figures["records_otel"] = per_record_otel(python, args.records, args.repeats)
    text = report(figures, args.smoke, time.perf_counter() - started)
    print("\n" + text)
    if args.out != "-":
        write_section(Path(args.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
