"""What Graph's answers mean: small pure functions over untrusted upstream values.

Every value here comes from a server we do not control. None of these functions raise on odd
input: a header or timestamp that makes no sense is treated as absent, and the caller falls back
to its documented default (a cooldown window, a one-minute back-off).
"""
from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

# The longest wait any Retry-After may impose on a unit. Graph's own windows are minutes; a
# header asking for more is clamped so that one odd answer can never lock a unit for years.
MAX_RETRY_AFTER_SECONDS = 24 * 3600
_DELTA_SECONDS = re.compile(r"^[ \t]*([0-9]{1,20})[ \t]*$")  # RFC 9110: 1*DIGIT, nothing else


def parse_retry_after(raw: str | None, now: datetime) -> float | None:
    """Seconds to wait from ``now``, clamped to [0, MAX_RETRY_AFTER_SECONDS]; None when absent or
    not a valid Retry-After (``inf``, ``1e10``, negative numbers, garbage)."""
    if raw is None:
        return None
    match = _DELTA_SECONDS.match(raw)
    if match:
        return float(min(int(match.group(1)), MAX_RETRY_AFTER_SECONDS))
    when = parse_http_date(raw)
    if when is None:
        return None
    try:
        seconds = (as_utc(when) - now).total_seconds()
    except OverflowError:  # a date at the edge of the calendar: far ahead or far back
        return float(MAX_RETRY_AFTER_SECONDS) if when.year > now.year else 0.0
    return min(max(0.0, seconds), float(MAX_RETRY_AFTER_SECONDS))


def parse_http_date(raw: str | None) -> datetime | None:
    """An HTTP-date (a ``Date`` header, a Retry-After date) as an aware datetime, in the offset it
    names (converting a date at the calendar's end to UTC could overflow: callers that subtract
    catch that); None when absent or not a date."""
    if not raw or len(raw) > 64:
        return None
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:  # pragma: no cover - older Pythons' answer to garbage
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_graph_time(value: Any) -> datetime | None:
    """Graph's DateTimeOffset as an aware UTC datetime. A timestamp without an offset is UTC;
    Graph's "0001-01-01" placeholder, and anything unparsable, mean "never"."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return None if parsed.year <= 1 else as_utc(parsed)
    except (ValueError, OverflowError):  # OverflowError: year 9999 with a negative offset
        return None


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
