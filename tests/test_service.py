"""The sync service against real Azurite and the Graph emulator: cooldown, lease, history."""
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from conftest import (
    AUTOPILOT_CLOSED_SECONDS,
    PAST_WINDOW,
    ROOT,
    SKEW_MARGIN_SECONDS,
    advance,
    configure,
    faults,
    graph_calls,
    one,
    sync_posts,
    unreachable_storage,
    wait_until,
)

from emulators.azurite import Azurite
from shared.clients.graph import PERMISSION
from shared.common.model import Outcome, SyncRequest, Trigger
from shared.engine.state import Attempt
from shared.engine.targets import ItemNotFound

AUTOPILOT = SyncRequest("autopilot", trigger=Trigger.HTTP, caller="test")
CONNECTED = "6a1c2f8e-2b1d-4d7e-9a55-3c1f0e6b9d01"
DISCONNECTED = "0b7d4e3a-91c2-4f6b-8e0d-5a2b7c9e1f02"


def test_a_granted_sync_starts_and_opens_a_cooldown(service, graph, clock):
    result = one(service.sync(AUTOPILOT))
    assert result.outcome is Outcome.STARTED
    assert result.next_allowed_at == clock.now + timedelta(seconds=AUTOPILOT_CLOSED_SECONDS)
    assert result.graph_status == 204 and result.graph_request_id and result.client_request_id
    assert len(sync_posts(graph)) == 1


def test_a_granted_sync_costs_one_post_and_three_table_round_trips(service, graph, table_counter):
    service.store.read("autopilot")  # the table exists from here on
    table_counter.reset()
    assert one(service.sync(AUTOPILOT)).outcome is Outcome.STARTED
    assert len(sync_posts(graph)) == 1
    assert table_counter.count <= 3, table_counter.methods


def test_a_refusal_costs_no_graph_call_and_one_table_round_trip(make_service, graph, table_counter):
    make_service().sync(AUTOPILOT)  # another instance synced
    calls_before = len(graph_calls(graph))
    table_counter.reset()
    result = one(make_service().sync(AUTOPILOT))
    assert result.outcome is Outcome.COOLDOWN and result.retry_after_seconds == AUTOPILOT_CLOSED_SECONDS
    assert len(graph_calls(graph)) == calls_before
    assert table_counter.count == 1


def test_a_refusal_this_process_already_knows_costs_no_round_trip_at_all(service, graph, table_counter, clock):
    service.sync(AUTOPILOT)
    calls_before = len(graph_calls(graph))
    table_counter.reset()
    clock.advance(100)
    result = one(service.sync(AUTOPILOT))
    assert result.outcome is Outcome.COOLDOWN and result.retry_after_seconds == AUTOPILOT_CLOSED_SECONDS - 100
    assert table_counter.count == 0 and len(graph_calls(graph)) == calls_before


def test_a_remembered_cooldown_ends_on_time(service, graph, clock):
    service.sync(AUTOPILOT)
    advance(clock, graph, PAST_WINDOW)
    assert one(service.sync(AUTOPILOT)).outcome is Outcome.STARTED


def test_after_the_cooldown_the_next_sync_is_granted(service, graph, clock):
    service.sync(AUTOPILOT)
    advance(clock, graph, PAST_WINDOW)
    assert one(service.sync(AUTOPILOT)).outcome is Outcome.STARTED
    assert len(sync_posts(graph)) == 2


def test_graph_409_is_in_progress_and_holds_callers_back_briefly(service, graph, clock):
    configure(graph, lastManualSyncTriggerDateTime=clock.now.isoformat())  # someone pressed Sync
    result = one(service.sync(AUTOPILOT))
    assert result.outcome is Outcome.IN_PROGRESS and result.graph_status == 409
    assert result.next_allowed_at == clock.now + timedelta(seconds=60)
    again = one(service.sync(AUTOPILOT))
    assert again.outcome is Outcome.IN_PROGRESS and len(sync_posts(graph)) == 1


def test_graph_429_without_retry_after_ends_ten_minutes_and_the_margin_after_the_last_trigger(service, graph, clock):
    portal = clock.now - timedelta(minutes=4)
    configure(graph, lastManualSyncTriggerDateTime=portal.isoformat(), syncDurationSeconds=30)
    result = one(service.sync(AUTOPILOT))
    assert result.outcome is Outcome.COOLDOWN and result.graph_status == 429
    assert abs(result.next_allowed_at - (portal + timedelta(seconds=AUTOPILOT_CLOSED_SECONDS))) < timedelta(seconds=1)


def test_graph_429_with_retry_after_uses_it_and_the_margin(service, graph, clock):
    configure(graph, lastManualSyncTriggerDateTime=(clock.now - timedelta(minutes=2)).isoformat(), retryAfterOn429=120)
    result = one(service.sync(AUTOPILOT))
    assert result.outcome is Outcome.COOLDOWN
    assert result.next_allowed_at == clock.now + timedelta(seconds=120 + SKEW_MARGIN_SECONDS)


def test_history_records_each_attempt_that_reached_graph(service, graph, clock):
    service.sync(AUTOPILOT)
    service.sync(AUTOPILOT)  # refused locally: not an attempt
    advance(clock, graph, PAST_WINDOW)
    service.sync(SyncRequest("autopilot", trigger=Trigger.TIMER, caller="timer"))
    rows = service.store.history("autopilot")
    assert [r["trigger"] for r in rows] == ["timer", "http"]  # newest first
    post = sync_posts(graph)[0]
    oldest = rows[-1]
    assert oldest["outcome"] == "started" and oldest["httpStatus"] == 204 and oldest["caller"] == "test"
    assert oldest["clientRequestId"] == post["clientRequestId"] and oldest["graphRequestId"]
    assert oldest["durationMs"] >= 0 and oldest["finishedAt"] >= oldest["attemptAt"]


def test_the_outcome_row_and_history_row_agree(service):
    service.sync(AUTOPILOT)
    state = service.store.read("autopilot")
    row = service.store.history("autopilot")[0]
    assert state.last_graph_request_id == row["graphRequestId"] and state.last_outcome == row["outcome"]
    assert state.lease_owner is None


DIE_HOLDING_LEASE = """
import os, sys
from datetime import datetime, timezone
sys.path.insert(0, {root!r})
from azure.data.tables import TableClient
from shared.engine.state import StateStore
store = StateStore(TableClient.from_connection_string({conn!r}, {table!r}))
lease = store.claim(store.read("autopilot"), datetime.now(timezone.utc), 180, target="autopilot")
assert lease is not None
os._exit(17)  # the instance dies mid-sync: no Graph call, no commit
"""


def test_an_instance_that_dies_holding_the_lease_blocks_only_until_it_expires(service, graph, clock, env):
    code = DIE_HOLDING_LEASE.format(root=str(ROOT), conn=env["AzureWebJobsStorage"], table=env["SYNC_STATE_TABLE"])
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 17
    blocked = one(service.sync(AUTOPILOT))
    assert blocked.outcome is Outcome.IN_PROGRESS and sync_posts(graph) == []
    # The dead instance claimed on the real clock, some seconds after the test clock was set (a
    # loaded machine starts a process slowly): move past its lease by a margin.
    advance(clock, graph, 181 + 60)
    assert one(service.sync(AUTOPILOT)).outcome is Outcome.STARTED
    assert len(sync_posts(graph)) == 1


def test_graph_403_fails_naming_the_permission_and_frees_the_unit(service, graph, identity_server):
    identity_server.configure(roles=[])
    result = one(service.sync(AUTOPILOT))
    assert result.outcome is Outcome.FAILED and result.failure_status == 502
    assert PERMISSION in result.message and result.error_code == "GraphAccessDenied"
    state = service.store.read("autopilot")
    assert state.lease_owner is None and state.next_allowed_at is None
    assert service.store.history("autopilot")[0]["httpStatus"] == 403


def test_graph_503_then_204_is_started_after_a_retry(service, graph):
    faults(graph, {"method": "POST", "pathContains": "/sync", "status": 503, "times": 1})
    result = one(service.sync(AUTOPILOT))
    assert result.outcome is Outcome.STARTED
    assert [c["status"] for c in sync_posts(graph)] == [503, 204]


def test_a_sync_post_that_times_out_starts_the_cooldown_and_is_recorded_as_ambiguous(service, graph):
    faults(graph, {"pathContains": "/sync", "delaySeconds": 2.5, "times": 10})
    result = one(service.sync(AUTOPILOT))
    assert result.outcome is Outcome.STARTED and "may have started" in result.message
    assert result.next_allowed_at is not None
    [row] = service.store.history("autopilot")
    assert row["ambiguous"] is True and row["outcome"] == "started" and "timed out" in row["error"]
    # Graph performs the slow request (recorded when answered); the caller's retry must not send another
    wait_until(lambda: sync_posts(graph), what="Graph's answer to the slow POST")
    assert one(service.sync(AUTOPILOT)).outcome is Outcome.COOLDOWN
    assert len(sync_posts(graph)) == 1


def test_graph_not_reachable_fails_as_unavailable_without_a_cooldown(make_service, graph):
    from emulators.azurite import free_port

    service = make_service(GRAPH_BASE_URL=f"http://127.0.0.1:{free_port()}")
    result = one(service.sync(AUTOPILOT))
    assert result.outcome is Outcome.FAILED and result.failure_status == 503 and "could not be reached" in result.message
    assert service.store.read("autopilot").next_allowed_at is None  # nothing was sent: a retry may go ahead
    assert service.store.history("autopilot")[0].get("ambiguous") is None


def test_a_sync_post_resent_after_a_401_keeps_one_client_request_id_found_in_history(service, graph):
    service.graph.ensure_token()
    configure(graph, revokeTokens=True)
    assert one(service.sync(AUTOPILOT)).outcome is Outcome.STARTED
    posts = sync_posts(graph)
    assert [p["status"] for p in posts] == [401, 204]
    assert {p["clientRequestId"] for p in posts} == {service.store.history("autopilot")[0]["clientRequestId"]}


def test_token_endpoint_down_is_503_and_frees_the_unit(service, graph, identity_server):
    identity_server.configure(failing=True)
    result = one(service.sync(AUTOPILOT))
    assert result.outcome is Outcome.FAILED and result.failure_status == 503
    assert result.error_code == "TokenUnavailable" and sync_posts(graph) == []
    assert service.store.read("autopilot").lease_owner is None


def test_state_store_down_is_503_with_no_graph_call_and_no_state_lost(make_service, graph, env, clock):
    with Azurite() as own:  # its own Azurite: this test stops it
        svc = make_service(AzureWebJobsStorage=own.connection_string)
        assert one(svc.sync(AUTOPILOT)).outcome is Outcome.STARTED
        own.stop()
        result = one(make_service(AzureWebJobsStorage=own.connection_string).sync(AUTOPILOT))  # another instance
        assert result.outcome is Outcome.FAILED and result.failure_status == 503
        assert result.error_code == "StateStoreUnavailable" and "Table Storage" in result.message
        assert len(sync_posts(graph)) == 1
        own.start()  # same data: a fresh instance finds the cooldown in the table
        assert one(make_service(AzureWebJobsStorage=own.connection_string).sync(AUTOPILOT)).outcome is Outcome.COOLDOWN


def test_a_commit_after_losing_the_lease_still_records_the_attempt(service, clock):
    store = service.store
    mine = store.claim(store.read("autopilot"), clock.now, 60, target="autopilot")
    later = clock.now + timedelta(seconds=120)
    theirs = store.claim(store.read("autopilot"), later, 60, target="autopilot")  # mine had expired
    assert mine and theirs
    from dataclasses import replace

    outcome = replace(mine.state, lease_owner=None, lease_expires_at=None, last_outcome="started",
                      next_allowed_at=clock.now + timedelta(seconds=600))
    store.commit(mine, outcome, Attempt(clock.now, clock.now, "http", "test", "started", http_status=204))
    state = store.read("autopilot")
    assert state.lease_owner == theirs.owner  # their lease is untouched
    assert state.next_allowed_at == clock.now + timedelta(seconds=600)
    assert [r["outcome"] for r in store.history("autopilot")] == ["started"]


def test_exchange_syncs_connected_connectors_and_skips_the_others(service, graph):
    results = {r.target: r for r in service.sync(SyncRequest("exchange"))}
    assert results[f"exchange/{CONNECTED}"].outcome is Outcome.STARTED
    assert results[f"exchange/{DISCONNECTED}"].outcome is Outcome.SKIPPED
    assert "disconnected" in results[f"exchange/{DISCONNECTED}"].message
    assert [p["path"] for p in sync_posts(graph)] == [f"/v1.0/deviceManagement/exchangeConnectors/{CONNECTED}/sync"]


def test_exchange_sync_sends_the_configured_sync_type(make_service, graph):
    make_service(EXCHANGE_SYNC_TYPE="fullSync").sync(SyncRequest("exchange", item_id=CONNECTED))
    assert json.loads(sync_posts(graph)[0]["body"]) == {"syncType": "fullSync"}


def test_a_callers_sync_type_overrides_the_default(service, graph):
    service.sync(SyncRequest("exchange", item_id=CONNECTED, sync_type="fullSync"))
    assert json.loads(sync_posts(graph)[0]["body"]) == {"syncType": "fullSync"}


def test_each_connector_has_its_own_cooldown(service, graph):
    configure(graph, connectors=[{"id": CONNECTED, "status": "connected"}, {"id": DISCONNECTED, "status": "connected"}])
    assert one(service.sync(SyncRequest("exchange", item_id=CONNECTED))).outcome is Outcome.STARTED
    assert one(service.sync(SyncRequest("exchange", item_id=CONNECTED))).outcome is Outcome.COOLDOWN
    assert one(service.sync(SyncRequest("exchange", item_id=DISCONNECTED))).outcome is Outcome.STARTED


def test_a_named_disconnected_connector_is_skipped_without_a_sync(service, graph):
    result = one(service.sync(SyncRequest("exchange", item_id=DISCONNECTED)))
    assert result.outcome is Outcome.SKIPPED and sync_posts(graph) == []


def test_an_unknown_connector_is_not_found(service, graph):
    with pytest.raises(ItemNotFound):
        service.sync(SyncRequest("exchange", item_id="11111111-2222-3333-4444-555555555555"))
    assert sync_posts(graph) == []


def test_the_timer_syncs_every_target_and_one_failure_does_not_stop_the_others(service, graph):
    faults(graph, {"method": "GET", "pathContains": "exchangeConnectors", "status": 503, "times": 10})
    results = {r.target: r for r in service.sync_enabled()}
    assert results["autopilot"].outcome is Outcome.STARTED
    assert results["exchange"].outcome is Outcome.FAILED and results["exchange"].failure_status == 503


def test_status_shows_local_state_next_to_graphs_own(service, graph):
    service.sync(AUTOPILOT)
    status = service.status()
    autopilot = next(t for t in status["targets"] if t["target"] == "autopilot")
    assert autopilot["units"][0]["lastOutcome"] == "started" and autopilot["units"][0]["inCooldown"]
    assert autopilot["graph"][0]["syncStatus"] == "inProgress"
    assert autopilot["graph"][0]["lastManualSyncTriggerDateTime"].startswith(str(datetime.now(UTC).year))


def test_graph_429_with_retry_after_zero_still_holds_the_window(service, graph, clock):
    configure(graph, lastManualSyncTriggerDateTime=(clock.now - timedelta(minutes=2)).isoformat(), retryAfterOn429=0)
    result = one(service.sync(AUTOPILOT))
    assert result.outcome is Outcome.COOLDOWN and result.next_allowed_at > clock.now
    assert one(service.sync(AUTOPILOT)).outcome is Outcome.COOLDOWN
    assert len(sync_posts(graph)) == 1


def test_a_fan_out_where_every_unit_is_refused_costs_no_graph_call_and_one_table_round_trip(make_service, graph, table_counter):
    make_service().sync(SyncRequest("exchange"))
    calls_before = len(graph_calls(graph))
    table_counter.reset()
    results = make_service().sync(SyncRequest("exchange"))
    assert [r.outcome for r in results] == [Outcome.COOLDOWN]
    assert len(graph_calls(graph)) == calls_before and table_counter.count == 1


def test_a_fan_out_with_table_storage_down_fails_before_any_graph_call(make_service, graph):
    result = one(make_service(AzureWebJobsStorage=unreachable_storage()).sync(SyncRequest("exchange")))
    assert result.outcome is Outcome.FAILED and result.failure_status == 503 and result.target == "exchange"
    assert graph_calls(graph) == []
