"""One step of an Autopilot import job: look at Graph for every device that needs it, act, and
say what the job should do next. shared/importjob.py claims the job, runs a step, saves it and
sends the next message; the decisions are in shared/onboarding.py.

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

from .autopilotapi import AutopilotApi
from .errors import AppError, GraphRequestRejected, GraphResourceNotFound, UpstreamError
from .importclaim import StepClaim
from .imports import DeviceRow, ImportJob, ImportStore
from .model import iso
from .onboarding import (
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


class ImportRun:
    """The work of one step on one job's devices."""

    def __init__(self, api: AutopilotApi, job: ImportJob, devices: list[DeviceRow], now: datetime,
                 store: ImportStore, sync_started: bool, claim: StepClaim):
        self.api, self.job, self.now, self.store, self.sync_started = api, job, now, store, sync_started
        self.claim = claim
        self.devices = {d.index: d for d in devices}
        self._jobs: dict[str, ImportJob | None] = {}  # other jobs read this step (their rows, for their reservations)
        self.result = StepResult()
        self._calls, self._until = CALLS_PER_STEP, time.monotonic() + STEP_SECONDS

    def run(self) -> StepResult:
        if self.now >= self.job.deadline:
            self._time_out()
        try:
            for phase in (self._look_up_new, self._adopt, self._import, self._follow_imports, self._follow_registration,
                          self._save_progress, self._clean_up):
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

    # --- phases ------------------------------------------------------------------------------

    def _look_up_new(self) -> None:
        """Before importing: a device whose serial another job reserved is that job's to import; one
        already registered is not imported again, and one that another import (the portal, or a job
        before reservations) is processing is followed, not imported twice."""
        new: list[DeviceRow] = []
        for d in self._where(lambda d: d.state == IMPORTING and not d.checked and not d.import_record_id and not d.import_sent_at):
            if len(new) >= self._calls:
                break  # no Graph call left in this step to look up more: reserved (and looked up) by a later one
            if self._ours_to_import(d):
                new.append(d)
        if not new or not self._spend():
            return
        others = {str(r.get("serialNumber", "")).upper(): r for r in self.api.records()
                  if r.get("importId") != self.job.id and import_answer(r).state != FAILED and r.get("id")}
        for d in new:
            if not self._spend():
                return
            found = self._per_device(d, "LookupRefused", partial(self.api.find, d.serial_number))
            if found is False:
                continue
            if found is None:
                other = others.get(d.serial_number.upper())
                self._set(d, checked=True, import_record_id=str(other["id"]) if other else None,
                          record_foreign=True if other else None,
                          message="already being imported by another import; followed, not imported again" if other else None)
                continue
            if group_tag_differs(found, d.group_tag):
                if not self.job.update_existing:
                    self._set(d, state=FAILED, checked=True, already_registered=True, autopilot_id=_id(found),
                              error_name="AlreadyRegisteredWithOtherGroupTag",
                              message=f"already registered with group tag {found.get('groupTag') or '(none)'!r}")
                    continue
                if not self._spend():
                    return  # looked up again next step
                tag = d.group_tag or ""
                if self._per_device(d, "GroupTagUpdateRefused", partial(self.api.set_group_tag, str(found.get("id")), tag)) is False:
                    continue
                d = self._set(d, group_tag_updated=True)
            self._registered(d, found, already=True)

    def _ours_to_import(self, d: DeviceRow) -> bool:
        """Reserve the device's serial for this job. False when another job holds it: this device
        then follows that job's import record, or waits for it (table reads only, no Graph call)."""
        waited_for = (d.follows_import, d.follows_index) if d.follows_import and d.follows_index is not None else None
        if waited_for and self._follows(d, *waited_for):  # even once that job let the serial go: its import is ours too
            return False
        held = self.store.reserve(d.serial_number, self.job.id, d.index, self.now)
        if held.import_id != self.job.id:
            if (held.import_id, held.index) != waited_for and self._follows(d, held.import_id, held.index):
                return False
            if self.store.take_over(held, self.job.id, d.index, self.now) is None:
                return False  # another job took it first: looked at again next step
        if d.follows_import:
            self._set(d, follows_import=None, follows_index=None, message=None)
        return True

    def _follows(self, d: DeviceRow, import_id: str, index: int) -> bool:
        """Whether this device follows (or waits for) the import of device ``index`` of job ``import_id``."""
        owner, row = self._owner(import_id, index)
        verdict = reserved_elsewhere(owner, self.job.created_at)
        if verdict == FOLLOW and row is not None:
            self._set(d, checked=True, import_record_id=row.import_record_id, record_foreign=True,
                      follows_import=import_id, follows_index=index,
                      message=f"also in import {import_id}, which imports it; followed, not imported again")
            return True
        if verdict == WAIT:
            if d.follows_import != import_id:
                self._set(d, follows_import=import_id, follows_index=index,
                          message=f"waiting for import {import_id}, which has the same serial number")
            return True
        return False

    def _owner(self, import_id: str, index: int) -> tuple[Owner | None, DeviceRow | None]:
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

    def _adopt(self) -> None:
        """Devices whose import call went unanswered: its records, if Graph made them, are ours."""
        unsure = self._where(lambda d: d.state == IMPORTING and not d.import_record_id and bool(d.import_sent_at))
        if not unsure or not self._spend():
            return
        ours = {str(r.get("serialNumber", "")).upper(): r for r in self.api.records() if r.get("importId") == self.job.id}
        for d in unsure:
            record = ours.get(d.serial_number.upper())
            if record and record.get("id"):
                self._set(d, import_record_id=str(record["id"]))
            elif d.import_sent_at and self.now - d.import_sent_at > ADOPT_GRACE:
                self._set(d, import_sent_at=None)  # Graph never made it: import it again

    def _import(self) -> None:
        todo = self._where(lambda d: d.state == IMPORTING and bool(d.checked) and not d.import_record_id
                           and not d.import_sent_at)
        for start in range(0, len(todo), IMPORT_CHUNK):
            if not self._spend():
                return
            chunk = [self._set(d, import_sent_at=self.now) for d in todo[start:start + IMPORT_CHUNK]]
            if not self.claim.confirmed():  # this step outlived its claim: another delivery runs the job now
                raise StepLost(f"import {self.job.id}: the step lost its claim")
            self.store.save_devices(self.job.id, chunk)  # before the call: an unanswered call is looked for, not repeated
            answer = self.api.import_devices(self.job.id, chunk)
            try:
                answer.raise_for_status("the Autopilot import")
            except GraphRequestRejected as exc:  # Graph refused the request as such: these devices fail
                for d in chunk:
                    self._set(d, state=FAILED, import_sent_at=None, error_name="ImportRejected", message=exc.message[:GRAPH_TEXT])
                continue
            body = answer.body if isinstance(answer.body, dict) else {}
            created = {str(r.get("serialNumber", "")).upper(): r for r in body.get("value") or [] if isinstance(r, dict)}
            for d in chunk:
                record = created.get(d.serial_number.upper())
                if record and record.get("id"):
                    self._set(d, import_record_id=str(record["id"]))

    def _follow_imports(self) -> None:
        for d in self._where(lambda d: d.state == IMPORTING and bool(d.import_record_id)):
            if not self._spend():
                return
            record = self._per_device(d, "ImportRecordUnreadable", partial(self.api.record, d.import_record_id or ""))
            if record is False:
                continue
            if record is None:
                if not self._record_vanished(d):
                    return
                continue
            answer = import_answer(record)
            name = (answer.error_name or "")[:GRAPH_TEXT] or None
            if answer.state == IMPORTED:
                self._set(d, state=IMPORTED, message="imported; waiting for the Autopilot sync")
            elif answer.state == FAILED:
                self._set(d, state=FAILED, error_code=answer.error_code, error_name=name,
                          message=f"Intune could not import it: {name} ({answer.error_code})")

    def _record_vanished(self, d: DeviceRow) -> bool:
        """The import record is gone: the job whose import it was may know how it ended, else Graph's
        device list says whether the device registered. False when the budget ran out."""
        owner = self._owner(d.follows_import, d.follows_index)[0] if d.follows_import and d.follows_index is not None else None
        failure = followed_failure(owner)
        if failure is not None:
            self._set(d, state=FAILED, error_code=failure.error_code, error_name=failure.error_name,
                      message=f"Intune could not import it: {failure.error_name} ({failure.error_code}), "
                      f"in import {d.follows_import}")
            return True
        if not self._spend():
            return False
        found = self._per_device(d, "LookupRefused", partial(self.api.find, d.serial_number))
        if found is False:
            return True
        answer = record_vanished(owner, found is not None)
        if answer is None and found:
            self._registered(d, found, already=False)
        elif answer is not None and answer.state == IMPORTED:
            self._set(d, state=IMPORTED, message="imported (its import record is gone); waiting for the Autopilot sync")
        else:
            self._set(d, state=FAILED, error_name=RECORD_DELETED, message="its import record was deleted before Intune "
                      "finished processing it, and the device is not registered")
        return True

    def _follow_registration(self) -> None:
        waiting = self._where(lambda d: d.state == REGISTERED or (d.state == WAITING_FOR_SYNC and self.sync_started))
        for d in waiting:
            if not self._spend():
                return
            found = self._per_device(d, "LookupRefused", partial(self.api.find, d.serial_number))
            if found:
                self._registered(d, found, already=bool(d.already_registered))

    def _save_progress(self) -> None:
        """What Graph said is saved before any import record is deleted: a save that fails after
        a delete would lose Graph's error for good."""
        if self.result.changed:
            self.store.save_devices(self.job.id, list(self.result.changed.values()))

    def _clean_up(self) -> None:
        """Intune's guidance: delete an import record once it has done its work."""
        for d in self._where(lambda d: d.state in (PROFILE_ASSIGNED, FAILED) and bool(d.import_record_id)
                             and not d.record_deleted and not d.record_kept and not d.record_foreign):
            if not self._spend():
                return
            try:
                self.api.delete_record(d.import_record_id or "")
            except GraphRequestRejected as exc:  # cleaning up is not worth holding the job: the admin can
                self._set(d, record_kept=True, message=f"{d.message or d.state}; its import record could not be deleted: "
                          f"{exc.message[:GRAPH_TEXT]}")
                continue
            except UpstreamError as exc:
                if exc.graph_status not in (403, 405):
                    raise  # a fault: the next step tries again
                self._set(d, record_kept=True, message=f"{d.message or d.state}; Graph refused to delete its import "
                          f"record ({exc.graph_status}): delete it in the admin center")
                continue
            self._set(d, record_deleted=True)

    def _time_out(self) -> None:
        why = f"; {self.job.message}" if self.job.message else ""
        for d in self._where(lambda d: not d.final):
            self._set(d, state=TIMED_OUT, message=f"still {d.state} at the job's deadline {iso(self.job.deadline)}{why}"[:500])

    # --- helpers -----------------------------------------------------------------------------

    def _registered(self, d: DeviceRow, found: dict[str, object], already: bool) -> None:
        assigned = profile_assigned(found)
        self._set(d, state=PROFILE_ASSIGNED if assigned else REGISTERED, checked=True, autopilot_id=_id(found),
                  already_registered=already or None,
                  message="deployment profile assigned" if assigned else
                  f"registered; profile {found.get('deploymentProfileAssignmentStatus') or 'not reported'}")

    def _per_device(self, d: DeviceRow, name: str, call: Callable[[], _T]) -> _T | Literal[False]:
        """One device's call; Graph refusing it (400, 404) fails that device only, with the reason.
        Faults (5xx, 429, token, storage) and 401/403 concern every device: they stop the step."""
        try:
            return call()
        except (GraphRequestRejected, GraphResourceNotFound) as exc:
            self._set(d, state=FAILED, error_name=name, message=exc.message[:GRAPH_TEXT])
            return False

    def _where(self, test: Callable[[DeviceRow], bool]) -> list[DeviceRow]:
        return [d for d in self.devices.values() if test(d)]

    def _set(self, d: DeviceRow, **changes: object) -> DeviceRow:
        changed = replace(self.devices[d.index], **changes, updated_at=self.now)  # type: ignore[arg-type]
        if changed.hardware_identifier and (changed.import_record_id or changed.state != IMPORTING):
            # The hash is needed only until Graph has the device: keep no more of it than that.
            changed = replace(changed, hardware_identifier="")
        self.devices[d.index] = self.result.changed[d.index] = changed
        return changed

    def _spend(self) -> bool:
        """One Graph call more, within the step's budget, and only while the step holds its claim."""
        if not self.claim.held():
            raise StepLost(f"import {self.job.id}: the step lost its claim")
        if self._calls <= 0 or time.monotonic() > self._until:
            self.result.more = True
            return False
        self._calls -= 1
        return True


def _id(found: dict[str, object]) -> str | None:
    value = found.get("id")
    return str(value) if value else None


def imported_devices(devices: list[DeviceRow]) -> list[DeviceRow]:
    """Devices whose import finished and that wait for the job to ask for the sync."""
    return [d for d in devices if d.state == IMPORTED]
