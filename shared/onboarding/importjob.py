"""Autopilot import jobs (POST /api/autopilot/devices): import the hardware hashes, follow each
import, ask for one Autopilot sync through the deferred sync, follow each device until its
profile is assigned, delete its import record, and report the job once when it ends.

The job is a state machine in the state table (shared/onboarding/imports.py) driven by messages on the
import queue (IMPORT_QUEUE): no invocation waits or sleeps. Each message names the job's step;
a step claims the job row (If-Match), does bounded work (shared/onboarding/importsteps.py), saves the
devices, and sends the message of the next step, delayed by IMPORT_POLL_SECONDS. A duplicated
or late message finds another step number, or the job claimed, and does nothing. A step's claim
lasts IMPORT_STEP_CLAIM_SECONDS and is renewed while it works (shared/onboarding/importclaim.py); with the
claim, the step sends its own takeover message, due when the claim would lapse: if the step dies,
that delivery takes the job over (one that finds the claim still renewed sends it on again).
The watcher also sends the message of a step whose claim lapsed, or whose message is overdue.

The sync: a job whose imports are complete asks for the Autopilot sync no earlier than
IMPORT_SYNC_DELAY_SECONDS from then (Deferrals.sync_at), so that every job finishing in the
meantime joins the same pending sync, and any sync that starts after the ask is the one the
job waits for. The unit's cooldown and claim guarantee one sync per window whoever asks.
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..clients import Notification
from ..common import (
    AppError,
    Clock,
    Outcome,
    StateStoreUnavailable,
    SyncResult,
    iso,
    messages,
    new_token,
    telemetry,
    token_matches,
)
from ..engine import in_flight
from .autopilotapi import AutopilotApi
from .devices import ImportRequest
from .importclaim import StepClaim
from .imports import COMPLETED, DeviceRow, ImportJob, ImportStore, new_import_id, summary_json
from .importsteps import ImportRun, StepLost, StepResult, imported_devices
from .rules import FAILED, PROFILE_ASSIGNED, TIMED_OUT, WAITING_FOR_SYNC, all_final, counts, hint_for

if TYPE_CHECKING:
    from ..clients import GraphClient, PendingQueue
    from ..common import Settings
    from ..engine import StateStore, Target

log = logging.getLogger(__name__)

AUTOPILOT = "autopilot"
# A step's takeover message is due this long after its claim would lapse (instances' clocks differ a little).
TAKEOVER_AFTER = timedelta(seconds=2)
RE_ASK_AFTER = timedelta(minutes=30)  # after Graph refused the sync for good, before the job asks again
OVERDUE = timedelta(minutes=2)  # a step this late lost its message: the watcher sends it again
EARLY = timedelta(seconds=2)
MAX_FAILED_IN_NOTIFICATION = 50


@dataclass(frozen=True)
class SyncSeen:
    """The Autopilot sync as a waiting job sees it."""

    started: bool = False  # a sync started after the job asked
    ask_again: bool = False  # none is pending or running, and none started: ask (again)
    problem: str | None = None  # why the job is still waiting, for its status


@dataclass(frozen=True)
class ImportStep:
    """The queue message that runs step ``step`` of job ``import_id``."""

    import_id: str
    step: int
    scheduled_at: datetime
    takeover: bool = False  # sent with a claim, for the case that its step dies: "stale" once that step ended

    def to_json(self) -> str:
        takeover = {"takeover": True} if self.takeover else {}
        return json.dumps({"importId": self.import_id, "step": self.step, "scheduledAt": iso(self.scheduled_at), **takeover})

    @classmethod
    def from_json(cls, text: str) -> ImportStep:
        """The message, checked field by field (InvalidMessage, shared/common/messages.py)."""
        data = messages.message_object(text)
        return cls(str(messages.guid(data, "importId")), messages.whole(data, "step", 10**6),
                   messages.time(data, "scheduledAt"), data.get("takeover") is True)


class ImportStepSender:
    """Sends the queue messages of import steps, and sends again those the watcher finds overdue.
    Given the import queue (None: messages are not sent; the job rows still hold each step), the
    clock, and the service's import store as it is now (None: no store)."""

    def __init__(self, import_queue: PendingQueue | None, clock: Clock, imports: Callable[[], ImportStore | None]) -> None:
        self.import_queue = import_queue
        self.clock = clock
        self._imports = imports

    def repair(self) -> int:
        """Send again the message of every step that is overdue (its sender stopped before sending
        it, or the message went to the poison queue). Returns how many."""
        imports = self._imports()
        if imports is None or self.import_queue is None:
            return 0
        now, sent = self.clock(), 0
        for job in imports.running():
            if job.resend_due(now, OVERDUE):
                resent = self.send_step(replace(job, step_at=now))
                telemetry.emit("watch", logging.WARNING, target=AUTOPILOT, importId=job.id, step=job.step,
                               outcome="importStepResent" if resent else "importStepNotResent",
                               message=f"the step's claim lapsed at {iso(job.step_until)}" if job.step_owner
                               else f"the step was overdue since {iso(job.step_at)}")
                sent += resent
        return sent

    def send_takeover(self, job: ImportJob) -> int:
        """The step's message again, due just after its claim would lapse (if it is not renewed)."""
        return self.send_step(job, (job.step_until or self.clock()) + TAKEOVER_AFTER)

    def send_step(self, job: ImportJob, takeover_at: datetime | None = None) -> int:
        """Send the job's step message (due at its step_at, or a takeover message due at
        ``takeover_at``); 0 (logged) if the queue is unavailable: the job row holds the step, and
        the watcher sends a message for one that is overdue."""
        if self.import_queue is None:
            return 0
        step = ImportStep(job.id, job.step, takeover_at or job.step_at or self.clock(), takeover_at is not None)
        try:
            self.import_queue.schedule(step, self.clock())
            return 1
        except AppError as exc:
            log.error("import %s: step %d recorded, but its message was not sent: %s", job.id, job.step, exc.message)
            return 0


class ImportStepRunner:
    """Runs the step a queue message names: claims the job, runs its ImportRun, asks for the
    Autopilot sync, and either sends the next step or finishes the job. Given the settings, the
    Graph client, the state store (the Autopilot unit's row), the import store (raising when there
    is none), the clock, the step sender, and the service's ``sync_at`` and notify."""

    def __init__(
        self,
        settings: Settings,
        graph: GraphClient,
        state: StateStore,
        store: Callable[[], ImportStore],
        clock: Clock,
        sender: ImportStepSender,
        sync_at: Callable[[str, datetime, str], SyncResult],
        notify: Callable[[Notification], None],
    ) -> None:
        self.settings = settings
        self.graph = graph
        self.state = state
        self._store = store
        self.clock = clock
        self.sender = sender
        self._sync_at = sync_at
        self._notify = notify

    def run(self, text: str) -> str:
        """Run the step a queue message names. Returns what happened (for the log and tests).
        Each step is logged once: here when it did nothing, else where it saved its work."""
        try:
            step = ImportStep.from_json(text)
        except messages.InvalidMessage as exc:  # logged once and acknowledged: retrying could never help
            messages.log_invalid("import", "IMPORT_QUEUE", exc)
            return "invalid"
        try:
            what = self._run_step(step)
        except AppError as exc:  # Table Storage down: the host retries the message, the watcher resends it
            telemetry.emit("import", logging.WARNING, trigger="import", target=AUTOPILOT, importId=step.import_id,
                           step=step.step, outcome="failed", errorCode=exc.code, message=exc.message)
            raise
        if what not in ("stepped", "completed") and not (step.takeover and what == "stale"):  # that step ended: as planned
            telemetry.emit("import", trigger="import", target=AUTOPILOT, importId=step.import_id, step=step.step,
                           outcome=what)
        return what

    def _run_step(self, step: ImportStep) -> str:
        store = self._store()
        job, now = store.job(step.import_id), self.clock()
        if job is None or job.done or job.step != step.step:
            return "stale"  # a duplicate, or an older step's message
        if job.claimed(now):  # another delivery runs this step; it sends the next message
            self.sender.send_takeover(job)  # unless it dies: look again once its claim would lapse
            return "busy"
        if job.step_at and job.step_at > now + EARLY:  # the queue delays a message 7 days at most
            self.sender.send_step(job)
            return "early"
        claim = timedelta(seconds=self.settings.import_step_claim_seconds)
        claimed = store.update(replace(job, step_owner=uuid.uuid4().hex, step_until=now + claim))
        if claimed is None:
            return "stale"  # another delivery claimed it first
        self.sender.send_takeover(claimed)  # should this step die, that delivery takes the job over
        return self._advance(claimed, store.devices(job.id), now)

    def _advance(self, job: ImportJob, devices: list[DeviceRow], now: datetime) -> str:
        store = self._store()
        seen = self._sync_seen(job, now) if any(d.state == WAITING_FOR_SYNC for d in devices) else SyncSeen()
        claim = StepClaim(store, job, self.clock, timedelta(seconds=self.settings.import_step_claim_seconds),
                          self.settings.import_step_heartbeat_seconds)
        run = ImportRun(AutopilotApi(self.graph), job, devices, now, store, seen.started, claim)
        try:
            result = run.run()
        except StepLost:
            claim.stop()
            return "lost"
        confirmed = claim.confirmed()
        held = claim.stop()  # the job row as the heartbeat last wrote it: its ETag for the writes below
        if held is None or not confirmed:
            return "lost"  # this step outlived its claim: the delivery that holds it now decides
        job = held
        if result.changed:
            store.save_devices(job.id, list(result.changed.values()))
        devices = list(run.devices.values())
        result.error = result.error or seen.problem
        job, devices = self._ask_for_sync(job, devices, result, seen.ask_again)
        if self._finished(job, devices, now):
            return self._finish(job, devices, now)
        return self._step_on(job, devices, result, now)

    def _step_on(self, job: ImportJob, devices: list[DeviceRow], result: StepResult, now: datetime) -> str:
        """Record the next step (at once if this one ran out of budget) and send its message."""
        delay = 0.0 if result.more else max(float(self.settings.import_poll_seconds), result.retry_after or 0.0)
        following = replace(job, step=job.step + 1, step_at=now + timedelta(seconds=delay), step_owner=None,
                            step_until=None, message=result.error)
        written = self._store().update(following)
        if written is None:
            raise StateStoreUnavailable(f"import {job.id}: the job row changed under its step")
        self.sender.send_step(written)
        telemetry.emit("import", logging.WARNING if result.error else logging.INFO, trigger="import", target=AUTOPILOT,
                       importId=job.id, step=job.step, outcome="stepped", counts=counts(d.state for d in devices),
                       message=result.error)
        return "stepped"

    def _ask_for_sync(self, job: ImportJob, devices: list[DeviceRow], result: StepResult,
                      again: bool) -> tuple[ImportJob, list[DeviceRow]]:
        """Devices just imported (or still waiting for a sync that was given up) need the sync."""
        ready = imported_devices(devices) + ([d for d in devices if d.state == WAITING_FOR_SYNC] if again else [])
        if not ready:
            return job, devices
        asked = self.clock()  # after the imports were seen complete: any sync claimed from now on includes them
        at = asked + timedelta(seconds=self.settings.import_sync_delay_seconds)
        try:
            answer = self._sync_at(AUTOPILOT, at, job.id)  # history: "import:<id>"
        except AppError as exc:  # storage down: the devices stay as they are; the next step asks again
            result.error = f"{exc.code}: could not ask for the Autopilot sync: {exc.message}"
            return job, devices
        if answer.outcome is not Outcome.SCHEDULED:
            result.error = f"could not ask for the Autopilot sync: {answer.message}"
            return job, devices
        message = f"imported; the Autopilot sync is scheduled for {iso(answer.scheduled_at)}"
        waiting = [replace(d, state=WAITING_FOR_SYNC, message=message, updated_at=asked) for d in ready]
        self._store().save_devices(job.id, waiting)
        by_index = {d.index: d for d in devices} | {d.index: d for d in waiting}
        return replace(job, sync_asked_at=asked), sorted(by_index.values(), key=lambda d: d.index)

    def _sync_seen(self, job: ImportJob, now: datetime) -> SyncSeen:
        """What the Autopilot unit's row says about the sync this job asked for."""
        state = self.state.read(AUTOPILOT)
        asked = job.sync_asked_at
        started = bool(asked and state.last_started_at and state.last_started_at >= asked)
        if started or state.pending_id or in_flight(state, now):
            return SyncSeen(started=started)
        given_up = state.pending_failed_at if asked and state.pending_failed_at and state.pending_failed_at >= asked else None
        if given_up is None:
            return SyncSeen(ask_again=True)  # the pending sync went with another caller's sync that began before the ask
        # Graph kept refusing the sync (a 403 is given up at once): ask again, but not at every step.
        again_at = given_up + RE_ASK_AFTER
        problem = f"the Autopilot sync was given up ({state.pending_failure}); the job asks again at {iso(again_at)}"
        return SyncSeen(ask_again=now >= again_at, problem=problem[:500])

    @staticmethod
    def _finished(job: ImportJob, devices: list[DeviceRow], now: datetime) -> bool:
        """Every device final and every used import record deleted (past the deadline, final is enough)."""
        if not all_final(d.state for d in devices):
            return False
        undeleted = any(d.state in (PROFILE_ASSIGNED, FAILED) and d.import_record_id and not d.record_deleted
                        and not d.record_kept and not d.record_foreign for d in devices)
        return not undeleted or now >= job.deadline

    def _finish(self, job: ImportJob, devices: list[DeviceRow], now: datetime) -> str:
        tally = counts(d.state for d in devices)
        final = replace(job, status=COMPLETED, finished_at=now, step_owner=None, step_until=None,
                        summary=summary_json(tally), message=None)
        if self._store().update(final) is None:
            raise StateStoreUnavailable(f"import {job.id}: the job row changed under its last step")
        self._notify(import_notification(final, devices, tally))  # once: only the claimed step gets here
        self._release_serials(job)
        failed = tally.get(FAILED, 0) + tally.get(TIMED_OUT, 0)
        telemetry.emit("import", logging.WARNING if failed else logging.INFO, trigger="import", target=AUTOPILOT,
                       importId=job.id, step=job.step, devices=len(devices), counts=tally,
                       outcome="completedWithFailures" if failed else "completed")
        return "completed"

    def _release_serials(self, job: ImportJob) -> None:
        """The finished job's serial numbers are free for later jobs. Left over (storage down), a
        reservation of a finished job binds no one: the next job with that serial takes it over."""
        try:
            self._store().release(job.id)
        except AppError as exc:
            log.warning("import %s: its serial numbers' reservations were not released: %s", job.id, exc.message)


class ImportJobs:
    """The service's collaborator that runs Autopilot import jobs (built by SyncService.import_jobs):
    it starts a job and reports it here, and hands its steps to an ImportStepRunner and their
    messages to an ImportStepSender, which it builds.

    It reads the Autopilot unit's row (``state``) and asks for the sync through ``sync_at`` (the
    deferred syncs); ``imports`` gives the service's import store as it is now (None: no store);
    ``target`` refuses a disabled target; ``notify`` sends the job's one notification."""

    def __init__(
        self,
        settings: Settings,
        graph: GraphClient,
        state: StateStore,
        imports: Callable[[], ImportStore | None],
        import_queue: PendingQueue | None,
        clock: Clock,
        target: Callable[[str], Target],
        sync_at: Callable[[str, datetime, str], SyncResult],
        notify: Callable[[Notification], None],
    ) -> None:
        self.settings = settings
        self.graph = graph
        self.state = state
        self._imports = imports
        self.import_queue = import_queue
        self.clock = clock
        self._target = target
        self.sender = ImportStepSender(import_queue, clock, imports)
        self.runner = ImportStepRunner(settings, graph, state, self._import_store, clock, self.sender, sync_at, notify)

    @property
    def imports(self) -> ImportStore | None:
        return self._imports()

    def start_import(self, request: ImportRequest, caller: str,
                     claimed: str | None = None) -> tuple[ImportJob, list[DeviceRow], str]:
        """Record the job and send its first step. Returns (job, devices, poll token)."""
        self._target(AUTOPILOT)  # the job ends with an Autopilot sync: refused if that target is off
        store = self._import_store()
        now = self.clock()
        token, token_hash = new_token()
        job = ImportJob(
            id=new_import_id(), created_at=now, deadline=now + timedelta(seconds=self.settings.import_wait_timeout_seconds),
            token_hash=token_hash, caller=caller[:200], claimed_caller=claimed, device_count=len(request.devices),
            update_existing=request.update_existing, step=1, step_at=now,
        )
        devices = [DeviceRow.of(index, device) for index, device in enumerate(request.devices, start=1)]
        job = store.create(job, devices)
        self.sender.send_step(job)
        telemetry.emit("import", trigger="http", caller=caller, claimedCaller=claimed, target=AUTOPILOT, importId=job.id, step=0,
                       devices=len(devices), outcome="started")
        return job, devices, token

    def import_status(self, import_id: str, token: str) -> tuple[ImportJob, list[DeviceRow]] | None:
        """The job and its devices; None if there is no such job for this token."""
        store = self._import_store()
        job = store.job(import_id)
        if job is None or not token_matches(job.token_hash, token):
            return None
        return job, store.devices(import_id)

    def run_import_step(self, text: str) -> str:
        """Run the step a queue message names. Returns what happened (for the log and tests)."""
        return self.runner.run(text)

    def repair_imports(self) -> int:
        """The watcher's part: send again the message of every step that is overdue. Returns how many."""
        return self.sender.repair()

    def _import_store(self) -> ImportStore:
        imports = self.imports
        if imports is None:
            raise StateStoreUnavailable("this service has no import store")
        return imports


def import_notification(job: ImportJob, devices: list[DeviceRow], tally: dict[str, int]) -> Notification:
    problems = [d for d in devices if d.state in (FAILED, TIMED_OUT)]
    outcome = "completed" if not problems else "completedWithFailures"
    message = (f"Autopilot import {job.id}: {len(devices)} device(s), {tally[PROFILE_ASSIGNED]} with a profile, "
               f"{tally[FAILED]} failed, {tally[TIMED_OUT]} timed out")
    details = {
        "importId": job.id,
        "caller": job.caller,
        "counts": tally,
        "failedDevices": [{"serialNumber": d.serial_number, "state": d.state, "errorName": d.error_name,
                           "errorCode": d.error_code, "hint": hint_for(d.error_name) if d.state == FAILED else d.message}
                          for d in problems[:MAX_FAILED_IN_NOTIFICATION]],
    }
    return Notification("importCompleted", f"autopilot import {job.id}", outcome, job.finished_at or job.created_at,
                        message, details=details)
