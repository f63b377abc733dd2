"""The claim -> call -> commit pipeline: every trigger's way to Graph.

Per unit: read the state row (1 table round trip) -> refuse from it if the unit is in its window
or in flight (decisions.refusal_for; no Graph call) -> get the token -> claim the lease, which also
holds the window pessimistically (1 round trip, If-Match) -> POST the sync under a deadline ->
commit outcome and history together (1 round trip; shared/engine/recording.py).

``SyncPipeline`` is a collaborator of the service (shared/assembly/service.py), given what it uses: the
settings, the Graph client (for the token), the state store, the clock, the tenant, the targets,
the recorder (commits what happened), the deferred syncs (an ask inside the cooldown becomes the
pending sync) and the refusal memory (answers from memory while a window lasts).
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..clients import GraphClient, GraphResponse
from ..common import (
    LEASE_MARGIN_SECONDS,
    Clock,
    Outcome,
    Settings,
    SyncRequest,
    SyncResult,
    Trigger,
    UnexpectedError,
    UpstreamError,
    iso,
    redact_text,
    telemetry,
)
from .decisions import (
    IN_FLIGHT_RETRY_AFTER,
    Verdict,
    closed_for,
    closed_until,
    graph_answer,
    graph_clock_ahead,
    in_flight,
    no_answer,
    orphaned_claim,
    refusal_for,
    retry_after_of,
    seconds_until,
)
from .state import Lease, StateStore, UnitState
from .targets import Skip, Target, Targets, Unit

if TYPE_CHECKING:
    from .deferred import Deferrals
    from .recording import Recorder

log = logging.getLogger(__name__)

# Side-by-side syncs in a fan-out: with Graph at ~100 ms a call, 25 get 100 connectors done in
# about half a second, while the WriteLimiter keeps them inside Intune's 100 writes per 20 s.
FANOUT_WORKERS = 25


class RefusalMemory:
    """Refusals this process has already given. A cooldown only ever moves forward (Graph's window
    stands whatever our table says), so until it ends it can be answered from memory."""

    def __init__(self) -> None:
        self._known: dict[str, SyncResult] = {}
        self._lock = threading.Lock()

    def remember(self, refusal: SyncResult | None) -> SyncResult | None:
        """Keep a refusal that rests on nextAllowedAt, to answer the next callers from memory."""
        if refusal is not None and refusal.next_allowed_at is not None:
            with self._lock:
                self._known[refusal.target] = refusal
        return refusal

    def clear(self) -> None:
        """Forget every refusal (as a fresh instance would start)."""
        with self._lock:
            self._known.clear()

    def recall(self, unit: Unit, now: datetime) -> SyncResult | None:
        with self._lock:
            known = self._known.get(unit.name)
            if known is None or closed_until(known.next_allowed_at, now) is None:
                self._known.pop(unit.name, None)
                return None
        return replace(known, retry_after_seconds=seconds_until(known.next_allowed_at, now))


class SyncPipeline:
    """Gate (may this unit sync now?), claim, call Graph, verdict; the recorder commits it."""

    def __init__(self, settings: Settings, graph: GraphClient, store: StateStore, clock: Clock, tenant: str | None,
                 targets: Targets, recorder: Recorder, deferred: Deferrals, memory: RefusalMemory):
        self.settings = settings
        self.graph = graph
        self.store = store
        self.clock = clock
        self.tenant = tenant  # the customer tenant synced (None: the app's own)
        self.targets = targets
        self.recorder = recorder
        self.deferred = deferred
        self.memory = memory

    def sync(self, request: SyncRequest) -> list[SyncResult]:
        """Sync what the request names: one unit, or every unit of a target. Each unit's result
        is logged once (shared/common/telemetry.py)."""
        results = self._sync_units(request)
        for result in results:
            telemetry.sync_result(result, request, self.tenant)
        return results

    def _sync_units(self, request: SyncRequest) -> list[SyncResult]:
        target = self.targets.named(request.target)
        known: dict[str, UnitState] | None = None  # a fan-out's state rows, read in one query
        try:
            if target.per_item and request.item_id is None:
                # A fan-out reads its units' state first (one query): Table Storage down means
                # no Graph call, and if every known unit is refused, so is the caller.
                now = self.clock()
                known = {s.key: s for s in self.store.states(f"{target.name}-")}
                refusals = [refusal_for(Unit.of_state(s).name, s, now) for s in known.values()]
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

    def sync_enabled(self, trigger: Trigger = Trigger.TIMER, caller: str = "timer", defer: bool = True) -> list[SyncResult]:
        """Every enabled target; one target's failure never stops the others. ``defer``: a tick
        inside a cooldown becomes the pending sync rather than being lost (the home timer); a
        tenant's fan-out message does not defer, so that a duplicate of it does nothing."""
        results: list[SyncResult] = []
        for name in self.targets:
            try:
                results.extend(self.sync(SyncRequest(target=name, trigger=trigger, caller=caller, defer=defer)))
            except Exception as exc:  # isolate: log and go on with the next target
                log.exception("sync of %s failed unexpectedly", name)
                failed = SyncResult(name, Outcome.FAILED, message=redact_text(f"unexpected error: {type(exc).__name__}: {exc}"),
                                    error_code="InternalError", failure_status=500)
                telemetry.sync_result(failed, SyncRequest(target=name, trigger=trigger, caller=caller), self.tenant)
                results.append(failed)
        return results

    def _run_planned(
        self, target: Target, planned: Unit | Skip, request: SyncRequest, known: dict[str, UnitState] | None
    ) -> SyncResult:
        if isinstance(planned, Skip):
            return SyncResult(planned.unit.name, Outcome.SKIPPED, message=planned.reason)
        try:
            # After a fan-out's query, a unit without a row has none: no need to read it again.
            state = None if known is None else known.get(planned.key, UnitState(key=planned.key))
            return self.run(target, planned, request, state)
        except UpstreamError as exc:
            return self._failure(planned.name, exc)

    def run(self, target: Target, unit: Unit, request: SyncRequest, state: UnitState | None = None) -> SyncResult:
        """One unit: decide from its state row, claim it, call Graph, record the outcome."""
        gate = self._gate(target, unit, request, state)
        if isinstance(gate, SyncResult):
            return gate
        state = gate
        sync_type = request.sync_type or target.default_sync_type
        claimed_at = self.clock()
        # Every Graph call under this lease ends before it does, with time left to commit: the
        # deadline counts from before the claim's own round trip, as the lease does.
        deadline = time.monotonic() + self.settings.lease_seconds - LEASE_MARGIN_SECONDS
        lease = self.store.claim(
            state, claimed_at, self.settings.lease_seconds,
            # Pessimistic: a sync sent at the lease's last moment starts a window that ends here.
            hold_until=claimed_at + timedelta(seconds=self.settings.lease_seconds) + self._closed(target),
            claim_by=f"{request.trigger.value}:{request.caller}"[:200], claim_sync_type=sync_type,
            target=unit.target, item_id=unit.item_id,
        )
        if lease is None:
            return SyncResult(unit.name, Outcome.IN_PROGRESS, retry_after_seconds=IN_FLIGHT_RETRY_AFTER,
                              message=f"another caller claimed {unit.name} a moment ago; its sync is in flight")
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
        return self.recorder.record(unit, request, state, lease, verdict, response, error, sync_type, started)

    def _gate(self, target: Target, unit: Unit, request: SyncRequest, state: UnitState | None) -> SyncResult | UnitState:
        """Everything before the claim: the answer for a unit that may not sync now (refused,
        deferred, skipped), or its state row to claim. The token is fetched here too, so that a
        slow or dead identity endpoint never holds a lease."""
        self.recorder.flush_unrecorded(unit.key)
        if not request.defer and request.trigger is not Trigger.DEFERRED:
            remembered = self.memory.recall(unit, self.clock())
            if remembered:
                return remembered
        if state is None:
            state = self.store.read(unit.key)  # else: a fan-out read it already
        now = self.clock()
        if orphaned_claim(state, now):
            state = self.recorder.record_orphan(state, now)
        refusal = refusal_for(unit.name, state, now)
        if refusal:
            if request.defer:
                return self.deferred.defer(unit, state, refusal, request)
            # A lease can end any moment; a cooldown cannot end before nextAllowedAt.
            return refusal if in_flight(state, now) else (self.memory.remember(refusal) or refusal)
        skip = target.precheck(unit)  # may raise ItemNotFound; nothing is claimed yet
        if skip:
            return SyncResult(unit.name, Outcome.SKIPPED, next_allowed_at=state.next_allowed_at, message=skip.reason)
        self.graph.ensure_token()
        return state

    def _verdict(
        self, target: Target, unit: Unit, state: UnitState, lease: Lease,
        response: GraphResponse | None, error: UpstreamError | None,
    ) -> Verdict:
        """What the attempt means for the unit. Never raises: whatever goes wrong while reading
        Graph's answer, the attempt is still recorded (and the claim's window kept)."""
        now = self.clock()
        try:
            if response is not None:
                return self._interpret(target, unit, response)
            assert error is not None
            return no_answer(unit.name, error, now, self._closed(target), state.next_allowed_at)
        except UpstreamError as exc:  # raise_for_status on a failure answer
            return Verdict(Outcome.FAILED, state.next_allowed_at, exc.message, failure=exc)
        except Exception as exc:
            log.exception("could not interpret Graph's answer for %s", unit.name)
            return Verdict(Outcome.FAILED, lease.state.next_allowed_at,
                           f"could not interpret Graph's answer ({type(exc).__name__}); the unit stays closed "
                           f"until {iso(lease.state.next_allowed_at)} in case a sync started", ambiguous=True)

    def _closed(self, target: Target, ahead: timedelta = timedelta(0)) -> timedelta:
        """How long a sync of ``target`` started now closes its unit (decisions.closed_for)."""
        return closed_for(target.cooldown, target.graph_window, self._margin, ahead)

    @property
    def _margin(self) -> timedelta:
        return timedelta(seconds=self.settings.clock_skew_margin_seconds)

    def _interpret(self, target: Target, unit: Unit, response: GraphResponse) -> Verdict:
        """Graph answered (decisions.graph_answer); a failure status raises the error naming its
        cause. Only a 429 without Retry-After costs a read: when did Graph's window start?
        Graph's Date says whether its clock is ahead of ours: the window is moved by that."""
        now = self.clock()
        ahead = graph_clock_ahead(response.date, now, self._margin)
        closed = self._closed(target, ahead)
        retry_after = response.retry_after_seconds or None
        window_end = (target.cooldown_end_without_retry_after(now, closed, self._margin)
                      if response.status == 429 and not retry_after else None)
        verdict = graph_answer(unit.name, response.status, retry_after, now, closed, window_end, self._margin)
        if verdict is None:
            response.raise_for_status(f"the {unit.name} sync", target.roles)
            raise AssertionError("unreachable")  # raise_for_status raised for every non-2xx
        if ahead and target.graph_window is not None:  # noted in the answer, the row's lastMessage and the log
            seconds = round(ahead.total_seconds())
            log.warning("Graph's clock is %d s ahead of this instance's (answer for %s): check the instance's time sync",
                        seconds, unit.name)
            verdict = replace(verdict, message=f"{verdict.message} (Graph's clock is {seconds} s ahead of this instance's; "
                                               f"the window is counted from Graph's)")
        return verdict

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
            retry_after_seconds=retry_after_of(exc),
        )

