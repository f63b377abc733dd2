"""Sync and wait (the asynchronous 202 pattern) and outcome notifications."""
from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import azure.functions as func
import pytest
import requests
from conftest import FUNCTIONS, advance, call, configure, sync_posts

from emulators.azurite import free_port
from shared.common.model import Outcome, SyncRequest

AUTOPILOT = SyncRequest("autopilot", caller="test")
CONNECTED = "6a1c2f8e-2b1d-4d7e-9a55-3c1f0e6b9d01"


def poll(location: str) -> tuple[int, dict[str, str], dict]:
    """GET a Location the way Power Automate does: no function key, just the URL."""
    parts = urlsplit(location)
    request = func.HttpRequest(
        "GET", location, headers={}, params={k: v[-1] for k, v in parse_qs(parts.query).items()},
        route_params={"operationId": parts.path.rsplit("/", 1)[-1]}, body=b"",
    )
    response = FUNCTIONS["sync_operation"](request)
    return response.status_code, dict(response.headers), json.loads(response.get_body())


# --- sync and wait over HTTP ------------------------------------------------------------------


def test_sync_and_wait_answers_202_with_an_absolute_location_and_retry_after(app_env, graph):
    status, headers, body = call("POST", "sync/autopilot?wait=true")
    assert status == 202 and body["outcome"] == "started"
    assert headers["Location"].startswith("http://localhost/api/operations/") and "token=" in headers["Location"]
    assert headers["Retry-After"] == "30"


@pytest.mark.parametrize(
    "headers,app_settings,expected",
    [
        ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "sync.contoso.com"}, {"TRUSTED_FORWARDED_HOSTS": "sync.contoso.com"},
         "https://sync.contoso.com/api/operations/"),
        ({}, {"WEBSITE_HOSTNAME": "func-abc.azurewebsites.net"}, "https://func-abc.azurewebsites.net/api/operations/"),
    ],
    ids=["behind a proxy", "on Azure"],
)
def test_the_location_is_the_public_https_url(app_env, graph, monkeypatch, headers, app_settings, expected):
    for name, value in app_settings.items():
        monkeypatch.setenv(name, value)
    status, answer, body = call("POST", "sync/autopilot?wait=true", headers=headers)
    assert status == 202, body
    assert answer["Location"].startswith(expected)


def test_polling_answers_202_while_graph_runs_the_sync_then_200_with_the_result(app_env, graph):
    _, headers, _ = call("POST", "sync/autopilot?wait=true")
    first = poll(headers["Location"])
    assert first[0] == 202 and first[2]["status"] == "running" and first[1]["Location"] == headers["Location"]
    second = poll(headers["Location"])
    assert second[0] == 202
    requests.post(f"{graph.base_url}/_emulator/clock", json={"advanceSeconds": 31}, timeout=5)  # the sync finishes
    final = poll(headers["Location"])
    assert final[0] == 200 and final[2]["status"] == "completed" and final[2]["syncStatus"] == "completed"
    assert final[2]["lastSyncDateTime"] > final[2]["startedAt"]
    assert poll(headers["Location"])[2] == final[2]  # settled: later polls answer the same


def test_a_sync_graph_reports_failed_finishes_failed(app_env, graph):
    configure(graph, syncOutcome="failed")
    _, headers, _ = call("POST", "sync/autopilot?wait=true")
    requests.post(f"{graph.base_url}/_emulator/clock", json={"advanceSeconds": 31}, timeout=5)
    status, _, body = poll(headers["Location"])
    assert status == 200 and body["status"] == "failed"


def test_wait_on_a_running_sync_follows_it(app_env, graph):
    configure(graph, lastManualSyncTriggerDateTime=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    status, headers, body = call("POST", "sync/autopilot?wait=true")
    assert status == 202 and body["outcome"] == "inProgress" and "Location" in headers


def test_wait_inside_the_cooldown_still_answers_429(app_env, graph):
    call("POST", "sync/autopilot")
    status, headers, _ = call("POST", "sync/autopilot?wait=true")
    assert status == 429 and "Location" not in headers


def test_wait_on_a_fan_out_is_refused(app_env, graph):
    status, _, body = call("POST", "sync/exchange?wait=true")
    assert status == 400 and body["error"]["code"] == "WaitNeedsOneUnit"
    assert sync_posts(graph) == []


def test_wait_on_one_exchange_connector_follows_it(app_env, graph):
    status, headers, _ = call("POST", f"sync/exchange/{CONNECTED}?wait=true")
    assert status == 202
    assert poll(headers["Location"])[2]["status"] == "completed"  # the emulator updates lastSyncDateTime at once


@pytest.mark.parametrize("mangle", ["wrong token", "no token", "unknown id", "not a guid"])
def test_a_poll_without_the_right_token_and_id_is_404(app_env, graph, mangle):
    _, headers, _ = call("POST", "sync/autopilot?wait=true")
    location = headers["Location"]
    op_id = urlsplit(location).path.rsplit("/", 1)[-1]
    bad = {
        "wrong token": location.split("token=")[0] + "token=guess",
        "no token": location.split("?")[0],
        "unknown id": location.replace(op_id, "11111111-2222-3333-4444-555555555555"),
        "not a guid": location.replace(op_id, "..%2F..%2Fstate"),
    }[mangle]
    status, _, body = poll(bad)
    assert status == 404 and body["error"]["code"] == "OperationNotFound"


def test_an_invalid_wait_flag_is_400(app_env, graph):
    status, _, body = call("POST", "sync/autopilot?wait=maybe")
    assert status == 400 and body["error"]["code"] == "InvalidQuery"


# --- the operation's time limit (service level, test clock) -----------------------------------


def test_a_wait_longer_than_the_limit_ends_timed_out(make_service, graph, clock):
    service = make_service(SYNC_WAIT_TIMEOUT_SECONDS="60")
    configure(graph, syncDurationSeconds=3600)
    result, operation, token = service.sync_and_follow(AUTOPILOT)
    assert result.outcome is Outcome.STARTED and operation is not None
    assert service.poll(operation.id, token).status == "running"
    clock.advance(61)
    final = service.poll(operation.id, token)
    assert final.status == "timedOut" and "60 s" in final.message
    assert service.poll(operation.id, token).status == "timedOut"


def test_a_graph_blip_while_polling_keeps_the_operation_running(make_service, graph, clock):
    service = make_service()
    _, operation, token = service.sync_and_follow(AUTOPILOT)
    requests.post(f"{graph.base_url}/_emulator/faults", json=[{"method": "GET", "status": 503, "times": 10}], timeout=5)
    current = service.poll(operation.id, token)
    assert current.status == "running" and "Graph status unavailable" in current.message


# --- notifications --------------------------------------------------------------------------


def test_a_started_sync_is_notified_with_the_documented_fields(make_service, graph, sink):
    service = make_service(NOTIFY_URL=sink.url)
    service.sync(AUTOPILOT)
    [note] = sink.wait_for(1)
    assert note["event"] == "syncStarted" and note["target"] == "autopilot" and note["outcome"] == "started"
    assert note["schemaVersion"] == 1 and note["nextAllowedAt"] and note["graphRequestId"]


def test_a_failed_sync_is_notified(make_service, graph, identity_server, sink):
    identity_server.configure(roles=[])
    make_service(NOTIFY_URL=sink.url).sync(AUTOPILOT)
    [note] = sink.wait_for(1)
    assert note["event"] == "syncFailed" and "DeviceManagementServiceConfig" in note["message"]


def test_a_refusal_is_not_notified(make_service, graph, sink):
    service = make_service(NOTIFY_URL=sink.url)
    service.sync(AUTOPILOT)
    service.sync(AUTOPILOT)
    time.sleep(0.3)
    assert [n["event"] for n in sink.wait_for(1)] == ["syncStarted"]


def test_the_watcher_notifies_completion_once(make_service, graph, clock, sink):
    service = make_service(NOTIFY_URL=sink.url)
    service.sync(AUTOPILOT)
    assert service.watch() == 0  # still running
    advance(clock, graph, 31)
    assert service.watch() == 1
    assert service.watch() == 0  # reported once
    notes = sink.wait_for(2)
    assert [n["event"] for n in notes] == ["syncStarted", "syncCompleted"]
    assert notes[1]["lastSyncDateTime"] and notes[1]["syncStatus"] == "completed"


def test_a_poll_and_the_watcher_together_notify_completion_once(make_service, graph, clock, sink):
    service = make_service(NOTIFY_URL=sink.url)
    _, operation, token = service.sync_and_follow(AUTOPILOT)
    advance(clock, graph, 31)
    assert service.poll(operation.id, token).status == "completed"
    assert service.watch() == 0
    time.sleep(0.3)
    assert [n["event"] for n in sink.wait_for(2)] == ["syncStarted", "syncCompleted"]


def test_the_adaptive_card_variant_is_a_teams_message(make_service, graph, sink):
    make_service(NOTIFY_URL=sink.url, NOTIFY_FORMAT="adaptiveCard").sync(AUTOPILOT)
    [message] = sink.wait_for(1)
    assert message["type"] == "message"
    attachment = message["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["body"][0]["text"] == "Intune sync started"
    assert {"title": "Target", "value": "autopilot"} in card["body"][2]["facts"]


def test_a_failing_endpoint_is_retried_a_bounded_number_of_times(make_service, graph, sink):
    sink.fail_first = 2
    make_service(NOTIFY_URL=sink.url).sync(AUTOPILOT)
    assert len(sink.wait_for(1)) == 1 and sink.attempts == 3


def test_an_endpoint_that_is_down_neither_blocks_nor_fails_the_sync(make_service, graph, caplog):
    dead = f"http://127.0.0.1:{free_port()}/notify?sig=secret-signature"
    service = make_service(NOTIFY_URL=dead)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="shared.clients.notify"):
        result = service.sync(AUTOPILOT)[0]
        assert result.outcome is Outcome.STARTED
        assert time.monotonic() - started < 2  # delivery happens beside the sync
        service.notifier.flush(timeout=30)
    warnings = [r.getMessage() for r in caplog.records]
    assert any("failed after retries" in w for w in warnings)
    assert not any("secret-signature" in w for w in warnings)  # the URL's signature stays out of logs


def test_a_notify_url_that_is_not_https_is_refused_without_echoing_it():
    from shared.common.settings import Settings, SettingsError

    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"AzureWebJobsStorage": "UseDevelopmentStorage=true", "NOTIFY_URL": "http://example.com/x?sig=abc"})
    assert "NOTIFY_URL" in caught.value.problems and "sig=abc" not in str(caught.value)


def test_the_completion_flag_is_set_when_a_sync_starts(make_service, graph, clock):
    service = make_service()
    service.sync(AUTOPILOT)
    assert service.store.read("autopilot").completion_pending is True
    assert timedelta(0) <= clock.now - service.store.read("autopilot").last_started_at < timedelta(seconds=1)
