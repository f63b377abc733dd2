"""Bulk device sync over HTTP (POST /api/devices/sync), through the app's functions against Azurite
and the Graph emulator's managed devices: off unless SYNC_TARGETS names ``devices``; bad selectors
refused with every bad entry named before anything reaches Graph; a job answers 202 with an
absolute Location that polls (without the key) 202 while its steps run on DEVICE_SYNC_QUEUE and 200
when every device is done; a customer tenant's job runs in that tenant; the queue trigger drops a
message that is not one of ours."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import call, configure, drain, graph_calls, logged_events

from emulators.devices import GROUP_MEMBER_ROLE, PRIVILEGED_ROLE, READ_ROLE, managed_device_id
from shared.runtime import handlers
from shared.runtime import process as runtime

DEVICES = 50


@pytest.fixture
def devices_env(app_env: dict[str, str], graph: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Bulk device sync on, its queue of its own, and the emulator serving DEVICES managed devices."""
    settings = {"SYNC_TARGETS": "autopilot,exchange,devices", "DEVICE_SYNC_QUEUE": "d" + app_env["SYNC_STATE_TABLE"][1:]}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    runtime.reload()
    configure(graph, managedDevices={"count": DEVICES})
    yield {**app_env, **settings}
    runtime.reload()


def serials(count: int) -> list[str]:
    return [f"SN{n:06d}" for n in range(1, count + 1)]


def poll_route(location: str) -> str:
    """The Location as a route of ``call`` (absolute, on the request's host, under /api)."""
    parts = urlsplit(location)
    assert parts.scheme == "http" and parts.netloc == "localhost" and parts.path.startswith("/api/")
    return parts.path[len("/api/"):] + "?" + parts.query


def run_steps(env: dict[str, str], location: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """Deliver the device queue's messages as the host's trigger does until the job's status is final."""
    deadline = time.monotonic() + timeout
    while True:
        drain(env, "DEVICE_SYNC_QUEUE", handlers.run_device_sync_step)
        code, _, status = call("GET", poll_route(location))
        if code != 202:
            return code, status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)  # a step waiting for the write budget is not visible yet


def peek(env: dict[str, str]) -> list[str]:
    """The device queue's visible messages, left where they are."""
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    queue = QueueClient.from_connection_string(env["AzureWebJobsStorage"], env["DEVICE_SYNC_QUEUE"],
                                               message_decode_policy=TextBase64DecodePolicy())
    return [m.content for m in queue.peek_messages(max_messages=32)]


# --- off, and bad input ---------------------------------------------------------------------------


def test_without_devices_in_sync_targets_the_route_is_off_and_calls_graph_nothing(app_env, graph):
    code, _, answer = call("POST", "devices/sync", {"serialNumbers": ["SN000001"]})
    assert (code, answer["error"]["code"]) == (404, "DeviceSyncOff")
    assert "devices" in answer["error"]["message"] and "SYNC_TARGETS" in answer["error"]["message"]
    code, _, answer = call("GET", f"devices/sync/{uuid.uuid4()}?token=x")
    assert (code, answer["error"]["code"]) == (404, "DeviceSyncNotFound")
    assert graph_calls(graph) == []


BAD_SELECTORS: dict[str, tuple[Any, list[Any]]] = {
    "bad serials": ({"serialNumbers": ["SN000001", "bad'serial", "", 7]}, [1, 2, 3]),
    "bad device ids": ({"deviceIds": ["2f1a9c3e-0000-4000-8000-000000000001", "not-a-guid"]}, [1]),
    "two selectors": ({"serialNumbers": ["SN000001"], "groupId": "2f1a9c3e-0000-4000-8000-000000000002"}, [None]),
    "no selector": ({}, [None]),
    "unknown field": ({"serialNumbers": ["SN000001"], "everything": True}, [None]),
    "bad filter": ({"filter": "operatingSystem ne 'Windows'"}, [0]),
    "not json": ("{", [None]),
}


@pytest.mark.parametrize("case", list(BAD_SELECTORS))
def test_a_bad_selector_is_a_400_naming_each_bad_entry_and_calls_graph_nothing(devices_env, graph, case):
    body, indexes = BAD_SELECTORS[case]
    headers = {"Content-Type": "application/json"}
    code, _, answer = call("POST", "devices/sync", body, headers)
    assert (code, answer["error"]["code"]) == (400, "InvalidDeviceSelector"), answer
    errors = answer["error"]["errors"]
    assert [e.get("index") for e in errors] == indexes and all(e["reason"] for e in errors)
    assert graph_calls(graph) == []


def test_a_body_over_the_limit_is_a_413_before_it_is_parsed(devices_env, graph, monkeypatch):
    from shared.api.routes import device_sync_max_bytes

    monkeypatch.setenv("DEVICE_SYNC_MAX_DEVICES", "100")
    runtime.reload()
    limit = device_sync_max_bytes(100)
    longest = json.dumps({"serialNumbers": [f"{n:03d}" + "S" * 125 for n in range(100)]}).encode("utf-16")
    assert len(longest) <= limit  # the most a valid request can take fits
    code, _, answer = call("POST", "devices/sync", json.dumps({"serialNumbers": ["S" * 100] * (limit // 100)}),
                           {"Content-Type": "application/json"})
    assert (code, answer["error"]["code"]) == (413, "PayloadTooLarge")
    code, _, answer = call("POST", "devices/sync", "{}", {"Content-Type": "application/json", "Content-Length": str(limit + 1)})
    assert (code, answer["error"]["code"]) == (413, "PayloadTooLarge")
    assert graph_calls(graph) == []


# --- a job, from start to done --------------------------------------------------------------------


def test_a_job_answers_202_with_a_location_that_polls_202_then_200_with_its_counts(devices_env, graph):
    code, headers, started = call("POST", "devices/sync", {"serialNumbers": serials(DEVICES), "skipSyncedWithinMinutes": 0},
                                  {"x-ms-workflow-name": "flow"})
    assert code == 202, started
    assert started["status"] == "running" and sum(started["counts"].values()) == DEVICES
    location = urlsplit(headers["Location"])
    assert location.path == f"/api/devices/sync/{started['jobId']}" and int(headers["Retry-After"]) > 0
    assert list(parse_qs(location.query)) == ["token"]
    assert graph_calls(graph) == []  # nothing reaches Graph before the first step runs
    code, again, status = call("GET", poll_route(headers["Location"]))
    assert code == 202 and status["jobId"] == started["jobId"] and again["Location"] == headers["Location"]
    code, final = run_steps(devices_env, headers["Location"])
    assert code == 200 and final["status"] != "running", final
    assert final["counts"]["queued"] == DEVICES and sum(final["counts"].values()) == DEVICES
    assert graph.stats()["managedDevices"]["deviceSyncs"] == DEVICES
    assert graph.stats()["managedDevices"]["devicesSyncedMoreThanOnce"] == 0
    assert len(final["devices"]) == DEVICES


def test_starting_a_job_without_waiting_answers_201_with_its_status_url(devices_env, graph):
    code, headers, started = call("POST", "devices/syncJobs", {"serialNumbers": serials(5), "skipSyncedWithinMinutes": 0})
    assert code == 201, started
    assert started["statusUrl"] == headers["Location"]
    assert urlsplit(started["statusUrl"]).path == f"/api/devices/sync/{started['jobId']}"
    code, final = run_steps(devices_env, started["statusUrl"])
    assert code == 200 and final["counts"]["queued"] == 5


def test_device_ids_from_csv_serials_and_paging(devices_env, graph):
    body = "Serial Number\r\n" + "\r\n".join(serials(3)) + "\r\n"
    code, headers, started = call("POST", "devices/sync", body, {"Content-Type": "text/csv"})
    assert code == 202, started
    code, final = run_steps(devices_env, headers["Location"])
    assert code == 200 and final["counts"]["queued"] == 3
    code, _, beyond = call("GET", poll_route(headers["Location"]) + "&page=5")
    assert code == 200 and beyond["devices"] == [] and beyond["page"] == 5 and beyond["nextPage"] is None


def test_next_page_is_the_absolute_url_of_the_next_page(devices_env, graph):
    from shared.devicesync import PAGE_SIZE

    code, headers, started = call("POST", "devices/sync", {"serialNumbers": serials(PAGE_SIZE + 1)})
    assert code == 202 and sum(started["counts"].values()) == PAGE_SIZE + 1
    code, _, first = call("GET", poll_route(headers["Location"]))
    assert code == 202 and len(first["devices"]) == PAGE_SIZE
    following = urlsplit(first["nextPage"])
    assert following.path == urlsplit(headers["Location"]).path and parse_qs(following.query)["page"] == ["1"]
    code, again, second = call("GET", poll_route(first["nextPage"]))
    assert code == 202 and len(second["devices"]) == 1 and second["nextPage"] is None
    assert again["Location"] == first["nextPage"]  # a poll of a page goes on polling that page


def test_a_wrong_token_is_404_and_a_bad_job_id_or_page_is_400(devices_env, graph):
    code, headers, started = call("POST", "devices/sync", {"deviceIds": [managed_device_id("SN000001")]})
    assert code == 202
    job = started["jobId"]
    code, _, answer = call("GET", f"devices/sync/{job}?token=wrong")
    assert (code, answer["error"]["code"]) == (404, "DeviceSyncNotFound")
    assert call("GET", f"devices/sync/{job}")[0] == 404
    assert call("GET", f"devices/sync/{uuid.uuid4()}?token=wrong")[0] == 404
    code, _, answer = call("GET", "devices/sync/not-a-guid?token=x")
    assert (code, answer["error"]["code"]) == (400, "InvalidJobId")
    for page in ("-1", "x", "1.5", "9999999"):
        code, _, answer = call("GET", poll_route(headers["Location"]) + f"&page={page}")
        assert (code, answer["error"]["code"]) == (400, "InvalidQuery"), page
    assert call("POST", f"devices/sync/{job}")[0] == 405


def test_the_token_is_never_logged(devices_env, graph, caplog):
    caplog.set_level("DEBUG")
    _, headers, _ = call("POST", "devices/sync", {"serialNumbers": serials(2)})
    token = parse_qs(urlsplit(headers["Location"]).query)["token"][0]
    run_steps(devices_env, headers["Location"])
    call("GET", poll_route(headers["Location"]).replace("page=", "page=x"))
    assert token not in caplog.text


# --- the queue trigger ----------------------------------------------------------------------------


@pytest.mark.parametrize("message", ["not json", "[]", json.dumps({"tenantId": "not-a-guid"}),
                                     json.dumps({"tenantId": "7E000000-0000-4000-8000-0000000000D5x"}),
                                     json.dumps({"deviceSyncId": "nope", "step": 1})])
def test_the_queue_handler_logs_an_invalid_message_once_and_acknowledges_it(devices_env, graph, caplog, message):
    assert handlers.run_device_sync_step(message) == "invalid"
    invalid = [e for e in logged_events(caplog, "devices") if e.get("outcome") == "invalid"]
    assert len(invalid) == 1 and "DEVICE_SYNC_QUEUE" in invalid[0]["message"]
    assert graph_calls(graph) == []


def test_a_step_of_an_unregistered_tenant_is_dropped_and_logged(devices_env, graph, caplog):
    tenant = str(uuid.uuid4())
    message = json.dumps({"deviceSyncId": str(uuid.uuid4()), "step": 1, "scheduledAt": "2026-01-01T00:00:00Z",
                          "tenantId": tenant})
    assert handlers.run_device_sync_step(message) == "dropped"  # multi-tenant mode is off
    [dropped] = [e for e in logged_events(caplog, "devices") if e.get("outcome") == "dropped"]
    assert dropped["tenant"] == tenant
    assert graph_calls(graph) == []


# --- a customer tenant's job ----------------------------------------------------------------------

TENANT = str(uuid.UUID(int=0x7E000000_0000_4000_8000_0000000000D5))
MI_CLIENT_ID = "3b8f0c2e-6d4a-4f1b-9e7c-2a5d8f1e0c93"


@pytest.fixture
def tenant_env(devices_env, entra_server, identity_server, graph, monkeypatch) -> Iterator[dict[str, str]]:
    """Multi-tenant mode with one customer tenant consented to the managed-device roles."""
    from emulators.entra import DEFAULT_CLIENT_ID

    entra_server.reset()
    roles = ["DeviceManagementServiceConfig.ReadWrite.All", READ_ROLE, PRIVILEGED_ROLE, GROUP_MEMBER_ROLE]
    entra_server.configure({"clientId": DEFAULT_CLIENT_ID, "federatedSubject": identity_server.principal_id(MI_CLIENT_ID),
                            "tenants": {TENANT: {"consented": True, "roles": roles}}})
    settings = {"MULTI_TENANT_CLIENT_ID": DEFAULT_CLIENT_ID, "AZURE_CLIENT_ID": MI_CLIENT_ID,
                "TENANT_QUEUE": "n" + devices_env["SYNC_STATE_TABLE"][1:], **entra_server.env()}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    runtime.reload()
    configure(graph, tenant=TENANT, managedDevices={"count": 5, "prefix": "CU"})
    code, _, body = call("PUT", f"tenants/{TENANT}", {"displayName": "Customer"})
    assert code in (200, 201), body
    yield {**devices_env, **settings}
    runtime.reload()


def test_a_tenants_job_runs_in_that_tenant_and_is_polled_under_its_route(tenant_env, graph):
    code, headers, started = call("POST", f"tenants/{TENANT}/devices/sync", {"serialNumbers": [f"CU{n:06d}" for n in range(1, 6)],
                                                                           "skipSyncedWithinMinutes": 0})
    assert code == 202, started
    assert urlsplit(headers["Location"]).path == f"/api/tenants/{TENANT}/devices/sync/{started['jobId']}"
    [step] = peek(tenant_env)
    assert json.loads(step).get("tenantId") == TENANT, f"a tenant's step must name its tenant: {step}"
    code, final = run_steps(tenant_env, headers["Location"])
    assert code == 200 and final["counts"]["queued"] == 5
    assert graph.stats()["tenants"][TENANT]["managedDevices"]["deviceSyncs"] == 5
    assert graph.stats()["managedDevices"]["deviceSyncs"] == 0  # the home tenant's devices untouched
    token = parse_qs(urlsplit(headers["Location"]).query)["token"][0]
    # The job lives in the tenant's table: the home service knows nothing of it, nor does the home route.
    assert runtime.service().device_sync().status(started["jobId"], token) is None
    assert call("GET", f"devices/sync/{started['jobId']}?token={token}")[0] == 404
    assert call("GET", f"tenants/{uuid.uuid4()}/devices/sync/{started['jobId']}?token={token}")[0] == 404


def test_a_tenants_job_started_without_waiting_answers_201_under_its_route(tenant_env, graph):
    code, headers, started = call("POST", f"tenants/{TENANT}/devices/syncJobs", {"serialNumbers": ["CU000001"],
                                                                               "skipSyncedWithinMinutes": 0})
    assert code == 201, started
    assert urlsplit(started["statusUrl"]).path == f"/api/tenants/{TENANT}/devices/sync/{started['jobId']}"
    code, final = run_steps(tenant_env, started["statusUrl"])
    assert code == 200 and final["counts"]["queued"] == 1


def test_an_unregistered_tenants_job_is_refused(tenant_env, graph):
    code, _, answer = call("POST", f"tenants/{uuid.uuid4()}/devices/sync", {"serialNumbers": ["CU000001"]})
    assert (code, answer["error"]["code"]) == (404, "TenantNotFound")
    assert call("POST", "tenants/not-a-guid/devices/sync", {"serialNumbers": ["CU000001"]})[0] == 400


# --- the watcher ----------------------------------------------------------------------------------


def test_the_watcher_resends_the_step_of_a_job_whose_message_was_lost(devices_env, graph, clock):
    """The follower's repair (``repair_imports``: the import jobs', then the device-sync jobs') sends
    an overdue step again."""
    from shared.assembly import build_service
    from shared.common.settings import Settings
    from shared.devicesync import parse_device_sync

    svc = build_service(Settings.from_env(devices_env), clock)
    request = parse_device_sync(json.dumps({"serialNumbers": serials(2)}).encode(), "application/json",
                                max_devices=10, default_skip_minutes=0)
    svc.device_sync().start(request, "test")
    assert drain(devices_env, "DEVICE_SYNC_QUEUE", lambda message: None) == 1  # the first step's message, lost
    svc.watch()
    assert drain(devices_env, "DEVICE_SYNC_QUEUE", lambda message: None) == 0  # not overdue yet
    clock.advance(180)
    svc.watch()
    assert drain(devices_env, "DEVICE_SYNC_QUEUE", svc.device_sync().run_step) == 1


def test_a_step_waiting_for_the_budget_is_delivered_before_the_budget_frees_up_and_takes_it_on_time(
        devices_env, graph, monkeypatch):
    from datetime import UTC, datetime

    configure(graph, deviceWriteLimit={"limit": 40, "windowSeconds": 5})
    for name, value in {"DEVICE_WRITE_LIMIT": "40", "WRITE_LIMIT_WINDOW_SECONDS": "5"}.items():
        monkeypatch.setenv(name, value)
    runtime.reload()
    code, headers, started = call("POST", "devices/sync", {"serialNumbers": serials(DEVICES), "skipSyncedWithinMinutes": 0})
    assert code == 202
    drain(devices_env, "DEVICE_SYNC_QUEUE", handlers.run_device_sync_step)  # the first step: 38 sent, then a wait
    due = runtime.service().device_sync().store.job(started["jobId"]).step_at
    assert (due - datetime.now(UTC)).total_seconds() > 3
    while not peek(devices_env):
        time.sleep(0.05)
    assert (due - datetime.now(UTC)).total_seconds() >= 0.9  # visible at least a second before it is due
    code, final = run_steps(devices_env, headers["Location"])
    assert code == 200 and final["counts"]["queued"] == DEVICES
    assert graph.stats()["writeLimits"]["devices"]["throttled"] == 0
