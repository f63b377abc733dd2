"""What Graph's answers mean (shared/common/answers.py): pure functions, no servers."""
from datetime import UTC, datetime, timedelta

import pytest

from shared.common.answers import MAX_RETRY_AFTER_SECONDS, parse_graph_time, parse_http_date, parse_retry_after
from shared.engine.deferred import BACKOFF_MAX, deferred_backoff

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("raw, seconds", [("120", 120.0), ("  7 ", 7.0), ("0", 0.0)])
def test_delta_seconds_are_read_as_given(raw, seconds):
    assert parse_retry_after(raw, NOW) == seconds


@pytest.mark.parametrize("raw", ["300000000000", "99999999999999999999"])
def test_a_huge_delta_is_clamped_to_the_maximum(raw):
    assert parse_retry_after(raw, NOW) == MAX_RETRY_AFTER_SECONDS


@pytest.mark.parametrize("raw", ["inf", "-inf", "nan", "NaN", "1e10", "-5", "1.5", "soon", "", "0x10", "１２"])
def test_anything_that_is_not_a_retry_after_is_ignored(raw):
    assert parse_retry_after(raw, NOW) is None


def test_an_absent_header_is_none():
    assert parse_retry_after(None, NOW) is None


def test_an_http_date_is_the_time_until_it():
    assert parse_retry_after("Wed, 25 Nov 2026 12:05:00 GMT", NOW) == 300.0


def test_an_http_date_in_the_past_means_now():
    assert parse_retry_after("Mon, 01 Jan 2001 00:00:00 GMT", NOW) == 0.0


def test_an_http_date_far_ahead_is_clamped():
    assert parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT", NOW) == MAX_RETRY_AFTER_SECONDS


def test_an_http_date_at_the_end_of_the_calendar_is_clamped_not_an_overflow():
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 -1200", NOW) == MAX_RETRY_AFTER_SECONDS


def test_a_date_header_is_read_as_an_aware_time():
    assert parse_http_date("Wed, 25 Nov 2026 12:00:30 GMT") == NOW + timedelta(seconds=30)


@pytest.mark.parametrize("raw", [None, "", "yesterday", "x" * 100])
def test_a_missing_or_garbled_date_header_is_no_date(raw):
    assert parse_http_date(raw) is None


def test_a_graph_timestamp_without_an_offset_is_utc():
    assert parse_graph_time("2026-11-25T10:00:00") == datetime(2026, 11, 25, 10, tzinfo=UTC)


def test_a_graph_timestamp_with_an_offset_is_converted_to_utc():
    assert parse_graph_time("2026-11-25T12:00:00+02:00") == datetime(2026, 11, 25, 10, tzinfo=UTC)


def test_graphs_seven_digit_fractions_are_read():
    assert parse_graph_time("2026-11-25T10:00:00.1234567Z") == datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00Z", "", "yesterday", None, 42, ["2026-11-25"], "9" * 100,
                                   "9999-12-31T23:59:59-12:00"])
def test_placeholders_and_nonsense_mean_never(value):
    assert parse_graph_time(value) is None


def test_deferred_backoff_doubles_from_ten_seconds_to_five_minutes():
    assert [deferred_backoff(n).total_seconds() for n in range(7)] == [10, 20, 40, 80, 160, 300, 300]
    assert deferred_backoff(10_000) == BACKOFF_MAX


def test_deferred_backoff_follows_graphs_retry_after():
    assert deferred_backoff(3, 42.0) == timedelta(seconds=42)
