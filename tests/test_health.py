"""Health ratings at their boundaries (defaults: warning after 24 h, unhealthy after 72 h or a
failed last sync, token expiry within 30 days a warning)."""
from datetime import UTC, datetime, timedelta

import pytest

from shared.engine.health import rate, worst
from shared.engine.targets import GraphView

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def rating(last_success=None, failure=None, expires=None):
    view = GraphView("vpp/x", {}, last_success, failure, expires)
    return rate(view, NOW, warning_hours=24, unhealthy_hours=72, expiry_warning_days=30)


@pytest.mark.parametrize(
    "age,expected",
    [
        (timedelta(hours=1), "healthy"),
        (timedelta(hours=24), "healthy"),  # exactly at the threshold: still within it
        (timedelta(hours=24, seconds=1), "warning"),
        (timedelta(hours=72), "warning"),
        (timedelta(hours=72, seconds=1), "unhealthy"),
    ],
)
def test_the_age_of_the_last_good_sync_decides(age, expected):
    assert rating(last_success=NOW - age).rating == expected


def test_a_failed_last_sync_is_unhealthy_however_recent():
    result = rating(last_success=NOW - timedelta(minutes=5), failure="the last sync failed")
    assert result.rating == "unhealthy" and "the last sync failed" in result.reasons


def test_never_synced_is_unhealthy():
    assert rating().rating == "unhealthy"


@pytest.mark.parametrize(
    "left,expected",
    [
        (timedelta(days=30, seconds=1), "healthy"),
        (timedelta(days=30), "warning"),
        (timedelta(days=1), "warning"),
        (timedelta(0), "unhealthy"),
        (-timedelta(days=1), "unhealthy"),
    ],
)
def test_token_expiry_boundaries(left, expected):
    assert rating(last_success=NOW, expires=NOW + left).rating == expected


def test_reasons_name_every_problem():
    result = rating(last_success=NOW - timedelta(days=2), expires=NOW + timedelta(days=3))
    assert result.rating == "warning" and len(result.reasons) == 2


def test_the_worst_rating_wins():
    assert worst(["healthy", "warning", "healthy"]) == "warning"
    assert worst(["warning", "unhealthy"]) == "unhealthy"
    assert worst([]) == "healthy"
