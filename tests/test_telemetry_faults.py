"""Telemetry and the timer under faults (issue 14 review): a logging fault, a hanging or failing
Graph, a bug in the health ratings, a deferred firing without a token, the local host's timers and
console. Against Azurite and the Graph and identity emulators, like the rest."""
from __future__ import annotations

import io
import logging
import threading
import time
from datetime import timedelta

import pytest
import requests
from conftest import (
    FUNCTIONS,
    PAST_WINDOW,
    advance,
    call,
    configure,
    faults,
    fire_due_sync,
    graph_calls,
    logged_events,
    sync_posts,
)

from shared.common import telemetry
from shared.common.model import Outcome, SyncRequest

AUTOPILOT = SyncRequest("autopilot", caller="tester")


@pytest.fixture(autouse=True)
def capture(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=telemetry.LOGGER)
    return caplog


# --- logging faults never break a sync ------------------------------------------------------------


def test_a_console_handler_that_cannot_write_does_not_break_a_sync(service, graph):
    """A log handler that cannot write (a closed stdout under the local run) never turns a started sync into an error."""
    from emulators.console import EventPrinter, line

    closed = io.StringIO()
    closed.close()
    printer = EventPrinter(lambda text, indent=False: line(text, indent, stream=closed))
    logging.getLogger(telemetry.LOGGER).addHandler(printer)
    try:
        results = service.sync(AUTOPILOT)
    finally:
        logging.getLogger(telemetry.LOGGER).removeHandler(printer)
    assert [r.outcome for r in results] == [Outcome.STARTED]


def test_a_long_caller_header_is_cut_before_it_is_scrubbed(app_env, graph, capture, monkeypatch):
    """A 60 KB flow name in x-ms-workflow-name is cut before any pattern runs over it (the
    patterns' cost grows with the text), and what it claims is kept to 200 characters."""
    seen: list[int] = []
    scrub = telemetry.scrub
    monkeypatch.setattr(telemetry, "scrub", lambda text: seen.append(len(text)) or scrub(text))
    status, _, _ = call("POST", "sync/autopilot", headers={"x-ms-workflow-name": "&" + "token" * 12000})
    assert status == 202
    assert seen and max(seen) <= 2 * telemetry.MAX_TEXT
    [record] = logged_events(capture, "sync")
    assert record["caller"] == "key"  # a key holder's headers are what it claimed, never the identity
    assert record["claimedCaller"].startswith("flow:&token") and len(record["claimedCaller"]) <= 200


# --- the timer's health ratings ------------------------------------------------------------------


def test_the_timers_health_reads_are_bounded_like_the_status_calls(make_service, graph):
    """The timer's health ratings read Graph side by side within STATUS_DEADLINE_SECONDS, as GET /api/sync/status does, so a hanging Graph cannot hold the timer past functionTimeout."""
    service = make_service(GRAPH_TIMEOUT_SECONDS="0.5", STATUS_DEADLINE_SECONDS="1")
    faults(graph, {"method": "GET", "pathContains": "/deviceManagement/", "delaySeconds": 3, "times": 100})
    started = time.monotonic()
    service.report_health()
    elapsed = time.monotonic() - started
    assert elapsed <= service.settings.status_deadline_seconds + 1, f"report_health took {elapsed:.1f} s"


def test_a_target_graph_could_not_list_is_rated_under_the_same_unit_names_as_usual(make_service, graph, capture):
    """A per-item target Graph could not list is rated unhealthy under its units' usual names, so no phantom unit lingers in the workbook or the alert."""
    service = make_service()
    service.report_health()
    good = {r["unit"] for r in logged_events(capture, "health") if r["target"] == "exchange"}
    capture.clear()
    faults(graph, {"method": "GET", "pathContains": "exchangeConnectors", "status": 503, "times": 20})
    service.report_health()
    bad = {r["unit"] for r in logged_events(capture, "health") if r["target"] == "exchange"}
    assert bad <= good, f"ghost unit(s) {bad - good} rated, never rated again once Graph answers"


def test_graph_failing_the_timers_health_reads_leaves_its_sync_recorded_and_the_cooldown_kept(app_env, graph, capture):
    """Graph answers the status reads 503 (or not at all): the tick's syncs stand as recorded,
    the units are rated unhealthy, and the next tick sends no second sync POST."""
    from shared.runtime import process as runtime

    faults(graph, {"method": "GET", "pathContains": "/deviceManagement/", "status": 503, "times": 1000})
    FUNCTIONS["sync_timer"](_timer())
    posts = len(sync_posts(graph))
    assert posts >= 1 and logged_events(capture, "timer")
    assert runtime.service().store.history("autopilot")[0]["outcome"] == "started"
    assert {r["health"] for r in logged_events(capture, "health")} == {"unhealthy"}
    FUNCTIONS["sync_timer"](_timer())
    assert len(sync_posts(graph)) == posts  # in cooldown: the pending sync, not a POST


def test_graph_failing_the_watchers_reads_keeps_following_and_sends_no_sync(service, graph, clock, capture):
    """The watcher's status read answered 503: a finding, the sync still followed, no POST; once
    Graph answers again, it is reported finished."""
    service.sync(AUTOPILOT)
    advance(clock, graph, 31)
    faults(graph, {"method": "GET", "pathContains": "windowsAutopilotSettings", "status": 503, "times": 4})  # one read, retries included
    service.watch()
    assert [r["outcome"] for r in logged_events(capture, "watch")] == ["statusUnreadable"]
    assert service.store.read("autopilot").completion_pending and len(sync_posts(graph)) == 1
    service.watch()  # Graph answers again
    assert logged_events(capture, "watch")[-1]["outcome"] == "syncCompleted" and len(sync_posts(graph)) == 1


# --- the watcher follows every started sync, for a bounded time -----------------------------------


def test_the_watcher_stops_following_a_sync_graph_never_reports_finished(service, graph, clock, capture):
    """The watcher stops following a sync Graph never reports finished after SYNC_WAIT_TIMEOUT_SECONDS (a finding), rather than reading Graph every tick for ever."""
    configure(graph, syncDurationSeconds=30 * 86400)  # Graph says inProgress for a month
    service.sync(AUTOPILOT)
    advance(clock, graph, 7 * 86400)  # a week later
    before = len(graph_calls(graph, "GET", "windowsAutopilotSettings"))
    service.watch()
    reads = len(graph_calls(graph, "GET", "windowsAutopilotSettings")) - before
    state = service.store.read("autopilot")
    assert not state.completion_pending and reads == 0
    [finding] = logged_events(capture, "watch")
    assert (finding["unit"], finding["outcome"], finding["_level"]) == ("autopilot", "syncNotReported", "WARNING")


# --- deferred firings: levels, and faults -----------------------------------------------------------


def test_a_deferred_sync_given_up_after_an_hour_of_409s_is_not_information(service, graph, clock, capture):
    """A deferred sync given up (an hour of 409s) is logged at warning or error: its askers were told "scheduled"."""
    from shared.engine.deferred import BACKOFF_MAX, PendingFire

    service.sync(AUTOPILOT)
    service.sync(SyncRequest("autopilot", defer=True))
    advance(clock, graph, PAST_WINDOW)
    faults(graph, {"method": "POST", "pathContains": "/sync", "status": 409, "times": 500})
    while (state := service.store.read("autopilot")).pending_id is not None:
        service.fire(PendingFire("autopilot", "autopilot", None, state.pending_id, state.pending_at or clock(),
                                 state.pending_reschedules or 0))
        advance(clock, graph, (BACKOFF_MAX + timedelta(seconds=1)).total_seconds())
    [given_up] = [r for r in logged_events(capture, "deferred") if r["outcome"] == "givenUp"]
    assert given_up["_level"] in ("WARNING", "ERROR")


def test_a_deferred_firing_without_a_token_is_logged(service, make_service, graph, clock, identity_server, capture):
    """A deferred firing that meets an upstream fault (no token) is logged before the host retries its message."""
    service.sync(AUTOPILOT)
    service.sync(SyncRequest("autopilot", defer=True))
    advance(clock, graph, PAST_WINDOW)
    identity_server.configure(failing=True)
    fresh = make_service()  # a new instance: no token cached
    capture.clear()
    raised = None
    try:
        fire_due_sync(fresh)
    except Exception as exc:  # noqa: BLE001  (raising so that the host retries is fine; silence is not)
        raised = exc
    assert raised is not None  # the host retries the message
    [record] = logged_events(capture, "deferred")
    assert (record["outcome"], record["errorCode"], record["_level"]) == ("retrying", "TokenUnavailable", "WARNING")
    # Nothing lost or held: the pending sync waits for the host's retry, no lease, no second POST.
    state = fresh.store.read("autopilot")
    assert state.pending_id and not state.lease_owner and len(sync_posts(graph)) == 1
    identity_server.configure(failing=False)
    # The host delivers the message again (after host.json's visibilityTimeout, 10 s); MSAL keeps a
    # failed token answer for about 5 s, so the retry here is a new instance's, as it may be in Azure.
    assert fire_due_sync(make_service()).outcome is Outcome.STARTED and len(sync_posts(graph)) == 2


# --- the local run ---------------------------------------------------------------------------------


def test_a_local_timer_keeps_running_after_one_failed_tick():
    """The local host's timer fires again after a failed tick, as the Functions host does."""
    from emulators.funchost import TimerFunction, TimerRunner

    calls: list[float] = []

    def handler(_timer):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("first tick fails")

    runner = TimerRunner(TimerFunction("t", "* * * * * *", handler))
    old_hook = threading.excepthook
    threading.excepthook = lambda args: None  # keep the test's output quiet
    try:
        runner.start()
        time.sleep(3.5)
    finally:
        runner.stopping.set()
        threading.excepthook = old_hook
    assert len(calls) >= 2, f"the timer ran {len(calls)} time(s) in 3.5 s, then its thread was dead"


def test_the_local_console_prints_an_http_call_before_its_events(app_env, graph, capsys):
    """The local console prints an HTTP call's line first and the events it logged under it."""
    from conftest import APP_FUNCTIONS

    from emulators.console import EventPrinter
    from emulators.funchost import FunctionHost

    class App:  # the app's get_functions() may be called once per process; conftest did
        def get_functions(self):
            return APP_FUNCTIONS

    printer = EventPrinter()
    logging.getLogger(telemetry.LOGGER).addHandler(printer)
    host = FunctionHost(App(), port=0, console=True).start()
    try:
        capsys.readouterr()
        assert requests.post(f"{host.base_url}/api/sync/autopilot", timeout=30).status_code == 202
    finally:
        host.stop()
        logging.getLogger(telemetry.LOGGER).removeHandler(printer)
    lines = [text for text in capsys.readouterr().out.splitlines() if text.strip()]
    http = next(i for i, text in enumerate(lines) if "POST /api/sync/autopilot" in text)
    event = next(i for i, text in enumerate(lines) if "sync " in text and "started" in text)
    assert http < event, lines


def test_a_timer_tick_with_a_health_bug_still_tallies_and_fans_out(app_env, graph, monkeypatch, capture):
    """A bug in the health ratings never costs the timer tick its tally (nor the tenants' fan-out)."""
    from shared.engine import status

    def broken(self):
        raise TypeError("'NoneType' object is not subscriptable")

    monkeypatch.setattr(status.StatusReader, "report_health", broken)
    try:
        FUNCTIONS["sync_timer"](_timer())
    except TypeError:
        pass
    assert logged_events(capture, "timer"), "the tick's syncs ran, but it has no timer record"


def _timer():
    from azure.functions.timer import TimerRequest

    return TimerRequest(past_due=False)
