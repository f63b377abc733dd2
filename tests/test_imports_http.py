"""Autopilot import jobs over HTTP: POST /api/autopilot/devices refuses bad input before anything
reaches Graph, answers 202 with a Location that polls without the key, and, through real app
hosts (queue triggers on Azurite), three callers' jobs share one sync and end with profiles."""
from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import pytest
import requests
from conftest import HARDWARE_HASH, autopilot_devices, call, configure, graph_calls, import_stats, sync_posts

from shared.onboarding.devices import MAX_DEVICES

CSV_HEADER = "Device Serial Number,Windows Product ID,Hardware Hash"
CSV = "text/csv"


def csv_body(*lines: str, header: str = CSV_HEADER) -> str:
    return "\r\n".join([header, *lines]) + "\r\n"


def csv_row(serial: str, hash_: str = HARDWARE_HASH) -> str:
    return f"{serial},,{hash_}"


BAD_REQUESTS = {
    "bad base64": (csv_body(csv_row("A1"), csv_row("A2", "not*base64")), CSV, 400, [(2, "hardwareIdentifier")]),
    "duplicate serial": (csv_body(csv_row("A1"), csv_row("a1")), CSV, 400, [(2, "serialNumber")]),
    "missing column": (csv_body("A1,,", header="Device Serial Number,Windows Product ID"), CSV, 400, []),
    "too many rows": (csv_body(*(csv_row(f"S{i}") for i in range(MAX_DEVICES + 1))), CSV, 400, []),
    "wrong content type": (csv_body(csv_row("A1")), "text/plain", 415, []),
    "no content type": (csv_body(csv_row("A1")), "", 415, []),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_import_request_lists_each_bad_row_and_calls_graph_nothing(app_env, graph, case):
    body, content_type, status, rows = BAD_REQUESTS[case]
    code, _, answer = call("POST", "autopilot/devices", body, {"Content-Type": content_type} if content_type else {})
    assert code == status and answer["error"]["message"]
    assert [(r["row"], r["field"]) for r in answer["error"].get("rows", [])] == rows
    assert graph_calls(graph) == []


def test_the_import_answers_202_with_the_devices_and_an_absolute_location(app_env, graph):
    code, headers, answer = call("POST", "autopilot/devices", {"devices": autopilot_devices(2)})
    assert code == 202 and answer["status"] == "running"
    assert [(d["serialNumber"], d["state"]) for d in answer["devices"]] == [("SN0001", "importing"), ("SN0002", "importing")]
    location = urlsplit(headers["Location"])
    assert (location.scheme, location.path) == ("http", f"/api/autopilot/imports/{answer['importId']}")
    assert location.query.startswith("token=") and int(headers["Retry-After"]) > 0


def test_start_only_answers_201_so_that_a_flow_goes_on(app_env, graph):
    code, headers, answer = call("POST", "autopilot/imports", {"devices": autopilot_devices(1)})
    assert code == 201 and answer["statusUrl"] == headers["Location"]


def test_the_import_status_answers_202_while_running_and_404_for_a_wrong_token(app_env, graph):
    _, headers, started = call("POST", "autopilot/devices", {"devices": autopilot_devices(1)})
    route = headers["Location"].split("/api/", 1)[1]
    code, again, status = call("GET", route)
    assert code == 202 and status["counts"]["importing"] == 1 and again["Location"] == headers["Location"]
    code, _, answer = call("GET", f"autopilot/imports/{started['importId']}?token=wrong")
    assert (code, answer["error"]["code"]) == (404, "ImportNotFound")
    assert call("GET", "autopilot/imports/not-a-guid?token=x")[0] == 404


def test_the_import_route_is_refused_when_the_autopilot_target_is_off(app_env, graph, monkeypatch):
    from shared.runtime import process as runtime

    monkeypatch.setenv("SYNC_TARGETS", "exchange")
    runtime.reload()
    code, _, answer = call("POST", "autopilot/devices", {"devices": autopilot_devices(1)})
    assert (code, answer["error"]["code"]) == (404, "UnknownTarget")
    assert graph_calls(graph) == []


def test_a_storage_outage_at_the_start_is_a_503_and_calls_graph_nothing(app_env, graph, monkeypatch):
    from conftest import unreachable_storage

    from shared.runtime import process as runtime

    monkeypatch.setenv("AzureWebJobsStorage", unreachable_storage())
    runtime.reload()
    code, _, answer = call("POST", "autopilot/devices", {"devices": autopilot_devices(1)})
    assert (code, answer["error"]["code"]) == (503, "StateStoreUnavailable")
    assert graph_calls(graph) == []


# --- through real app hosts: queue triggers, real time ----------------------------------------


def import_store(env):
    from shared.clients.identity import make_credential
    from shared.clients.storage import table_client
    from shared.common.settings import Settings
    from shared.onboarding.imports import ImportStore

    settings = Settings.from_env(env)
    return ImportStore(table_client(settings.storage, settings.state_table, make_credential))

FAST = {"IMPORT_POLL_SECONDS": "1", "IMPORT_SYNC_DELAY_SECONDS": "3", "SYNC_WATCH_SCHEDULE": "*/5 * * * * *"}


def follow(location: str, timeout: float = 120) -> tuple[int, dict]:
    """Poll like Power Automate's async pattern: follow Location, honour Retry-After, no key."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = requests.get(location, timeout=10)
        if answer.status_code != 202:
            return answer.status_code, answer.json()
        location = answer.headers["Location"]
        time.sleep(min(float(answer.headers["Retry-After"]), 1.0))
    raise AssertionError("the import did not finish in time")


def test_three_callers_in_one_window_get_one_sync_every_profile_and_one_notification_each(start_app_hosts, env, graph, sink):
    configure(graph, importProcessingSeconds=2, syncDurationSeconds=1, profileAssignmentSeconds=2)
    hosts = start_app_hosts(2, {**env, **FAST, "NOTIFY_URL": sink.url}, function_key="key")
    locations = []
    for n in range(3):
        devices = autopilot_devices(25, prefix=f"C{n}-")
        answer = requests.post(f"{hosts[n % 2]}/api/autopilot/devices", json={"devices": devices},
                               headers={"x-functions-key": "key", "x-ms-workflow-name": f"flow{n}"}, timeout=30)
        assert answer.status_code == 202, answer.text
        locations.append(answer.headers["Location"])
    finals = [follow(location) for location in locations]
    assert [code for code, _ in finals] == [200, 200, 200]
    assert all(job["counts"]["profileAssigned"] == 25 for _, job in finals)
    assert len(sync_posts(graph)) == 1
    assert import_stats(graph)["records"] == [] and len(import_stats(graph)["deleted"]) == 75
    notes = [n for n in sink.wait_for(3) if n.get("event") == "importCompleted"]
    time.sleep(2)  # a second notification for a job would arrive by now
    assert sorted(n["import"]["importId"] for n in sink.received if n.get("event") == "importCompleted") == sorted(
        job["importId"] for _, job in finals)
    assert len(notes) == 3


def test_a_restart_of_every_host_while_jobs_wait_loses_nothing(start_app_hosts, env, graph):
    configure(graph, importProcessingSeconds=2, syncDurationSeconds=1, profileAssignmentSeconds=2)
    settings = {**env, **FAST, "IMPORT_SYNC_DELAY_SECONDS": "6", "IMPORT_POLL_SECONDS": "3"}
    [host] = start_app_hosts(1, settings, function_key="key")
    answer = requests.post(f"{host}/api/autopilot/devices", json={"devices": autopilot_devices(5)},
                           headers={"x-functions-key": "key"}, timeout=30)
    location = answer.headers["Location"]
    store = import_store(env)
    deadline = time.monotonic() + 60
    # Between two steps (a host killed inside a step leaves its claim for 6 minutes: that case is
    # tests/test_imports.py's, on a test clock).
    while requests.get(location, timeout=10).json()["counts"]["waitingForSync"] == 0 or \
            store.job(answer.json()["importId"]).step_owner:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    start_app_hosts.stop_all()  # every host gone while the job waits for its sync
    [host] = start_app_hosts(1, settings, function_key="key")
    moved = location.replace(urlsplit(location).netloc, urlsplit(host).netloc)
    code, job = follow(moved)
    assert code == 200 and job["counts"]["profileAssigned"] == 5
    assert len(sync_posts(graph)) == 1 and len(graph_calls(graph, "POST", "/import")) == 1

def test_a_body_of_many_non_objects_is_refused_with_a_bounded_answer(app_env, graph):
    """{"devices": [0, 0, ...]}: every element is listed in the 400 before the device count is
    checked; a 1 MB body answers tens of MB (a 4 MB one ~140 MB, built in memory)."""
    body = b'{"devices":[' + b",".join([b"0"] * 500_000) + b"]}"
    code, _, answer = call("POST", "autopilot/devices", body, {"Content-Type": "application/json"})
    size = len(json.dumps(answer))
    assert code == 400
    assert size < 100_000, f"a {len(body)} byte body answered {size} bytes ({len(answer['error']['rows'])} rows)"
