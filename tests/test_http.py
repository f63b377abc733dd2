"""The HTTP triggers, called the documented way (``app.get_functions()`` once per process), with
settings from the environment as in Azure, against Azurite and the Graph emulator."""
from __future__ import annotations

import json
import logging

import pytest
import requests
from azure.functions.timer import TimerRequest
from conftest import AUTOPILOT_CLOSED_SECONDS, FUNCTIONS, call, graph_calls, logged_events, sync_posts, unreachable_storage

from shared.clients.graph import PERMISSION

CONNECTED = "6a1c2f8e-2b1d-4d7e-9a55-3c1f0e6b9d01"
RESULT_KEYS = {"target", "outcome", "nextAllowedAt", "lastAttemptAt", "graphRequestId", "clientRequestId", "message", "errorCode", "scheduledAt"}


def test_a_granted_sync_answers_202_with_the_result_shape(app_env, graph):
    status, _, body = call("POST", "sync/autopilot")
    assert status == 202
    assert set(body) == RESULT_KEYS and body["outcome"] == "started" and body["target"] == "autopilot"
    assert body["nextAllowedAt"].endswith("Z") and body["graphRequestId"] and body["clientRequestId"]


def test_a_sync_inside_the_cooldown_answers_429_with_retry_after(app_env, graph):
    call("POST", "sync/autopilot")
    status, headers, body = call("POST", "sync/autopilot")
    assert status == 429 and body["outcome"] == "cooldown"
    assert AUTOPILOT_CLOSED_SECONDS - 10 <= int(headers["Retry-After"]) <= AUTOPILOT_CLOSED_SECONDS
    assert len(sync_posts(graph)) == 1


def test_a_sync_graph_says_is_running_answers_409(app_env, graph):
    requests.post(f"{graph.base_url}/_emulator/faults", json=[{"method": "POST", "pathContains": "/sync", "status": 409}], timeout=5)
    status, headers, body = call("POST", "sync/autopilot")
    assert status == 409 and body["outcome"] == "inProgress" and int(headers["Retry-After"]) > 0


def test_exchange_answers_200_with_a_result_per_connector(app_env, graph):
    status, _, body = call("POST", "sync/exchange", {"syncType": "fullSync"})
    assert status == 200
    assert sorted(r["outcome"] for r in body["results"]) == ["skipped", "started"]
    assert all(set(r) == RESULT_KEYS for r in body["results"])


def test_one_exchange_connector_answers_202(app_env, graph):
    status, _, body = call("POST", f"sync/exchange/{CONNECTED}", {"syncType": "deltaSync"})
    assert status == 202 and body["target"] == f"exchange/{CONNECTED}"


def test_an_unknown_connector_answers_404(app_env, graph):
    status, _, body = call("POST", "sync/exchange/11111111-2222-3333-4444-555555555555")
    assert status == 404 and body["error"]["code"] == "ItemNotFound"
    assert sync_posts(graph) == []


def test_status_answers_local_state_next_to_graphs(app_env, graph):
    call("POST", "sync/autopilot")
    status, _, body = call("GET", "sync/status")
    assert status == 200
    autopilot = next(t for t in body["targets"] if t["target"] == "autopilot")
    assert autopilot["units"][0]["nextAllowedAt"] and autopilot["graph"][0]["syncStatus"] == "inProgress"
    assert {t["target"] for t in body["targets"]} == {"autopilot", "exchange"}


def test_health_says_the_settings_are_valid_and_reveals_no_secret(app_env):
    status, _, body = call("GET", "health")
    assert status == 200 and body["settingsValid"] is True
    assert "AccountKey" not in json.dumps(body) and app_env["AzureWebJobsStorage"] not in json.dumps(body)


def test_health_names_invalid_settings_with_503(app_env, monkeypatch):
    monkeypatch.setenv("AUTOPILOT_COOLDOWN_SECONDS", "60")
    status, _, body = call("GET", "health")
    assert status == 503 and "AUTOPILOT_COOLDOWN_SECONDS" in body["problems"]


def test_sync_routes_answer_503_while_settings_are_invalid(app_env, graph, monkeypatch):
    monkeypatch.setenv("SYNC_TARGETS", "nothing")
    status, _, body = call("POST", "sync/autopilot")
    assert status == 503 and body["error"]["code"] == "SettingsInvalid" and "SYNC_TARGETS" in body["error"]["message"]
    assert graph_calls(graph) == []


def test_graph_403_answers_502_naming_the_permission(app_env, graph, identity_server):
    identity_server.configure(roles=[])
    status, _, body = call("POST", "sync/autopilot")
    assert status == 502 and body["outcome"] == "failed" and body["errorCode"] == "GraphAccessDenied"
    assert PERMISSION in body["message"]


def test_graph_unavailable_answers_503(app_env, graph):
    requests.post(f"{graph.base_url}/_emulator/faults", json=[{"status": 503, "times": 10}], timeout=5)
    status, _, body = call("POST", "sync/autopilot")
    assert status == 503 and body["errorCode"] == "GraphUnavailable"


def test_state_store_down_answers_503_without_calling_graph(app_env, graph, monkeypatch):
    monkeypatch.setenv("AzureWebJobsStorage", unreachable_storage())
    status, _, body = call("POST", "sync/autopilot")
    assert status == 503 and body["errorCode"] == "StateStoreUnavailable"
    assert graph_calls(graph) == []


def test_the_timer_syncs_every_enabled_target(app_env, graph):
    FUNCTIONS["sync_timer"](TimerRequest(past_due=False))
    paths = [p["path"] for p in sync_posts(graph)]
    assert paths == [
        "/beta/deviceManagement/windowsAutopilotSettings/sync",
        f"/v1.0/deviceManagement/exchangeConnectors/{CONNECTED}/sync",
    ]


def test_a_timer_tick_inside_the_cooldown_becomes_the_pending_sync(app_env, graph, caplog):
    call("POST", "sync/autopilot")
    with caplog.at_level(logging.INFO, logger="intune_sync.events"):
        FUNCTIONS["sync_timer"](TimerRequest(past_due=True))
    scheduled = [r for r in logged_events(caplog, "sync") if r["unit"] == "autopilot" and r["trigger"] == "timer"]
    assert [(r["outcome"], r["_level"]) for r in scheduled] == [("scheduled", "INFO")]  # a normal outcome, not an error
    assert len([p for p in sync_posts(graph) if "Autopilot" in p["path"]]) == 1


BAD_INPUT = [
    ("malformed JSON", "POST", "sync/exchange", "{not json", {"Content-Type": "application/json"}, 400, "InvalidJson"),
    ("array body", "POST", "sync/exchange", [1, 2], None, 400, "InvalidBody"),
    ("syncType of the wrong type", "POST", "sync/exchange", {"syncType": 5}, None, 400, "InvalidSyncType"),
    ("unknown syncType", "POST", "sync/exchange", {"syncType": "quickSync"}, None, 400, "InvalidSyncType"),
    ("unknown field", "POST", "sync/exchange", {"syncType": "fullSync", "x": 1}, None, 400, "InvalidBody"),
    ("a body where none is taken", "POST", "sync/autopilot", {"syncType": "fullSync"}, None, 400, "InvalidBody"),
    ("non-GUID connector id", "POST", "sync/exchange/abc", None, None, 400, "InvalidItemId"),
    ("path-like connector id", "POST", "sync/exchange/..%2F..%2Fusers", None, None, 400, "InvalidItemId"),
    ("decoded dot segments", "POST", "sync/exchange/..", None, None, 400, "InvalidItemId"),
    ("GUID in braces", "POST", "sync/exchange/{6a1c2f8e-2b1d-4d7e-9a55-3c1f0e6b9d01}", None, None, 400, "InvalidItemId"),
    ("item on autopilot", "POST", f"sync/autopilot/{CONNECTED}", None, None, 400, "InvalidItemId"),
    ("oversize body", "POST", "sync/exchange", "x" * 5000, {"Content-Type": "application/json"}, 413, "PayloadTooLarge"),
    ("1,100 nested arrays", "POST", "sync/exchange", "[" * 1100, {"Content-Type": "application/json"}, 400, "InvalidJson"),
    ("1,200 nested objects and arrays", "POST", "sync/exchange", '{"":[' * 600, {"Content-Type": "application/json"},
     400, "InvalidJson"),
    ("33 nested arrays", "POST", "sync/exchange", "[" * 33 + "]" * 33, {"Content-Type": "application/json"}, 400, "InvalidJson"),
    ("32 nested arrays: valid JSON, not an object", "POST", "sync/exchange", "[" * 32 + "]" * 32,
     {"Content-Type": "application/json"}, 400, "InvalidBody"),
    ("brackets inside a string do not nest", "POST", "sync/exchange", {"syncType": "[" * 1100 + '\\"{'}, None, 400,
     "InvalidSyncType"),
    ("text body", "POST", "sync/exchange", "syncType=fullSync", {"Content-Type": "text/plain"}, 415, "UnsupportedMediaType"),
    ("GET on a sync route", "GET", "sync/autopilot", None, None, 405, "MethodNotAllowed"),
    ("DELETE on status", "DELETE", "sync/status", None, None, 405, "MethodNotAllowed"),
    ("POST on health", "POST", "health", None, None, 405, "MethodNotAllowed"),
    ("unknown target", "POST", "sync/users", None, None, 404, "UnknownTarget"),
]


@pytest.mark.parametrize("why,method,route,body,headers,status,code", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_gets_a_json_4xx_and_no_graph_call(app_env, graph, why, method, route, body, headers, status, code):
    got, answer_headers, payload = call(method, route, body, headers)
    assert (got, payload["error"]["code"]) == (status, code), payload
    assert payload["error"]["message"]
    if status == 405:
        assert answer_headers["Allow"]
    assert graph_calls(graph) == []


def test_exchange_with_table_storage_down_answers_503_without_calling_graph(app_env, graph, monkeypatch):
    monkeypatch.setenv("AzureWebJobsStorage", unreachable_storage())
    status, _, body = call("POST", "sync/exchange")
    assert status == 503 and body["errorCode"] == "StateStoreUnavailable"
    assert graph_calls(graph) == []


def test_health_says_the_exchange_connector_is_out_of_support_when_exchange_is_enabled(app_env):
    _, _, body = call("GET", "health")
    [notice] = body["notices"]
    assert notice["code"] == "ExchangeConnectorOutOfSupport" and notice["target"] == "exchange"
    assert "2024-02-19" in notice["message"]


def test_health_has_no_notice_when_exchange_is_not_enabled(app_env, monkeypatch):
    monkeypatch.setenv("SYNC_TARGETS", "autopilot")
    _, _, body = call("GET", "health")
    assert body["notices"] == []
