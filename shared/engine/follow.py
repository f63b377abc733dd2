"""Following a sync to its end: "sync and wait" operations, the watcher tick (which also keeps
every unit's row honest, and calls the retention sweep), and the notification of a finished sync.

``Follower`` is a collaborator of the service (shared/assembly/service.py), given what it uses: the
settings, the state store, the clock, the tenant, the targets, the operations store, the
pipeline's ``sync`` (sync and wait starts with a sync), the recorder (attempts to record again,
orphaned claims), the deferred syncs (an overdue pending sync's message), the ServiceNotifier, and
two callables: the jobs' repair (import and device-sync jobs, built on first use) and the retention sweep.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..clients import Notification, ServiceNotifier
from ..common import Clock, ItemNotFound, Outcome, Settings, SyncRequest, SyncResult, UpstreamError, iso, telemetry
from .decisions import orphaned_claim
from .operations import Operation, OperationStore
from .state import StateStore, UnitState
from .targets import Completion, Targets, Unit

if TYPE_CHECKING:
    from .deferred import Deferrals
    from .recording import Recorder

log = logging.getLogger(__name__)

# A pending sync this far past its time without having fired lost its message: send it again.
MISSING_MESSAGE_GRACE = timedelta(minutes=2)


class Follower:
    """Sync and wait, the watcher tick, the notification of a finished sync."""

    def __init__(self, settings: Settings, store: StateStore, clock: Clock, tenant: str | None, targets: Targets,
                 operations: OperationStore | None, sync: Callable[[SyncRequest], list[SyncResult]], recorder: Recorder,
                 deferred: Deferrals, notices: ServiceNotifier, repair_jobs: Callable[[], int], sweep: Callable[[], object]):
        self.settings = settings
        self.store = store
        self.clock = clock
        self.tenant = tenant  # the customer tenant followed (None: the app's own)
        self.targets = targets
        self.operations = operations
        self.sync = sync
        self.recorder = recorder
        self.deferred = deferred
        self.notices = notices
        self.repair_jobs = repair_jobs
        self.sweep = sweep  # the retention sweep (shared/assembly/retention.py)

    def sync_and_follow(self, request: SyncRequest) -> tuple[SyncResult, Operation | None, str | None]:
        """Sync one unit; if it started (or one is running), also create an operation that a
        caller can poll until Graph reports the sync finished. Returns (result, operation, token)."""
        result = self.sync(request)[0]
        if result.outcome not in (Outcome.STARTED, Outcome.IN_PROGRESS, Outcome.SCHEDULED) or self.operations is None:
            return result, None, None
        target = self.targets.named(request.target)
        unit = target.units(request.item_id)[0]
        assert isinstance(unit, Unit)
        since = (result.last_attempt_at if result.outcome is Outcome.STARTED and result.last_attempt_at
                 else result.scheduled_at if result.outcome is Outcome.SCHEDULED and result.scheduled_at
                 else self.clock())
        operation, token = self.operations.create(
            unit.name, unit.target, unit.item_id, since,
            since + timedelta(seconds=self.settings.wait_timeout_seconds), result.message, tenant_id=self.tenant,
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
        target = self.targets.named(operation.unit_target)
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
        stopped before sending it), and follows syncs until Graph shows them finished (logged, and
        notified with NOTIFY_URL set).
        One unit's fault never stops the others. Returns how many syncs were seen to finish.
        One table query when there is nothing to do."""
        states = self.repair()
        try:
            self.repair_jobs()  # import and device-sync jobs whose next step's message was lost
        except UpstreamError as exc:
            log.warning("watch: could not look at the import or device-sync jobs: %s", exc.message)
        self.sweep()  # bounded: old history, asks and operations
        finished = 0
        # Followed with or without NOTIFY_URL: a sync Graph reports failed is a telemetry finding
        # (the failure alert counts it) even where nobody is notified.
        for state in states:
            if state.completion_pending and state.target in self.targets and state.last_started_at is not None:
                finished += self._watch_completion(state)
        self.notices.flush()
        return finished

    def repair(self) -> list[UnitState]:
        """Keep every unit's row honest (the watcher's first part; a tenant's fan-out message does
        the same for its tenant): record attempts whose commit failed in this process and claims
        that never recorded their outcome, resend an overdue pending sync's message. One table
        query when there is nothing to do. Returns the rows read."""
        self.recorder.flush_unrecorded()
        states = self.store.states()
        now = self.clock()
        for state in states:
            try:
                self._repair(state, now)
            except UpstreamError as exc:
                log.warning("watch: could not repair %s: %s", state.key, exc.message)
        return states

    def _repair(self, state: UnitState, now: datetime) -> None:
        if orphaned_claim(state, now):
            self.recorder.record_orphan(state, now)
        elif self.deferred.can_send and state.pending_id and state.pending_at and \
                state.pending_at < now - MISSING_MESSAGE_GRACE:
            # Overdue: its message was never sent (or was lost). A duplicate is harmless: the
            # message's pendingId and generation must match, and the claim allows one sync.
            sent = self.deferred.send_fire(state, now)
            telemetry.emit("watch", logging.WARNING, target=state.target, unit=Unit.of_state(state).name, tenant=self.tenant,
                           outcome="pendingResent" if sent else "pendingNotResent",
                           message=f"the pending sync was overdue since {iso(state.pending_at)}; its message was "
                                   f"{'sent again' if sent else 'not sent (queue unavailable)'}")

    def _watch_completion(self, state: UnitState) -> int:
        unit = Unit(state.target or state.key, state.item_id)
        assert state.last_started_at is not None
        waited = self.clock() - state.last_started_at
        if waited > timedelta(seconds=self.settings.wait_timeout_seconds):
            # As a "sync and wait" operation does (SYNC_WAIT_TIMEOUT_SECONDS): stop reading Graph for
            # a sync it never reports finished (a connector whose lastSyncDateTime never moves).
            if self.store.update(replace(state, completion_pending=False)) is not None:
                telemetry.emit("watch", logging.WARNING, target=unit.target, unit=unit.name, tenant=self.tenant,
                               outcome="syncNotReported",
                               message=f"Graph did not report the sync started at {iso(state.last_started_at)} "
                                       f"finished within {self.settings.wait_timeout_seconds} s; no longer followed")
            return 0
        try:
            completion = self.targets[unit.target].completion(unit, state.last_started_at)
        except ItemNotFound as exc:
            self._mark_gone(state, str(exc))
            return 0
        except UpstreamError as exc:
            telemetry.emit("watch", logging.WARNING, target=unit.target, unit=unit.name, tenant=self.tenant,
                           outcome="statusUnreadable", errorCode=exc.code, httpStatus=exc.graph_status,
                           graphRequestId=exc.request_id, message=exc.message)
            return 0
        except Exception:  # a bug or nonsense from Graph for one unit: the others go on
            log.exception("watch: could not follow %s", unit.name)
            return 0
        return int(completion.done and self._record_completion(unit, completion, state))

    def _mark_gone(self, state: UnitState, reason: str) -> None:
        """The unit's item was deleted in Graph: nothing left to follow; it ends as skipped."""
        message = f"{state.key} no longer exists in Graph ({reason}); nothing left to follow"
        if self.store.update(replace(state, completion_pending=False, last_outcome=Outcome.SKIPPED.value,
                                     last_message=message)) is not None:
            telemetry.emit("watch", logging.WARNING, target=state.target, unit=Unit.of_state(state).name, tenant=self.tenant,
                           outcome="unitGone", message=message)

    def _record_completion(self, unit: Unit, completion: Completion, state: UnitState | None = None) -> bool:
        """Clear the unit's completion flag; whoever clears it sends the one notification."""
        state = state or self.store.read(unit.key)
        if not state.completion_pending:
            return False
        cleared = self.store.update(
            replace(state, completion_pending=False, last_completed_at=self.clock(), last_sync_status=completion.sync_status)
        )
        if cleared is None:
            return False  # another poller or the watcher got there first
        telemetry.emit("watch", logging.ERROR if completion.status == "failed" else logging.INFO, target=unit.target,
                       unit=unit.name, tenant=self.tenant, outcome=f"sync{completion.status[:1].upper()}{completion.status[1:]}",
                       message=f"Graph reports the sync {completion.status} (syncStatus {completion.sync_status})")
        self.notices.send(
            Notification(
                "syncFailed" if completion.status == "failed" else "syncCompleted",
                unit.name, completion.status, self.clock(),
                f"Graph reports the sync of {unit.name} {completion.status}",
                state.next_allowed_at, last_sync_date_time=completion.last_sync_date_time, sync_status=completion.sync_status,
            )
        )
        return True
