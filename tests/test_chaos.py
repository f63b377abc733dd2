"""Chaos: the one-sync guarantee under faults, against real servers.

Two or more app processes (the local Functions host serving function_app) share one Azurite —
reached through a fault-injecting proxy (emulators/faultproxy.py) — one Graph emulator and one
managed-identity emulator. Faults are switched on in those servers, never patched into the code.
Every test ends on the same three checks, from the Graph emulator's log and the history rows:
no second sync POST inside a window, every attempt that reached Graph in history, no 5xx for bad
input or odd upstream values. Steps that need the lease or the window to run out use a service
in this process on a test clock, reading and writing the same table.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from conftest import PAST_WINDOW, configure, faults, queue_length, sync_posts, wait_until

from emulators.azurite import ACCOUNT, KEY
from emulators.faultproxy import FaultProxy
from shared.clients.identity import make_credential
from shared.clients.storage import table_client
from shared.common.answers import MAX_RETRY_AFTER_SECONDS
from shared.common.model import Outcome, SyncRequest
from shared.common.settings import Settings
from shared.engine.state import Attempt, StateStore

AUTOPILOT = SyncRequest("autopilot", caller="chaos")
LEASE = 180  # the default SYNC_LEASE_SECONDS the hosts run with
CONNECTORS = [f"6a1c2f8e-2b1d-4d7e-9a55-3c1f0e6b9d{i:02d}" for i in range(10, 20)]


@pytest.fixture
def proxy(azurite) -> Iterator[FaultProxy]:
    server = FaultProxy(azurite.table_endpoint).start()
    yield server
    server.stop()


@pytest.fixture
def chaos_env(env, azurite, proxy) -> dict[str, str]:
    """The app's settings with its table service behind the fault proxy (queues direct)."""
    storage = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
               f"TableEndpoint={proxy.base_url}/{ACCOUNT};QueueEndpoint=http://127.0.0.1:{azurite.queue_port}/{ACCOUNT};")
    return {**env, "AzureWebJobsStorage": storage}


@pytest.fixture
def hosts(start_app_hosts, chaos_env) -> list[str]:
    return start_app_hosts(2, chaos_env)


@pytest.fixture
def store(env) -> StateStore:
    """The state table as seen from outside the app (straight to Azurite, no faults)."""
    settings = Settings.from_env(env)
    return StateStore(table_client(settings.storage, settings.state_table, make_credential))


def post(host: str, route: str, **kwargs: Any) -> requests.Response:
    answer = requests.post(f"{host}/api/sync/{route}", timeout=90, **kwargs)
    assert answer.status_code != 500, answer.text  # 503 names an upstream fault; 500 would be ours
    return answer


def assert_every_post_is_in_history(graph, store: StateStore, keys: list[str]) -> None:
    """Each sync POST Graph received is one history row, found by its client-request-id."""
    recorded = {row.get("clientRequestId") for key in keys for row in store.history(key, limit=1000)}
    for post_ in sync_posts(graph):
        assert post_["clientRequestId"] in recorded, (post_, recorded)


# --- 1. a commit lost after Graph said 204 -----------------------------------------------------


def test_a_commit_lost_after_graph_started_a_sync_keeps_the_unit_closed_and_is_recorded_later(
        hosts, proxy, graph, store, make_service, clock):
    proxy.add("fail", "POST", "$batch")  # every commit fails; reads and claims go through
    first = post(hosts[0], "autopilot")
    assert first.status_code == 202 and "could not be recorded" in first.json()["message"]
    proxy.clear()  # storage is back
    assert post(hosts[1], "autopilot").status_code == 409  # the claim's lease still stands
    # The first instance is gone for good and its lease has run out: the claim holds the window.
    clock.advance(LEASE + 1)
    later = make_service()
    assert later.sync(AUTOPILOT)[0].outcome is Outcome.COOLDOWN
    [unknown] = store.history("autopilot")
    assert unknown["outcome"] == "unknown" and unknown["ambiguous"] is True  # recorded by the reader
    assert len(sync_posts(graph)) == 1


def test_the_instance_whose_commit_failed_records_graphs_real_answer_when_storage_is_back(hosts, proxy, graph, store):
    proxy.add("fail", "POST", "$batch")
    assert post(hosts[0], "autopilot").status_code == 202
    proxy.clear()
    assert post(hosts[0], "autopilot").status_code == 429  # its next call records the attempt first
    [row] = store.history("autopilot")
    assert row["outcome"] == "started" and row["httpStatus"] == 204
    assert store.read("autopilot").next_allowed_at < datetime.now(UTC) + timedelta(seconds=PAST_WINDOW)
    assert len(sync_posts(graph)) == 1
    assert_every_post_is_in_history(graph, store, ["autopilot"])


def test_storage_unreachable_before_the_claim_means_no_graph_call(hosts, proxy, graph, store):
    proxy.add("drop")  # Azurite "stopped"
    answer = post(hosts[0], "autopilot")
    assert answer.status_code == 503 and answer.json()["errorCode"] == "StateStoreUnavailable"
    assert sync_posts(graph) == []


def test_a_claim_whose_answer_was_lost_causes_at_most_one_sync(hosts, proxy, graph, store, env):
    proxy.add("lose", "POST", f"/{env['SYNC_STATE_TABLE']}", times=1)  # the claim (an insert) lands; its answer is lost
    first = post(hosts[0], "autopilot")
    # Either the retried insert finds the row naming us (and syncs), or the caller is told
    # storage failed and nothing reached Graph; the row holds the claim's window either way.
    assert first.status_code in (202, 503), first.text
    assert post(hosts[1], "autopilot").status_code in (409, 429)
    assert len(sync_posts(graph)) == (1 if first.status_code == 202 else 0)
    assert_every_post_is_in_history(graph, store, ["autopilot"])


def test_a_commit_that_landed_on_its_last_try_after_four_lost_races_is_not_reported_as_failed(
        chaos_env, proxy, store):
    """Another writer changes the row before each of our first four commit transactions (each loses
    its If-Match); the fifth lands but is answered 503, so the client's retry loses to our own
    change. The row read after that last lost write names our outcome: the commit succeeded."""
    key, batches = "autopilot", []

    def other_writer(request: Any) -> None:  # runs as each of our requests leaves, retries included
        if request.http_request.method == "POST" and "$batch" in request.http_request.url:
            batches.append(request.http_request.url)
            if len(batches) <= 4:
                assert store.update(store.read(key)) is not None  # a rewrite: a new ETag
            elif len(batches) == 5:
                proxy.add("busy", "POST", "$batch", times=1)

    settings = Settings.from_env(chaos_env)
    ours = StateStore(table_client(settings.storage, settings.state_table, make_credential, raw_request_hook=other_writer))
    now = datetime.now(UTC)
    lease = ours.claim(ours.read(key), now, LEASE, target=key)
    assert lease is not None
    outcome = replace(lease.state.without_claim(), next_allowed_at=now + timedelta(seconds=PAST_WINDOW),
                      last_client_request_id="crid-ours", last_attempt_at=now, last_outcome="started")
    ours.commit(lease, outcome, Attempt(now, now, "api", "chaos", "started", http_status=204,
                                        client_request_id="crid-ours"))

    assert len(batches) == 6  # four lost races, our landed write, its retry lost to ourselves
    row = store.read(key)
    assert (row.last_client_request_id, row.last_attempt_at, row.lease_owner) == ("crid-ours", now, None)
    [history] = store.history(key)
    assert history["clientRequestId"] == "crid-ours"


# --- 2. a hanging token endpoint ---------------------------------------------------------------


def test_a_hanging_identity_endpoint_holds_no_lease_and_causes_no_second_sync(hosts, graph, store, identity_server):
    identity_server.configure(hangSeconds=12, hangTimes=1)  # the first token request hangs
    slow: dict[str, requests.Response] = {}
    waiting = threading.Thread(target=lambda: slow.setdefault("answer", post(hosts[0], "autopilot")))
    waiting.start()
    wait_until(lambda: identity_server.hang_times == 0, what="the token request that hangs")
    assert store.read("autopilot").lease_owner is None  # waiting for a token holds nothing
    assert post(hosts[1], "autopilot").status_code == 202  # another instance syncs meanwhile
    waiting.join(60)
    assert slow["answer"].status_code in (409, 429)  # the slow one, once it has a token, is refused
    assert len(sync_posts(graph)) == 1
    assert_every_post_is_in_history(graph, store, ["autopilot"])


# --- 3. an ambiguous POST ----------------------------------------------------------------------


def test_a_sync_post_that_timed_out_after_landing_closes_the_window_for_every_instance(hosts, graph, store):
    faults(graph, {"method": "POST", "pathContains": "/sync", "delaySeconds": 3, "times": 1})  # timeout is 2 s
    first = post(hosts[0], "autopilot")
    assert first.status_code == 202 and "may have started" in first.json()["message"]
    assert post(hosts[1], "autopilot").status_code == 429  # the caller's retry, elsewhere
    # Graph carries the first POST out (recorded when answered, after its delay)
    wait_until(lambda: any(p["status"] == 204 for p in sync_posts(graph)), what="the delayed POST's answer")
    assert len(sync_posts(graph)) == 1 and sync_posts(graph)[0]["status"] == 204
    [row] = store.history("autopilot")
    assert row["ambiguous"] is True and row["outcome"] == "started"
    assert_every_post_is_in_history(graph, store, ["autopilot"])


# --- 4. odd values from upstream ---------------------------------------------------------------

ODD_RETRY_AFTER = ["inf", "1e10", "300000000000", "-5", "soon", "Wed, 21 Oct 2099 07:28:00 GMT",
                   "Mon, 01 Jan 2001 00:00:00 GMT", "NaN"]


def test_odd_retry_after_values_on_429_never_500_and_never_lock_a_unit_past_the_maximum(hosts, graph, store):
    configure(graph, connectors=[{"id": c, "status": "connected"} for c in CONNECTORS])
    for index, (connector, value) in enumerate(zip(CONNECTORS, ODD_RETRY_AFTER, strict=False)):
        faults(graph, {"method": "POST", "pathContains": connector, "status": 429, "retryAfter": value, "times": 1})
        answer = post(hosts[index % 2], f"exchange/{connector}")
        assert answer.status_code == 429, (value, answer.text)
        assert 1 <= int(answer.headers["Retry-After"]) <= MAX_RETRY_AFTER_SECONDS, value
        next_allowed = store.read(f"exchange-{connector}").next_allowed_at
        assert next_allowed <= datetime.now(UTC) + timedelta(seconds=MAX_RETRY_AFTER_SECONDS + 5)
    assert len(sync_posts(graph)) == len(ODD_RETRY_AFTER)
    assert_every_post_is_in_history(graph, store, [f"exchange-{c}" for c in CONNECTORS])


def test_odd_retry_after_values_on_503_and_409_never_500(hosts, graph, store):
    configure(graph, connectors=[{"id": c, "status": "connected"} for c in CONNECTORS])
    for index, (connector, value) in enumerate(zip(CONNECTORS, ODD_RETRY_AFTER, strict=False)):
        status = 503 if index % 2 else 409
        faults(graph, {"method": "POST", "pathContains": connector, "status": status, "retryAfter": value, "times": 4})
        answer = post(hosts[index % 2], f"exchange/{connector}")
        assert answer.status_code == status, (value, answer.text)
    assert_every_post_is_in_history(graph, store, [f"exchange-{c}" for c in CONNECTORS])


def test_graph_timestamps_without_an_offset_are_read_as_utc(hosts, graph):
    configure(graph, connectors=[{"id": CONNECTORS[0], "status": "connected", "lastSyncDateTime": "2026-11-25T10:00:00"}])
    answer = requests.get(f"{hosts[0]}/api/sync/status", timeout=60)
    assert answer.status_code == 200
    exchange = next(t for t in answer.json()["targets"] if t["target"] == "exchange")
    assert exchange["graph"][0]["lastSyncDateTime"] == "2026-11-25T10:00:00"


# --- 5. a unit whose item is deleted -----------------------------------------------------------


def test_a_deleted_connector_neither_stops_the_watcher_nor_the_other_units(start_app_hosts, chaos_env, graph, store, sink):
    hosts = start_app_hosts(2, {**chaos_env, "NOTIFY_URL": sink.url})
    configure(graph, connectors=[{"id": c, "status": "connected"} for c in CONNECTORS[:3]])
    for connector in CONNECTORS[:3]:
        assert post(hosts[0], f"exchange/{connector}").status_code == 202
    synced = requests.get(f"{graph.base_url}/_emulator/stats", timeout=5).json()["now"]
    configure(graph, connectors=[{"id": c, "status": "connected", "lastSyncDateTime": synced}
                                    for c in CONNECTORS[1:3]])  # the first is deleted; the others have synced
    watched = requests.post(f"{hosts[1]}/admin/functions/sync_watch", timeout=60)
    assert watched.status_code < 300, watched.text
    gone = store.read(f"exchange-{CONNECTORS[0]}")
    assert gone.completion_pending is False and gone.last_outcome == "skipped" and "no longer exists" in gone.last_message
    for connector in CONNECTORS[1:3]:
        assert store.read(f"exchange-{connector}").completion_pending is False  # followed to the end
    completed = [n for n in sink.wait_for(5) if n["event"] == "syncCompleted"]
    assert sorted(n["target"] for n in completed) == sorted(f"exchange/{c}" for c in CONNECTORS[1:3])


def test_a_deferred_sync_of_a_deleted_connector_ends_as_skipped_not_in_the_poison_queue(make_service, graph, clock, env):
    configure(graph, connectors=[{"id": CONNECTORS[0], "status": "connected"}])
    service = make_service()
    route = SyncRequest("exchange", CONNECTORS[0], caller="chaos")
    service.sync(route)
    assert service.sync(replace(route, defer=True))[0].outcome is Outcome.SCHEDULED
    state = service.store.read(f"exchange-{CONNECTORS[0]}")
    configure(graph, connectors=[])
    clock.advance(601)
    from shared.engine.deferred import PendingFire

    result = service.fire(PendingFire(state.key, "exchange", CONNECTORS[0], state.pending_id, state.pending_at))
    assert result.outcome is Outcome.SKIPPED
    after = service.store.read(state.key)
    assert after.pending_id is None and "no longer exists" in after.pending_failure


# --- 7. one queue message per pending sync -----------------------------------------------------


def test_twenty_deferred_asks_from_four_processes_send_exactly_one_queue_message(start_app_hosts, chaos_env, env, graph):
    hosts = start_app_hosts(4, chaos_env)
    assert post(hosts[0], "autopilot").status_code == 202
    barrier = threading.Barrier(20)

    def ask(i: int) -> int:
        barrier.wait()
        return post(hosts[i % 4], "autopilot", params={"defer": "true"}).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        assert list(pool.map(ask, range(20))) == [202] * 20
    assert queue_length(env) == 1
    assert len(sync_posts(graph)) == 1


def test_a_pending_sync_whose_message_was_never_sent_is_sent_by_the_watcher(make_service, graph, clock, env):
    service = make_service()
    service.sync(AUTOPILOT)
    state = service.store.read("autopilot")
    # As if the instance stopped between recording the pending sync and sending its message.
    service.store.update(replace(state, pending_id="f" * 32, pending_at=state.next_allowed_at, pending_since=clock.now,
                                 pending_asked_by="http:chaos", pending_reschedules=0))
    assert queue_length(env) == 0
    clock.advance(PAST_WINDOW + 120)
    service.watch()
    assert queue_length(env) == 1


def test_a_queue_outage_loses_no_deferred_sync_and_the_watcher_sends_it_later(make_service, azurite, graph, clock, env):
    queue_proxy = FaultProxy(f"http://127.0.0.1:{azurite.queue_port}").start()
    try:
        storage = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                   f"TableEndpoint={azurite.table_endpoint};QueueEndpoint={queue_proxy.base_url}/{ACCOUNT};")
        service = make_service(AzureWebJobsStorage=storage)
        service.sync(AUTOPILOT)
        queue_proxy.add("drop")  # the queue service is down when the deferred ask comes
        asked = time.monotonic()
        result = service.sync(replace(AUTOPILOT, defer=True))[0]
        assert time.monotonic() - asked < 10  # the caller is told at once, not after the SDK's long back-off
        assert result.outcome is Outcome.SCHEDULED and "watcher" in result.message
        assert service.store.read("autopilot").pending_id is not None and queue_length(env) == 0
        queue_proxy.clear()
        clock.advance(PAST_WINDOW + 120)  # the pending sync is overdue: its message never went out
        service.watch()
        assert queue_length(env) == 1
        assert len(sync_posts(graph)) == 1  # nothing fired early, nothing twice
    finally:
        queue_proxy.stop()


# --- 8, 9. bad input through the real hosts ----------------------------------------------------


def test_bad_input_and_forged_forwarding_headers_never_get_a_5xx(hosts, graph):
    nested = "[" * 1100 + "]" * 1100
    answers = [
        post(hosts[0], "autopilot", data=nested, headers={"Content-Type": "application/json"}),
        post(hosts[1], "exchange/not-a-guid"),
        post(hosts[0], "exchange/" + CONNECTORS[0], data='{"syncType": ' * 300, headers={"Content-Type": "application/json"}),
        post(hosts[1], "autopilot", params={"wait": "true"},
             headers={"X-Forwarded-Host": "127.0.0.1:80@evil.example", "X-Forwarded-Proto": "http"}),
    ]
    assert [a.status_code for a in answers[:3]] == [400, 400, 400], [a.text for a in answers]
    assert "evil.example" not in answers[3].headers.get("Location", "")
    assert all(a.status_code < 500 for a in answers)
    assert len(sync_posts(graph)) == 1  # only the last one reached Graph
