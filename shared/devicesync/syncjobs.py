"""Bulk device sync jobs (POST /api/devices/sync): sync many Intune managed devices within
Intune's write budget, as queue steps that never wait (shared/devicesync/syncsteps.py does a
step's work; shared/devicesync/syncstore.py keeps the rows).

Each message names the job's step; a step claims the job row with If-Match on its step number (a
duplicated or stale message finds another number, or the job claimed, and does nothing), does its
share, and records and sends the next step: at once when there is more to do, after the budget's
wait or Graph's Retry-After otherwise. A fault raises the app's UpstreamError after the step saved
what it could and let go of its claim, so that the host's retry runs the step again; the
``sending`` rule keeps any device from a second sync. The watcher (``repair``) resends the
message of a step that is overdue. When every device is final the job completes, with one
notification (deviceSyncCompleted).
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..clients import Notification
from ..common import AppError, Clock, StateStoreUnavailable, iso, messages, new_guid, new_token, telemetry, token_matches
from .selector import DEVICE_IDS, DeviceSyncRequest
from .syncsteps import PACE_SECONDS, DeviceStep, work_window
from .syncstore import (
    COMPLETED,
    FAILED,
    NOT_FOUND,
    NOT_SUPPORTED,
    PENDING,
    QUEUED,
    RESOLVE,
    SKIPPED_RECENT,
    SYNC,
    DeviceRow,
    DeviceSyncJob,
    DeviceSyncStore,
)

if TYPE_CHECKING:
    from ..clients import GraphClient, PendingQueue
    from ..common import Settings
    from ..engine import StateStore

log = logging.getLogger(__name__)

PAGE_SIZE = 500  # devices per status page
TAKEOVER_AFTER = timedelta(seconds=2)  # past the claim's end: its takeover message is due then (visibility is whole seconds)
OVERDUE = timedelta(minutes=2)  # a step this late lost its message: the watcher sends it again
EARLY = timedelta(seconds=2)
# A step's message is sent this much before the step is due (and found not early, EARLY): queue
# visibility counts whole seconds and a host polls an idle queue every few, so a message sent for
# the moment the budget frees up would arrive up to a second or two after it, every time. Arriving
# this much early, the step sleeps the rest (syncsteps.PACE_SECONDS) and takes the budget on time.
LEAD = timedelta(seconds=PACE_SECONDS)
TARGET = "devices"
MAX_FAILED_IN_NOTIFICATION = 50


@dataclass(frozen=True)
class DeviceSyncStep:
    """The queue message that runs step ``step`` of job ``job_id``."""

    job_id: str
    step: int
    scheduled_at: datetime
    tenant: str | None = None  # a registered customer tenant's job (None: the app's own tenant's)

    def to_json(self) -> str:
        return json.dumps({"deviceSyncId": self.job_id, "step": self.step, "scheduledAt": iso(self.scheduled_at),
                           **({"tenantId": self.tenant} if self.tenant else {})})

    @classmethod
    def from_json(cls, text: str) -> DeviceSyncStep:
        data = messages.message_object(text)
        return cls(str(messages.guid(data, "deviceSyncId")), messages.whole(data, "step", 10**7),
                   messages.time(data, "scheduledAt"), messages.guid(data, "tenantId", required=False))


@dataclass(frozen=True)
class DeviceSyncStatus:
    """A job and one page of its devices, as GET .../devices/sync/{jobId} answers."""

    job: DeviceSyncJob
    counts: dict[str, int]
    devices: list[DeviceRow]
    page: int

    @property
    def done(self) -> bool:
        return self.job.done

    @property
    def next_page(self) -> int | None:
        return self.page + 1 if (self.page + 1) * PAGE_SIZE < self.job.device_count else None

    def to_json(self) -> dict[str, Any]:
        return {"jobId": self.job.id, "status": self.job.status, "selector": self.job.selector(), "counts": self.counts,
                "devices": [d.to_json() for d in self.devices], "page": self.page, "nextPage": self.next_page,
                "createdAt": iso(self.job.created_at), "finishedAt": iso(self.job.finished_at),
                **({"message": self.job.refused} if self.job.refused else {})}


class DeviceSyncJobs:
    """Starts device sync jobs, reports them, runs their steps and repairs lost messages. Given the
    settings, the tenant's Graph client (its budget is the tenant's), the tenant's state store (its
    table holds the jobs), the device sync queue (None: no messages), the clock, the service's
    notify and the customer tenant (None: the app's own)."""

    def __init__(self, settings: Settings, graph: GraphClient, state: StateStore, queue: PendingQueue | None,
                 clock: Clock, notify: Callable[[Notification], None], tenant: str | None) -> None:
        self.settings = settings
        self.graph = graph
        self.store = state.sibling(DeviceSyncStore)
        self.queue = queue
        self.clock = clock
        self.notify = notify
        self.tenant = tenant

    def start(self, request: DeviceSyncRequest, caller: str, claimed: str | None = None) -> tuple[DeviceSyncJob, str]:
        """Record the job (and its listed devices) and send its first step. Returns (job, token)."""
        now = self.clock()
        token, token_hash = new_token()
        listed = request.kind in (DEVICE_IDS, "serialNumbers")
        job = DeviceSyncJob(id=new_guid(), created_at=now, token_hash=token_hash, caller=caller[:200], claimed_caller=claimed,
                            kind=request.kind,
                            skip_minutes=request.skip_minutes, device_count=len(request.values) if listed else 0,
                            filter=request.filter, group_id=request.group_id, phase=SYNC if listed else RESOLVE,
                            step=1, step_at=now)
        rows = [DeviceRow(i, device_id=v if request.kind == DEVICE_IDS else None,
                          serial_number=None if request.kind == DEVICE_IDS else v) for i, v in enumerate(request.values)]
        self.store.save_devices(job.id, rows)  # before the job row: a running job has all its devices
        job = self.store.create(job)
        self.send_step(job)
        telemetry.emit("devices", trigger="http", caller=caller, claimedCaller=claimed, target=TARGET, tenant=self.tenant, jobId=job.id, step=0,
                       devices=job.device_count, outcome="started")
        return job, token

    def status(self, job_id: str, token: str, page: int = 0) -> DeviceSyncStatus | None:
        """The job, its counts and one page of devices; None if there is no such job for this token."""
        job = self.store.job(job_id)
        if job is None or not token_matches(job.token_hash, token):
            return None
        counts = json.loads(job.summary) if job.summary else self.store.counts(job_id)
        return DeviceSyncStatus(job, counts, self.store.page(job_id, page * PAGE_SIZE, PAGE_SIZE), page)

    def run_step(self, text: str) -> str:
        """Run the step a queue message names. Returns what happened (for the log and tests)."""
        try:
            step = DeviceSyncStep.from_json(text)
        except messages.InvalidMessage as exc:
            messages.log_invalid("devices", "DEVICE_SYNC_QUEUE", exc)
            return "invalid"
        try:
            return self._run(step)
        except AppError as exc:  # the host retries the message; the watcher resends it if need be
            telemetry.emit("devices", logging.WARNING, trigger="devices", target=TARGET, tenant=self.tenant,
                           jobId=step.job_id, step=step.step, outcome="failed", errorCode=exc.code, message=exc.message)
            raise

    def repair(self) -> int:
        """Send again the message of every running job whose step is overdue. Returns how many."""
        if self.queue is None:
            return 0
        now, sent = self.clock(), 0
        for job in self.store.running():
            if not job.claimed(now) and job.step_at is not None and job.step_at < now - OVERDUE:
                sent += self.send_step(replace(job, step_at=now))
                telemetry.emit("watch", logging.WARNING, target=TARGET, tenant=self.tenant, jobId=job.id, step=job.step,
                               outcome="deviceSyncStepResent", message=f"the step was overdue since {iso(job.step_at)}")
        return sent

    def send_step(self, job: DeviceSyncJob, lead: bool = False) -> int:
        """The message of the job's step, for its ``step_at`` (``lead``: LEAD before it, for a
        step that waits for the budget)."""
        if self.queue is None:
            return 0
        try:
            now = self.clock()
            due = max(now, (job.step_at or now) - (LEAD if lead else timedelta(0)))
            self.queue.schedule(DeviceSyncStep(job.id, job.step, due, self.tenant), now)
            return 1
        except AppError as exc:
            log.error("device sync %s: step %d recorded, but its message was not sent: %s", job.id, job.step, exc.message)
            return 0

    def _run(self, step: DeviceSyncStep) -> str:
        job, now = self.store.job(step.job_id), self.clock()
        if job is None or job.done or job.step != step.step:
            return "stale"
        if job.claimed(now):  # another delivery works on it; if that one dies, this one takes over
            self.send_step(replace(job, step_at=(job.step_until or now) + TAKEOVER_AFTER))
            return "busy"
        if job.step_at and job.step_at > now + EARLY:
            self.send_step(job)
            return "early"
        until = now + timedelta(seconds=self.settings.device_sync_step_claim_seconds)
        claimed = self.store.update(replace(job, step_owner=uuid.uuid4().hex, step_until=until))
        if claimed is None:
            return "stale"  # another delivery claimed it first
        # The takeover: if this step dies, this message runs it again once the claim has lapsed (a
        # step that ends moves the job to the next step number, and the message finds it stale).
        self.send_step(replace(claimed, step_at=until + TAKEOVER_AFTER))
        work = DeviceStep(self.graph, self.store, claimed, now, self.settings.device_sync_step_devices,
                          work_window(self.settings.device_sync_step_claim_seconds))
        try:
            worked = work.run()
        except AppError as exc:
            self._let_go(replace(work.job, etag=claimed.etag), exc)
            raise
        return self._step_on(replace(worked, etag=claimed.etag), work)

    def _let_go(self, job: DeviceSyncJob, exc: AppError) -> None:
        """A failed step gives up its claim (best effort), so that the retried message runs it again."""
        try:
            self.store.update(replace(job, step_owner=None, step_until=None, message=f"{exc.code}: {exc.message}"[:500]))
        except AppError as again:
            log.warning("device sync %s: the failed step's claim was not released: %s", job.id, again.message)

    def _step_on(self, job: DeviceSyncJob, work: DeviceStep) -> str:
        now, outcome = self.clock(), work.outcome
        done = job.phase == SYNC and not outcome.wait and not self.store.in_state(job.id, PENDING, 1) \
            and not self.store.in_state(job.id, "sending", 1)
        if done:
            return self._finish(job, work)
        following = replace(job, step=job.step + 1, step_at=now + timedelta(seconds=outcome.wait), step_owner=None,
                            step_until=None, message=None)
        written = self.store.update(following)
        if written is None:
            raise StateStoreUnavailable(f"device sync {job.id}: the job row changed under its step")
        self.send_step(written, lead=True)
        telemetry.emit("devices", trigger="devices", target=TARGET, tenant=self.tenant, jobId=job.id, step=job.step,
                       counts=dict(outcome.counts), waitedSeconds=round(outcome.wait, 3), pacedSeconds=round(outcome.paced, 3),
                       throttled=outcome.throttled, lateGrants=outcome.late, outcome="stepped")
        return "stepped"

    def _finish(self, job: DeviceSyncJob, work: DeviceStep) -> str:
        counts = self.store.counts(job.id)
        final = replace(job, status=COMPLETED, finished_at=self.clock(), step_owner=None, step_until=None,
                        summary=json.dumps(counts, separators=(",", ":")), message=None)
        if self.store.update(final) is None:
            raise StateStoreUnavailable(f"device sync {job.id}: the job row changed under its last step")
        self.notify(self._notification(final, counts))  # once: only the claimed last step gets here
        problems = counts[FAILED]
        telemetry.emit("devices", logging.WARNING if problems else logging.INFO, trigger="devices", target=TARGET,
                       tenant=self.tenant, jobId=job.id, step=job.step, counts=dict(work.outcome.counts),
                       waitedSeconds=0.0, pacedSeconds=round(work.outcome.paced, 3), throttled=work.outcome.throttled,
                       lateGrants=work.outcome.late, devices=job.device_count,
                       outcome="completedWithFailures" if problems else "completed")
        return "completed"

    def _notification(self, job: DeviceSyncJob, counts: dict[str, int]) -> Notification:
        failed = [d for d in self.store.in_state(job.id, FAILED, MAX_FAILED_IN_NOTIFICATION)]
        outcome = "completedWithFailures" if counts[FAILED] else "completed"
        message = (f"Device sync {job.id}: {job.device_count} device(s), {counts[QUEUED]} sync(s) sent, "
                   f"{counts[SKIPPED_RECENT]} synced recently, {counts[NOT_FOUND]} not found, "
                   f"{counts[NOT_SUPPORTED]} not supported, {counts[FAILED]} failed")
        details = {"jobId": job.id, "caller": job.caller, "selector": job.selector(), "counts": counts,
                   "failedDevices": [{"deviceId": d.device_id, "serialNumber": d.serial_number, "state": d.state,
                                      "errorName": d.error_code, "hint": d.error_message} for d in failed]}
        return Notification("deviceSyncCompleted", TARGET, outcome, job.finished_at or job.created_at, message,
                            details=details, tenant=self.tenant)
