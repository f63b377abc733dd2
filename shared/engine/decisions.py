"""The service's decisions, as small pure functions: may this unit sync now, and what did Graph's
answer mean. No I/O here: they take the state row, the clock reading and Graph's answer, and
return what to do. Everything that reads or writes lives around them (shared/engine/pipeline.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..common import MAX_RETRY_AFTER_SECONDS, Outcome, SyncResult, UpstreamError, iso
from .state import UnitState

# After Graph's 409 ("a sync is already running") without Retry-After: look again in a minute.
IN_PROGRESS_BACKOFF = timedelta(seconds=60)
# What to tell a caller who finds another caller's sync in flight (it settles within seconds).
IN_FLIGHT_RETRY_AFTER = 10
# The longest any one answer of Graph's may close a unit (shared/common/answers.py clamps Retry-After to it).
LONGEST_WAIT = timedelta(seconds=MAX_RETRY_AFTER_SECONDS)
# The furthest ahead of ours we believe Graph's clock to be: a Date header further ahead is not a
# clock (a proxy's, a bad header), and one odd answer must not close a unit for longer.
MAX_GRAPH_CLOCK_AHEAD = LONGEST_WAIT
DATE_RESOLUTION = timedelta(seconds=1)  # an HTTP Date header's: whole seconds


@dataclass(frozen=True)
class Verdict:
    """What one attempt means for its unit."""

    outcome: Outcome
    next_allowed_at: datetime | None
    message: str
    ambiguous: bool = False  # Graph may have started a sync without our seeing its answer
    failure: UpstreamError | None = None


# --- may this unit sync now? The rule, written once: everything else asks these functions. ----


def closed_until(next_allowed_at: datetime | None, now: datetime) -> datetime | None:
    """The end of a window (a unit's nextAllowedAt, or a refusal's) if it is still closed at
    ``now``; None if it has ended, or there is none."""
    return next_allowed_at if next_allowed_at is not None and next_allowed_at > now else None


def in_cooldown(state: UnitState, now: datetime) -> bool:
    """The unit's window is closed at ``now`` (a claim's pessimistic hold counts: it is one)."""
    return closed_until(state.next_allowed_at, now) is not None


def in_flight(state: UnitState, now: datetime) -> bool:
    """A caller holds the unit's lease at ``now``: a sync of it is in flight."""
    return bool(state.lease_owner) and state.lease_expires_at is not None and state.lease_expires_at > now


def orphaned_claim(state: UnitState, now: datetime) -> bool:
    """A claim whose holder never recorded its outcome (it died, or storage failed it): its lease
    lapsed with the claim still on the row."""
    return bool(state.lease_owner) and state.claim_at is not None and not in_flight(state, now)


def not_before(state: UnitState, at: datetime) -> datetime:
    """The earliest a sync of the unit asked for at ``at`` may start: ``at``, or the end of the
    unit's window (a claim's hold included) if that is later."""
    return max(at, state.next_allowed_at or at)


def refusal_for(name: str, state: UnitState, now: datetime) -> SyncResult | None:
    """Why unit ``name`` may not sync now (a sync in flight, or its window), or None if it may."""
    common: dict[str, Any] = dict(
        last_attempt_at=state.last_attempt_at,
        graph_request_id=state.last_graph_request_id,
        client_request_id=state.last_client_request_id,
    )
    if in_flight(state, now):
        # A claim's nextAllowedAt is its pessimistic hold, not the window: the commit sets that.
        before = None if state.claim_at else state.next_allowed_at
        return SyncResult(
            name, Outcome.IN_PROGRESS, next_allowed_at=closed_until(before, now),
            message=f"a sync of {name} is in flight (lease until {iso(state.lease_expires_at)})",
            retry_after_seconds=IN_FLIGHT_RETRY_AFTER, **common,
        )
    until = closed_until(state.next_allowed_at, now)  # in_cooldown, with the window's end
    if until is not None:
        in_progress = state.last_outcome == Outcome.IN_PROGRESS.value
        reason = (f"Graph reported a sync of {name} already running; next try allowed at " if in_progress
                  else f"{name} was synced recently; next sync allowed at ")
        return SyncResult(
            name, Outcome.IN_PROGRESS if in_progress else Outcome.COOLDOWN, next_allowed_at=until,
            message=reason + str(iso(until)),
            retry_after_seconds=seconds_until(until, now), **common,
        )
    return None


def graph_clock_ahead(graph_date: datetime | None, now: datetime, margin: timedelta) -> timedelta:
    """How far Graph's clock (its ``Date`` header, read at ``now`` on ours) is ahead of ours, when
    by more than ``margin``; else zero (the margin covers it). At most MAX_GRAPH_CLOCK_AHEAD.

    Graph's Date is whole seconds, rounded down: a second is added, so that the rounding never
    under-states the offset (the margin covers the answer's travel). A Graph clock behind ours
    needs no correction: a window we record on our clock then ends later than Graph's."""
    if graph_date is None:
        return timedelta(0)
    try:
        ahead = graph_date - now + DATE_RESOLUTION
    except OverflowError:  # a date at the calendar's edge (shared/common/answers.py parse_http_date)
        return MAX_GRAPH_CLOCK_AHEAD if graph_date.year > now.year else timedelta(0)
    return min(ahead, MAX_GRAPH_CLOCK_AHEAD) if ahead > margin else timedelta(0)


def closed_for(cooldown: timedelta, graph_window: timedelta | None, margin: timedelta,
               ahead: timedelta = timedelta(0)) -> timedelta:
    """How long a unit stays closed after a sync started at a moment of our clock: the operator's
    cooldown, and never less than the window Graph imposes (None where it imposes none) plus the
    margin (another instance's clock may run ahead of Graph's) plus how far Graph's clock is
    ahead of ours (our reading of its start is late by that much)."""
    if graph_window is None:
        return cooldown
    return max(cooldown, graph_window + margin + ahead)


def graph_answer(
    name: str, status: int, retry_after: float | None, now: datetime, cooldown: timedelta,
    window_end: datetime | None = None, margin: timedelta = timedelta(0),
) -> Verdict | None:
    """What Graph's answer to a sync POST means: 2xx started, 409 running, 429 cooldown; None for
    any other status (a failure, which the caller turns into the error naming its cause).

    ``cooldown`` is how long a started sync closes the unit (closed_for). ``retry_after`` is already
    sanitised and clamped (shared/common/answers.py); 0 counts as absent, as it would reopen the window at
    once. A 429's Retry-After is a window Graph imposes: ``margin`` is kept over it, as over every
    such window (a 409's only spares a look that would be answered 409 again). ``window_end`` is
    the caller's estimate of the window's end for a 429 without Retry-After (else the cooldown)."""
    wait = timedelta(seconds=retry_after) if retry_after else None
    if 200 <= status < 300:
        until = now + cooldown
        return Verdict(Outcome.STARTED, until, f"sync of {name} started; next sync allowed at {iso(until)}")
    if status == 409:
        return Verdict(Outcome.IN_PROGRESS, now + (wait or IN_PROGRESS_BACKOFF), f"Graph says a sync of {name} is already running")
    if status == 429:
        # The margin, but never past the longest wait a Retry-After may impose (one odd answer).
        until = now + min(wait + margin, LONGEST_WAIT) if wait else window_end or now + cooldown
        return Verdict(Outcome.COOLDOWN, until,
                       f"Graph refused: {name} was synced within its cooldown; next sync allowed at {iso(until)}")
    return None


def no_answer(name: str, error: UpstreamError, now: datetime, cooldown: timedelta, before: datetime | None) -> Verdict:
    """A sync POST that got no usable answer. If it may have reached Graph, it may have started a
    sync: that opens the window. Otherwise nothing started, and the window stays as it was
    (``before``, the unit's nextAllowedAt before the claim)."""
    if error.maybe_sent:
        until = now + cooldown
        return Verdict(Outcome.STARTED, until, f"{error.message}; the sync may have started, so the "
                       f"next sync is allowed at {iso(until)}", ambiguous=True)
    return Verdict(Outcome.FAILED, before, error.message)


def seconds_until(when: datetime | None, now: datetime) -> int | None:
    """Whole seconds to wait (at least 1), for a Retry-After."""
    if when is None:
        return None
    return max(1, math.ceil((when - now).total_seconds()))


def retry_after_of(error: UpstreamError) -> int | None:
    """Graph's own Retry-After on a failure (already sanitised), in whole seconds."""
    return math.ceil(error.retry_after_seconds) if error.retry_after_seconds else None


def caller_names(callers: list[str], limit: int = 10) -> str:
    """The distinct callers of a pending sync, for its history row; the first ``limit`` named."""
    distinct = list(dict.fromkeys(callers))
    return ", ".join(distinct[:limit]) + (f" and {len(distinct) - limit} more" if len(distinct) > limit else "")
