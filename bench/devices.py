"""Bulk device sync under Intune's write limit (issue 21, item 6): one job of N devices and four
concurrent jobs of N/4, run by four app processes at once (tests/queueworker.py, each with four
messages in flight, as a Functions instance runs queue messages), against the Graph emulator
enforcing the managed-devices write limit (a sliding window counted on arrival, 429 over it).
Each scenario runs twice, side by side: the write budget shared in Table Storage (this app) and
the same work with the budget counted in each process (the per-process limiter it replaced).

    python -m bench.devices                     # 20,000 devices; writes its section of bench/RESULTS.md
    python -m bench.devices --devices 4000      # fewer
    python -m bench.devices --smoke --out -     # a few hundred devices (the test suite's smoke run)

Intune's window is 20 s and its limit 200 writes; 20,000 device syncs would take 35 minutes per
run at that rate. The window is shortened for both sides (WRITE_LIMIT_WINDOW_SECONDS and the
emulator's window alike, ``--window``) and the limit kept, so the rate is ten times Intune's and
every ratio the same: writes per window as a fraction of the limit, 429s, round trips.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.data.tables import TableServiceClient

from bench import results
from emulators.azurite import Azurite
from emulators.graph import GraphEmulator
from emulators.identity import IdentityEmulator

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
WORKER = ROOT / "tests" / "queueworker.py"
BEGIN, END = "<!-- bench.devices: begin -->", "<!-- bench.devices: end -->"
SYSTEMS = ("Windows", "macOS", "iOS", "Android")


@dataclass
class Run:
    scenario: str
    budget: str
    devices: int
    seconds: float = 0.0
    accepted: int = 0
    throttled: int = 0
    max_in_window: int = 0
    synced_twice: int = 0
    queued: int = 0
    completed: int = 0
    jobs: int = 0
    table_calls: int = 0
    writing_seconds: float = 0.0
    peak_mb: list[float] = field(default_factory=list)
    failures: int = 0
    failure_samples: list[str] = field(default_factory=list)  # the first few steps' errors, as the workers saw them


class Stack:
    """Azurite, the Graph emulator and the managed-identity emulator, in this process's threads
    (Azurite its own process)."""

    def __init__(self) -> None:
        self.azurite = Azurite().start()
        self.graph = GraphEmulator().start()
        self.identity = IdentityEmulator()
        self.identity.start()

    def close(self) -> None:
        self.graph.stop()
        self.identity.stop()
        self.azurite.close()

    def env(self, table: str, limit: int, window: float, step_devices: int, claim: int = 40) -> dict[str, str]:
        suffix = table[1:]
        return {**self.identity.env(), "GRAPH_BASE_URL": self.graph.base_url,
                "AzureWebJobsStorage": self.azurite.connection_string, "SYNC_TARGETS": "autopilot,exchange,devices",
                "SYNC_STATE_TABLE": table, "SYNC_QUEUE": "q" + suffix, "IMPORT_QUEUE": "i" + suffix,
                "DEVICE_SYNC_QUEUE": "d" + suffix, "TENANT_QUEUE": "t" + suffix, "DEVICE_WRITE_LIMIT": str(limit),
                "WRITE_LIMIT_WINDOW_SECONDS": str(int(window)), "DEVICE_SYNC_STEP_DEVICES": str(step_devices),
                "DEVICE_SYNC_SKIP_MINUTES": "0", "DEVICE_SYNC_MAX_DEVICES": "200000", "GRAPH_TIMEOUT_SECONDS": "20",
                # A step's takeover message comes when its claim ends; the workers stop once it has come
                # and gone. 40 s: a step still works its full 20 s (syncsteps.work_window), as with the default 60.
                "DEVICE_SYNC_STEP_CLAIM_SECONDS": str(claim)}

    def new_table(self) -> str:
        name = "b" + uuid.uuid4().hex[:16]
        TableServiceClient.from_connection_string(self.azurite.connection_string).create_table(name)
        return name


def configure(stack: Stack, devices: int, limit: int, window: float) -> None:
    import requests

    requests.post(f"{stack.graph.base_url}/_emulator/reset", timeout=30).raise_for_status()
    config = {"managedDevices": {"devices": [{"serialNumber": f"SN{i:06d}", "operatingSystem": SYSTEMS[i % 4],
                                              "lastSyncMinutesAgo": 180} for i in range(1, devices + 1)]},
              "deviceWriteLimit": {"limit": limit, "windowSeconds": window}}
    requests.post(f"{stack.graph.base_url}/_emulator/config", json=config, timeout=120).raise_for_status()


def start_jobs(env: dict[str, str], scenario: str) -> list[tuple[str, str]]:
    """The jobs, started in this process as the HTTP route would (a fresh service from ``env``)."""
    os.environ.update(env)
    from shared.devicesync import DeviceSyncRequest
    from shared.runtime import process

    process.reload()
    jobs = process.service().device_sync()
    if scenario == "one job":
        requests = [DeviceSyncRequest("filter", filter="managementAgent eq 'mdm'", skip_minutes=0)]
    else:
        requests = [DeviceSyncRequest("filter", filter=f"operatingSystem eq '{system}'", skip_minutes=0) for system in SYSTEMS]
    return [(job.id, token) for job, token in (jobs.start(r, "bench") for r in requests)]


def job_states(job_ids: list[tuple[str, str]]) -> list[dict[str, Any]]:
    from shared.runtime import process

    jobs = process.service().device_sync()
    answers = []
    for job_id, token in job_ids:
        status = jobs.status(job_id, token)
        answers.append(status.to_json() if status else {})
    return answers


def run(stack: Stack, scenario: str, budget: str, devices: int, limit: int, window: float, processes: int,
        threads: int, step_devices: int, timeout: float, claim: int = 40) -> Run:
    configure(stack, devices, limit, window)
    env = stack.env(stack.new_table(), limit, window, step_devices, claim)
    jobs = start_jobs(env, scenario)
    started = time.monotonic()
    args = [str(timeout), "--threads", str(threads), "--idle", str(max(8.0, 3 * window))]
    args += ["--local-budget"] if budget == "per process" else []
    workers = [subprocess.Popen([sys.executable, str(WORKER), *args], cwd=ROOT, env={**os.environ, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(processes)]
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=timeout + 120)
        if worker.returncode != 0:
            raise RuntimeError(f"a worker failed: {err[-2000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    answers = job_states(jobs)
    def at(text: str | None) -> float | None:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None

    created = [t for t in (at(a.get("createdAt")) for a in answers) if t is not None]
    ended = [t for t in (at(a.get("finishedAt")) for a in answers) if t is not None]
    stats = stack.graph.stats()
    area = stats["writeLimits"]["devices"]
    result = Run(scenario, budget, devices, jobs=len(jobs))
    # From the first job's start to the last job's end (the workers then wait out their idle time).
    result.seconds = max(ended) - min(created) if ended and len(ended) == len(answers) else time.monotonic() - started
    result.accepted, result.throttled, result.max_in_window = area["accepted"], area["throttled"], area["maxWritesInAnyWindow"]
    result.writing_seconds = area["writingSeconds"]
    result.synced_twice = stats["managedDevices"]["devicesSyncedMoreThanOnce"]
    result.queued = sum(a.get("counts", {}).get("queued", 0) for a in answers)
    result.completed = sum(1 for a in answers if a.get("status") == "completed")
    result.table_calls = sum(r["tableCalls"] for r in reports)
    result.peak_mb = [r["peakKb"] / 1024 for r in reports]
    result.failures = sum(r["failureCount"] for r in reports)
    result.failure_samples = [f for r in reports for f in r["failures"]][:8]
    return result


def section(runs: list[Run], args: argparse.Namespace, seconds: float) -> str:
    m = results.machine()
    lines = [BEGIN, "## Bulk device sync under Intune's write limit (issue #21)", "",
             f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {m['cores']} cores ({m['cpu']}), Python {m['python']}; "
             f"{seconds / 60:.0f} min in all. Command: `python -m bench.devices --devices {args.devices} --window {args.window:g}`. "
             f"{args.processes} app processes (tests/queueworker.py), {args.threads} messages in flight each; the Graph "
             f"emulator allows {args.limit} managed-device writes per {args.window:g} s per tenant (counted on arrival, "
             f"429 over it), the app is set to the same (DEVICE_WRITE_LIMIT, WRITE_LIMIT_WINDOW_SECONDS). Intune's window "
             f"is 20 s: this one is {20 / args.window:g}x shorter so that a run takes minutes, for both sides alike. "
             f"Device syncs go out in $batch requests of 20; {args.step_devices} devices per step (DEVICE_SYNC_STEP_DEVICES: "
             f"Intune's 200 per 20 s fill a step of 200 devices in the 20 s a step may take; against a window "
             f"{20 / args.window:g}x shorter, {args.step_devices} devices keep a step as long, so that the pause "
             f"between two steps weighs what it weighs against Intune's window).", "",
             "| Scenario | Budget | Devices | Jobs completed | Device syncs accepted | Writes per window, mean / limit | "
             "Sustained (first to last write) / limit | Busiest window / limit | 429s | Devices synced twice | "
             "Table round trips per 100 devices | Peak memory per process | Time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        per_window = r.accepted * args.window / r.seconds if r.seconds else 0.0
        sustained = (r.accepted - 1) * args.window / r.writing_seconds if r.writing_seconds else 0.0
        lines.append(
            f"| {r.scenario} | {r.budget} | {r.devices:,} | {r.completed} of {r.jobs} | {r.accepted:,} | "
            f"{per_window:.0f} / {args.limit} ({per_window / args.limit:.0%}) | "
            f"{sustained:.0f} / {args.limit} ({sustained / args.limit:.0%}) | {r.max_in_window} / {args.limit} | "
            f"{r.throttled:,} | {r.synced_twice} | {100 * r.table_calls / max(1, r.devices):.1f} | "
            f"{max(r.peak_mb):.0f} MB (median {statistics.median(r.peak_mb):.0f}) | {r.seconds:.0f} s |")
    lines += ["", "Writes per window, mean: device syncs Graph accepted, per window of the run's length (from the "
              "jobs' start to the last job's end, which includes listing the devices and the last step's save), "
              "against the limit. Sustained: the same from the first device sync Graph accepted to the last (the "
              "rate while the jobs are sending; the budget's ceiling is (1 - 3 %) / (1 + 5 %) = 92.4 %). Busiest window: the most writes the emulator accepted within any window-length "
              "span. Table round trips: every request the workers sent to Table Storage (job and device rows, claims, "
              "budget), per 100 devices. A 429 puts the device back to pending: it is synced later, never twice.", END, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--limit", type=int, default=200, help="managed-device writes per window (Intune: 200)")
    parser.add_argument("--window", type=float, default=2.0, help="the window in seconds (Intune: 20)")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--step-devices", type=int, default=None,
                        help="devices per step (default: DEVICE_SYNC_STEP_DEVICES's 200 scaled by 20 s / window, at most "
                             "1,000, so that a step lasts as long against the short window as against Intune's)")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the per-process budget")
    parser.add_argument("--scenarios", default="one job,four jobs", help="which to run (comma-separated)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--smoke", action="store_true", help="a few hundred devices, a small limit (for the test suite)")
    parser.add_argument("--out", default=str(RESULTS), help="RESULTS.md to write this benchmark's section in ('-' for none)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.devices, args.limit, args.step_devices = 240, 40, 40
    if args.step_devices is None:
        args.step_devices = min(1000, round(200 * 20 / args.window))
    started = time.monotonic()
    stack = Stack()
    runs = []
    try:
        for scenario in [s.strip() for s in args.scenarios.split(",")]:
            for budget in ("shared", "per process") if args.baseline else ("shared",):
                print(f"{scenario}, {budget} budget: {args.devices} devices…", flush=True)
                runs.append(run(stack, scenario, budget, args.devices, args.limit, args.window, args.processes,
                                args.threads, args.step_devices, args.timeout))
                print(json.dumps(runs[-1].__dict__), flush=True)
    finally:
        stack.close()
    text = section(runs, args, time.monotonic() - started)
    results.publish(text, args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
