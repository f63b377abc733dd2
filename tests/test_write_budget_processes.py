"""Intune's write budget across app processes (issue 21), against Azurite and the Graph emulator
enforcing Intune's limits (a sliding window counted on arrival, 429 over it): four processes
(tests/queueworker.py) running device-sync jobs and an Autopilot import job for one tenant stay
inside the limits, and a 429 answered to one of them holds the others. The window is shortened to
2 s (WRITE_LIMIT_WINDOW_SECONDS) and the limits scaled down, so that a test takes seconds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import pytest
from conftest import ROOT, autopilot_devices, configure, faults, start_import

from shared.devicesync import DeviceSyncRequest
from shared.runtime import process

WORKER = str(ROOT / "tests" / "queueworker.py")
WINDOW = 2
DEVICE_LIMIT, INTUNE_LIMIT = 40, 20
SYSTEMS = ("Windows", "macOS", "iOS", "Android")


@pytest.fixture
def budget_env(app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, graph: Any) -> dict[str, str]:
    settings = {
        "SYNC_TARGETS": "autopilot,exchange,devices", "DEVICE_SYNC_QUEUE": "d" + app_env["SYNC_STATE_TABLE"][1:],
        "DEVICE_WRITE_LIMIT": str(DEVICE_LIMIT), "INTUNE_WRITE_LIMIT": str(INTUNE_LIMIT),
        "WRITE_LIMIT_WINDOW_SECONDS": str(WINDOW), "DEVICE_SYNC_STEP_DEVICES": "40", "DEVICE_SYNC_SKIP_MINUTES": "0",
        "IMPORT_POLL_SECONDS": "1", "IMPORT_SYNC_DELAY_SECONDS": "0", "GRAPH_TIMEOUT_SECONDS": "10",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    process.reload()
    configure(graph, managedDevices={"devices": [{"serialNumber": f"SN{i:06d}", "operatingSystem": SYSTEMS[i % 4],
                                                  "lastSyncMinutesAgo": 180} for i in range(1, 201)]},
              deviceWriteLimit={"limit": DEVICE_LIMIT, "windowSeconds": WINDOW},
              writeLimit={"limit": INTUNE_LIMIT, "windowSeconds": WINDOW},
              importProcessingSeconds=1, syncDurationSeconds=1, profileAssignmentSeconds=2)
    return app_env | settings


def run_workers(env: dict[str, str], count: int = 4, seconds: float = 120) -> list[dict[str, Any]]:
    """``count`` app processes draining the job queues until nothing came for a few seconds."""
    child = {**os.environ, **env}
    workers = [subprocess.Popen([sys.executable, WORKER, str(seconds), "--threads", "4", "--idle", "6"], cwd=ROOT, env=child,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(count)]
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=seconds + 60)
        assert worker.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def start_device_jobs(requests: list[DeviceSyncRequest]) -> list[tuple[str, str]]:
    jobs = process.service().device_sync()
    started = [jobs.start(request, "test") for request in requests]
    return [(job.id, token) for job, token in started]


def finished(jobs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    device_sync = process.service().device_sync()
    answers = []
    for job_id, token in jobs:
        status = device_sync.status(job_id, token)
        assert status is not None
        answers.append(status.to_json())
    return answers


def test_four_processes_running_device_jobs_and_an_import_job_stay_inside_intunes_limits(budget_env, graph):
    # Three jobs over disjoint devices: 60 Windows and iOS serials, every macOS and every Android device.
    serials = tuple(f"SN{i:06d}" for i in range(1, 201) if SYSTEMS[i % 4] in ("Windows", "iOS"))[:60]
    jobs = start_device_jobs([
        DeviceSyncRequest("serialNumbers", serials, skip_minutes=0),
        DeviceSyncRequest("filter", filter="operatingSystem eq 'macOS'", skip_minutes=0),
        DeviceSyncRequest("filter", filter="operatingSystem eq 'Android'", skip_minutes=0),
    ])
    import_id = start_import(process.service(), autopilot_devices(30, prefix="AP"))
    reports = run_workers(budget_env)
    stats = graph.stats()
    limits = stats["writeLimits"]
    assert (limits["devices"]["throttled"], limits["intune"]["throttled"]) == (0, 0), limits
    assert limits["devices"]["maxWritesInAnyWindow"] <= DEVICE_LIMIT and limits["intune"]["maxWritesInAnyWindow"] <= INTUNE_LIMIT
    answers = finished(jobs)
    assert [a["status"] for a in answers] == ["completed"] * 3, [r["failures"] for r in reports]
    assert [a["counts"]["queued"] for a in answers] == [60, 50, 50]
    assert stats["managedDevices"]["devicesSyncedMoreThanOnce"] == 0
    job = process.service().imports.job(import_id)
    assert job is not None and job.done
    assert sum(r["steps"] for r in reports) > 10 and all(r["steps"] for r in reports)  # every process took part


def test_a_429_answered_to_one_process_holds_every_other_until_its_retry_after(budget_env, graph):
    """The first sync batch is answered 429 with Retry-After 3: no process sends a device sync
    within those 3 seconds (but a batch already on its way), and every job still ends with each
    device synced once."""
    faults(graph, {"method": "POST", "pathContains": "/$batch", "status": 429, "times": 1, "retryAfter": "3"})
    jobs = start_device_jobs([DeviceSyncRequest("filter", filter=f"operatingSystem eq '{system}'", skip_minutes=0)
                              for system in SYSTEMS])
    run_workers(budget_env)
    requests = graph.stats()["requests"]
    [refused] = [r for r in requests if r["path"].endswith("/$batch") and r["status"] == 429]
    held_until = datetime.fromisoformat(refused["at"].replace("Z", "+00:00")).timestamp() + 3
    at = [datetime.fromisoformat(r["at"].replace("Z", "+00:00")).timestamp() for r in requests
          if r["method"] == "POST" and r["path"].endswith("/syncDevice")]
    # A batch already granted and on its way when the 429 came cannot be called back: it arrives
    # within moments. After that, nothing until the Retry-After has passed.
    in_flight = 0.5
    assert at and [round(t - (held_until - 3), 3) for t in at if held_until - 3 + in_flight < t < held_until - 0.05] == []
    answers = finished(jobs)
    assert [a["counts"]["queued"] for a in answers] == [50] * 4
    assert graph.stats()["managedDevices"]["devicesSyncedMoreThanOnce"] == 0


def test_a_step_killed_after_marking_its_devices_and_before_their_batch_leaves_none_reported_synced(budget_env, graph):
    """A process running a step is killed (SIGKILL) while its chunk's rows are written ``sending``
    and it waits for the budget, before the $batch leaves. The step that takes over sends those
    devices (their budget ticket was never granted), and no device is synced twice or reported
    ``queued`` without a sync."""
    import signal
    import threading

    from shared.clients import DEVICES, SharedBudget, make_credential, table_client

    env = budget_env | {"DEVICE_SYNC_STEP_CLAIM_SECONDS": "5"}
    process.reload()
    [(job_id, token)] = start_device_jobs([DeviceSyncRequest("serialNumbers", tuple(f"SN{i:06d}" for i in range(1, 41)),
                                                             skip_minutes=0)])
    settings = process.settings()
    budget = SharedBudget(table_client(settings.storage, settings.state_table, make_credential))
    store = process.service().device_sync().store
    held = threading.Event()

    def hold_the_budget() -> None:  # every claim is told to wait a moment: the step sleeps with its rows marked
        while not held.is_set():
            budget.pause(DEVICES, 1.5)
            held.wait(0.3)

    holder = threading.Thread(target=hold_the_budget)
    holder.start()
    worker = subprocess.Popen([sys.executable, WORKER, "60", "--threads", "1"], cwd=ROOT, env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not store.in_state(job_id, "sending", 40) and time.monotonic() < deadline:
            time.sleep(0.05)
        marked = store.in_state(job_id, "sending", 40)
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=30)
    finally:
        held.set()
        holder.join()
    assert len(marked) == 20 and all(r.ticket for r in marked)
    assert graph.stats()["managedDevices"]["deviceSyncs"] == 0  # killed before its batch left
    run_workers(env, count=2)  # the takeover message, once the dead step's claim has lapsed
    [answer] = finished([(job_id, token)])
    assert answer["status"] == "completed" and answer["counts"]["queued"] == 40
    stats = graph.stats()["managedDevices"]
    assert stats["deviceSyncs"] == 40 and stats["devicesSyncedMoreThanOnce"] == 0
