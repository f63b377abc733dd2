"""One step of an Autopilot import job: look at Graph for every device that needs it, act, and
say what the job should do next. shared/onboarding/importjob.py claims the job, runs a step, saves it and
sends the next message; the decisions are in shared/onboarding/rules.py.

A step does bounded work (CALLS_PER_STEP Graph calls, STEP_SECONDS) so that an invocation stays
short and Intune's per-app write limit (100 writes per 20 s) is not spent by one job; what is
left goes to the next step at once. Device rows are saved before an import call, so that a call
whose answer is lost is found again (its records carry the job's importId) instead of repeated.

One import per serial number across jobs: before looking a device up, a step reserves its serial
for the job (ImportStore.reserve, insert-if-absent). A job that finds the serial reserved by
another follows that job's import record (or waits until it has one), and ends the device the way
that import ended; it takes the serial over only from a job that will not import it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Literal, TypeVar

from ..common import AppError, GraphRequestRejected, GraphResourceNotFound, UpstreamError, iso
from .autopilotapi import AutopilotApi
from .importclaim import StepClaim
from .imports import DeviceRow, ImportJob, ImportStore
from .rules import (
    FAILED,
    FOLLOW,
    IMPORTED,
    IMPORTING,
    PROFILE_ASSIGNED,
    RECORD_DELETED,
    REGISTERED,
    TIMED_OUT,
    WAIT,
    WAITING_FOR_SYNC,
    Owner,
    followed_failure,
    group_tag_differs,
    import_answer,
    profile_assigned,
    record_vanished,
    reserved_elsewhere,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

IMPORT_CHUNK = 100  # devices per import call: ~0.5 MB with 4K hashes, and a small loss if one call fails
CALLS_PER_STEP = 100
STEP_SECONDS = 120.0  # no new Graph call after this; the function timeout is 5 minutes
# An import call that went unanswered may still be carried out: its records are looked for this
# long before its devices are imported again.
ADOPT_GRACE = timedelta(minutes=10)
GRAPH_TEXT = 200  # Graph's strings kept per device (a device row must stay well under 64 KiB)
# A job this long past its deadline has timed its devices out (its last step ends within the
# 5-minute function timeout): its reservations no longer hold a serial.
OWNER_GRACE = timedelta(minutes=10)


class StepLost(AppError):
    """The job's claim lapsed or passed to another delivery: stop, save nothing, write nothing to Graph."""

    code, http_status = "ImportStepLost", 409


@dataclass
class StepResult:
    changed: dict[int, DeviceRow] = field(default_factory=dict)
    more: bool = False  # the budget ran out with work left: run the next step at once
    retry_after: float | None = None  # Graph asked us to wait (429), or failed: look again later
    error: str | None = None  # the fault that stopped this step, shown in the job's status


class StepWork:
    """What the phases of one step share: the job, its devices as changed so far, the step's result
    and its Graph-call budget. Given the Autopilot API, the job, its devices, the step's time, the
    import store and the step's claim (checked before each Graph call)."""

    def __init__(self, api: AutopilotApi, job: ImportJob, devices: list[DeviceRow], now: datetime,
                 store: ImportStore, claim: StepClaim):
        self.api, self.job, self.now, self.store, self.claim = api, job, now, store, claim
        self.devices = {d.index: d for d in devices}
        self._jobs: dict[str, ImportJob | None] = {}  # other jobs read this step (their rows, for their reservations)
        self.result = StepResult()
        self._calls, self._until = CALLS_PER_STEP, time.monotonic() + STEP_SECONDS

    @property
    def calls_left(self) -> int:
        return self._calls

    def owner(self, import_id: str, index: int) -> tuple[Owner | None, DeviceRow | None]:
        """The device of another job with the same serial, as that job last saved it."""
        row = self.store.device(import_id, index)
        if row is None:
            return None, None
        if import_id not in self._jobs:
            self._jobs[import_id] = self.store.job(import_id)
        job = self._jobs[import_id]
        running = job is not None and not job.done and self.now < job.deadline + OWNER_GRACE
        return Owner(running, row.state, bool(row.import_record_id), row.updated_at if row.final else None,
                     row.error_code, row.error_name), row

    def registered(self, d: DeviceRow, found: dict[str, object], already: bool) -> None:
        assigned = profile_assigned(found)
        self.set(d, state=PROFILE_ASSIGNED if assigned else REGISTERED, checked=True, autopilot_id=_id(found),
                 already_registered=already or None,
                 message="deployment profile assigned" if assigned else
                 f"registered; profile {found.get('deploymentProfileAssignmentStatus') or 'not reported'}")

    def per_device(self, d: DeviceRow, name: str, call: Callable[[], _T]) -> _T | Literal[False]:
        """One device's call; Graph refusing it (400, 404) fails that device only, with the reason.
        Faults (5xx, 429, token, storage) and 401/403 concern every device: they stop the step."""
        try:
            return call()
        except (GraphRequestRejected, GraphResourceNotFound) as exc:
            self.set(d, state=FAILED, error_name=name, message=exc.message[:GRAPH_TEXT])
            return False

    def where(self, test: Callable[[DeviceRow], bool]) -> list[DeviceRow]:
        return [d for d in self.devices.values() if test(d)]

    def set(self, d: DeviceRow, **changes: object) -> DeviceRow:
        changed = replace(self.devices[d.index], **changes, updated_at=self.now)  # type: ignore[arg-type]
        if changed.hardware_identifier and (changed.import_record_id or changed.state != IMPORTING):
            # The hash is needed only until Graph has the device: keep no more of it than that.
            changed = replace(changed, hardware_identifier="")
        self.devices[d.index] = self.result.changed[d.index] = changed
        return changed

    def spend(self) -> bool:
        """One Graph call more, within the step's budget, and only while the step holds its claim."""
        if not self.claim.held():
            raise StepLost(f"import {self.job.id}: the step lost its claim")
        if self._calls <= 0 or time.monotonic() > self._until:
            self.result.more = True
            return False
        self._calls -= 1
        return True


class NewDevices:
    """The phases for devices not yet imported: reserve each serial for the job (or follow the job
    that holds it), look the device up, adopt the records of an unanswered import call, and
    import the rest. Given the step's shared StepWork."""

    def __init__(self, work: StepWork):
        self.work = work

    def look_up(self) -> None:
        """Before importing: a device whose serial another job reserved is that job's to import; one
        already registered is not imported again, and one that another import (the portal, or a job
        before reservations) is processing is followed, not imported twice."""
        w = self.work
        new: list[DeviceRow] = []
        for d in w.where(lambda d: d.state == IMPORTING and not d.checked and not d.import_record_id and not d.import_sent_at):
            if len(new) >= w.calls_left:
                break  # no Graph call left in this step to look up more: reserved (and looked up) by a later one
            if self._ours_to_import(d):
                new.append(d)
        if not new or not w.spend():
            return
        others = {str(r.get("serialNumber", "")).upper(): r for r in w.api.records()
                  if r.get("importId") != w.job.id and import_answer(r).state != FAILED and r.get("id")}
        for d in new:
            if not w.spend():
                return
            found = w.per_device(d, "LookupRefused", partial(w.api.find, d.serial_number))
            if found is False:
                continue
            if found is None:
                other = others.get(d.serial_number.upper())
                w.set(d, checked=True, import_record_id=str(other["id"]) if other else None,
                      record_foreign=True if other else None,
                      message="already being imported by another import; followed, not imported again" if other else None)
                continue
            if group_tag_differs(found, d.group_tag):
                if not w.job.update_existing:
                    w.set(d, state=FAILED, checked=True, already_registered=True, autopilot_id=_id(found),
                          error_name="AlreadyRegisteredWithOtherGroupTag",
                          message=f"already registered with group tag {found.get('groupTag') or '(none)'!r}")
                    continue
                if not w.spend():
                    return  # looked up again next step
                tag = d.group_tag or ""
                if w.per_device(d, "GroupTagUpdateRefused", partial(w.api.set_group_tag, str(found.get("id")), tag)) is False:
                    continue
                d = w.set(d, group_tag_updated=True)
            w.registered(d, found, already=True)

    def _ours_to_import(self, d: DeviceRow) -> bool:
        """Reserve the device's serial for this job. False when another job holds it: this device
        then follows that job's import record, or waits for it (table reads only, no Graph call)."""
        w = self.work
        waited_for = (d.follows_import, d.follows_index) if d.follows_import and d.follows_index is not None else None
        if waited_for and self._follows(d, *waited_for):  # even once that job let the serial go: its import is ours too
            return False
        held = w.store.reserve(d.serial_number, w.job.id, d.index, w.now)
        if held.import_id != w.job.id:
            if (held.import_id, held.index) != waited_for and self._follows(d, held.import_id, held.index):
                return False
            if w.store.take_over(held, w.job.id, d.index, w.now) is None:
                return False  # another job took it first: looked at again next step
        if d.follows_import:
            w.set(d, follows_import=None, follows_index=None, message=None)
        return True

    def _follows(self, d: DeviceRow, import_id: str, index: int) -> bool:
        """Whether this device follows (or waits for) the import of device ``index`` of job ``import_id``."""
        owner, row = self.work.owner(import_id, index)
        verdict = reserved_elsewhere(owner, self.work.job.created_at)
        if verdict == FOLLOW and row is not None:
            self.work.set(d, checked=True, import_record_id=row.import_record_id, record_foreign=True,
                          follows_import=import_id, follows_index=index,
                          message=f"also in import {import_id}, which imports it; followed, not imported again")
            return True
        if verdict == WAIT:
            if d.follows_import != import_id:
                self.work.set(d, follows_import=import_id, follows_index=index,
                              message=f"waiting for import {import_id}, which has the same serial number")
            return True
        return False

    def adopt(self) -> None:
        """Devices whose import call went unanswered: its records, if Graph made them, are ours."""
        w = self.work
        unsure = w.where(lambda d: d.state == IMPORTING and not d.import_record_id and bool(d.import_sent_at))
        if not unsure or not w.spend():
            return
        ours = {str(r.get("serialNumber", "")).upper(): r for r in w.api.records() if r.get("importId") == w.job.id}
        for d in unsure:
            record = ours.get(d.serial_number.upper())
            if record and record.get("id"):
                w.set(d, import_record_id=str(record["id"]))
            elif d.import_sent_at and w.now - d.import_sent_at > ADOPT_GRACE:
                w.set(d, import_sent_at=None)  # Graph never made it: import it again

    def import_new(self) -> None:
        w = self.work
        todo = w.where(lambda d: d.state == IMPORTING and bool(d.checked) and not d.import_record_id
                       and not d.import_sent_at)
        for start in range(0, len(todo), IMPORT_CHUNK):
            if not w.spend():
                return
            chunk = [w.set(d, import_sent_at=w.now) for d in todo[start:start + IMPORT_CHUNK]]
            if not w.claim.confirmed():  # this step outlived its claim: another delivery runs the job now
                raise StepLost(f"import {w.job.id}: the step lost its claim")
            w.store.save_devices(w.job.id, chunk)  # before the call: an unanswered call is looked for, not repeated
            answer = w.api.import_devices(w.job.id, chunk)
            try:
                answer.raise_for_status("the Autopilot import")
            except GraphRequestRejected as exc:  # Graph refused the request as such: these devices fail
                for d in chunk:
                    w.set(d, state=FAILED, import_sent_at=None, error_name="ImportRejected", message=exc.message[:GRAPH_TEXT])
                continue
            body = answer.body if isinstance(answer.body, dict) else {}
            created = {str(r.get("serialNumber", "")).upper(): r for r in body.get("value") or [] if isinstance(r, dict)}
            for d in chunk:
                record = created.get(d.serial_number.upper())
                if record and record.get("id"):
                    w.set(d, import_record_id=str(record["id"]))


class ImportFollower:
    """The phases that follow what Graph does with imported devices: their import records, then
    their registration and profile. Given the step's shared StepWork, and whether a sync started
    since the job asked for it (only then is a device waiting for the sync looked at)."""

    def __init__(self, work: StepWork, sync_started: bool):
        self.work, self.sync_started = work, sync_started

    def follow_imports(self) -> None:
        w = self.work
        for d in w.where(lambda d: d.state == IMPORTING and bool(d.import_record_id)):
            if not w.spend():
                return
            record = w.per_device(d, "ImportRecordUnreadable", partial(w.api.record, d.import_record_id or ""))
            if record is False:
                continue
            if record is None:
                if not self._record_vanished(d):
                    return
                continue
            answer = import_answer(record)
            name = (answer.error_name or "")[:GRAPH_TEXT] or None
            if answer.state == IMPORTED:
                w.set(d, state=IMPORTED, message="imported; waiting for the Autopilot sync")
            elif answer.state == FAILED:
                w.set(d, state=FAILED, error_code=answer.error_code, error_name=name,
                      message=f"Intune could not import it: {name} ({answer.error_code})")

    def _record_vanished(self, d: DeviceRow) -> bool:
        """The import record is gone: the job whose import it was may know how it ended, else Graph's
        device list says whether the device registered. False when the budget ran out."""
        w = self.work
        owner = w.owner(d.follows_import, d.follows_index)[0] if d.follows_import and d.follows_index is not None else None
        failure = followed_failure(owner)
        if failure is not None:
            w.set(d, state=FAILED, error_code=failure.error_code, error_name=failure.error_name,
                  message=f"Intune could not import it: {failure.error_name} ({failure.error_code}), "
                  f"in import {d.follows_import}")
            return True
        if not w.spend():
            return False
        found = w.per_device(d, "LookupRefused", partial(w.api.find, d.serial_number))
        if found is False:
            return True
        answer = record_vanished(owner, found is not None)
        if answer is None and found:
            w.registered(d, found, already=False)
        elif answer is not None and answer.state == IMPORTED:
            w.set(d, state=IMPORTED, message="imported (its import record is gone); waiting for the Autopilot sync")
        else:
            w.set(d, state=FAILED, error_name=RECORD_DELETED, message="its import record was deleted before Intune "
                  "finished processing it, and the device is not registered")
        return True

    def follow_registration(self) -> None:
        w = self.work
        waiting = w.where(lambda d: d.state == REGISTERED or (d.state == WAITING_FOR_SYNC and self.sync_started))
        for d in waiting:
            if not w.spend():
                return
            found = w.per_device(d, "LookupRefused", partial(w.api.find, d.serial_number))
            if found:
                w.registered(d, found, already=bool(d.already_registered))


class ImportRun:
    """The work of one step on one job's devices: runs the phases in order (NewDevices,
    ImportFollower, then saving and cleaning up here) over one StepWork, and times the devices out
    at the job's deadline. Given the Autopilot API, the job, its devices, the step's time, the
    import store, whether a sync started since the job asked, and the step's claim."""

    def __init__(self, api: AutopilotApi, job: ImportJob, devices: list[DeviceRow], now: datetime,
                 store: ImportStore, sync_started: bool, claim: StepClaim):
        self.job = job
        self.work = StepWork(api, job, devices, now, store, claim)
        self.new = NewDevices(self.work)
        self.follower = ImportFollower(self.work, sync_started)

    @property
    def devices(self) -> dict[int, DeviceRow]:
        return self.work.devices

    @property
    def result(self) -> StepResult:
        return self.work.result

    def run(self) -> StepResult:
        if self.work.now >= self.job.deadline:
            self._time_out()
        try:
            for phase in (self.new.look_up, self.new.adopt, self.new.import_new, self.follower.follow_imports,
                          self.follower.follow_registration, self._save_progress, self._clean_up):
                if not self.result.more:
                    phase()
        except StepLost:
            raise
        except AppError as exc:  # Graph or its token failed, or answered nonsense (an id that is
            # no GUID): the rest waits for the next step; nothing done is lost.
            self.result.retry_after = exc.retry_after_seconds if isinstance(exc, UpstreamError) else None
            self.result.error = f"{exc.code}: {exc.message}"
            log.warning("import %s: step stopped by %s", self.job.id, self.result.error)
        return self.result

    def _save_progress(self) -> None:
        """What Graph said is saved before any import record is deleted: a save that fails after
        a delete would lose Graph's error for good."""
        if self.result.changed:
            self.work.store.save_devices(self.job.id, list(self.result.changed.values()))

    def _clean_up(self) -> None:
        """Intune's guidance: delete an import record once it has done its work."""
        w = self.work
        for d in w.where(lambda d: d.state in (PROFILE_ASSIGNED, FAILED) and bool(d.import_record_id)
                         and not d.record_deleted and not d.record_kept and not d.record_foreign):
            if not w.spend():
                return
            try:
                w.api.delete_record(d.import_record_id or "")
            except GraphRequestRejected as exc:  # cleaning up is not worth holding the job: the admin can
                w.set(d, record_kept=True, message=f"{d.message or d.state}; its import record could not be deleted: "
                      f"{exc.message[:GRAPH_TEXT]}")
                continue
            except UpstreamError as exc:
                if exc.graph_status not in (403, 405):
                    raise  # a fault: the next step tries again
                w.set(d, record_kept=True, message=f"{d.message or d.state}; Graph refused to delete its import "
                      f"record ({exc.graph_status}): delete it in the admin center")
                continue
            w.set(d, record_deleted=True)

    def _time_out(self) -> None:
        why = f"; {self.job.message}" if self.job.message else ""
        for d in self.work.where(lambda d: not d.final):
            self.work.set(d, state=TIMED_OUT, message=f"still {d.state} at the job's deadline {iso(self.job.deadline)}{why}"[:500])


def _id(found: dict[str, object]) -> str | None:
    value = found.get("id")
    return str(value) if value else None


def imported_devices(devices: list[DeviceRow]) -> list[DeviceRow]:
    """Devices whose import finished and that wait for the job to ask for the sync."""
    return [d for d in devices if d.state == IMPORTED]
