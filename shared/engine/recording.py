"""Recording attempts: the commit of an outcome with its history row, retried; attempts kept in
the process while storage is down; and claims whose holder never recorded them.

``Recorder`` is a collaborator of the sync service (shared/assembly/service.py), given what it uses: the
state store, the clock, the tenant it records for, and two callables (``ServiceNotifier.send``;
``RefusalMemory.remember``, which keeps a refusal this process may answer from memory).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from ..clients import GraphResponse, Notification
from ..common import Clock, Outcome, StateStoreUnavailable, SyncRequest, SyncResult, UpstreamError, iso, telemetry
from .decisions import Verdict, refusal_for, retry_after_of, seconds_until
from .state import Attempt, Lease, StateStore, UnitState
from .targets import Unit

log = logging.getLogger(__name__)

# A commit that fails is retried this long inside the invocation (then kept in the process).
COMMIT_BACKOFF = (0.5, 1.0, 2.0, 4.0)
COMMIT_RETRY_SECONDS = 10.0


class Recorder:
    """Commits attempts (with their history rows), keeps those storage refused, records orphans."""

    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        tenant: str | None,
        notify: Callable[[Notification], None],
        remember: Callable[[SyncResult | None], SyncResult | None],
    ):
        self.store = store
        self.clock = clock
        self.tenant = tenant  # the customer tenant recorded for (None: the app's own)
        self._notify = notify
        self._remember = remember
        # Attempts whose commit failed (storage down): unit key -> what to commit, retried later.
        self._unrecorded: dict[str, tuple[Lease, UnitState, Attempt]] = {}
        self._unrecorded_lock = threading.Lock()

    def record(
        self, unit: Unit, request: SyncRequest, state: UnitState, lease: Lease, verdict: Verdict,
        response: GraphResponse | None, error: UpstreamError | None, sync_type: str | None, started: float,
    ) -> SyncResult:
        """Commit the outcome and its history row, notify, and answer the caller."""
        outcome, next_allowed, message = verdict.outcome, verdict.next_allowed_at, verdict.message
        failure = verdict.failure or (error if outcome is Outcome.FAILED else None)
        finished = self.clock()
        ids = _Ids.of(response, error)
        attempt_at = lease.state.claim_at or finished
        new_state = _row_after(lease, state, verdict, ids, attempt_at, failure)
        problem = failure or error
        duration_ms = int((time.perf_counter() - started) * 1000)
        attempt = Attempt(
            attempt_at=attempt_at, finished_at=finished, trigger=request.trigger.value, caller=request.caller[:200],
            claimed_caller=request.claimed_caller, outcome=outcome.value, http_status=ids.graph_status, graph_request_id=ids.request_id,
            client_request_id=ids.client_request_id, duration_ms=duration_ms,
            error=(f"{problem.code}: {problem.message}"[:1000] if problem else message[:1000] if verdict.ambiguous else None),
            sync_type=sync_type, next_allowed_at=next_allowed, ambiguous=verdict.ambiguous or None,
            attempt_id=lease.owner,
        )
        warning = self._commit(lease, new_state, attempt)
        if warning:
            message += f" (warning: {warning})"
        if outcome in (Outcome.STARTED, Outcome.FAILED):
            self._notify(Notification(
                "syncStarted" if outcome is Outcome.STARTED else "syncFailed",
                unit.name, outcome.value, finished, message, next_allowed, ids.request_id, ids.client_request_id,
            ))
        if outcome is not Outcome.FAILED:
            self._remember(refusal_for(unit.name, new_state, finished))
        return SyncResult(
            unit.name, outcome, next_allowed_at=next_allowed, last_attempt_at=attempt_at,
            graph_request_id=ids.request_id, client_request_id=ids.client_request_id, message=message,
            error_code=failure.code if failure else None, failure_status=failure.http_status if failure else None,
            graph_status=ids.graph_status,
            retry_after_seconds=retry_after_of(failure) if failure else seconds_until(next_allowed, finished),
            ambiguous=verdict.ambiguous, duration_ms=duration_ms,
        )

    def _commit(self, lease: Lease, new_state: UnitState, attempt: Attempt) -> str | None:
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

    def record_orphan(self, state: UnitState, now: datetime) -> UnitState:
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
        telemetry.emit("sync", logging.WARNING, trigger=trigger, caller=caller, target=state.target,
                       unit=Unit.of_state(state).name, tenant=self.tenant, outcome="unknown", attempted=True,
                       errorCode="OutcomeNotRecorded", nextAllowedAt=state.next_allowed_at, message=attempt.error)
        return recorded


@dataclass(frozen=True)
class _Ids:
    """What identifies an attempt at Graph: its answer's status and request ids, if any."""

    graph_status: int | None = None
    request_id: str | None = None
    client_request_id: str | None = None

    @classmethod
    def of(cls, response: GraphResponse | None, error: UpstreamError | None) -> _Ids:
        if response is not None:
            return cls(response.status, response.request_id, response.client_request_id)
        if error is not None:
            return cls(error.graph_status, error.request_id, error.client_request_id)
        return cls()


def _row_after(lease: Lease, before: UnitState, verdict: Verdict, ids: _Ids, attempt_at: datetime,
               failure: UpstreamError | None) -> UnitState:
    """The unit's row once the attempt is recorded: the claim released, the verdict's window."""
    started = verdict.outcome is Outcome.STARTED
    row = replace(
        lease.state.without_claim(),
        next_allowed_at=verdict.next_allowed_at,
        last_outcome=verdict.outcome.value,
        last_attempt_at=attempt_at,
        last_started_at=attempt_at if started else before.last_started_at,
        last_http_status=ids.graph_status,
        last_graph_request_id=ids.request_id,
        last_client_request_id=ids.client_request_id,
        last_message=verdict.message[:1000],
        last_error_code=failure.code if failure else None,
        completion_pending=True if started else before.completion_pending,
    )
    # Whoever asked for a deferred sync has it now, unless Graph may not have started it.
    return row.without_pending() if started and not verdict.ambiguous else row
