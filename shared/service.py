"""The sync service: decide, claim, call Graph, record — for every trigger alike.

Per unit the flow is: read the state row (1 table round trip) → refuse from it if the unit is in
cooldown or in flight (no Graph call) → claim the lease (1 round trip, If-Match) → POST the sync
to Graph → commit outcome and history together (1 round trip).
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from .deferred import DEFERRED_BUDGET, STALE_PENDING, PendingFire, PendingQueue, deferred_backoff, queue_client
from .errors import StateStoreUnavailable, UnexpectedError, UpstreamError
from .graph import GraphClient, GraphResponse
from .model import Clock, Outcome, SyncRequest, SyncResult, Trigger, iso, utcnow
from .notify import Notification, Notifier
from .operations import Operation, OperationStore
from .settings import Settings
from .settings import LEASE_MARGIN_SECONDS
from .state import Attempt, Lease, StateStore, TargetState
from .health import Rating, rate, worst
from .retention import SWEEP_LIMIT, RetentionStore, Swept
from .status import READS, Unavailable
from .targets import TARGETS, Completion, ItemNotFound, Skip, Target, Unit, read_connector_status

log = logging.getLogger(__name__)

# After Graph's 409 ("a sync is already running") without Retry-After: look again in a minute.
IN_PROGRESS_BACKOFF = timedelta(seconds=60)
# What to tell a caller who finds another caller's sync in flight (it settles within seconds).
IN_FLIGHT_RETRY_AFTER = 10
# Side-by-side syncs in a fan-out: with Graph at ~100 ms a call, 25 get 100 connectors done in
# about half a second, while the WriteLimiter keeps them inside Intune's 100 writes per 20 s.
FANOUT_WORKERS = 25
# The key of Intune's connectorStatus among the status call's Graph reads (no target has it).
_CONNECTOR_STATUS = "connectorStatus"
# A commit that fails is retried this long inside the invocation (then kept in the process).
COMMIT_BACKOFF = (0.5, 1.0, 2.0, 4.0)
COMMIT_RETRY_SECONDS = 10.0
# A pending sync this far past its time without having fired lost its message: send it again.
MISSING_MESSAGE_GRACE = timedelta(minutes=2)


class UnknownTarget(LookupError):
    pass


@dataclass(frozen=True)
class Verdict:
    """What one attempt means for its unit."""

    outcome: Outcome
    next_allowed_at: datetime | None
    message: str
    ambiguous: bool = False  # Graph may have started a sync without our seeing its answer
    failure: UpstreamError | None = None


class SyncService:
    def __init__(
        self,
        settings: Settings,
        graph: GraphClient,
        store: StateStore,
        clock: Clock = utcnow,
        operations: OperationStore | None = None,
        notifier: Notifier | None = None,
        queue: PendingQueue | None = None,
    ):
        self.settings = settings
        self.graph = graph
        self.store = store
        self.clock = clock
        self.operations = operations
        self.notifier = notifier
        self.queue = queue
        # Refusals this process has already seen: a cooldown only ever moves forward (Graph's
        # window stands whatever our table says), so until it ends it can be answered from memory.
        self._known: dict[str, SyncResult] = {}
        self._known_lock = threading.Lock()
        # Attempts whose commit failed (storage down): unit key -> what to commit, retried later.
        self._unrecorded: dict[str, tuple[Lease, TargetState, Attempt]] = {}
        self._unrecorded_lock = threading.Lock()
        self.targets: dict[str, Target] = {
            name: TARGETS[name](graph, settings.cooldown_seconds(name), settings.exchange_sync_type, clock)
            for name in settings.sync_targets
        }

    def target(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            raise UnknownTarget(
                f"unknown or disabled target {name!r}; enabled: {', '.join(self.targets)}"
            ) from None

    # --- syncing -------------------------------------------------------------------------

    def sync(self, request: SyncRequest) -> list[SyncResult]:
        """Sync what the request names: one unit, or every unit of a target."""
        target = self.target(request.target)
        known: dict[str, TargetState] | None = None  # a fan-out's state rows, read in one query
        try:
            if target.per_item and request.item_id is None:
                # A fan-out reads its units' state first (one query): Table Storage down means
                # no Graph call, and if every known unit is refused, so is the caller.
                now = self.clock()
                known = {s.key: s for s in self.store.states(f"{target.name}-")}
                refusals = [self._refusal(_unit_of(s), s, now) for s in known.values()]
                if refusals and all(refusals) and not request.defer:
                    return [r for r in refusals if r]
            planned = target.units(request.item_id)
        except UpstreamError as exc:  # the state query or listing the items failed
            return [self._failure(target.name, exc)]
        if len(planned) <= 1:
            return [self._run_planned(target, p, request, known) for p in planned]
        # Items are independent; sync them side by side, bounded so we stay well inside
        # Intune's write limits.
        with ThreadPoolExecutor(max_workers=min(FANOUT_WORKERS, len(planned))) as pool:
            return list(pool.map(lambda p: self._run_planned(target, p, request, known), planned))

    def sync_enabled(self, trigger: Trigger = Trigger.TIMER, caller: str = "timer") -> list[SyncResult]:
        """Every enabled target; one target's failure never stops the others."""
        results: list[SyncResult] = []
        for name in self.targets:
            try:
                # A tick inside a cooldown becomes the pending sync rather than being lost.
                results.extend(self.sync(SyncRequest(target=name, trigger=trigger, caller=caller, defer=True)))
            except Exception as exc:  # isolate: log and go on with the next target
                log.exception("sync of %s failed unexpectedly", name)
                results.append(
                    SyncResult(name, Outcome.FAILED, message=f"unexpected error: {type(exc).__name__}: {exc}",
                               error_code="InternalError", failure_status=500)
                )
        return results

    def _run_planned(
        self, target: Target, planned: Unit | Skip, request: SyncRequest, known: dict[str, TargetState] | None
    ) -> SyncResult:
        if isinstance(planned, Skip):
            return SyncResult(planned.unit.name, Outcome.SKIPPED, message=planned.reason)
        try:
            # After a fan-out's query, a unit without a row has none: no need to read it again.
            state = None if known is None else known.get(planned.key, TargetState(key=planned.key))
            return self._run(target, planned, request, state)
        except UpstreamError as exc:
            return self._failure(planned.name, exc)

    def _run(self, target: Target, unit: Unit, request: SyncRequest, state: TargetState | None = None) -> SyncResult:
        """One unit: decide from its state row, claim it, call Graph, record the outcome."""
        self.flush_unrecorded(unit.key)
        if not request.defer and request.trigger is not Trigger.DEFERRED:
            remembered = self._remembered(unit, self.clock())
            if remembered:
                return remembered
        if state is None:
            state = self.store.read(unit.key)  # else: a fan-out read it already
        now = self.clock()
        if state.orphaned_claim(now):
            state = self._record_orphan(state, now)
        refusal = self._refusal(unit, state, now)
        if refusal:
            if request.defer:
                return self._defer(unit, state, refusal, request)
            # A lease can end any moment; a cooldown cannot end before nextAllowedAt.
            return refusal if state.lease_active(now) else (self._remember(refusal) or refusal)
        skip = target.precheck(unit)  # may raise ItemNotFound; nothing is claimed yet
        if skip:
            return SyncResult(unit.name, Outcome.SKIPPED, next_allowed_at=state.next_allowed_at, message=skip.reason)
        # The token first: a slow or dead identity endpoint must never hold a lease.
        self.graph.ensure_token()

        sync_type = request.sync_type or target.default_sync_type
        claimed_at = self.clock()
        # Every Graph call under this lease ends before it does, with time left to commit: the
        # deadline counts from before the claim's own round trip, as the lease does.
        deadline = time.monotonic() + self.settings.lease_seconds - LEASE_MARGIN_SECONDS
        lease_length = timedelta(seconds=self.settings.lease_seconds)
        lease = self.store.claim(
            state, claimed_at, self.settings.lease_seconds,
            # Pessimistic: a sync sent at the lease's last moment starts a window that ends here.
            hold_until=claimed_at + lease_length + target.cooldown,
            claim_by=f"{request.trigger.value}:{request.caller}"[:200], claim_sync_type=sync_type,
            target=unit.target, item_id=unit.item_id,
        )
        if lease is None:
            return SyncResult(
                unit.name,
                Outcome.IN_PROGRESS,
                message=f"another caller claimed {unit.name} a moment ago; its sync is in flight",
                retry_after_seconds=IN_FLIGHT_RETRY_AFTER,
            )
        started = time.perf_counter()
        response: GraphResponse | None = None
        error: UpstreamError | None = None
        try:
            response = target.sync(unit, sync_type, deadline)
        except UpstreamError as exc:
            error = exc
        except Exception as exc:  # a bug: we cannot tell whether Graph got the request
            log.exception("sync of %s raised unexpectedly", unit.name)
            error = UnexpectedError(f"unexpected error: {type(exc).__name__}: {exc}", maybe_sent=True)
        verdict = self._verdict(target, unit, state, lease, response, error)
        return self._record(unit, request, state, lease, verdict, response, error, sync_type, started)

    def _verdict(
        self, target: Target, unit: Unit, state: TargetState, lease: Lease,
        response: GraphResponse | None, error: UpstreamError | None,
    ) -> Verdict:
        """What the attempt means for the unit. Never raises: whatever goes wrong while reading
        Graph's answer, the attempt is still recorded (and the claim's window kept)."""
        now = self.clock()
        try:
            if response is not None:
                return self._interpret(target, unit, response)
            assert error is not None
            if error.maybe_sent:
                until = now + target.cooldown
                return Verdict(Outcome.STARTED, until, f"{error.message}; the sync may have started, so the "
                               f"next sync is allowed at {iso(until)}", ambiguous=True)
            # Graph answered with a failure, or was never reached: no sync started, no cooldown.
            return Verdict(Outcome.FAILED, state.next_allowed_at, error.message)
        except UpstreamError as exc:  # raise_for_status on a failure answer
            return Verdict(Outcome.FAILED, state.next_allowed_at, exc.message, failure=exc)
        except Exception as exc:
            log.exception("could not interpret Graph's answer for %s", unit.name)
            return Verdict(Outcome.FAILED, lease.state.next_allowed_at,
                           f"could not interpret Graph's answer ({type(exc).__name__}); the unit stays closed "
                           f"until {iso(lease.state.next_allowed_at)} in case a sync started", ambiguous=True)

    def _record(
        self, unit: Unit, request: SyncRequest, state: TargetState, lease: Lease, verdict: Verdict,
        response: GraphResponse | None, error: UpstreamError | None, sync_type: str | None, started: float,
    ) -> SyncResult:
        """Commit the outcome and its history row, notify, and answer the caller."""
        outcome, next_allowed, message = verdict.outcome, verdict.next_allowed_at, verdict.message
        failure = verdict.failure or (error if outcome is Outcome.FAILED else None)
        finished = self.clock()
        answer = response if response is not None else error
        graph_status = answer.status if isinstance(answer, GraphResponse) else error.graph_status if error else None
        request_id = answer.request_id if answer is not None else None
        client_request_id = answer.client_request_id if answer is not None else None
        attempt_at = lease.state.claim_at or finished
        new_state = replace(
            lease.state.without_claim(),
            next_allowed_at=next_allowed,
            last_outcome=outcome.value,
            last_attempt_at=attempt_at,
            last_started_at=attempt_at if outcome is Outcome.STARTED else state.last_started_at,
            last_http_status=graph_status,
            last_graph_request_id=request_id,
            last_client_request_id=client_request_id,
            last_message=message[:1000],
            last_error_code=failure.code if failure else None,
            completion_pending=True if outcome is Outcome.STARTED else state.completion_pending,
        )
        if outcome is Outcome.STARTED and not verdict.ambiguous:  # whoever asked for a deferred sync has it now
            new_state = new_state.without_pending()
        problem = failure or error
        attempt = Attempt(
            attempt_at=attempt_at, finished_at=finished, trigger=request.trigger.value, caller=request.caller[:200],
            outcome=outcome.value, http_status=graph_status, graph_request_id=request_id,
            client_request_id=client_request_id, duration_ms=int((time.perf_counter() - started) * 1000),
            error=(f"{problem.code}: {problem.message}"[:1000] if problem else message[:1000] if verdict.ambiguous else None),
            sync_type=sync_type, next_allowed_at=next_allowed, ambiguous=verdict.ambiguous or None,
            attempt_id=lease.owner,
        )
        warning = self._commit(lease, new_state, attempt)
        if warning:
            message += f" (warning: {warning})"
        log.info(
            "sync %s: %s (graph %s, request-id %s) by %s/%s",
            unit.name, outcome.value, graph_status, request_id, request.trigger.value, request.caller,
        )
        if outcome in (Outcome.STARTED, Outcome.FAILED):
            self._notify(Notification(
                "syncStarted" if outcome is Outcome.STARTED else "syncFailed",
                unit.name, outcome.value, finished, message, next_allowed, request_id, client_request_id,
            ))
        result = SyncResult(
            unit.name, outcome, next_allowed_at=next_allowed, last_attempt_at=attempt_at,
            graph_request_id=request_id, client_request_id=client_request_id, message=message,
            error_code=failure.code if failure else None, failure_status=failure.http_status if failure else None,
            graph_status=graph_status,
            retry_after_seconds=_retry_after(failure) if failure else _seconds_until(next_allowed, finished),
            ambiguous=verdict.ambiguous,
        )
        if outcome is not Outcome.FAILED:
            self._remember(self._refusal(unit, new_state, finished))
        return result

    def _commit(self, lease: Lease, new_state: TargetState, attempt: Attempt) -> str | None:
        """Record the attempt, retrying with backoff for a while. If storage stays down the
        attempt is kept in this process and recorded later (flush_unrecorded); the claim's
        pessimistic window keeps the unit closed meanwhile. Returns a warning, or None."""
        began = time.monotonic()
        for delay in (*COMMIT_BACKOFF, None):
            try:
                self.store.commit(lease, new_state, attempt)
                return None
            except StateStoreUnavailable as exc:
                failure = exc
            if delay is None or time.monotonic() - began + delay > COMMIT_RETRY_SECONDS:
                break
            time.sleep(delay)
        with self._unrecorded_lock:
            self._unrecorded[lease.state.key] = (lease, new_state, attempt)
        log.error("could not record the attempt on %s: %s; kept to record later: %s", lease.state.key, failure.message, attempt)
        return (f"the outcome could not be recorded yet ({failure.message}); the unit stays closed until "
                f"{iso(lease.state.next_allowed_at)} unless it is recorded sooner")

    def flush_unrecorded(self, key: str | None = None) -> int:
        """Record attempts whose commit failed earlier in this process (one unit, or all).
        Returns how many were recorded."""
        with self._unrecorded_lock:
            waiting = [(k, v) for k, v in self._unrecorded.items() if key is None or k == key]
        recorded = 0
        for unit_key, (lease, new_state, attempt) in waiting:
            try:
                self.store.commit(lease, new_state, attempt)
            except StateStoreUnavailable as exc:
                log.warning("attempt on %s still not recorded: %s", unit_key, exc.message)
                continue
            with self._unrecorded_lock:
                if self._unrecorded.get(unit_key) == (lease, new_state, attempt):
                    del self._unrecorded[unit_key]
            recorded += 1
        return recorded

    def _record_orphan(self, state: TargetState, now: datetime) -> TargetState:
        """A claim whose lease ended without an outcome: record it as unknown (it may have
        started a sync) and clear it, keeping its window. Whoever reads such a row does this."""
        trigger, _, caller = (state.claim_by or "unknown:?").partition(":")
        attempt = Attempt(
            attempt_at=state.claim_at or now, finished_at=now, trigger=trigger, caller=caller, outcome="unknown",
            error="OutcomeNotRecorded: the instance that claimed this sync did not record Graph's answer (it "
                  "stopped, or Table Storage failed); the sync may have started",
            sync_type=state.claim_sync_type, next_allowed_at=state.next_allowed_at, ambiguous=True,
            attempt_id=state.lease_owner,
        )
        recorded = self.store.record_orphan(state, attempt)
        if recorded is None:
            return self.store.read(state.key)  # someone else recorded it, or the holder came back
        log.warning("recorded the unrecorded claim of %s from %s", state.key, iso(state.claim_at))
        return recorded

    def _remember(self, refusal: SyncResult | None) -> SyncResult | None:
        """Keep a refusal that rests on nextAllowedAt, to answer the next callers from memory."""
        if refusal is not None and refusal.next_allowed_at is not None:
            with self._known_lock:
                self._known[refusal.target] = refusal
        return refusal

    def _remembered(self, unit: Unit, now: datetime) -> SyncResult | None:
        with self._known_lock:
            known = self._known.get(unit.name)
            if known is None or known.next_allowed_at is None or known.next_allowed_at <= now:
                self._known.pop(unit.name, None)
                return None
        return replace(known, retry_after_seconds=_seconds_until(known.next_allowed_at, now))

    def _refusal(self, unit: Unit, state: TargetState, now: datetime) -> SyncResult | None:
        common: dict[str, Any] = dict(
            last_attempt_at=state.last_attempt_at,
            graph_request_id=state.last_graph_request_id,
            client_request_id=state.last_client_request_id,
        )
        if state.lease_active(now):
            # A claim's nextAllowedAt is its pessimistic hold, not the window: the commit sets that.
            before = None if state.claim_at else state.next_allowed_at
            return SyncResult(
                unit.name,
                Outcome.IN_PROGRESS,
                next_allowed_at=before if before and before > now else None,
                message=f"a sync of {unit.name} is in flight (lease until {iso(state.lease_expires_at)})",
                retry_after_seconds=IN_FLIGHT_RETRY_AFTER,
                **common,
            )
        if state.next_allowed_at and state.next_allowed_at > now:
            in_progress = state.last_outcome == Outcome.IN_PROGRESS.value
            return SyncResult(
                unit.name,
                Outcome.IN_PROGRESS if in_progress else Outcome.COOLDOWN,
                next_allowed_at=state.next_allowed_at,
                message=(
                    f"Graph reported a sync of {unit.name} already running; next try allowed at "
                    if in_progress
                    else f"{unit.name} was synced recently; next sync allowed at "
                )
                + str(iso(state.next_allowed_at)),
                retry_after_seconds=_seconds_until(state.next_allowed_at, now),
                **common,
            )
        return None

    def _interpret(self, target: Target, unit: Unit, response: GraphResponse) -> Verdict:
        """Graph answered: 2xx started, 409 running, 429 cooldown; any other status raises the
        error naming its cause. Retry-After is already sanitised and clamped (shared/answers.py)."""
        now = self.clock()
        retry_after = response.retry_after_seconds or None  # "Retry-After: 0" would reopen the window at once
        if response.ok:
            until = now + target.cooldown
            return Verdict(Outcome.STARTED, until, f"sync of {unit.name} started; next sync allowed at {iso(until)}")
        if response.status == 409:
            until = now + (timedelta(seconds=retry_after) if retry_after else IN_PROGRESS_BACKOFF)
            return Verdict(Outcome.IN_PROGRESS, until, f"Graph says a sync of {unit.name} is already running")
        if response.status == 429:
            until = now + timedelta(seconds=retry_after) if retry_after else target.cooldown_end_without_retry_after(now)
            return Verdict(Outcome.COOLDOWN, until,
                           f"Graph refused: {unit.name} was synced within its cooldown; next sync allowed at {iso(until)}")
        response.raise_for_status(f"the {unit.name} sync", target.roles)
        raise AssertionError("unreachable")  # raise_for_status raised for every non-2xx

    def _failure(self, name: str, exc: UpstreamError) -> SyncResult:
        return SyncResult(
            name,
            Outcome.FAILED,
            graph_request_id=exc.request_id,
            client_request_id=exc.client_request_id,
            message=exc.message,
            error_code=exc.code,
            failure_status=exc.http_status,
            graph_status=exc.graph_status,
            retry_after_seconds=_retry_after(exc),
        )

    def _release_quietly(self, lease: Any) -> None:
        try:
            self.store.release(lease)
        except Exception:
            log.exception("could not release lease on %s", lease.state.key)

    # --- deferred syncs (shared/deferred.py) --------------------------------------------

    def _defer(self, unit: Unit, state: TargetState, refusal: SyncResult, request: SyncRequest) -> SyncResult:
        """Turn a refused ask into the unit's one pending sync: join it, or create it."""
        if self.queue is None:
            return refusal
        caller = f"{request.trigger.value}:{request.caller}"
        for _ in range(5):
            now = self.clock()
            if state.pending_id and state.pending_at and state.pending_at > now - STALE_PENDING:
                self.store.add_ask(unit.key, state.pending_id, caller, now)
                return self._scheduled(unit, state, f"joined the sync already scheduled for {iso(state.pending_at)}")
            # None, or a stale one that never fired: schedule afresh. The row first: of racing
            # first asks one wins this If-Match write and sends the one message; the others read
            # the row again and join. If we stop before sending, the watcher sends it.
            at = refusal.next_allowed_at if refusal.next_allowed_at and refusal.next_allowed_at > now \
                else now + timedelta(seconds=IN_FLIGHT_RETRY_AFTER)
            created = self.store.update(replace(
                state, pending_id=uuid.uuid4().hex, pending_at=at, pending_since=now, pending_asked_by=caller,
                # The budget runs from the end of the window the unit is in (a claim in flight
                # holds it to its pessimistic end), not from a first look 10 s from now.
                pending_reschedules=0, pending_deadline=max(at, state.next_allowed_at or at) + DEFERRED_BUDGET,
            ))
            if created is not None:
                message = f"in cooldown: one sync is scheduled for {iso(at)}"
                if not self._send_fire(created, at):
                    message += " (its queue message will be sent by the next watcher tick)"
                return self._scheduled(unit, created, message)
            state = self.store.read(unit.key)
            refusal = self._refusal(unit, state, self.clock()) or refusal
        raise StateStoreUnavailable(f"could not record the deferred sync of {unit.name}: the row kept changing")

    def _send_fire(self, state: TargetState, at: datetime) -> bool:
        """Send the pending sync's message; False (logged) if the queue is unavailable: the row
        holds the pending sync, and the watcher sends a message for one that is overdue."""
        fire = PendingFire(state.key, state.target or state.key, state.item_id, state.pending_id or "", at,
                           state.pending_reschedules or 0)
        try:
            self.queue.schedule(fire, self.clock())  # type: ignore[union-attr]
            return True
        except StateStoreUnavailable as exc:
            log.error("deferred sync of %s recorded, but its message was not sent: %s", state.key, exc.message)
            return False

    def _scheduled(self, unit: Unit, state: TargetState, message: str) -> SyncResult:
        return SyncResult(unit.name, Outcome.SCHEDULED, next_allowed_at=state.next_allowed_at,
                          last_attempt_at=state.last_attempt_at, message=message, scheduled_at=state.pending_at,
                          retry_after_seconds=_seconds_until(state.pending_at, self.clock()))

    def fire(self, fire: PendingFire) -> SyncResult | None:
        """The queue message of a pending sync arrived: run it through the normal claim.

        Returns None when there is nothing to do (a duplicate or stale message, asks already
        satisfied by another sync, a sync in flight to wait for). While Graph refuses, it backs
        off (Graph's Retry-After, else 10 s doubling to 5 min) until DEFERRED_BUDGET is spent."""
        target = self.targets.get(fire.target)
        state = self.store.read(fire.unit_key)
        if target is None or state.pending_id != fire.pending_id or (state.pending_reschedules or 0) != fire.generation:
            log.info("deferred sync %s: message %s/%d is stale or a duplicate; nothing to do",
                     fire.unit_key, fire.pending_id, fire.generation)
            return None
        unit = Unit(fire.target, fire.item_id)
        now = self.clock()
        if state.pending_at and state.pending_at > now + timedelta(seconds=2):  # early (visibility capped)
            self.queue.schedule(replace(fire, scheduled_at=state.pending_at), now)  # type: ignore[union-attr]
            return None
        if state.lease_active(now):  # a sync is in flight: look again when its lease ends
            self._reschedule(unit, fire, (state.lease_expires_at or now) + timedelta(seconds=1), counted=False)
            return None
        callers = [state.pending_asked_by or "?"] + [c for _, c in self.store.asks(fire.unit_key, fire.pending_id)]
        request = SyncRequest(
            fire.target, fire.item_id, trigger=Trigger.DEFERRED,
            caller=f"asked by {_names(callers)} ({len(callers)} asks since {iso(state.pending_since)})",
        )
        try:
            result = self._run(target, unit, request, state)
        except ItemNotFound as exc:  # the connector or token was deleted: nothing left to sync
            reason = f"{unit.name} no longer exists in Graph ({exc})"
            self._give_up(unit, fire, reason)
            return SyncResult(unit.name, Outcome.SKIPPED, message=reason)
        if result.outcome is Outcome.STARTED and not result.ambiguous:
            return result
        if result.outcome is Outcome.STARTED or result.ambiguous:
            # Graph may not have started it: the asks stay pending, for the window this attempt opened.
            self._reschedule(unit, fire, result.next_allowed_at or self.clock() + deferred_backoff(0), counted=False)
            return result
        if result.outcome is Outcome.IN_PROGRESS and result.graph_status is None:  # lost the claim to another caller
            self._reschedule(unit, fire, self.clock() + timedelta(seconds=IN_FLIGHT_RETRY_AFTER), counted=False)
            return result
        if result.outcome in (Outcome.COOLDOWN, Outcome.IN_PROGRESS) or result.failure_status == 503:
            now = self.clock()
            later = result.next_allowed_at if result.next_allowed_at and result.next_allowed_at > now else None
            wait = deferred_backoff(state.pending_reschedules or 0, result.retry_after_seconds
                                    if result.outcome is Outcome.FAILED else None)
            reason = f"{result.error_code}: {result.message}" if result.error_code else result.message
            self._reschedule(unit, fire, later or now + wait, reason=reason)
        else:
            self._give_up(unit, fire, f"Graph refused it ({result.error_code}): {result.message}")  # waiting will not fix a 403
        return result

    def _reschedule(
        self, unit: Unit, fire: PendingFire, at: datetime, counted: bool = True, reason: str = ""
    ) -> None:
        """Move the pending sync to ``at`` with a new message, or give it up if ``at`` is past its
        deadline. Only Graph's refusals count (they set the back-off); waiting for a lease or a
        lost race does not."""
        for _ in range(5):
            state = self.store.read(unit.key)
            if state.pending_id != fire.pending_id:
                return  # answered meanwhile
            deadline = state.pending_deadline or (state.pending_since or self.clock()) + DEFERRED_BUDGET
            if counted and at > deadline:
                self._give_up(unit, fire, f"still refused at its deadline {iso(deadline)}: {reason}")
                return
            reschedules = (state.pending_reschedules or 0) + (1 if counted else 0)
            moved = self.store.update(replace(state, pending_at=at, pending_reschedules=reschedules))
            if moved is not None:
                self.queue.schedule(replace(fire, scheduled_at=at, generation=reschedules), self.clock())  # type: ignore[union-attr]
                log.info("deferred sync of %s rescheduled for %s (%d)", unit.name, iso(at), reschedules)
                return
        raise StateStoreUnavailable(f"could not reschedule the deferred sync of {unit.name}: the row kept changing")

    def _give_up(self, unit: Unit, fire: PendingFire, reason: str) -> None:
        """Drop the pending sync for good, say why in its row (GET /api/sync/status), and send a
        ``syncFailed`` notification: whoever was told ``scheduled`` must hear of it."""
        for _ in range(5):
            state = self.store.read(unit.key)
            if state.pending_id != fire.pending_id:
                return
            now = self.clock()
            given_up = replace(state.without_pending(), pending_failed_at=now, pending_failure=reason[:1000])
            if self.store.update(given_up) is not None:
                log.warning("deferred sync of %s given up: %s", unit.name, reason)
                self._notify(Notification("syncFailed", unit.name, "failed", now,
                                          f"the deferred sync of {unit.name} was given up: {reason}",
                                          state.next_allowed_at))
                return
        raise StateStoreUnavailable(f"could not give up the deferred sync of {unit.name}: the row kept changing")

    # --- following a sync to its end -----------------------------------------------------

    def sync_and_follow(self, request: SyncRequest) -> tuple[SyncResult, Operation | None, str | None]:
        """Sync one unit; if it started (or one is running), also create an operation that a
        caller can poll until Graph reports the sync finished. Returns (result, operation, token)."""
        result = self.sync(request)[0]
        if result.outcome not in (Outcome.STARTED, Outcome.IN_PROGRESS, Outcome.SCHEDULED) or self.operations is None:
            return result, None, None
        target = self.target(request.target)
        unit = target.units(request.item_id)[0]
        assert isinstance(unit, Unit)
        since = (result.last_attempt_at if result.outcome is Outcome.STARTED and result.last_attempt_at
                 else result.scheduled_at if result.outcome is Outcome.SCHEDULED and result.scheduled_at
                 else self.clock())
        operation, token = self.operations.create(
            unit.name, unit.target, unit.item_id, since,
            since + timedelta(seconds=self.settings.wait_timeout_seconds), result.message,
        )
        return result, operation, token

    def poll(self, operation_id: str, token: str) -> Operation | None:
        """The operation's current status; None if there is no such operation for this token."""
        assert self.operations is not None
        operation = self.operations.get(operation_id)
        if operation is None or not operation.matches(token):
            return None
        if operation.done:
            return operation
        now = self.clock()
        target = self.target(operation.unit_target)
        unit = Unit(operation.unit_target, operation.item_id)
        try:
            completion = target.completion(unit, operation.since)
        except ItemNotFound as exc:  # deleted in Graph: this sync will never be seen to finish
            final = replace(operation, status="failed", finished_at=now, message=f"{unit.name} no longer exists in Graph ({exc})")
            self.operations.finish(final)
            return final
        except UpstreamError as exc:  # keep waiting: a blip in Graph is not the sync's failure
            completion = None
            message = f"still waiting; Graph status unavailable ({exc.code})"
        if completion and completion.done:
            final = replace(
                operation, status=completion.status, last_sync_date_time=completion.last_sync_date_time,
                sync_status=completion.sync_status, finished_at=now,
                message=f"sync of {unit.name} {completion.status} (Graph lastSyncDateTime {completion.last_sync_date_time})",
            )
            self.operations.finish(final)
            self._record_completion(unit, completion)
            return final
        if now >= operation.deadline:
            final = replace(
                operation, status="timedOut", finished_at=now,
                message=f"gave up waiting after {self.settings.wait_timeout_seconds} s; Graph still reports the sync running",
            )
            self.operations.finish(final)
            return final
        if completion:
            message = f"sync of {unit.name} is running (Graph syncStatus {completion.sync_status})"
        return replace(operation, message=message, sync_status=completion.sync_status if completion else operation.sync_status)

    def watch(self) -> int:
        """The watcher tick: keep every unit's row honest, then report finished syncs.

        Records attempts whose commit failed earlier in this process and claims that never
        recorded their outcome, sends the message of a pending sync that is overdue (its sender
        stopped before sending it), and, with NOTIFY_URL set, reports syncs Graph shows finished.
        One unit's fault never stops the others. Returns how many syncs were seen to finish.
        One table query when there is nothing to do."""
        self.flush_unrecorded()
        states = self.store.states()
        now = self.clock()
        for state in states:
            try:
                self._repair(state, now)
            except UpstreamError as exc:
                log.warning("watch: could not repair %s: %s", state.key, exc.message)
        self.sweep()  # bounded: old history, asks and operations
        finished = 0
        if self.notifier is not None and self.notifier.urls:
            for state in states:
                if state.completion_pending and state.target in self.targets and state.last_started_at is not None:
                    finished += self._watch_completion(state)
            self.notifier.flush()
        return finished

    def _repair(self, state: TargetState, now: datetime) -> None:
        if state.orphaned_claim(now):
            self._record_orphan(state, now)
        elif self.queue is not None and state.pending_id and state.pending_at and \
                state.pending_at < now - MISSING_MESSAGE_GRACE:
            # Overdue: its message was never sent (or was lost). A duplicate is harmless: the
            # message's pendingId and generation must match, and the claim allows one sync.
            log.warning("watch: the pending sync of %s is overdue since %s; sending its message again",
                        state.key, iso(state.pending_at))
            self._send_fire(state, now)

    def _watch_completion(self, state: TargetState) -> int:
        unit = Unit(state.target or state.key, state.item_id)
        try:
            completion = self.targets[unit.target].completion(unit, state.last_started_at)  # type: ignore[arg-type]
        except ItemNotFound as exc:
            self._mark_gone(state, str(exc))
            return 0
        except UpstreamError as exc:
            log.warning("could not read the status of %s: %s", unit.name, exc.message)
            return 0
        except Exception:  # a bug or nonsense from Graph for one unit: the others go on
            log.exception("watch: could not follow %s", unit.name)
            return 0
        return int(completion.done and self._record_completion(unit, completion, state))

    def _mark_gone(self, state: TargetState, reason: str) -> None:
        """The unit's item was deleted in Graph: nothing left to follow; it ends as skipped."""
        message = f"{state.key} no longer exists in Graph ({reason}); nothing left to follow"
        if self.store.update(replace(state, completion_pending=False, last_outcome=Outcome.SKIPPED.value,
                                     last_message=message)) is not None:
            log.warning("watch: %s", message)

    def _record_completion(self, unit: Unit, completion: Completion, state: TargetState | None = None) -> bool:
        """Clear the unit's completion flag; whoever clears it sends the one notification."""
        state = state or self.store.read(unit.key)
        if not state.completion_pending:
            return False
        cleared = self.store.update(
            replace(state, completion_pending=False, last_completed_at=self.clock(), last_sync_status=completion.sync_status)
        )
        if cleared is None:
            return False  # another poller or the watcher got there first
        self._notify(
            Notification(
                "syncFailed" if completion.status == "failed" else "syncCompleted",
                unit.name, completion.status, self.clock(),
                f"Graph reports the sync of {unit.name} {completion.status}",
                state.next_allowed_at, last_sync_date_time=completion.last_sync_date_time, sync_status=completion.sync_status,
            )
        )
        return True

    def _notify(self, notification: Notification) -> None:
        if self.notifier is not None:
            self.notifier.send(notification)

    def sweep(self, limit: int = SWEEP_LIMIT) -> Swept:
        """Delete expired rows (shared/retention.py): history older than HISTORY_RETENTION_DAYS,
        asks of pending syncs that are over, operations a day past their deadline or finish. At
        most ``limit`` deletes. A Table Storage fault is logged, not raised: the next tick sweeps."""
        try:
            swept = RetentionStore.of(self.store).sweep(self.clock(), self.settings.history_retention_days, limit)
        except StateStoreUnavailable as exc:
            log.warning("sweep skipped: %s", exc.message)
            return Swept()
        if swept.total:
            log.info("sweep deleted %d history, %d ask and %d operation rows", swept.history, swept.asks, swept.operations)
        return swept

    # --- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Local state next to Graph's own and a health rating, per enabled target and unit.

        Graph is read side by side (shared/status.py) while the table is read, and the answer
        comes within STATUS_DEADLINE_SECONDS with what is known: a target whose Graph read has
        not answered by then is reported like a Graph fault, inline and rated unhealthy (error
        code ``Unavailable``), and ``connectorStatus`` is null. Table reads: the state rows (one
        query) and one keys-only count per pending sync; no history."""
        started = time.monotonic()
        now = self.clock()
        deadline = self.settings.status_deadline_seconds
        reads = READS.start_all({
            **{name: ((target, "graph_status"), target.graph_status) for name, target in self.targets.items()},
            _CONNECTOR_STATUS: ((self.graph, _CONNECTOR_STATUS), lambda: read_connector_status(self.graph)),
        })
        local = {s.key: s for s in self.store.states()}
        asks = {key: 1 + self.store.count_asks(key, s.pending_id) for key, s in local.items() if s.pending_id}
        answers = READS.answers(reads, deadline - (time.monotonic() - started), deadline)
        targets: list[dict[str, Any]] = []
        for name in self.targets:
            graph = self._graph_json(name, answers[name], now)
            rows = [s for key, s in local.items() if key == name or key.startswith(f"{name}-")]
            targets.append(
                {
                    "target": name,
                    "health": worst([g["health"]["rating"] for g in graph]),
                    "units": [_state_json(s, now, asks.get(s.key, 0)) for s in sorted(rows, key=lambda s: s.key)],
                    "graph": graph,
                }
            )
        connectors = answers[_CONNECTOR_STATUS]
        if isinstance(connectors, BaseException):
            raise connectors
        return {
            "now": iso(now),
            "health": worst([t["health"] for t in targets]),
            "targets": targets,
            "connectorStatus": None if isinstance(connectors, Unavailable) else connectors,
        }

    def _graph_json(self, name: str, answer: Any, now: datetime) -> list[dict[str, Any]]:
        """Graph's views of one target, rated; or one entry saying why there are none."""
        if isinstance(answer, (UpstreamError, Unavailable)):  # same shape as a unit's status: one schema
            code = answer.code if isinstance(answer, UpstreamError) else "Unavailable"
            return [{"target": name, "error": {"code": code, "message": answer.message},
                     "health": Rating("unhealthy", (answer.message,)).to_json()}]
        if isinstance(answer, BaseException):
            raise answer
        warning_hours, unhealthy_hours = self.settings.thresholds(name)
        return [
            {"target": view.target, **view.fields,
             "health": rate(view, now, warning_hours, unhealthy_hours, self.settings.token_expiry_warning_days).to_json()}
            for view in answer
        ]

def _unit_of(state: TargetState) -> Unit:
    return Unit(state.target or state.key, state.item_id)


def _state_json(state: TargetState, now: datetime, asks: int = 0) -> dict[str, Any]:
    return {
        "target": state.key if state.item_id is None else f"{state.target}/{state.item_id}",
        "lastOutcome": state.last_outcome,
        "lastAttemptAt": iso(state.last_attempt_at),
        "lastStartedAt": iso(state.last_started_at),
        "nextAllowedAt": iso(state.next_allowed_at),
        "inCooldown": bool(state.next_allowed_at and state.next_allowed_at > now),
        "lease": {"active": state.lease_active(now), "expiresAt": iso(state.lease_expires_at)}
        if state.lease_owner
        else None,
        "lastHttpStatus": state.last_http_status,
        "graphRequestId": state.last_graph_request_id,
        "message": state.last_message,
        "pending": {"scheduledAt": iso(state.pending_at), "since": iso(state.pending_since), "asks": asks,
                    "firstAskedBy": state.pending_asked_by, "reschedules": state.pending_reschedules,
                    "deadline": iso(state.pending_deadline)}
        if state.pending_id
        else None,
        # The last deferred sync that was given up, and why (Graph kept refusing, or the item is gone).
        "deferred": {"gaveUpAt": iso(state.pending_failed_at), "reason": state.pending_failure}
        if state.pending_failed_at
        else None,
        # A claim whose holder never recorded Graph's answer (shown until the next reader records it).
        "unrecordedClaim": {"at": iso(state.claim_at), "by": state.claim_by}
        if state.orphaned_claim(now)
        else None,
    }


def _names(callers: list[str], limit: int = 10) -> str:
    """The distinct callers of a pending sync, for its history row; the first ``limit`` named."""
    distinct = list(dict.fromkeys(callers))
    return ", ".join(distinct[:limit]) + (f" and {len(distinct) - limit} more" if len(distinct) > limit else "")


def _retry_after(error: UpstreamError) -> int | None:
    """Graph's own Retry-After on a failure (already sanitised), in whole seconds."""
    return math.ceil(error.retry_after_seconds) if error.retry_after_seconds else None


def _seconds_until(when: datetime | None, now: datetime) -> int | None:
    if when is None:
        return None
    return max(1, math.ceil((when - now).total_seconds()))


def build_service(settings: Settings, clock: Clock = utcnow, **graph_options: Any) -> SyncService:
    """Wire the real clients from settings (one credential, one Graph client, one table client)."""
    from .identity import make_credential
    from .state import table_client

    graph = GraphClient(
        settings.graph_base_url,
        make_credential(settings.azure_client_id),
        settings.graph_scope,
        timeout=settings.graph_timeout_seconds,
        **graph_options,
    )
    table = table_client(settings.storage, settings.state_table, make_credential)
    notifier = Notifier(settings.notify_urls, settings.notify_format, os.environ.get("WEBSITE_SITE_NAME", "intune-sync"))
    queue = PendingQueue(lambda: queue_client(settings.storage, settings.queue_name, make_credential))
    return SyncService(settings, graph, StateStore(table), clock, OperationStore(table), notifier, queue)
