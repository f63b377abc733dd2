"""The service's decisions (shared/decisions.py): pure functions, no servers, milliseconds."""
from datetime import UTC, datetime, timedelta

from shared.decisions import (
    IN_FLIGHT_RETRY_AFTER,
    IN_PROGRESS_BACKOFF,
    caller_names,
    graph_answer,
    no_answer,
    refusal_for,
    seconds_until,
)
from shared.errors import GraphUnavailable
from shared.model import Outcome
from shared.state import UnitState

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
    assert orphan.orphaned_claim(NOW)


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


# --- small helpers ----------------------------------------------------------------------------


def test_seconds_until_rounds_up_and_is_at_least_one():
    assert seconds_until(NOW + timedelta(seconds=1.2), NOW) == 2
    assert seconds_until(NOW - timedelta(seconds=5), NOW) == 1
    assert seconds_until(None, NOW) is None


def test_caller_names_are_distinct_and_bounded():
    assert caller_names(["a", "b", "a"]) == "a, b"
    assert caller_names([str(i) for i in range(12)], limit=10).endswith("and 2 more")


def test_a_request_refused_before_sending_is_a_failure_not_an_ambiguous_start():
    from shared.errors import UnsafeGraphPath

    verdict = no_answer("autopilot", UnsafeGraphPath("refusing an unsafe path"), NOW, TEN_MINUTES, None)
    assert verdict.outcome is Outcome.FAILED and not verdict.ambiguous
