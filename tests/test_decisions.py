"""The service's decisions (shared/engine/decisions.py): pure functions, no servers, milliseconds."""
from datetime import UTC, datetime, timedelta

from shared.common.errors import GraphUnavailable
from shared.common.model import Outcome
from shared.engine.decisions import (
    IN_FLIGHT_RETRY_AFTER,
    IN_PROGRESS_BACKOFF,
    MAX_GRAPH_CLOCK_AHEAD,
    caller_names,
    closed_for,
    closed_until,
    graph_answer,
    graph_clock_ahead,
    in_cooldown,
    in_flight,
    no_answer,
    not_before,
    orphaned_claim,
    refusal_for,
    seconds_until,
)
from shared.engine.state import UnitState

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TEN_MINUTES = timedelta(minutes=10)


def row(**fields) -> UnitState:
    return UnitState(key="autopilot", etag="e", **fields)


# --- may this unit sync now? ------------------------------------------------------------------


def test_a_unit_with_no_row_may_sync():
    assert refusal_for("autopilot", UnitState(key="autopilot"), NOW) is None


def test_a_unit_whose_window_has_ended_may_sync():
    assert refusal_for("autopilot", row(next_allowed_at=NOW - timedelta(seconds=1)), NOW) is None


def test_a_unit_inside_its_window_is_in_cooldown_until_its_end():
    refused = refusal_for("autopilot", row(next_allowed_at=NOW + timedelta(seconds=90), last_outcome="started"), NOW)
    assert refused.outcome is Outcome.COOLDOWN and refused.retry_after_seconds == 90
    assert refused.next_allowed_at == NOW + timedelta(seconds=90)


def test_a_unit_graph_reported_running_is_in_progress_until_its_back_off_ends():
    refused = refusal_for("autopilot", row(next_allowed_at=NOW + timedelta(seconds=30), last_outcome="inProgress"), NOW)
    assert refused.outcome is Outcome.IN_PROGRESS and refused.retry_after_seconds == 30


def test_a_unit_with_a_live_lease_is_in_progress_and_its_claims_hold_is_not_shown_as_the_window():
    claimed = row(lease_owner="x", lease_expires_at=NOW + timedelta(seconds=60), claim_at=NOW,
                  next_allowed_at=NOW + timedelta(minutes=13))
    refused = refusal_for("autopilot", claimed, NOW)
    assert refused.outcome is Outcome.IN_PROGRESS and refused.retry_after_seconds == IN_FLIGHT_RETRY_AFTER
    assert refused.next_allowed_at is None


def test_an_expired_lease_no_longer_refuses_but_its_claims_hold_does():
    orphan = row(lease_owner="x", lease_expires_at=NOW - timedelta(seconds=1), claim_at=NOW - timedelta(minutes=3),
                 next_allowed_at=NOW + timedelta(minutes=10))
    assert refusal_for("autopilot", orphan, NOW).outcome is Outcome.COOLDOWN
    assert orphaned_claim(orphan, NOW)


def test_a_window_is_closed_until_its_end_and_open_from_it():
    end = NOW + timedelta(seconds=1)
    assert closed_until(end, NOW) == end
    assert closed_until(NOW, NOW) is None and closed_until(NOW - timedelta(seconds=1), NOW) is None
    assert closed_until(None, NOW) is None


def test_a_unit_is_in_cooldown_exactly_while_its_next_allowed_at_lies_ahead():
    assert in_cooldown(row(next_allowed_at=NOW + timedelta(seconds=1)), NOW)
    assert not in_cooldown(row(next_allowed_at=NOW), NOW)
    assert not in_cooldown(UnitState(key="autopilot"), NOW)
    # a claim's pessimistic hold is a closed window too
    assert in_cooldown(row(lease_owner="x", lease_expires_at=NOW + timedelta(seconds=60), claim_at=NOW,
                           next_allowed_at=NOW + timedelta(minutes=13)), NOW)


def test_a_sync_is_in_flight_exactly_while_an_owned_lease_has_not_expired():
    assert in_flight(row(lease_owner="x", lease_expires_at=NOW + timedelta(seconds=1)), NOW)
    assert not in_flight(row(lease_owner="x", lease_expires_at=NOW), NOW)
    assert not in_flight(row(lease_owner=None, lease_expires_at=NOW + timedelta(seconds=60)), NOW)
    assert not in_flight(row(lease_owner="x"), NOW)


def test_a_claim_is_orphaned_only_once_its_lease_lapsed_with_the_claim_still_on_the_row():
    live = row(lease_owner="x", lease_expires_at=NOW + timedelta(seconds=1), claim_at=NOW)
    assert not orphaned_claim(live, NOW) and orphaned_claim(live, NOW + timedelta(seconds=1))
    assert not orphaned_claim(row(lease_owner="x", lease_expires_at=NOW - timedelta(seconds=1)), NOW)  # no claim
    assert not orphaned_claim(row(claim_at=NOW - timedelta(minutes=3)), NOW)  # no owner: committed


def test_a_refusal_agrees_with_the_rule():
    for state in (UnitState(key="autopilot"), row(next_allowed_at=NOW + timedelta(seconds=5)), row(next_allowed_at=NOW),
                  row(lease_owner="x", lease_expires_at=NOW + timedelta(seconds=5), claim_at=NOW)):
        assert (refusal_for("autopilot", state, NOW) is not None) == (in_flight(state, NOW) or in_cooldown(state, NOW))


def test_a_sync_asked_for_a_moment_is_not_due_before_the_units_window_ends():
    assert not_before(row(next_allowed_at=NOW + TEN_MINUTES), NOW) == NOW + TEN_MINUTES
    assert not_before(row(next_allowed_at=NOW - TEN_MINUTES), NOW) == NOW
    assert not_before(UnitState(key="autopilot"), NOW + TEN_MINUTES) == NOW + TEN_MINUTES


# --- what did Graph's answer mean? ------------------------------------------------------------


def test_a_2xx_started_a_sync_and_opens_the_cooldown():
    verdict = graph_answer("autopilot", 204, None, NOW, TEN_MINUTES)
    assert verdict.outcome is Outcome.STARTED and verdict.next_allowed_at == NOW + TEN_MINUTES


def test_a_409_is_in_progress_for_a_minute_or_graphs_retry_after():
    assert graph_answer("autopilot", 409, None, NOW, TEN_MINUTES).next_allowed_at == NOW + IN_PROGRESS_BACKOFF
    assert graph_answer("autopilot", 409, 5.0, NOW, TEN_MINUTES).next_allowed_at == NOW + timedelta(seconds=5)


def test_a_429_is_a_cooldown_until_retry_after_else_the_estimated_window_end_else_the_cooldown():
    assert graph_answer("autopilot", 429, 120.0, NOW, TEN_MINUTES).next_allowed_at == NOW + timedelta(seconds=120)
    end = NOW + timedelta(minutes=4)
    assert graph_answer("autopilot", 429, None, NOW, TEN_MINUTES, window_end=end).next_allowed_at == end
    assert graph_answer("autopilot", 429, None, NOW, TEN_MINUTES).next_allowed_at == NOW + TEN_MINUTES


def test_any_other_status_is_a_failure_for_the_caller_to_name():
    assert all(graph_answer("autopilot", status, None, NOW, TEN_MINUTES) is None for status in (400, 401, 403, 404, 500, 503))


def test_no_answer_to_a_post_that_may_have_landed_starts_the_cooldown_as_ambiguous():
    verdict = no_answer("autopilot", GraphUnavailable("Graph timed out", maybe_sent=True), NOW, TEN_MINUTES, None)
    assert verdict.outcome is Outcome.STARTED and verdict.ambiguous and verdict.next_allowed_at == NOW + TEN_MINUTES


def test_no_answer_to_a_post_never_sent_fails_and_leaves_the_window_as_it_was():
    before = NOW - timedelta(hours=1)
    verdict = no_answer("autopilot", GraphUnavailable("Graph could not be reached"), NOW, TEN_MINUTES, before)
    assert verdict.outcome is Outcome.FAILED and not verdict.ambiguous and verdict.next_allowed_at == before


# --- clocks that differ: the margin over Graph's windows, and Graph's Date ---------------------

MARGIN = timedelta(seconds=30)


def test_a_unit_stays_closed_for_graphs_window_plus_the_margin_when_the_cooldown_is_shorter():
    assert closed_for(TEN_MINUTES, TEN_MINUTES, MARGIN) == TEN_MINUTES + MARGIN
    assert closed_for(timedelta(seconds=610), TEN_MINUTES, timedelta(seconds=45)) == timedelta(seconds=645)


def test_a_cooldown_longer_than_graphs_window_plus_the_margin_stands():
    assert closed_for(timedelta(hours=1), TEN_MINUTES, MARGIN) == timedelta(hours=1)


def test_a_target_without_a_graph_window_keeps_its_cooldown_without_margin():
    assert closed_for(timedelta(seconds=60), None, MARGIN, ahead=timedelta(seconds=90)) == timedelta(seconds=60)


def test_graphs_clock_ahead_moves_the_window_by_the_offset():
    assert closed_for(TEN_MINUTES, TEN_MINUTES, MARGIN, ahead=timedelta(seconds=90)) == timedelta(seconds=720)


def test_a_graph_date_ahead_by_more_than_the_margin_is_the_offset_rounded_up_a_second():
    assert graph_clock_ahead(NOW + timedelta(seconds=75), NOW, MARGIN) == timedelta(seconds=76)
    assert graph_clock_ahead(NOW + timedelta(seconds=31), NOW, MARGIN) == timedelta(seconds=32)


def test_a_graph_date_within_the_margin_behind_or_absent_moves_nothing():
    for date in (NOW + timedelta(seconds=29), NOW, NOW - timedelta(minutes=5), None):
        assert graph_clock_ahead(date, NOW, MARGIN) == timedelta(0), date


def test_a_graph_date_absurdly_far_ahead_moves_the_window_at_most_a_day():
    assert graph_clock_ahead(NOW + timedelta(days=400), NOW, MARGIN) == MAX_GRAPH_CLOCK_AHEAD == timedelta(days=1)


def test_a_graph_date_at_the_calendars_end_is_the_most_we_believe_not_an_overflow():
    from shared.common.answers import parse_http_date

    assert graph_clock_ahead(parse_http_date("Fri, 31 Dec 9999 23:59:59 -1200"), NOW, MARGIN) == MAX_GRAPH_CLOCK_AHEAD


def test_a_429s_retry_after_at_the_maximum_gets_no_margin_past_it():
    day = MAX_GRAPH_CLOCK_AHEAD.total_seconds()
    assert graph_answer("exchange", 429, day, NOW, TEN_MINUTES, margin=MARGIN).next_allowed_at == NOW + timedelta(days=1)


def test_a_429s_retry_after_gets_the_margin_but_a_409s_does_not():
    assert graph_answer("autopilot", 429, 120.0, NOW, TEN_MINUTES, margin=MARGIN).next_allowed_at == NOW + timedelta(seconds=150)
    assert graph_answer("autopilot", 409, 20.0, NOW, TEN_MINUTES, margin=MARGIN).next_allowed_at == NOW + timedelta(seconds=20)


# --- small helpers ----------------------------------------------------------------------------


def test_seconds_until_rounds_up_and_is_at_least_one():
    assert seconds_until(NOW + timedelta(seconds=1.2), NOW) == 2
    assert seconds_until(NOW - timedelta(seconds=5), NOW) == 1
    assert seconds_until(None, NOW) is None


def test_caller_names_are_distinct_and_bounded():
    assert caller_names(["a", "b", "a"]) == "a, b"
    assert caller_names([str(i) for i in range(12)], limit=10).endswith("and 2 more")


def test_a_request_refused_before_sending_is_a_failure_not_an_ambiguous_start():
    from shared.common.errors import UnsafeGraphPath

    verdict = no_answer("autopilot", UnsafeGraphPath("refusing an unsafe path"), NOW, TEN_MINUTES, None)
    assert verdict.outcome is Outcome.FAILED and not verdict.ambiguous
