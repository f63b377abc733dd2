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
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from .deferred import MAX_RESCHEDULES, STALE_PENDING, PendingFire, PendingQueue, queue_client
from .errors import StateStoreUnavailable, UpstreamError
from .graph import GraphClient, GraphResponse
from .model import Clock, Outcome, SyncRequest, SyncResult, Trigger, iso, utcnow
from .notify import Notification, Notifier
from .operations import Operation, OperationStore
from .settings import Settings
from .state import Attempt, StateStore, TargetState
from .health import Rating, rate, worst
from .targets import TARGETS, Completion, Skip, Target, Unit, read_connector_status

log = logging.getLogger(__name__)

# After Graph's 409 ("a sync is already running") without Retry-After: look again in a minute.
IN_PROGRESS_BACKOFF = timedelta(seconds=60)
# What to tell a caller who finds another caller's sync in flight (it settles within seconds).
IN_FLIGHT_RETRY_AFTER = 10
# Side-by-side syncs in a fan-out: with Graph at ~100 ms a call, 25 get 100 connectors done in
# about half a second, while the WriteLimiter keeps them inside Intune's 100 writes per 20 s.
FANOUT_WORKERS = 25


class UnknownTarget(LookupError):
    pass


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
        if not request.defer and request.trigger is not Trigger.DEFERRED:
            remembered = self._remembered(unit, self.clock())
            if remembered:
                return remembered
        if state is None:
            state = self.store.read(unit.key)  # else: a fan-out read it already
        now = self.clock()
        refusal = self._refusal(unit, state, now)
        if refusal:
            if request.defer:
                return self._defer(unit, state, refusal, request)
            # A lease can end any moment; a cooldown cannot end before nextAllowedAt.
            return refusal if state.lease_active(now) else self._remember(refusal)
        skip = target.precheck(unit)  # may raise ItemNotFound; nothing is claimed yet
        if skip:
            return SyncResult(unit.name, Outcome.SKIPPED, next_allowed_at=state.next_allowed_at, message=skip.reason)

        # The lease starts now, after any precheck, so all of it is left for the Graph call.
        lease = self.store.claim(
            state, self.clock(), self.settings.lease_seconds, target=unit.target, item_id=unit.item_id
        )
        if lease is None:
            return SyncResult(
                unit.name,
                Outcome.IN_PROGRESS,
                message=f"another caller claimed {unit.name} a moment ago; its sync is in flight",
                retry_after_seconds=IN_FLIGHT_RETRY_AFTER,
            )

        sync_type = request.sync_type or target.default_sync_type
        attempt_at = self.clock()
        started = time.perf_counter()
        response: GraphResponse | None = None
        error: UpstreamError | None = None
        try:
            response = target.sync(unit, sync_type)
            outcome, next_allowed, message = self._interpret(target, unit, response, state)
        except UpstreamError as exc:
            error = exc
            outcome, next_allowed, message = Outcome.FAILED, state.next_allowed_at, exc.message
        except Exception:
            self._release_quietly(lease)
            raise
        finished = self.clock()
        graph_status = response.status if response is not None else error.graph_status if error else None
        request_id = response.request_id if response is not None else error.request_id if error else None
        client_request_id = (
            response.client_request_id if response is not None else error.client_request_id if error else None
        )
        new_state = replace(
            lease.state,
            lease_owner=None,
            lease_expires_at=None,
            next_allowed_at=next_allowed,
            last_outcome=outcome.value,
            last_attempt_at=attempt_at,
            last_started_at=attempt_at if outcome is Outcome.STARTED else state.last_started_at,
            last_http_status=graph_status,
            last_graph_request_id=request_id,
            last_client_request_id=client_request_id,
            last_message=message[:1000],
            last_error_code=error.code if error else None,
            completion_pending=True if outcome is Outcome.STARTED else state.completion_pending,
        )
        if outcome is Outcome.STARTED:  # whoever asked for a deferred sync has it now
            new_state = new_state.without_pending()
        attempt = Attempt(
            attempt_at=attempt_at,
            finished_at=finished,
            trigger=request.trigger.value,
            caller=request.caller[:200],
            outcome=outcome.value,
            http_status=graph_status,
            graph_request_id=request_id,
            client_request_id=client_request_id,
            duration_ms=int((time.perf_counter() - started) * 1000),
            error=(f"{error.code}: {error.message}"[:1000] if error else None),
            sync_type=sync_type,
            next_allowed_at=next_allowed,
        )
        try:
            self.store.commit(lease, new_state, attempt)
        except StateStoreUnavailable as exc:
            # Graph already answered; the caller deserves that answer. The lease expires on its
            # own and Graph's own 429 protects the window meanwhile. The attempt goes to the log
            # in full, so it is not lost.
            log.error("could not record the attempt on %s: %s; attempt: %s", unit.name, exc.message, attempt)
            message += f" (warning: the outcome could not be recorded: {exc.message})"
        log.info(
            "sync %s: %s (graph %s, request-id %s) by %s/%s",
            unit.name, outcome.value, graph_status, request_id, request.trigger.value, request.caller,
        )
        if outcome in (Outcome.STARTED, Outcome.FAILED):
            self._notify(
                Notification(
                    "syncStarted" if outcome is Outcome.STARTED else "syncFailed",
                    unit.name, outcome.value, finished, message, next_allowed, request_id, client_request_id,
                )
            )
        result = SyncResult(
            unit.name,
            outcome,
            next_allowed_at=next_allowed,
            last_attempt_at=attempt_at,
            graph_request_id=request_id,
            client_request_id=client_request_id,
            message=message,
            error_code=error.code if error else None,
            failure_status=error.http_status if error else None,
            graph_status=graph_status,
            retry_after_seconds=_seconds_until(next_allowed, finished),
        )
        if outcome is not Outcome.FAILED:
            self._remember(self._refusal(unit, new_state, finished))
        return result

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
        common = dict(
            last_attempt_at=state.last_attempt_at,
            graph_request_id=state.last_graph_request_id,
            client_request_id=state.last_client_request_id,
        )
        if state.lease_active(now):
            return SyncResult(
                unit.name,
                Outcome.IN_PROGRESS,
                next_allowed_at=state.next_allowed_at if state.next_allowed_at and state.next_allowed_at > now else None,
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

    def _interpret(
        self, target: Target, unit: Unit, response: GraphResponse, state: TargetState
    ) -> tuple[Outcome, datetime | None, str]:
        now = self.clock()
        retry_after = response.retry_after_seconds or None  # "Retry-After: 0" would reopen the window at once
        if response.ok:
            until = now + target.cooldown
            return Outcome.STARTED, until, f"sync of {unit.name} started; next sync allowed at {iso(until)}"
        if response.status == 409:
            until = now + (timedelta(seconds=retry_after) if retry_after else IN_PROGRESS_BACKOFF)
            return Outcome.IN_PROGRESS, until, f"Graph says a sync of {unit.name} is already running"
        if response.status == 429:
            until = (
                now + timedelta(seconds=retry_after)
                if retry_after
                else target.cooldown_end_without_retry_after(now)
            )
            return (
                Outcome.COOLDOWN,
                until,
                f"Graph refused: {unit.name} was synced within its cooldown; next sync allowed at {iso(until)}",
            )
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
            else:  # none, or a stale one that never fired: schedule afresh
                at = refusal.next_allowed_at if refusal.next_allowed_at and refusal.next_allowed_at > now \
                    else now + timedelta(seconds=IN_FLIGHT_RETRY_AFTER)
                pending_id = uuid.uuid4().hex
                # The message goes first: if our row update then loses a race, the message finds
                # another pendingId when it fires and does nothing.
                self.queue.schedule(PendingFire(unit.key, unit.target, unit.item_id, pending_id, at), now)
                created = self.store.update(replace(
                    state, pending_id=pending_id, pending_at=at, pending_since=now,
                    pending_asked_by=caller, pending_reschedules=0,
                ))
                if created is not None:
                    return self._scheduled(unit, created, f"in cooldown: one sync is scheduled for {iso(at)}")
            state = self.store.read(unit.key)
            refusal = self._refusal(unit, state, self.clock()) or refusal
        raise StateStoreUnavailable(f"could not record the deferred sync of {unit.name}: the row kept changing")

    def _scheduled(self, unit: Unit, state: TargetState, message: str) -> SyncResult:
        return SyncResult(unit.name, Outcome.SCHEDULED, next_allowed_at=state.next_allowed_at,
                          last_attempt_at=state.last_attempt_at, message=message, scheduled_at=state.pending_at,
                          retry_after_seconds=_seconds_until(state.pending_at, self.clock()))

    def fire(self, fire: PendingFire) -> SyncResult | None:
        """The queue message of a pending sync arrived: run it through the normal claim.

        Returns None when there is nothing to do (a duplicate or stale message, asks already
        satisfied by another sync, a sync in flight to wait for); reschedules, a bounded number of
        times, if Graph still refuses."""
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
            self._reschedule(unit, fire, state.lease_expires_at + timedelta(seconds=1), counted=False)  # type: ignore[operator]
            return None
        callers = [state.pending_asked_by or "?"] + [c for _, c in self.store.asks(fire.unit_key, fire.pending_id)]
        request = SyncRequest(
            fire.target, fire.item_id, trigger=Trigger.DEFERRED,
            caller=f"asked by {_names(callers)} ({len(callers)} asks since {iso(state.pending_since)})",
        )
        result = self._run(target, unit, request, state)
        if result.outcome is Outcome.STARTED:
            return result
        if result.outcome is Outcome.IN_PROGRESS and result.graph_status is None:  # lost the claim to another caller
            self._reschedule(unit, fire, self.clock() + timedelta(seconds=IN_FLIGHT_RETRY_AFTER), counted=False)
            return result
        if result.outcome in (Outcome.COOLDOWN, Outcome.IN_PROGRESS) or result.failure_status == 503:
            later = result.next_allowed_at if result.next_allowed_at and result.next_allowed_at > self.clock() else None
            self._reschedule(unit, fire, later or self.clock() + timedelta(seconds=IN_FLIGHT_RETRY_AFTER))
        else:
            self._reschedule(unit, fire, None)  # a refusal that waiting will not fix (403...)
        return result

    def _reschedule(self, unit: Unit, fire: PendingFire, at: datetime | None, counted: bool = True) -> None:
        """Move the pending sync to ``at`` with a new message (None: give it up). Only Graph's
        refusals count against MAX_RESCHEDULES; waiting for a lease or a lost race does not."""
        for _ in range(5):
            state = self.store.read(unit.key)
            if state.pending_id != fire.pending_id:
                return  # answered meanwhile
            reschedules = (state.pending_reschedules or 0) + (1 if counted else 0)
            if at is None or reschedules > MAX_RESCHEDULES:
                if self.store.update(state.without_pending()) is not None:
                    log.warning("deferred sync of %s given up after %d reschedules", unit.name, reschedules - 1)
                    return
                continue
            if self.store.update(replace(state, pending_at=at, pending_reschedules=reschedules)) is not None:
                self.queue.schedule(replace(fire, scheduled_at=at, generation=reschedules), self.clock())  # type: ignore[union-attr]
                log.info("deferred sync of %s rescheduled for %s (%d)", unit.name, iso(at), reschedules)
                return
        raise StateStoreUnavailable(f"could not reschedule the deferred sync of {unit.name}: the row kept changing")

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
        """Look for syncs that started and have not been seen to finish; report those that have.
        Returns how many finished. One table query when there is nothing to do."""
        if self.notifier is None or not self.notifier.urls:
            return 0
        finished = 0
        for state in self.store.pending_completions():
            if state.target not in self.targets or state.last_started_at is None:
                continue
            unit = Unit(state.target, state.item_id)
            try:
                completion = self.targets[state.target].completion(unit, state.last_started_at)
            except UpstreamError as exc:
                log.warning("could not read the status of %s: %s", unit.name, exc.message)
                continue
            if completion.done:
                finished += self._record_completion(unit, completion, state)
        self.notifier.flush()
        return finished

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

    # --- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Local state next to Graph's own and a health rating, per enabled target and unit.
        A Graph fault for one target is reported inline and rated unhealthy."""
        now = self.clock()
        local = {s.key: s for s in self.store.states()}
        targets = []
        for name, target in self.targets.items():
            warning_hours, unhealthy_hours = self.settings.thresholds(name)
            try:
                graph: list[dict[str, Any]] = []
                for view in target.graph_status():
                    rating = rate(view, now, warning_hours, unhealthy_hours, self.settings.token_expiry_warning_days)
                    graph.append({"target": view.target, **view.fields, "health": rating.to_json()})
            except UpstreamError as exc:  # same shape as a unit's status, so the schema stays one
                graph = [{"target": name, "error": {"code": exc.code, "message": exc.message},
                          "health": Rating("unhealthy", (exc.message,)).to_json()}]
            rows = [s for key, s in local.items() if key == name or key.startswith(f"{name}-")]
            targets.append(
                {
                    "target": name,
                    "health": worst([g["health"]["rating"] for g in graph]),
                    "units": [_state_json(s, now, 1 + len(self.store.asks(s.key, s.pending_id)) if s.pending_id else 0)
                              for s in sorted(rows, key=lambda s: s.key)],
                    "graph": graph,
                }
            )
        return {
            "now": iso(now),
            "health": worst([t["health"] for t in targets]),
            "targets": targets,
            "connectorStatus": read_connector_status(self.graph),
        }


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
                    "firstAskedBy": state.pending_asked_by, "reschedules": state.pending_reschedules}
        if state.pending_id
        else None,
    }


def _names(callers: list[str], limit: int = 10) -> str:
    """The distinct callers of a pending sync, for its history row; the first ``limit`` named."""
    distinct = list(dict.fromkeys(callers))
    return ", ".join(distinct[:limit]) + (f" and {len(distinct) - limit} more" if len(distinct) > limit else "")


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
