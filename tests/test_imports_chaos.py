"""Autopilot import jobs under faults, against the real servers: Table Storage lost in the middle
of a step (behind emulators/faultproxy.py), the queue down when a step's message is sent, and a
hanging identity endpoint. Nothing done is lost, and no device is imported twice."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from conftest import autopilot_devices, faults, graph_calls, import_stats, run_imports, start_import, sync_posts

from emulators.azurite import ACCOUNT, KEY, free_port
from emulators.faultproxy import FaultProxy
from shared.common.errors import StateStoreUnavailable
from shared.onboarding.importjob import OVERDUE, ImportStep
from shared.onboarding.rules import PROFILE_ASSIGNED

IMPORT = "/importedWindowsAutopilotDeviceIdentities/import"


@pytest.fixture
def proxy(azurite) -> Iterator[FaultProxy]:
    server = FaultProxy(azurite.table_endpoint).start()
    yield server
    server.stop()


def storage(table: str, queue: str) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"TableEndpoint={table}/{ACCOUNT};QueueEndpoint={queue}/{ACCOUNT};")


def step_message(svc, job_id: str) -> str:
    job = svc.imports.job(job_id)
    return ImportStep(job_id, job.step, job.step_at).to_json()


def test_table_storage_lost_after_the_import_call_loses_no_device_and_imports_none_twice(
        make_service, clock, graph, azurite, proxy):
    queue = f"http://127.0.0.1:{azurite.queue_port}"
    svc = make_service(AzureWebJobsStorage=storage(proxy.base_url, queue))
    job_id = start_import(svc, autopilot_devices(3))
    message = step_message(svc, job_id)
    # The import lands in Graph after a second; by then Table Storage is gone.
    faults(graph, {"method": "POST", "pathContains": IMPORT, "delaySeconds": 1, "times": 1})
    threading.Timer(0.5, lambda: proxy.add("drop")).start()
    with pytest.raises(StateStoreUnavailable):
        svc.run_import_step(message)  # the host retries the message; here, the watcher will resend it
    proxy.clear()
    assert len(import_stats(graph)["records"]) == 3
    clock.advance(svc.settings.import_step_claim_seconds + OVERDUE.total_seconds() + 1)
    assert svc.repair_imports() == 1
    run_imports(svc, clock, graph, job_id)
    assert {d.state for d in svc.imports.devices(job_id)} == {PROFILE_ASSIGNED}
    assert len(graph_calls(graph, "POST", IMPORT)) == 1 and len(sync_posts(graph)) == 1


def test_a_queue_outage_when_a_step_is_sent_is_repaired_by_the_watcher(make_service, clock, graph, azurite):
    down = make_service(AzureWebJobsStorage=storage(azurite.table_endpoint.rsplit("/", 1)[0], f"http://127.0.0.1:{free_port()}"))
    job_id = start_import(down, autopilot_devices(1))  # recorded; its first message not sent
    service = make_service()
    clock.advance(OVERDUE.total_seconds() + 1)
    assert service.repair_imports() == 1
    run_imports(service, clock, graph, job_id)
    assert [d.state for d in service.imports.devices(job_id)] == [PROFILE_ASSIGNED]


def test_a_hanging_identity_endpoint_holds_up_one_step_and_the_next_one_goes_on(make_service, clock, graph, identity_server):
    svc = make_service()
    job_id = start_import(svc, autopilot_devices(1))
    identity_server.configure(hangSeconds=11, hangTimes=2)  # longer than the token read timeout, twice
    started = time.monotonic()
    assert svc.run_import_step(step_message(svc, job_id)) == "stepped"
    assert time.monotonic() - started < 40
    job = svc.imports.job(job_id)
    assert job.message and job.message.startswith("TokenUnavailable")
    assert job.step_at >= clock() + timedelta(seconds=svc.settings.import_poll_seconds)
    run_imports(svc, clock, graph, job_id)
    assert [d.state for d in svc.imports.devices(job_id)] == [PROFILE_ASSIGNED]
