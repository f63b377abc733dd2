"""Deferred syncs: "make sure a sync runs as soon as it may".

A caller inside the cooldown (or the timer) asks with ``defer``; the asks for one unit become one
pending sync, recorded in the unit's state row (``pendingId``, ``pendingAt``…), and one Azure
Storage queue message whose visibility is delayed to ``pendingAt``. The queue-triggered function
fires it then, through the normal claim, so it can never cause a second sync in a window.

Why a storage queue: it is the platform's own delayed delivery (visibility timeout up to 7
days), survives restarts and scale-out, needs no process waiting or polling, and the Functions
host already watches queues for us. A message delivered twice, or one left over after another
caller's sync satisfied the asks, finds no matching ``pendingId`` in the row and does nothing.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ..clients import Notification, PendingQueue, read_change_write
from ..common import (
    KNOWN_TARGETS,
    AppError,
    Clock,
    ItemNotFound,
    Outcome,
    SyncRequest,
    SyncResult,
    Trigger,
    UnknownTarget,
    UpstreamError,
    iso,
    messages,
    new_hex_id,
    telemetry,
)
from .decisions import (
    IN_FLIGHT_RETRY_AFTER,
    caller_names,
    closed_until,
    in_flight,
    not_before,
    refusal_for,
    seconds_until,
)
from .state import StateStore, UnitState
from .targets import Target, Unit

# A pending sync that Graph keeps refusing (503s, 429s) is retried with back-off for this long
# after its first due time, then given up (shown in GET /api/sync/status, notified as failed).
DEFERRED_BUDGET = timedelta(hours=1)
BACKOFF_FIRST, BACKOFF_MAX = timedelta(seconds=10), timedelta(minutes=5)
# A pending sync whose time passed this long ago without firing (its message was lost to the
# poison queue, say) is replaced by the next ask rather than joined.
STALE_PENDING = timedelta(minutes=5)
log = logging.getLogger(__name__)


def deferred_backoff(refusals: int, retry_after_seconds: float | None = None) -> timedelta:
    """How long to wait before firing again: Graph's Retry-After when it gave one (already
    sanitised), else 10 s doubling with each refusal, at most 5 minutes."""
    if retry_after_seconds:
        return timedelta(seconds=retry_after_seconds)
    doubled: timedelta = BACKOFF_FIRST * (2 ** min(refusals, 16))
    return min(BACKOFF_MAX, doubled)


@dataclass(frozen=True)
class PendingFire:
    """The queue message that fires a pending sync."""

    unit_key: str
    target: str
    item_id: str | None
    pending_id: str
    scheduled_at: datetime
    generation: int = 0  # the pending sync's reschedule count when sent: older messages are stale
    tenant: str | None = None  # a registered customer tenant's unit (None: the app's own tenant)

    def to_json(self) -> str:
        return json.dumps({"unitKey": self.unit_key, "target": self.target, "itemId": self.item_id,
                           "pendingId": self.pending_id, "scheduledAt": iso(self.scheduled_at),
                           "generation": self.generation, **({"tenantId": self.tenant} if self.tenant else {})})

    @classmethod
    def from_json(cls, text: str) -> PendingFire:
        """The message, checked field by field (InvalidMessage, shared/common/messages.py): its unit key is
        the one its target and item make, so that nothing else is ever read as a partition key."""
        data = messages.message_object(text)
        target = messages.text(data, "target", "[A-Za-z]{1,40}")
        if target not in KNOWN_TARGETS:
            raise messages.InvalidMessage("target is not one of this app's targets")
        unit = Unit(str(target), messages.guid(data, "itemId", required=False))
        if data.get("unitKey") != unit.key:
            raise messages.InvalidMessage("unitKey is not the key of its target and item")
        return cls(unit.key, unit.target, unit.item_id, str(messages.text(data, "pendingId", "[0-9A-Za-z-]{1,64}")),
                   messages.time(data, "scheduledAt"), messages.whole(data, "generation", 10**6, default=0),
                   messages.guid(data, "tenantId", required=False))


class Deferrals:
    """Turns refused asks into one pending sync and fires it: a collaborator of the sync service
    (shared/assembly/service.py), given what it uses: the state store, the queue, the clock, the tenant,
    the target lookup (``Targets.named``), and two callables (the pipeline's ``run`` for one unit;
    send a notification, which its PendingMoves does for a sync it gives up)."""

    def __init__(
        self,
        store: StateStore,
        queue: PendingQueue | None,
        clock: Clock,
        tenant: str | None,
        target: Callable[[str], Target],
        run: Callable[[Target, Unit, SyncRequest, UnitState], SyncResult],
        notify: Callable[[Notification], None],
    ):
        self.store = store
        self.queue = queue
        self.clock = clock
        self.tenant = tenant  # the customer tenant whose units these are (None: the app's own)
        self.target = target  # raises UnknownTarget for a target not enabled
        self._run = run  # the pipeline's one-unit run (shared/engine/pipeline.py)
        self.moves = PendingMoves(store, clock, self.send_fire, notify)  # a firing Graph refused, or one that waits

    def defer(self, unit: Unit, state: UnitState, refusal: SyncResult, request: SyncRequest) -> SyncResult:
        """Turn a refused ask into the unit's one pending sync: join it, or create it."""
        if self.queue is None:
            return refusal
        caller = f"{request.trigger.value}:{request.caller}"
        joined: list[tuple[UnitState, str, datetime]] = []

        def read() -> UnitState:  # after a lost race
            nonlocal refusal
            row = self.store.read(unit.key)
            refusal = refusal_for(unit.name, row, self.clock()) or refusal
            return row

        def schedule(state: UnitState) -> UnitState | None:
            now = self.clock()
            if state.pending_id and state.pending_at and state.pending_at > now - STALE_PENDING:
                joined.append((state, state.pending_id, now))
                return None  # join it
            # None, or a stale one that never fired: schedule afresh. The row first: of racing
            # first asks one wins this If-Match write and sends the one message; the others read
            # the row again and join. If we stop before sending, the watcher sends it.
            at = closed_until(refusal.next_allowed_at, now) or now + timedelta(seconds=IN_FLIGHT_RETRY_AFTER)
            return replace(
                state, pending_id=new_hex_id(), pending_at=at, pending_since=now, pending_asked_by=caller,
                # The budget runs from the end of the window the unit is in (a claim in flight
                # holds it to its pessimistic end), not from a first look 10 s from now.
                pending_reschedules=0, pending_deadline=not_before(state, at) + DEFERRED_BUDGET,
            )

        done = read_change_write(read, schedule, self.store.update, f"record the deferred sync of {unit.name}", current=state)
        if done is None:
            pending, pending_id, now = joined[-1]
            self.store.add_ask(unit.key, pending_id, caller, now)
            return self._scheduled(unit, pending, f"joined the sync already scheduled for {iso(pending.pending_at)}")
        created = done[1]
        at = created.pending_at or self.clock()  # always set: schedule set it
        message = f"in cooldown: one sync is scheduled for {iso(at)}"
        if not self.send_fire(created, at):
            message += " (its queue message will be sent by the next watcher tick)"
        return self._scheduled(unit, created, message)

    def sync_at(self, target_name: str, at: datetime, caller: str) -> SyncResult:
        """Make sure a sync of a one-unit target (autopilot) starts at ``at`` or later: join the
        unit's pending sync, or create one for the later of ``at`` and the end of its window.
        Import jobs ask this way, so that every job that finishes before it fires shares it."""
        self.target(target_name)
        unit = Unit(target_name, None)
        state = self.store.read(unit.key)
        refusal = SyncResult(unit.name, Outcome.COOLDOWN, next_allowed_at=not_before(state, at))
        request = SyncRequest(target_name, trigger=Trigger.IMPORT, caller=caller, defer=True)
        result = self.defer(unit, state, refusal, request)
        telemetry.sync_result(result, request, self.tenant)
        return result

    @property
    def can_send(self) -> bool:
        """Whether this service has a queue for pending syncs' messages."""
        return self.queue is not None

    def send_fire(self, state: UnitState, at: datetime) -> bool:
        """Send the pending sync's message; False (logged) if the queue is unavailable: the row
        holds the pending sync, and the watcher sends a message for one that is overdue."""
        if self.queue is None:  # a service without a queue defers nothing: nothing to send
            log.error("deferred sync of %s recorded, but this service has no queue to send its message", state.key)
            return False
        fire = PendingFire(state.key, state.target or state.key, state.item_id, state.pending_id or "", at,
                           state.pending_reschedules or 0, self.tenant)
        try:
            self.queue.schedule(fire, self.clock())
            return True
        except AppError as exc:  # the queue unavailable, or its client not buildable (CA bundle)
            log.error("deferred sync of %s recorded, but its message was not sent: %s", state.key, exc.message)
            return False

    def _scheduled(self, unit: Unit, state: UnitState, message: str) -> SyncResult:
        return SyncResult(unit.name, Outcome.SCHEDULED, next_allowed_at=state.next_allowed_at,
                          last_attempt_at=state.last_attempt_at, message=message, scheduled_at=state.pending_at,
                          retry_after_seconds=seconds_until(state.pending_at, self.clock()))

    def fire(self, fire: PendingFire) -> SyncResult | None:
        """The queue message of a pending sync arrived: run it through the normal claim.

        Returns None when there is nothing to do (a duplicate or stale message, asks already
        satisfied by another sync, a sync in flight to wait for). While Graph refuses, it backs
        off (Graph's Retry-After, else 10 s doubling to 5 min) until DEFERRED_BUDGET is spent.
        Each firing is logged once (a ``deferred`` event; its sync is a ``sync`` event too)."""
        unit = Unit(fire.target, fire.item_id)
        try:
            what, result = self._fire(fire)
        except UpstreamError as exc:  # no token, Table Storage down: the host retries the message
            telemetry.emit("deferred", logging.WARNING, trigger=Trigger.DEFERRED, target=fire.target, unit=unit.name,
                           tenant=fire.tenant, outcome="retrying", errorCode=exc.code, message=exc.message)
            raise
        # Given up, whoever was told "scheduled" will not get their sync: that needs attention.
        level = logging.ERROR if what == "givenUp" else logging.WARNING if what == "gone" else logging.INFO
        telemetry.emit("deferred", level, trigger=Trigger.DEFERRED, target=fire.target, unit=unit.name, tenant=fire.tenant,
                       outcome=what, message=result.message if result else None,
                       nextAllowedAt=result.next_allowed_at if result else None)
        return result

    def _fire(self, fire: PendingFire) -> tuple[str, SyncResult | None]:
        """What the firing did (stale, early, waitingForLease, gone, fired, rescheduled, answered, givenUp)
        and the sync's result, if it ran one."""
        try:
            target: Target | None = self.target(fire.target)
        except UnknownTarget:  # disabled since the message was sent
            target = None
        state = self.store.read(fire.unit_key)
        if target is None or state.pending_id != fire.pending_id or (state.pending_reschedules or 0) != fire.generation:
            return "stale", None  # a duplicate, or an older message
        unit = Unit(fire.target, fire.item_id)
        now = self.clock()
        if state.pending_at and state.pending_at > now + timedelta(seconds=2):  # early (visibility capped)
            self.send_fire(state, state.pending_at)
            return "early", None
        if in_flight(state, now):  # a sync is in flight: look again when its lease ends
            self.moves.reschedule(unit, fire, (state.lease_expires_at or now) + timedelta(seconds=1), counted=False)
            return "waitingForLease", None
        callers = [state.pending_asked_by or "?"] + [c for _, c in self.store.asks(fire.unit_key, fire.pending_id)]
        request = SyncRequest(
            fire.target, fire.item_id, trigger=Trigger.DEFERRED,
            caller=f"asked by {caller_names(callers)} ({len(callers)} asks since {iso(state.pending_since)})",
        )
        try:
            result = self._run(target, unit, request, state)
        except ItemNotFound as exc:  # the connector or token was deleted: nothing left to sync
            reason = f"{unit.name} no longer exists in Graph ({exc})"
            self.moves.give_up(unit, fire, reason)
            return "gone", SyncResult(unit.name, Outcome.SKIPPED, message=reason)
        telemetry.sync_result(result, request, self.tenant)
        if result.outcome is Outcome.STARTED and not result.ambiguous:
            return "fired", result
        if result.outcome is Outcome.STARTED or result.ambiguous:
            # Graph may not have started it: the asks stay pending, for the window this attempt opened.
            return self.moves.reschedule(unit, fire, result.next_allowed_at or self.clock() + deferred_backoff(0), counted=False), result
        if result.outcome is Outcome.IN_PROGRESS and result.graph_status is None:  # lost the claim to another caller
            return self.moves.reschedule(unit, fire, self.clock() + timedelta(seconds=IN_FLIGHT_RETRY_AFTER), counted=False), result
        if result.outcome in (Outcome.COOLDOWN, Outcome.IN_PROGRESS) or result.failure_status == 503:
            now = self.clock()
            later = closed_until(result.next_allowed_at, now)
            wait = deferred_backoff(state.pending_reschedules or 0, result.retry_after_seconds
                                    if result.outcome is Outcome.FAILED else None)
            reason = f"{result.error_code}: {result.message}" if result.error_code else result.message
            return self.moves.reschedule(unit, fire, later or now + wait, reason=reason), result
        self.moves.give_up(unit, fire, f"Graph refused it ({result.error_code}): {result.message}")  # waiting will not fix a 403
        return "givenUp", result


class PendingMoves:
    """Moves a unit's pending sync to a later time (with a new message), or gives it up for good
    and says so. Given the state store, the clock, the Deferrals' ``send_fire`` (send the moved
    sync's message) and the service's notify (a ``syncFailed`` for a sync given up)."""

    def __init__(self, store: StateStore, clock: Clock, send_fire: Callable[[UnitState, datetime], bool],
                 notify: Callable[[Notification], None]):
        self.store = store
        self.clock = clock
        self._send_fire = send_fire
        self._notify = notify

    def reschedule(
        self, unit: Unit, fire: PendingFire, at: datetime, counted: bool = True, reason: str = ""
    ) -> str:
        """Move the pending sync to ``at`` with a new message, or give it up if ``at`` is past its
        deadline. Only Graph's refusals count (they set the back-off); waiting for a lease or a
        lost race does not. Returns what became of it: rescheduled, givenUp, or answered (by
        another sync meanwhile)."""
        state = self.store.read(unit.key)
        if state.pending_id != fire.pending_id:
            return "answered"
        deadline = state.pending_deadline or (state.pending_since or self.clock()) + DEFERRED_BUDGET
        if counted and at > deadline:
            self.give_up(unit, fire, f"still refused at its deadline {iso(deadline)}: {reason}")
            return "givenUp"

        def move(row: UnitState) -> UnitState | None:
            if row.pending_id != fire.pending_id:
                return None
            return replace(row, pending_at=at, pending_reschedules=(row.pending_reschedules or 0) + (1 if counted else 0))

        moved = self.store.change(unit.key, move, "reschedule the deferred sync", current=state)
        if moved is None:
            return "answered"
        # A queue fault leaves the moved row without its message: the watcher sends it.
        self._send_fire(moved[1], at)
        return "rescheduled"

    def give_up(self, unit: Unit, fire: PendingFire, reason: str) -> None:
        """Drop the pending sync for good, say why in its row (GET /api/sync/status), and send a
        ``syncFailed`` notification: whoever was told ``scheduled`` must hear of it."""
        now = self.clock()

        def drop(row: UnitState) -> UnitState | None:
            if row.pending_id != fire.pending_id:
                return None
            return replace(row.without_pending(), pending_failed_at=now, pending_failure=reason[:1000])

        dropped = self.store.change(unit.key, drop, "give up the deferred sync")
        if dropped is not None:
            log.warning("deferred sync of %s given up: %s", unit.name, reason)
            self._notify(Notification("syncFailed", unit.name, "failed", now,
                                      f"the deferred sync of {unit.name} was given up: {reason}",
                                      dropped[0].next_allowed_at))
