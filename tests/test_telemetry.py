"""Telemetry: each attempt, refusal, deferred firing, watcher finding, onboarding step and timer
tick is logged once with named fields (shared/common/telemetry.py), and no record carries a secret.

Against Azurite and the Graph and identity emulators; the records are read back from their
messages as Application Insights' KQL reads them.
"""
from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import (
    FUNCTIONS,
    PAST_WINDOW,
    advance,
    autopilot_devices,
    call,
    faults,
    fire_due_sync,
    logged_events,
    run_imports,
    start_import,
)

from shared.common import telemetry
from shared.common.model import SyncRequest, Trigger

AUTOPILOT = SyncRequest("autopilot", caller="tester")


@pytest.fixture(autouse=True)
def capture(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=telemetry.LOGGER)
    return caplog


# --- the record ---------------------------------------------------------------------------------


def test_a_record_is_the_prefix_and_one_json_object_kql_can_parse():
    record = telemetry.fields_of("sync", target="autopilot", outcome="started", httpStatus=204)
    assert record == {"event": "sync", "target": "autopilot", "outcome": "started", "httpStatus": 204}
    assert len(telemetry.PREFIX) == 11  # the docs' and the workbook's substring(message, 11)


def test_an_unknown_field_or_event_is_a_bug_not_a_record():
    with pytest.raises(ValueError, match="unknown telemetry field"):
        telemetry.fields_of("sync", accessToken="x")
    with pytest.raises(ValueError, match="unknown telemetry event"):
        telemetry.fields_of("debug")


@pytest.mark.parametrize("text, secret", [
    ("poll https://app/api/operations/1?token=s3cr3tvalet&x=1", "s3cr3tvalet"),
    ("sent to https://prod.logic.azure.com/workflows/1/triggers?api-version=1&sig=S1GNATURE", "S1GNATURE"),
    ("GET /api/sync/status?code=FUNCTIONKEY==", "FUNCTIONKEY"),
    ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
    ("token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl", "eyJzdWIiOiJ4In0"),
    ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=S2V5S2V5==;", "S2V5S2V5"),
])
def test_every_string_is_scrubbed_of_credentials(text, secret):
    assert secret not in json.dumps(telemetry.fields_of("sync", message=text, caller=text))


def test_none_and_empty_fields_are_left_out_and_long_text_is_cut():
    record = telemetry.fields_of("sync", tenant=None, caller="", message="x" * 5000)
    assert record == {"event": "sync", "message": "x" * telemetry.MAX_TEXT}


# --- each kind of event, through the real service ------------------------------------------------


def test_a_granted_sync_is_one_record_with_graphs_ids_status_and_duration(service, capture):
    service.sync(AUTOPILOT)
    [record] = logged_events(capture)
    assert record["event"] == "sync" and record["_level"] == "INFO"
    assert {k: record[k] for k in ("trigger", "caller", "target", "unit", "outcome", "attempted", "httpStatus")} == {
        "trigger": "http", "caller": "tester", "target": "autopilot", "unit": "autopilot", "outcome": "started",
        "attempted": True, "httpStatus": 204}
    assert record["graphRequestId"] and record["clientRequestId"] and record["durationMs"] >= 0
    assert record["nextAllowedAt"].endswith("Z") and "tenant" not in record


def test_a_refusal_inside_the_cooldown_is_one_record_and_no_attempt(service, capture):
    service.sync(AUTOPILOT)
    capture.clear()
    service.sync(AUTOPILOT)
    [record] = logged_events(capture)
    assert (record["event"], record["outcome"], record["attempted"]) == ("sync", "cooldown", False)
    assert "httpStatus" not in record and "durationMs" not in record and record["nextAllowedAt"]


def test_a_failed_sync_is_an_error_record_naming_graphs_status_code_and_request_id(service, graph, capture):
    faults(graph, {"method": "POST", "pathContains": "/sync", "status": 403, "times": 1})
    service.sync(AUTOPILOT)
    [record] = logged_events(capture)
    assert record["_level"] == "ERROR" and record["outcome"] == "failed" and record["attempted"] is True
    assert record["httpStatus"] == 403 and record["errorCode"] and record["graphRequestId"]
    assert "DeviceManagementServiceConfig.ReadWrite.All" in record["message"]


def test_a_deferred_firing_is_one_deferred_record_and_its_sync_record(service, graph, clock, capture):
    service.sync(AUTOPILOT)
    service.sync(SyncRequest("autopilot", caller="flow:onboard", defer=True))
    assert [r["outcome"] for r in logged_events(capture)] == ["started", "scheduled"]
    assert logged_events(capture)[1]["scheduledAt"]
    capture.clear()
    advance(clock, graph, PAST_WINDOW)
    fire_due_sync(service)
    records = logged_events(capture)
    assert [(r["event"], r["outcome"]) for r in records] == [("sync", "started"), ("deferred", "fired")]
    assert records[0]["trigger"] == "deferred" and "flow:onboard" in records[0]["caller"]
    assert records[1]["unit"] == "autopilot" and records[1]["trigger"] == "deferred"


def test_a_stale_deferred_message_is_one_record_saying_so(service, graph, clock, capture):
    service.sync(AUTOPILOT)
    service.sync(SyncRequest("autopilot", defer=True))
    advance(clock, graph, PAST_WINDOW)
    state = service.store.read("autopilot")
    fire_due_sync(service)
    capture.clear()
    from shared.engine.deferred import PendingFire

    service.fire(PendingFire("autopilot", "autopilot", None, state.pending_id or "", state.pending_at or clock(), 0))
    assert [(r["event"], r["outcome"]) for r in logged_events(capture)] == [("deferred", "stale")]


def test_a_watcher_finding_names_the_unit_and_what_graph_reports(make_service, graph, clock, sink, capture):
    service = make_service(NOTIFY_URL=sink.url)
    service.sync(AUTOPILOT)
    advance(clock, graph, 31)
    capture.clear()
    service.watch()
    [record] = logged_events(capture, "watch")
    assert (record["unit"], record["outcome"]) == ("autopilot", "syncCompleted")


def test_an_import_job_logs_its_start_each_step_and_its_end_with_counts(service, graph, clock, capture):
    import_id = start_import(service, autopilot_devices(3), caller="flow:onboarding")
    run_imports(service, clock, graph, import_id)
    records = logged_events(capture, "import")
    assert records[0] == {"event": "import", "trigger": "http", "caller": "flow:onboarding", "target": "autopilot",
                          "importId": import_id, "step": 0, "devices": 3, "outcome": "started", "_level": "INFO"}
    assert {r["outcome"] for r in records[1:-1]} == {"stepped"}
    assert [r["step"] for r in records[1:]] == list(range(1, len(records)))  # once per step
    assert records[-1]["outcome"] == "completed" and records[-1]["counts"]["profileAssigned"] == 3
    # The one Autopilot sync the job asked for is a sync record too, with its trigger.
    assert [r["outcome"] for r in logged_events(capture, "sync") if r["trigger"] == "import"] == ["scheduled"]


# --- through the app's triggers --------------------------------------------------------------------


def test_a_timer_tick_logs_each_units_sync_and_health_and_one_tally(app_env, graph, capture):
    FUNCTIONS["sync_timer"](_timer())
    kinds = [r["event"] for r in logged_events(capture)]
    assert kinds.count("timer") == 1 and kinds[-1] == "timer"
    syncs = logged_events(capture, "sync")
    assert {r["trigger"] for r in syncs} == {"timer"} and {r["target"] for r in syncs} == {"autopilot", "exchange"}
    health = logged_events(capture, "health")
    assert {r["unit"] for r in health} >= {"autopilot"} and all(r["health"] in ("healthy", "warning", "unhealthy")
                                                                  for r in health)
    tally = logged_events(capture, "timer")[0]["counts"]
    assert sum(tally.values()) == len(syncs)


def test_no_record_carries_a_token_a_key_or_a_signed_url(app_env, graph, sink, monkeypatch, capture):
    from shared.runtime import process as runtime

    monkeypatch.setenv("NOTIFY_URL", sink.url)
    runtime.reload()
    key = "FUNCTION-KEY-0123456789"
    _, wait_headers, _ = call("POST", "sync/autopilot?wait=true", headers={"x-functions-key": key})
    _, import_headers, _ = call("POST", "autopilot/devices", {"devices": autopilot_devices(1)},
                                headers={"x-functions-key": key, "x-ms-workflow-name": "onboard"})
    call("POST", "sync/autopilot", headers={"x-functions-key": key})  # a refusal
    faults(graph, {"method": "POST", "pathContains": "/sync", "status": 403, "times": 10})
    _, _, failed = call("POST", "sync/exchange", headers={"x-functions-key": key})  # a failure
    assert "failed" in {r["outcome"] for r in failed["results"]}
    secrets = {
        key,
        runtime.service().graph.current_token(),
        *parse_qs(urlsplit(wait_headers["Location"]).query)["token"],
        *parse_qs(urlsplit(import_headers["Location"]).query)["token"],
        "secret-signature",  # the notification URL's sig
    }
    everything = "\n".join(r.getMessage() for r in capture.records)
    assert len(logged_events(capture)) >= 4
    assert [s for s in secrets if s in everything] == []


def _timer():
    from azure.functions.timer import TimerRequest

    return TimerRequest(past_due=False)


def test_trigger_values_are_the_documented_ones():
    assert {t.value for t in Trigger} <= set(telemetry.FIELDS["trigger"].split(": ", 1)[1].split(", "))


def test_enabling_exchange_logs_a_notice_at_start_up_that_the_connector_is_out_of_support(app_env, capture):
    from shared.runtime import process as runtime

    runtime.check_settings_at_startup()
    [notice] = logged_events(capture, "notice")
    assert notice["code"] == "ExchangeConnectorOutOfSupport" and notice["_level"] == "WARNING"
    assert "2024-02-19" in notice["message"]


def test_a_deferred_sync_given_up_at_its_deadline_is_logged_as_given_up_not_rescheduled(service, graph, clock, capture):
    from datetime import timedelta

    from shared.engine.deferred import BACKOFF_MAX, PendingFire

    service.sync(AUTOPILOT)
    service.sync(SyncRequest("autopilot", defer=True))
    advance(clock, graph, PAST_WINDOW)
    faults(graph, {"method": "POST", "status": 503, "times": 200})
    while (state := service.store.read("autopilot")).pending_id is not None:
        service.fire(PendingFire("autopilot", "autopilot", None, state.pending_id, state.pending_at or clock(),
                                 state.pending_reschedules or 0))
        advance(clock, graph, (BACKOFF_MAX + timedelta(seconds=1)).total_seconds())
    firings = [r["outcome"] for r in logged_events(capture, "deferred")]
    assert firings[-1] == "givenUp" and set(firings[:-1]) == {"rescheduled"}


def test_a_deferred_sync_graph_refuses_for_good_is_given_up_at_once(service, graph, clock, capture):
    service.sync(AUTOPILOT)
    service.sync(SyncRequest("autopilot", defer=True))
    advance(clock, graph, PAST_WINDOW)
    faults(graph, {"method": "POST", "status": 403, "times": 5})
    fire_due_sync(service)
    assert [r["outcome"] for r in logged_events(capture, "deferred")] == ["givenUp"]


def test_the_azure_sdks_request_by_request_log_is_off_so_traces_are_only_ours_and_warnings():
    import function_app  # noqa: F401  (the app's start-up configures it)

    assert logging.getLogger("azure.core.pipeline.policies.http_logging_policy").getEffectiveLevel() == logging.WARNING


def test_a_claim_whose_holder_never_recorded_graphs_answer_is_one_unknown_attempt_record(service, graph, clock, capture):
    from datetime import timedelta

    state = service.store.read("autopilot")
    service.store.claim(state, clock(), 180, hold_until=clock() + timedelta(seconds=780), claim_by="timer:timer",
                        claim_sync_type=None, target="autopilot", item_id=None)  # then the instance died
    advance(clock, graph, 181)
    service.sync(AUTOPILOT)
    [unknown] = [r for r in logged_events(capture, "sync") if r["outcome"] == "unknown"]
    assert (unknown["trigger"], unknown["attempted"], unknown["errorCode"], unknown["_level"]) == (
        "timer", True, "OutcomeNotRecorded", "WARNING")


def test_an_import_step_storage_fails_under_is_logged_before_the_host_retries_it(service, graph, clock, capture):
    from shared.common.errors import StateStoreUnavailable
    from shared.onboarding.importjob import ImportStep

    import_id = start_import(service, autopilot_devices(1))
    job = service.imports.job(import_id)
    service.imports = None  # what a step meets when Table Storage is unreachable
    with pytest.raises(StateStoreUnavailable):
        service.run_import_step(ImportStep(import_id, job.step, job.step_at).to_json())
    [failed] = [r for r in logged_events(capture, "import") if r["outcome"] == "failed"]
    assert failed["importId"] == import_id and failed["errorCode"] == "StateStoreUnavailable"
