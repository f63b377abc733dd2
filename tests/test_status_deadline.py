"""GET /api/sync/status answers within STATUS_DEADLINE_SECONDS with what it knows, against a
Graph emulator whose reads hang (delay faults); stragglers are neither waited for nor repeated."""
import threading
import time

import pytest
from conftest import call, faults, graph_calls

from shared.common.settings import Settings, SettingsError
from shared.engine.status import READS, Reads, Unavailable
from shared.runtime import process as runtime

MARGIN = 1.0  # table reads and scheduling on a busy test machine


def settle(timeout: float = 30.0) -> None:
    """Let reads left running by a status call end, so that they do not reach the next test."""
    deadline = time.monotonic() + timeout
    while READS.in_flight() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert READS.in_flight() == 0


@pytest.fixture(autouse=True)
def no_stragglers():
    settle()
    yield
    settle()


def graph_entry(status, target):
    return next(t for t in status["targets"] if t["target"] == target)


def timed_status(service):
    started = time.monotonic()
    status = service.status()
    return status, time.monotonic() - started


def test_status_answers_within_its_deadline_and_marks_the_hanging_target_unavailable(make_service, graph):
    service = make_service(STATUS_DEADLINE_SECONDS="1")
    faults(graph, {"method": "GET", "pathContains": "exchangeConnectors", "delaySeconds": 4, "times": 1})
    status, elapsed = timed_status(service)
    assert elapsed < 1 + MARGIN, elapsed
    exchange = graph_entry(status, "exchange")
    assert exchange["graph"] == [{
        "target": "exchange",
        "error": {"code": "Unavailable", "message": "no answer from Graph within 1 s"},
        "health": {"rating": "unhealthy", "reasons": ["no answer from Graph within 1 s"]},
    }]
    assert exchange["health"] == "unhealthy" and status["health"] == "unhealthy"
    autopilot = graph_entry(status, "autopilot")  # read side by side: answered normally
    assert "error" not in autopilot["graph"][0] and "syncStatus" in autopilot["graph"][0]
    assert status["connectorStatus"] is not None


def test_every_hanging_read_is_unavailable_and_the_answer_still_comes_on_time(make_service, graph):
    service = make_service(STATUS_DEADLINE_SECONDS="1")
    # Every read of the call: the two targets', connectorStatus and the credentials' first (of three).
    faults(graph, {"method": "GET", "pathContains": "/", "delaySeconds": 3, "times": 4})
    status, elapsed = timed_status(service)
    assert elapsed < 1 + MARGIN, elapsed
    assert [graph_entry(status, t)["graph"][0]["error"]["code"] for t in ("autopilot", "exchange")] == ["Unavailable"] * 2
    assert status["connectorStatus"] is None
    assert status["credentials"]["state"] == "unavailable"


def test_repeated_calls_join_the_read_still_running_instead_of_sending_another(make_service, graph):
    # A long read timeout, so the first read is one request that hangs for 3 s.
    service = make_service(STATUS_DEADLINE_SECONDS="1", GRAPH_TIMEOUT_SECONDS="10")
    faults(graph, {"method": "GET", "pathContains": "exchangeConnectors", "delaySeconds": 3, "times": 1})
    for _ in range(2):
        status, elapsed = timed_status(service)
        assert elapsed < 1 + MARGIN, elapsed
        assert graph_entry(status, "exchange")["graph"][0]["error"]["code"] == "Unavailable"
    settle()
    assert len(graph_calls(graph, "GET", "exchangeConnectors")) == 1  # one request for both calls
    # Graph answers again: the next call reads afresh and reports the connectors.
    status, _ = timed_status(service)
    assert all("error" not in g for g in graph_entry(status, "exchange")["graph"])
    assert len(graph_calls(graph, "GET", "exchangeConnectors")) == 2


def test_a_graph_that_answers_is_not_affected_by_the_deadline(service, graph):
    status, elapsed = timed_status(service)
    assert elapsed < 1 + MARGIN
    assert all("error" not in g for t in status["targets"] for g in t["graph"])


def test_the_http_route_answers_on_time_with_the_partial_report(app_env, graph, monkeypatch):
    monkeypatch.setenv("STATUS_DEADLINE_SECONDS", "1")
    runtime.reload()
    faults(graph, {"method": "GET", "pathContains": "windowsAutopilotSettings", "delaySeconds": 4, "times": 1})
    started = time.monotonic()
    code, _, body = call("GET", "sync/status")
    assert time.monotonic() - started < 1 + MARGIN
    assert code == 200
    autopilot = graph_entry(body, "autopilot")
    assert autopilot["graph"][0]["error"]["code"] == "Unavailable" and autopilot["health"] == "unhealthy"
    assert "error" not in graph_entry(body, "exchange")["graph"][0]


def test_the_pool_is_bounded_and_a_read_that_finds_it_full_is_not_started():
    reads = Reads(limit=2)
    release = threading.Event()
    started = []

    def hang(name):
        def read():
            started.append(name)
            release.wait(10)
            return name
        return read

    try:
        futures = reads.start_all({"a": ("a", hang("a")), "b": ("b", hang("b")), "c": ("c", hang("c"))})
        assert futures["c"] is None and reads.in_flight() == 2
        assert reads.start("a", hang("a-again")) is futures["a"]  # joins the read in flight
        answers = reads.answers(futures, timeout=0.2, deadline_seconds=0.2)
        assert answers["a"] == Unavailable("no answer from Graph within 0.2 s")
        assert answers["c"] == Unavailable("not read: 2 earlier Graph reads are still waiting for an answer")
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while reads.in_flight() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reads.in_flight() == 0 and sorted(started) == ["a", "b"]
    assert reads.answers(reads.start_all({"c": ("c", lambda: "done")}), timeout=5, deadline_seconds=5) == {"c": "done"}


@pytest.mark.parametrize("value,ok", [("1", True), ("200", True), ("0", False), ("201", False), ("soon", False)])
def test_the_deadline_setting_stays_inside_the_platforms_230_s(value, ok):
    env = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "STATUS_DEADLINE_SECONDS": value}
    if ok:
        assert Settings.from_env(env).status_deadline_seconds == int(value)
    else:
        with pytest.raises(SettingsError) as caught:
            Settings.from_env(env)
        assert caught.value.problems["STATUS_DEADLINE_SECONDS"]  # named; the wording is test_settings' concern
