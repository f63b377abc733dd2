"""Autopilot import jobs across several app processes (tests/importworker.py), against Azurite and
the Graph emulator: overlapping jobs whose steps run at the same moment make one import per serial
and end each shared device the way it really ended; a step killed or frozen mid-way is taken over
within its claim, and a step that lost its claim writes nothing more to Graph."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import ROOT, autopilot_devices, configure, faults, graph_calls, import_stats, run_imports, start_import

from shared.onboarding.importjob import ImportStep
from shared.onboarding.rules import FAILED, PROFILE_ASSIGNED

WORKER = str(ROOT / "tests" / "importworker.py")
IMPORT = "/importedWindowsAutopilotDeviceIdentities/import"
SHARED = [f"SHARED{i:04d}" for i in range(1, 7)]
REFUSED = "SHARED0003"  # Intune refuses this one (808) whichever job imports it
JOBS = 4
# A claim of 3 s renewed every second: a dead step's claim lapses within seconds.
FAST_CLAIM = {"IMPORT_STEP_CLAIM_SECONDS": "3", "IMPORT_STEP_HEARTBEAT_SECONDS": "1", "GRAPH_TIMEOUT_SECONDS": "30"}
MARGIN = 5.0  # the takeover message's own delay (2 s, queue visibility in whole seconds) and process scheduling


class Worker:
    """One app process running import steps; its JSON lines, read as they come."""

    def __init__(self, env: dict[str, str], *args: str):
        self.proc = subprocess.Popen([sys.executable, WORKER, *args], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def line(self, timeout: float = 60) -> dict[str, Any]:
        import select

        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        text = self.proc.stdout.readline() if ready else ""
        assert text, f"the worker said nothing in {timeout} s: {self.stop()}"
        answer: dict[str, Any] = json.loads(text)
        return answer

    def until(self, outcomes: tuple[str, ...], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            said = self.line(max(0.1, deadline - time.monotonic()))
            if said.get("outcome") in outcomes or said.get("outcome") == "timeout":
                return said

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        _, errors = self.proc.communicate(timeout=30)
        return errors[-3000:]


@pytest.fixture
def workers(env: dict[str, str]) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(*args: str, **overrides: str) -> Worker:
        worker = Worker({**os.environ, **env, **overrides}, *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            os.kill(worker.proc.pid, signal.SIGCONT)
        worker.stop()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def first_steps_at_once(service, graph, workers, job_ids: list[str]) -> None:
    """Each job's first step in its own process, all let go at the same moment, Graph a little slow."""
    messages = []
    for job_id in job_ids:
        job = service.imports.job(job_id)
        messages.append(ImportStep(job_id, job.step, job.step_at).to_json())
    started = [workers("steps", message) for message in messages]
    for worker in started:
        assert worker.line().get("ready"), worker.stop()
    configure(graph, latencySeconds=0.2)  # every job looks up its devices before any imports
    for worker in started:
        worker.go()
    outcomes = [worker.line(120)["outcome"] for worker in started]
    configure(graph, latencySeconds=0)
    assert outcomes == ["stepped"] * len(job_ids)


def overlapping_jobs(service, clock, graph, workers) -> list[str]:
    configure(graph, importErrors={REFUSED: {"deviceErrorCode": 808, "deviceErrorName": "ZtdDeviceAssignedToOtherTenant"}})
    jobs = [start_import(service, autopilot_devices(len(SHARED), prefix="SHARED") + autopilot_devices(2, prefix=f"OWN{n}-"),
                         caller=f"tech{n}") for n in range(JOBS)]
    first_steps_at_once(service, graph, workers, jobs)
    run_imports(service, clock, graph, *jobs)
    return jobs


def test_overlapping_jobs_stepping_at_once_in_several_processes_import_each_serial_once(service, clock, graph, workers):
    overlapping_jobs(service, clock, graph, workers)
    per_serial = import_stats(graph)["importsPerSerial"]
    assert per_serial == {serial: 1 for serial in [*SHARED, *(f"OWN{n}-{i:04d}" for n in range(JOBS) for i in (1, 2))]}


def test_overlapping_jobs_in_several_processes_each_end_a_shared_device_as_the_device_really_ended(
        service, clock, graph, workers):
    jobs = overlapping_jobs(service, clock, graph, workers)
    for job in jobs:
        devices = {d.serial_number: d for d in service.imports.devices(job)}
        refused = devices.pop(REFUSED)
        assert (refused.state, refused.error_code, refused.error_name) == (FAILED, 808, "ZtdDeviceAssignedToOtherTenant")
        assert {serial: d.state for serial, d in devices.items()} == dict.fromkeys(devices, PROFILE_ASSIGNED)


# --- a step that dies or freezes mid-way -----------------------------------------------------------


def claimed_and_renewed(service, job_id: str) -> None:
    """The job is claimed by a step, and that step has renewed its claim since (it is alive)."""
    first = wait_for(lambda: (j := service.imports.job(job_id)).step_owner and j, 60, "a step claims the job")
    wait_for(lambda: (j := service.imports.job(job_id)).step_owner == first.step_owner and j.step_until > first.step_until,
             10, "the step renews its claim while it works")


def test_a_step_killed_mid_way_is_taken_over_by_another_process_within_its_claim(make_service, graph, workers):
    service = make_service(**FAST_CLAIM)
    job_id = start_import(service, autopilot_devices(2))
    faults(graph, {"method": "GET", "pathContains": "/deviceManagement/windowsAutopilotDeviceIdentities", "delaySeconds": 25,
                   "times": 1})  # the first step hangs in a lookup
    dying = workers("drain", "60", "--first", **FAST_CLAIM)
    claimed_and_renewed(service, job_id)
    other = workers("drain", "60", **FAST_CLAIM)
    assert other.line().get("ready")
    os.kill(dying.proc.pid, signal.SIGKILL)
    killed_at = time.time()
    taken = other.until(("stepped", "completed", "lost"), 60)
    after = taken["at"] - killed_at
    assert taken["outcome"] == "stepped" and after <= service.settings.import_step_claim_seconds + MARGIN, after
    assert len(graph_calls(graph, "POST", IMPORT)) == 1 and service.imports.job(job_id).step == 2


def test_a_frozen_step_that_lost_its_claim_makes_no_graph_write_when_it_wakes(make_service, graph, workers):
    service = make_service(**FAST_CLAIM)
    job_id = start_import(service, autopilot_devices(2))
    faults(graph, {"method": "GET", "pathContains": "/deviceManagement/windowsAutopilotDeviceIdentities", "delaySeconds": 3,
                   "times": 1})  # the first step is in a lookup when it freezes
    frozen = workers("drain", "120", "--first", **FAST_CLAIM)
    claimed_and_renewed(service, job_id)
    os.kill(frozen.proc.pid, signal.SIGSTOP)  # its heartbeat stops too
    other = workers("drain", "60", **FAST_CLAIM)
    assert other.until(("stepped", "completed", "lost"), 60)["outcome"] == "stepped"
    writes = [r for r in graph_calls(graph) if r["method"] != "GET"]
    os.kill(frozen.proc.pid, signal.SIGCONT)
    assert frozen.until(("stepped", "completed", "lost"), 60)["outcome"] == "lost"
    assert [r for r in graph_calls(graph) if r["method"] != "GET"] == writes
    assert len(graph_calls(graph, "POST", IMPORT)) == 1
