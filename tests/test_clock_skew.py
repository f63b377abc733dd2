"""Clocks that differ: a margin over every window Graph imposes, and Graph's own Date.

Against Azurite and the Graph emulator, whose clock (sent as each answer's ``Date``) is moved away
from the service instances' clocks. Graph counts its 10-minute Autopilot window on its own clock;
no second POST may land inside it whatever the instances' clocks say.
"""
from __future__ import annotations

import threading
import time
from datetime import timedelta
from email.utils import format_datetime

import pytest
import requests
from conftest import SKEW_MARGIN_SECONDS, FakeClock, configure, faults, one, sync_posts

from emulators.graph import GraphEmulator
from shared.common.model import Outcome, SyncRequest
from shared.common.settings import DEFAULTS

AUTOPILOT = SyncRequest("autopilot", caller="test")
MARGIN = SKEW_MARGIN_SECONDS


def move_clocks(graph: GraphEmulator, seconds: float, *clocks: FakeClock) -> None:
    """Time passes for Graph and every instance alike."""
    for clock in clocks:
        clock.advance(seconds)
    requests.post(f"{graph.base_url}/_emulator/clock", json={"advanceSeconds": seconds}, timeout=5).raise_for_status()


@pytest.mark.parametrize("a_behind, b_behind", [(45, 10), (200, 0), (12, -15), (0, -25)],
                         ids=["both-behind-45-and-10", "one-behind-200", "behind-12-ahead-15", "ahead-25"])
def test_no_second_autopilot_post_lands_in_graphs_window_whatever_the_instances_clocks(
        make_service, graph, a_behind, b_behind):
    """Instance A syncs; instance B, its clock ``a_behind - b_behind`` s ahead of A's, tries every
    5 s from 9 minutes on: Graph never answers 429, and B's sync starts once Graph's window ends."""
    clock_a = FakeClock(graph.now() - timedelta(seconds=a_behind))
    clock_b = FakeClock(graph.now() - timedelta(seconds=b_behind))
    a, b = make_service(instance_clock=clock_a), make_service(instance_clock=clock_b)
    assert one(a.sync(AUTOPILOT)).outcome is Outcome.STARTED
    move_clocks(graph, 540, clock_a, clock_b)
    for _ in range(80):
        if one(b.sync(AUTOPILOT)).outcome is Outcome.STARTED:
            break
        move_clocks(graph, 5, clock_a, clock_b)
    assert [p["status"] for p in sync_posts(graph)] == [204, 204]


@pytest.mark.parametrize("ahead", [75, 400])
def test_a_window_recorded_while_graphs_clock_is_ahead_is_moved_by_the_offset_and_noted(
        make_service, graph, clock, caplog, ahead):
    move_clocks(graph, ahead)  # Graph's clock, not the service's
    service = make_service()
    result = one(service.sync(AUTOPILOT))
    moved = result.next_allowed_at - (clock.now + timedelta(seconds=600 + MARGIN))
    # At least the offset; a little more for the real seconds Graph's clock ran on meanwhile.
    assert timedelta(seconds=ahead) <= moved < timedelta(seconds=ahead + 10)
    assert "Graph's clock is" in str(service.store.read("autopilot").last_message)
    assert any("Graph's clock is" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_a_graph_clock_ahead_by_less_than_the_margin_leaves_the_window_to_the_margin(make_service, graph, clock):
    move_clocks(graph, MARGIN - 10)
    result = one(make_service().sync(AUTOPILOT))
    assert result.next_allowed_at == clock.now + timedelta(seconds=600 + MARGIN)
    assert "Graph's clock" not in result.message


@pytest.mark.parametrize("margin", ["1", "45", "300"])
def test_a_started_autopilot_sync_closes_the_unit_for_graphs_window_plus_the_margin(make_service, clock, margin):
    result = one(make_service(CLOCK_SKEW_MARGIN_SECONDS=margin).sync(AUTOPILOT))
    assert result.next_allowed_at == clock.now + timedelta(seconds=600 + int(margin))


def test_a_cooldown_longer_than_graphs_window_and_the_margin_stands_as_set(make_service, clock):
    result = one(make_service(AUTOPILOT_COOLDOWN_SECONDS="3600").sync(AUTOPILOT))
    assert result.next_allowed_at == clock.now + timedelta(seconds=3600)


def test_a_started_apple_sync_closes_its_token_for_apples_window_plus_the_margin(make_service, clock):
    token = "2f0a8b6e-6c3d-4f5e-9a1b-7c2d3e4f5a01"
    result = one(make_service(SYNC_TARGETS="appleAde").sync(SyncRequest("appleAde", token, caller="test")))
    assert result.outcome is Outcome.STARTED
    assert result.next_allowed_at == clock.now + timedelta(seconds=900 + MARGIN)


def test_the_claim_holds_the_unit_for_the_window_plus_the_margin(make_service, graph, clock):
    faults(graph, {"method": "POST", "pathContains": "/sync", "delaySeconds": 1.5})
    syncing = threading.Thread(target=make_service().sync, args=(AUTOPILOT,))
    syncing.start()
    reader, deadline = make_service(), time.monotonic() + 10
    state = reader.store.read("autopilot")
    while state.claim_at is None and time.monotonic() < deadline:  # the claim, while Graph is slow to answer
        state = reader.store.read("autopilot")
    syncing.join()
    lease = int(DEFAULTS["SYNC_LEASE_SECONDS"])
    assert state.claim_at is not None and state.next_allowed_at == clock.now + timedelta(seconds=lease + 600 + MARGIN)


def test_graphs_429_retry_after_gets_the_margin_too(make_service, graph, clock):
    configure(graph, lastManualSyncTriggerDateTime=(clock.now - timedelta(minutes=2)).isoformat(), retryAfterOn429=120)
    result = one(make_service().sync(AUTOPILOT))
    assert result.outcome is Outcome.COOLDOWN and result.graph_status == 429
    assert result.next_allowed_at == clock.now + timedelta(seconds=120 + MARGIN)


def test_a_429_without_retry_after_ends_graphs_window_plus_the_margin_after_the_last_trigger(make_service, graph, clock):
    portal = clock.now - timedelta(minutes=4)
    configure(graph, lastManualSyncTriggerDateTime=portal.isoformat())
    result = one(make_service().sync(AUTOPILOT))
    assert result.outcome is Outcome.COOLDOWN and result.graph_status == 429
    assert abs(result.next_allowed_at - (portal + timedelta(seconds=600 + MARGIN))) < timedelta(seconds=1)


@pytest.mark.parametrize("behind", [120, 250])
def test_a_retry_after_date_is_counted_on_graphs_clock_not_ours(make_service, graph, clock, behind):
    move_clocks(graph, -behind)  # Graph's clock behind the service's
    until = format_datetime(graph.now() + timedelta(seconds=300), usegmt=True)
    faults(graph, {"method": "POST", "pathContains": "/sync", "status": 429, "retryAfter": until})
    result = one(make_service().sync(AUTOPILOT))
    assert result.outcome is Outcome.COOLDOWN
    waited = (result.next_allowed_at - clock.now).total_seconds()
    assert 300 + MARGIN - 2 <= waited <= 300 + MARGIN + 1
