"""Intune's write budget, per tenant and service area, shared by every instance.

Intune counts writes (POST, PUT, PATCH, DELETE) per app per tenant over 20 seconds, by service
area (../shared/reference graph-docs/intune-throttling.md): 200 for managed devices, 100 for
most other areas. On Flex Consumption many instances, each running many messages, write for one
tenant at once, so the count lives in Table Storage: one row per area in the tenant's state table
(partition ``budget``), holding the recent grants (when, how many), a pause and a strike count.

- **Claims in blocks.** A bulk writer (an import job, a device-sync step) asks for as many writes
  as it will send at once (``take``: a $batch of 20, a chunk of five batches) and gets them in one
  read and one If-Match write of that row, not a round trip per write.
- **Sliding, counted with a margin.** A grant counts for the window and then ``SEND_SHARE`` of a
  window more (1 s of Intune's 20 s: its writes are sent at once, one $batch per grant, and this
  covers how much later one grant's writes may arrive than another's, and the instances' clock
  skew, milliseconds on Azure's NTP-synced hosts), and at most ``(1 - MARGIN)`` of the limit is
  granted. So however grants and arrivals fall, Graph's own sliding window never counts more than
  the limit: the sustained rate is at most ``(1 - MARGIN) / (1 + SEND_SHARE)`` of the limit (92.4 %).
  (2.5 % met a few 429s in the benchmark at a 4 s window: a $batch's inner requests arrive over
  its processing, and a table write's latency varies under load.)
  The share scales with the window, so that a benchmark or test that shortens the window
  (WRITE_LIMIT_WINDOW_SECONDS) keeps every ratio.
- **Sync actions are not starved and cost nothing.** ``RESERVE`` writes of each area are never
  granted to bulk writers. A sync action (at most one per unit per cooldown, a minute or more)
  draws on that reserve without a table round trip, so a single sync costs what it did before
  this budget existed. What bounds sync actions across instances is their units' cooldowns (the
  claim in Table Storage); this process also counts them against the whole limit, as before, so
  that a fan-out over many connectors is spread out. A tenant with more units than the reserve
  syncing in the same 20 seconds can still meet a 429 on a bulk write: it pauses the area, and
  the bulk writers wait it out.
- **A 429 pauses the area for everyone.** A write answered 429 writes ``pausedUntil`` (now plus its
  Retry-After) into the row; every claim of any instance waits for it. A 429 within two windows of
  the last one is a strike: each strike lowers the granted rate by a fifth (to half at most); a
  window without one restores it.
- **A grant can carry a ticket.** A bulk writer that marks its writes before it asks for them
  (a device-sync step writes its rows ``sending`` first, so that no table write comes between a
  grant and its $batch) names the claim with a ticket (when it was made, and a nonce); the grant
  records it in the row with the count granted, for ``Limits.ticket_seconds`` (twice a crashed
  step's claim and a minute: the step that takes over comes when the claim lapses). That step can
  then tell writes never granted (never sent: send them) from writes granted (maybe sent: never
  again). A ticket older than that cannot be told, and counts as granted. A few dozen tickets,
  some twenty characters each, at Intune's rate.
- **Reads are not counted here**: Intune's read limits are ten times the write limits (2,000 and
  1,000 per 20 s), and the app's reads are paged.

Written by hand: no library keeps a rate limit in Azure Table Storage; the row's ETag makes every
change a compare-and-swap (``read_change_write``).
"""
from __future__ import annotations

import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

DEVICES, INTUNE = "devices", "intune"
AREAS = (DEVICES, INTUNE)
BUDGET_PARTITION = "budget"
MARGIN = 0.03  # of the limit never granted: arrivals jitter against grants
SEND_SHARE = 0.05  # of a window a grant counts beyond it: sending, travel, clock skew (1 s of 20 s)
RESERVE = {DEVICES: 0, INTUNE: 10}  # writes per window kept for sync actions (never granted in bulk)
STRIKE_FACTOR, LOWEST_FACTOR = 0.8, 0.5
SKEW_SECONDS = 30.0  # a ticket is told for this much less than it is kept: instances' clocks differ


def area_of(path: str) -> str:
    """The Intune service area a write to ``path`` counts against."""
    return DEVICES if "/deviceManagement/managedDevices" in path else INTUNE


@dataclass(frozen=True)
class Limits:
    """Writes per ``window`` seconds, per area (DEVICE_WRITE_LIMIT, INTUNE_WRITE_LIMIT,
    WRITE_LIMIT_WINDOW_SECONDS)."""

    devices: int = 200
    intune: int = 100
    window: float = 20.0
    ticket_seconds: float = 180.0  # how long a grant's ticket is kept (2 x DEVICE_SYNC_STEP_CLAIM_SECONDS + 60)

    def of(self, area: str) -> int:
        return self.devices if area == DEVICES else self.intune

    def granted(self, area: str, bulk: bool, factor: float = 1.0) -> int:
        """The most that may be granted over one lookback: the margin off, the rate factor
        applied, and for bulk writers the sync actions' reserve too."""
        cap = max(1, math.floor(self.of(area) * (1 - MARGIN) * factor))  # a limit of 1 still allows one
        return max(1, cap - (reserve_of(area, self.of(area)) if bulk else 0))

    @property
    def lookback(self) -> float:
        return self.window * (1 + SEND_SHARE)


def reserve_of(area: str, limit: int) -> int:
    return min(RESERVE[area], limit // 4)


@dataclass(frozen=True)
class Grant:
    """What a claim got: ``count`` writes to send now (at once), or none and how long
    to wait before asking again."""

    count: int
    wait_seconds: float = 0.0
    at: float | None = None  # when the shared row granted it (epoch seconds); None: counted in this process


def late(grant: Grant, limits: Limits, now: float) -> bool:
    """A grant back later than half its allowance for travel (SEND_SHARE of a window): its writes,
    sent now, could reach Graph's window beside those of grants made after it. A writer drops it
    (it costs its room, never a 429); a table write that slow is rare at Intune's 20 s window."""
    return grant.at is not None and now - grant.at > limits.window * SEND_SHARE / 2


class WriteBudget(Protocol):
    limits: Limits

    def take(self, area: str, count: int, *, bulk: bool = True, ticket: str | None = None) -> Grant:
        """Up to ``count`` writes now, never waiting (a queue step reschedules itself instead);
        a grant under ``ticket`` is recorded with it."""

    def granted_for(self, area: str, ticket: str) -> int | None:
        """The writes granted under ``ticket``: 0 if none was, None if too old to tell."""

    def acquire(self, area: str, count: int = 1, *, bulk: bool = False, deadline: float | None = None) -> float:
        """``count`` writes, waiting for them (until ``deadline``, time.monotonic()); the seconds waited."""

    def pause(self, area: str, seconds: float) -> None:
        """Graph answered 429: no write in ``area`` before ``seconds`` from now."""


class BudgetExhausted(Exception):
    """No write could be granted before the caller's deadline (the caller decides what it means)."""


# --- the decision, pure ----------------------------------------------------------------------------


@dataclass
class BudgetRow:
    """One area's row: recent grants [(epoch seconds, count)], the pause, the strikes, and the
    tickets of recent grants {ticket: count}."""

    grants: list[tuple[float, int]] = field(default_factory=list)
    paused_until: float = 0.0
    strikes: int = 0
    last_throttle: float = 0.0
    etag: str | None = None
    tickets: dict[str, int] = field(default_factory=dict)

    def factor(self, now: float, window: float) -> float:
        if not self.strikes or now - self.last_throttle > 2 * window:
            return 1.0
        return max(LOWEST_FACTOR, STRIKE_FACTOR ** self.strikes)


def decide(row: BudgetRow, limits: Limits, area: str, count: int, bulk: bool, now: float,
           ticket: str | None = None) -> tuple[Grant, BudgetRow | None]:
    """How many of ``count`` writes may be granted now, and the row to write (None: nothing to write)."""
    if row.paused_until > now:
        return Grant(0, row.paused_until - now), None
    recent = [(at, n) for at, n in row.grants if at > now - limits.lookback]
    cap = limits.granted(area, bulk, row.factor(now, limits.window))
    room = cap - sum(n for _, n in recent)
    if room <= 0:
        # Ask again when the oldest grant has left the lookback (others may have claimed by then).
        oldest = min((at for at, _ in recent), default=now)
        return Grant(0, max(0.05, oldest + limits.lookback - now)), None
    granted = min(count, room)
    tickets = {t: n for t, n in row.tickets.items() if made_at(t) > now - limits.ticket_seconds}
    if ticket:
        tickets[ticket] = tickets.get(ticket, 0) + granted
    return Grant(granted, at=now), BudgetRow([*recent, (now, granted)], row.paused_until, row.strikes, row.last_throttle, row.etag,
                                     tickets)


def new_ticket(now: float) -> str:
    """A claim's name: when it was made (epoch seconds) and a nonce."""
    return f"{int(now)}-{secrets.token_hex(3)}"


def made_at(ticket: str) -> float:
    made, _, _ = ticket.partition("-")
    return float(made) if made.isdigit() else 0.0


def granted_under(tickets: dict[str, int], ticket: str, now: float, keep: float) -> int | None:
    """The writes granted under ``ticket`` (0: none), or None when it is too old to tell (or not a ticket)."""
    if now - made_at(ticket) > keep - SKEW_SECONDS:
        return None
    return tickets.get(ticket, 0)


def paused(row: BudgetRow, seconds: float, now: float, window: float) -> BudgetRow:
    strikes = row.strikes + 1 if now - row.last_throttle <= 2 * window else 1
    return BudgetRow(row.grants, max(row.paused_until, now + seconds), strikes, now, row.etag, row.tickets)


# --- in one process (tests, local runs without storage, and the reserve) ---------------------------


class LocalBudget:
    """The budget counted in this process only: what a single instance needs, and the reserve
    every instance's sync actions draw on."""

    def __init__(self, limits: Limits = Limits(), clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.clock = clock
        self._sent: dict[str, deque[tuple[float, int]]] = {area: deque() for area in AREAS}
        self._paused: dict[str, float] = dict.fromkeys(AREAS, 0.0)
        self._tickets: dict[str, dict[str, int]] = {area: {} for area in AREAS}
        self._lock = threading.Lock()

    def take(self, area: str, count: int, *, bulk: bool = True, cap: int | None = None, ticket: str | None = None) -> Grant:
        with self._lock:
            now = self.clock()
            if self._paused[area] > now:
                return Grant(0, self._paused[area] - now)
            sent = self._sent[area]
            while sent and sent[0][0] <= now - self.limits.window:
                sent.popleft()
            limit = self.limits.granted(area, bulk) if cap is None else cap
            room = limit - sum(n for _, n in sent)
            if room <= 0:
                return Grant(0, max(0.05, sent[0][0] + self.limits.window - now) if sent else self.limits.window)
            granted = min(count, room)
            sent.append((now, granted))
            if ticket:
                kept = self._tickets[area]
                for old in [t for t in kept if made_at(t) <= time.time() - self.limits.ticket_seconds]:
                    del kept[old]
                kept[ticket] = kept.get(ticket, 0) + granted
            return Grant(granted)

    def granted_for(self, area: str, ticket: str) -> int | None:
        with self._lock:
            return granted_under(self._tickets[area], ticket, time.time(), self.limits.ticket_seconds)

    def acquire(self, area: str, count: int = 1, *, bulk: bool = False, deadline: float | None = None,
                cap: int | None = None) -> float:
        return wait_for(lambda: self.take(area, count, bulk=bulk, cap=cap), deadline)

    def pause(self, area: str, seconds: float) -> None:
        with self._lock:
            self._paused[area] = max(self._paused[area], self.clock() + seconds)

    def paused_for(self, area: str) -> float:
        with self._lock:
            return max(0.0, self._paused[area] - self.clock())


def wait_for(take: Callable[[], Grant], deadline: float | None) -> float:
    waited = 0.0
    while True:
        grant = take()
        if grant.count:
            return waited
        if deadline is not None and time.monotonic() + grant.wait_seconds > deadline:
            raise BudgetExhausted(f"no write could be granted within the deadline (next in {grant.wait_seconds:.1f} s)")
        time.sleep(grant.wait_seconds)
        waited += grant.wait_seconds
