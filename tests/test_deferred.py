"""Deferred sync: asks inside the cooldown become one pending sync, fired by a delayed queue
message at the window's end through the normal claim — against Azurite's table and queue
services and the Graph emulator."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import requests
from conftest import PAST_WINDOW, SKEW_MARGIN_SECONDS, advance, configure, one, queue_length, sync_posts

from shared.clients.identity import make_credential
from shared.clients.storage import table_client
from shared.common.model import Outcome, SyncRequest, Trigger
from shared.common.settings import Settings
from shared.engine.deferred import BACKOFF_MAX, PendingFire
from shared.engine.state import Attempt, StateStore

DEFER = SyncRequest("autopilot", caller="flow-1", defer=True)


def pending_fire(service) -> PendingFire:
    """The message the service last sent for the pending sync (same id, time and generation)."""
    state = service.store.read("autopilot")
    return PendingFire("autopilot", "autopilot", None, state.pending_id, state.pending_at, state.pending_reschedules or 0)


def test_a_deferred_ask_inside_the_cooldown_is_scheduled_for_the_windows_end(service, graph, env):
    started = one(service.sync(SyncRequest("autopilot")))
    result = one(service.sync(DEFER))
    assert result.outcome is Outcome.SCHEDULED and result.scheduled_at == started.next_allowed_at
    assert result.to_json()["scheduledAt"] and queue_length(env) == 1
    state = service.store.read("autopilot")
    assert state.pending_at == started.next_allowed_at and "flow-1" in state.pending_asked_by
    assert service.store.asks("autopilot", state.pending_id) == []  # the first ask is the pending sync itself


def test_further_asks_join_the_same_pending_sync(service, graph, env):
    service.sync(SyncRequest("autopilot"))
    first = one(service.sync(DEFER))
    later = [one(service.sync(replace(DEFER, caller=f"flow-{i}"))) for i in range(2, 5)]
    assert {r.scheduled_at for r in later} == {first.scheduled_at}
    assert all("joined" in r.message for r in later)
    state = service.store.read("autopilot")
    assert queue_length(env) == 1 and len(service.store.asks("autopilot", state.pending_id)) == 3


def test_a_non_deferred_ask_in_the_window_still_gets_cooldown(service, graph):
    service.sync(SyncRequest("autopilot"))
    service.sync(DEFER)
    plain = one(service.sync(SyncRequest("autopilot")))
    assert plain.outcome is Outcome.COOLDOWN and plain.retry_after_seconds and plain.scheduled_at is None


def test_a_deferred_ask_outside_the_cooldown_syncs_at_once(service, graph, env):
    result = one(service.sync(DEFER))
    assert result.outcome is Outcome.STARTED and len(sync_posts(graph)) == 1


def test_firing_at_the_windows_end_syncs_once_and_clears_the_pending_sync(service, graph, clock):
    service.sync(SyncRequest("autopilot"))
    service.sync(DEFER)
    service.sync(replace(DEFER, caller="flow-2"))
    fire = pending_fire(service)
    advance(clock, graph, PAST_WINDOW)
    result = service.fire(fire)
    assert result.outcome is Outcome.STARTED and len(sync_posts(graph)) == 2
    assert service.store.read("autopilot").pending_id is None
    row = service.store.history("autopilot")[0]
    assert row["trigger"] == "deferred" and "flow-1" in row["caller"] and "flow-2" in row["caller"] and "2 asks" in row["caller"]


def test_a_duplicated_message_causes_no_second_sync(service, graph, clock):
    service.sync(SyncRequest("autopilot"))
    service.sync(DEFER)
    fire = pending_fire(service)
    advance(clock, graph, PAST_WINDOW)
    assert service.fire(fire).outcome is Outcome.STARTED
    assert service.fire(fire) is None
    assert len(sync_posts(graph)) == 2


def test_a_message_for_asks_a_sync_already_satisfied_does_nothing(service, graph, clock):
    service.sync(SyncRequest("autopilot"))
    service.sync(DEFER)
    fire = pending_fire(service)
    advance(clock, graph, PAST_WINDOW)
    assert one(service.sync(SyncRequest("autopilot"))).outcome is Outcome.STARTED  # someone synced first
    assert service.fire(fire) is None and len(sync_posts(graph)) == 2


def test_a_graph_429_at_firing_reschedules_from_retry_after(service, graph, clock, env):
    service.sync(SyncRequest("autopilot"))
    service.sync(DEFER)
    fire = pending_fire(service)
    advance(clock, graph, PAST_WINDOW)
    now = requests.get(f"{graph.base_url}/_emulator/stats", timeout=5).json()["now"]
    configure(graph, lastManualSyncTriggerDateTime=now, syncDurationSeconds=0, retryAfterOn429=120)  # a portal click
    result = service.fire(fire)
    assert result.outcome is Outcome.COOLDOWN and result.graph_status == 429
    state = service.store.read("autopilot")
    assert state.pending_id == fire.pending_id and state.pending_reschedules == 1
    # Graph's Retry-After, and the margin kept over every window Graph imposes
    assert abs(state.pending_at - (clock.now + timedelta(seconds=120 + SKEW_MARGIN_SECONDS))) < timedelta(seconds=2)
    assert queue_length(env) == 2  # the original message (fired in this test by hand) and the rescheduled one


def test_a_deferred_sync_backs_off_through_graph_503s_doubling_from_ten_seconds(service, graph, clock):
    service.sync(SyncRequest("autopilot"))
    service.sync(DEFER)
    advance(clock, graph, PAST_WINDOW)
    requests.post(f"{graph.base_url}/_emulator/faults", json=[{"method": "POST", "status": 503, "times": 40}], timeout=5)
    waits = []
    for _ in range(7):
        before = clock.now
        result = service.fire(pending_fire(service))
        assert result.outcome is Outcome.FAILED and result.error_code == "GraphUnavailable"
        state = service.store.read("autopilot")
        waits.append(round((state.pending_at - before).total_seconds()))
        advance(clock, graph, waits[-1])
    assert waits == [10, 20, 40, 80, 160, 300, 300]
    assert state.pending_id is not None  # ~15 minutes of outage: still pending


def due_with_graph_answering(service, graph, clock, status: int, times: int) -> None:
    """A pending sync whose time has come, while Graph answers its POST with ``status``."""
    service.sync(SyncRequest("autopilot"))
    service.sync(DEFER)
    advance(clock, graph, PAST_WINDOW)
    requests.post(f"{graph.base_url}/_emulator/faults", json=[{"method": "POST", "status": status, "times": times}], timeout=5)


def test_a_deferred_sync_refused_past_its_budget_is_given_up_shown_in_status_and_notified(make_service, graph, clock, sink):
    service = make_service(NOTIFY_URL=sink.url)
    due_with_graph_answering(service, graph, clock, 503, 200)
    firings = 0
    while service.store.read("autopilot").pending_id is not None:
        service.fire(pending_fire(service))
        firings += 1
        advance(clock, graph, BACKOFF_MAX.total_seconds())
        assert firings < 40
    state = service.store.read("autopilot")
    assert firings > 10  # about an hour of back-off, not three quick retries
    assert state.pending_failed_at is not None and "deadline" in state.pending_failure
    assert "GraphUnavailable" in state.pending_failure
    unit = next(u for t in service.status()["targets"] for u in t["units"] if u["target"] == "autopilot")
    assert unit["deferred"]["gaveUpAt"] and "deadline" in unit["deferred"]["reason"]
    service.notifier.flush(timeout=10)
    assert any(n["event"] == "syncFailed" and "given up" in n["message"] for n in sink.wait_for(2))


def test_a_deferred_sync_that_graph_refuses_for_good_is_given_up_at_once(make_service, graph, clock, sink):
    service = make_service(NOTIFY_URL=sink.url)
    due_with_graph_answering(service, graph, clock, 403, 5)
    assert service.fire(pending_fire(service)).error_code == "GraphAccessDenied"
    state = service.store.read("autopilot")
    assert state.pending_id is None and "GraphAccessDenied" in state.pending_failure


def test_a_deferred_sync_whose_post_got_no_answer_stays_pending_for_the_next_window(service, graph, clock):
    service.sync(SyncRequest("autopilot"))
    service.sync(DEFER)
    advance(clock, graph, PAST_WINDOW)
    # Graph answers 503 (no sync), but only after our 2 s timeout: we cannot know that.
    requests.post(f"{graph.base_url}/_emulator/faults", json=[{"method": "POST", "status": 503, "delaySeconds": 3, "times": 1}], timeout=5)
    result = service.fire(pending_fire(service))
    assert result.outcome is Outcome.STARTED and result.ambiguous
    state = service.store.read("autopilot")
    assert state.pending_id is not None and state.pending_at == result.next_allowed_at  # the asks are not dropped


def test_a_message_of_an_earlier_generation_is_ignored(service, graph, clock):
    service.sync(SyncRequest("autopilot"))
    service.sync(DEFER)
    first = pending_fire(service)
    advance(clock, graph, PAST_WINDOW)
    requests.post(f"{graph.base_url}/_emulator/faults", json=[{"method": "POST", "status": 409, "times": 1}], timeout=5)
    service.fire(first)  # Graph 409: rescheduled as generation 1
    assert service.fire(first) is None  # a late duplicate of generation 0
    assert len(sync_posts(graph)) == 2 and service.store.read("autopilot").pending_reschedules == 1


def test_two_copies_delivered_at_once_cause_one_sync(service, graph, clock):
    service.sync(SyncRequest("autopilot"))
    service.sync(DEFER)
    fire = pending_fire(service)
    advance(clock, graph, PAST_WINDOW)
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = [r.outcome if r else None for r in pool.map(service.fire, [fire, fire])]
    assert Outcome.STARTED in outcomes and len(sync_posts(graph)) == 2


def test_a_sync_in_flight_when_the_message_fires_moves_it_to_the_lease_end_uncounted(service, graph, clock):
    service.sync(SyncRequest("autopilot"))
    service.sync(DEFER)
    fire = pending_fire(service)
    advance(clock, graph, PAST_WINDOW)
    lease = service.store.claim(service.store.read("autopilot"), clock.now, 180, target="autopilot")  # another instance
    assert service.fire(fire) is None and len(sync_posts(graph)) == 1
    state = service.store.read("autopilot")
    assert state.pending_reschedules == 0 and state.pending_at == lease.expires_at + timedelta(seconds=1)


def test_an_ask_during_a_sync_in_flight_keeps_its_pending_sync_and_the_lease_is_released(service, graph, clock):
    configure(graph, latencySeconds=0.6)  # the sync is in flight long enough to ask meanwhile
    with ThreadPoolExecutor(max_workers=1) as pool:
        syncing = pool.submit(service.sync, SyncRequest("autopilot"))
        deadline = time.monotonic() + 5
        while not service.store.read("autopilot").lease_owner and time.monotonic() < deadline:
            time.sleep(0.02)
        clock.advance(1)  # the ask comes after the sync began
        asked = one(service.sync(DEFER))
        assert asked.outcome is Outcome.SCHEDULED
        assert one(syncing.result()).outcome is Outcome.STARTED
    state = service.store.read("autopilot")
    assert state.lease_owner is None  # our lease, released although the row changed under us
    assert state.pending_id is not None and state.last_outcome == "started"  # the later ask still gets its sync


def test_a_stale_pending_sync_is_replaced_by_the_next_ask(service, graph, clock, env):
    service.sync(SyncRequest("autopilot"))
    service.sync(DEFER)
    stale = service.store.read("autopilot").pending_id
    clock.advance(PAST_WINDOW + 6 * 60)  # its time passed long ago and it never fired (poison queue, say)
    configure(graph, lastManualSyncTriggerDateTime=datetime.now(UTC).isoformat())
    service.store.update(replace(service.store.read("autopilot"), next_allowed_at=clock.now + timedelta(seconds=300)))
    fresh = one(service.sync(DEFER))
    assert fresh.outcome is Outcome.SCHEDULED and service.store.read("autopilot").pending_id != stale
    assert fresh.scheduled_at == clock.now + timedelta(seconds=300)


def test_a_timer_tick_inside_the_cooldown_becomes_the_pending_sync(service, graph):
    service.sync(SyncRequest("autopilot"))
    results = {r.target: r for r in service.sync_enabled(Trigger.TIMER)}
    assert results["autopilot"].outcome is Outcome.SCHEDULED
    assert "timer:" in service.store.read("autopilot").pending_asked_by


def test_status_shows_the_pending_sync(service, graph):
    service.sync(SyncRequest("autopilot"))
    service.sync(DEFER)
    unit = next(t for t in service.status()["targets"] if t["target"] == "autopilot")["units"][0]
    assert unit["pending"]["asks"] == 1 and unit["pending"]["scheduledAt"]


def test_sync_and_wait_follows_a_scheduled_sync_to_its_end(service, graph, clock):
    service.sync(SyncRequest("autopilot"))
    result, operation, token = service.sync_and_follow(DEFER)
    assert result.outcome is Outcome.SCHEDULED and operation.since == result.scheduled_at
    assert service.poll(operation.id, token).status == "running"  # the earlier sync does not count
    advance(clock, graph, PAST_WINDOW)
    assert service.fire(pending_fire(service)).outcome is Outcome.STARTED
    assert service.poll(operation.id, token).status == "running"  # Graph is syncing
    advance(clock, graph, 31)
    assert service.poll(operation.id, token).status == "completed"


# --- across processes, on the real clock ------------------------------------------------------


def window_ends_in(seconds: float, env, graph) -> datetime:
    """As if a sync had run just under ten minutes ago: the window ends ``seconds`` from now."""
    settings = Settings.from_env(env)
    store = StateStore(table_client(settings.storage, settings.state_table, make_credential))
    now = datetime.now(UTC)
    ends = now + timedelta(seconds=seconds)
    lease = store.claim(store.read("autopilot"), now - timedelta(seconds=1), 60, target="autopilot")
    store.commit(lease, replace(lease.state, lease_owner=None, lease_expires_at=None, next_allowed_at=ends, last_outcome="started"),
                 Attempt(now, now, "http", "earlier", "started", http_status=204))
    triggered = ends - timedelta(minutes=10)
    configure(graph, lastManualSyncTriggerDateTime=triggered.isoformat(), syncDurationSeconds=1)
    return ends


def wait_for_posts(graph, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(sync_posts(graph)) < count:
        time.sleep(0.2)
    return len(sync_posts(graph))


def test_twenty_deferred_asks_from_four_processes_become_one_sync_at_the_windows_end(start_app_hosts, env, graph):
    hosts = start_app_hosts(4, env)
    ends = window_ends_in(6, env, graph)

    def ask(i: int) -> requests.Response:
        return requests.post(f"{hosts[i % 4]}/api/sync/autopilot", params={"defer": "true"}, timeout=30)

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(ask, range(20)))
    assert [a.status_code for a in answers] == [202] * 20, [a.text for a in answers if a.status_code != 202]
    assert {a.json()["outcome"] for a in answers} == {"scheduled"}
    assert len({a.json()["scheduledAt"] for a in answers}) == 1
    plain = requests.post(f"{hosts[0]}/api/sync/autopilot", timeout=30)
    assert plain.status_code == 429 and "Retry-After" in plain.headers
    assert sync_posts(graph) == []
    assert wait_for_posts(graph, 1, timeout=30) == 1
    fired_at = datetime.fromisoformat(sync_posts(graph)[0]["at"].replace("Z", "+00:00"))
    assert ends - timedelta(seconds=1) <= fired_at <= ends + timedelta(seconds=5)  # at the window's end
    time.sleep(2)  # any duplicate firing would land by now
    assert len(sync_posts(graph)) == 1 and [p["status"] for p in sync_posts(graph)] == [204]


def test_a_restart_between_scheduling_and_firing_loses_nothing(start_app_hosts, env, graph):
    first = start_app_hosts(1, env)[0]
    window_ends_in(4, env, graph)
    assert requests.post(f"{first}/api/sync/autopilot", params={"defer": "true"}, timeout=30).json()["outcome"] == "scheduled"
    start_app_hosts.stop_all()  # the instance that scheduled it goes away before the window ends
    assert sync_posts(graph) == []
    start_app_hosts(1, env)  # a new instance, started later, fires it
    assert wait_for_posts(graph, 1, timeout=30) == 1
