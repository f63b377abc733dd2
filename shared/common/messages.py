"""Reading the app's queue messages (deferred syncs, tenant fan-out, import steps).

Whatever a queue holds is untrusted: a bug of an older version, a hand-made test message, or
another app's message on a queue of the same name. A message that is not one of ours raises
``InvalidMessage`` here, before anything reads storage or Graph with it; the handler logs it once
and acknowledges it (shared/runtime/handlers.py), because retrying it could never succeed and the host
would otherwise try it five times and park it in the poison queue.
"""
from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from . import telemetry
from .errors import InvalidItemId
from .ids import parse_guid

MAX_TEXT = 256  # longer than any field of ours (a GUID, a unit key, an ISO time)
# The years a message's time may fall in (UTC): every time this app writes is near now, and one at
# the calendar's edge (0001-01-01T00:00:00+01:00) cannot even be converted to UTC.
TIME_YEARS = (2000, 2100)


class InvalidMessage(ValueError):
    """Not a message of this app: what is wrong with it, never its content."""


def message_object(text: str) -> dict[str, Any]:
    """The message's JSON object; InvalidMessage for anything else (not JSON, a list, a string,
    a number, null, nesting too deep to parse)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidMessage("not JSON") from None
    if not isinstance(data, dict):
        raise InvalidMessage(f"a JSON {type(data).__name__}, not an object")
    return data


def text(data: dict[str, Any], name: str, pattern: str, *, required: bool = True, limit: int = MAX_TEXT) -> str | None:
    """A string field matching ``pattern`` (whole), at most ``limit`` characters."""
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidMessage(f"{name} is {'missing' if value is None else 'not a string'}")
    if len(value) > limit or not re.fullmatch(pattern, value):
        raise InvalidMessage(f"{name} is not in the form this app writes")
    return value


def guid(data: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    """A GUID field (lower-case), such as a tenant or import id."""
    value = text(data, name, r"[0-9A-Fa-f-]{36}", required=required)
    if value is None:
        return None
    try:
        return parse_guid(value)
    except InvalidItemId:
        raise InvalidMessage(f"{name} is not a GUID") from None


def time(data: dict[str, Any], name: str) -> datetime:
    """An ISO 8601 time with its offset (ours end in Z), in UTC between the years ``TIME_YEARS``."""
    value = text(data, name, r"[0-9T:.+\-Z ]{10,40}")
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise InvalidMessage(f"{name} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise InvalidMessage(f"{name} has no time zone")
    try:
        year = parsed.astimezone(UTC).year
    except OverflowError:
        year = 0
    if not TIME_YEARS[0] <= year <= TIME_YEARS[1]:
        raise InvalidMessage(f"{name} is not between the years {TIME_YEARS[0]} and {TIME_YEARS[1]}")
    return parsed


def whole(data: dict[str, Any], name: str, maximum: int, default: int | None = None) -> int:
    """A whole number from 0 to ``maximum`` (true, 1.5 and 1e400 are not)."""
    value = data.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidMessage(f"{name} is {'missing' if value is None else 'not a whole number'}")
    if not 0 <= value <= maximum:
        raise InvalidMessage(f"{name} is out of range")
    return value


def log_invalid(event: str, queue: str, exc: InvalidMessage) -> None:
    """A message of ``queue`` is not one of this app's: logged once (an ``outcome: invalid`` event
    of its queue's kind), and then acknowledged by the caller."""
    telemetry.emit(event, logging.ERROR, trigger=event, outcome="invalid",
                   message=f"{queue}: a message that is not one of this app's was dropped ({exc})")
