"""One step of an Autopilot import job: look at Graph for every device that needs it, act, and
say what the job should do next. shared/importjob.py claims the job, runs a step, saves it and
sends the next message; the decisions are in shared/onboarding.py.

A step does bounded work (CALLS_PER_STEP Graph calls, STEP_SECONDS) so that an invocation stays
short and Intune's per-app write limit (100 writes per 20 s) is not spent by one job; what is
left goes to the next step at once. Device rows are saved before an import call, so that a call
whose answer is lost is found again (its records carry the job's importId) instead of repeated.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from .autopilotapi import AutopilotApi
from .errors import AppError, GraphRequestRejected, UpstreamError
from .imports import DeviceRow, ImportJob
from .model import iso
from .onboarding import (
    FAILED,
    IMPORTED,
    IMPORTING,
    PROFILE_ASSIGNED,
    REGISTERED,
    TIMED_OUT,
    WAITING_FOR_SYNC,
    group_tag_differs,
    import_answer,
    profile_assigned,
)

log = logging.getLogger(__name__)

IMPORT_CHUNK = 100  # devices per import call: ~0.5 MB with 4K hashes, and a small loss if one call fails
CALLS_PER_STEP = 100
STEP_SECONDS = 120.0  # no new Graph call after this; the function timeout is 5 minutes


@dataclass
class StepResult:
    changed: dict[int, DeviceRow] = field(default_factory=dict)
    more: bool = False  # the budget ran out with work left: run the next step at once
    retry_after: float | None = None  # Graph asked us to wait (429), or failed: look again later
    error: str | None = None  # the fault that stopped this step, shown in the job's status


class ImportRun:
    """The work of one step on one job's devices."""

    def __init__(self, api: AutopilotApi, job: ImportJob, devices: list[DeviceRow], now: datetime,
                 save: Callable[[list[DeviceRow]], None], sync_started: bool):
        self.api, self.job, self.now, self.save, self.sync_started = api, job, now, save, sync_started
        self.devices = {d.index: d for d in devices}
        self.result = StepResult()
        self._calls, self._until = CALLS_PER_STEP, time.monotonic() + STEP_SECONDS

    def run(self) -> StepResult:
        if self.now >= self.job.deadline:
            self._time_out()
        try:
            for phase in (self._look_up_new, self._adopt, self._import, self._follow_imports, self._follow_registration,
                          self._clean_up):
                if not self.result.more:
                    phase()
        except AppError as exc:  # Graph or its token failed, or answered nonsense (an id that is
            # no GUID): the rest waits for the next step; nothing done is lost.
            self.result.retry_after = exc.retry_after_seconds if isinstance(exc, UpstreamError) else None
            self.result.error = f"{exc.code}: {exc.message}"
            log.warning("import %s: step stopped by %s", self.job.id, self.result.error)
        return self.result

    # --- phases ------------------------------------------------------------------------------

    def _look_up_new(self) -> None:
        """Before importing: a device already registered is not imported again."""
        for d in self._where(lambda d: d.state == IMPORTING and not d.checked and not d.import_record_id
                             and not d.import_sent_at):
            if not self._spend():
                return
            found = self.api.find(d.serial_number)
            if found is None:
                self._set(d, checked=True)
                continue
            if group_tag_differs(found, d.group_tag):
                if not self.job.update_existing:
                    self._set(d, state=FAILED, checked=True, already_registered=True, autopilot_id=_id(found),
                              error_name="AlreadyRegisteredWithOtherGroupTag",
                              message=f"already registered with group tag {found.get('groupTag') or '(none)'!r}")
                    continue
                if not self._spend():
                    return  # looked up again next step
                self.api.set_group_tag(str(found.get("id")), d.group_tag or "")
                d = self._set(d, group_tag_updated=True)
            self._registered(d, found, already=True)

    def _adopt(self) -> None:
        """Devices whose import call went unanswered: its records, if Graph made them, are ours."""
        unsure = self._where(lambda d: d.state == IMPORTING and not d.import_record_id and bool(d.import_sent_at))
        if not unsure or not self._spend():
            return
        ours = {str(r.get("serialNumber", "")).upper(): r for r in self.api.records() if r.get("importId") == self.job.id}
        for d in unsure:
            record = ours.get(d.serial_number.upper())
            self._set(d, import_record_id=str(record.get("id")) if record else None,
                      import_sent_at=d.import_sent_at if record else None)

    def _import(self) -> None:
        todo = self._where(lambda d: d.state == IMPORTING and bool(d.checked) and not d.import_record_id
                           and not d.import_sent_at)
        for start in range(0, len(todo), IMPORT_CHUNK):
            if not self._spend():
                return
            chunk = [self._set(d, import_sent_at=self.now) for d in todo[start:start + IMPORT_CHUNK]]
            self.save(chunk)  # before the call: an unanswered call is looked for, not repeated
            answer = self.api.import_devices(self.job.id, chunk)
            try:
                answer.raise_for_status("the Autopilot import")
            except GraphRequestRejected as exc:  # Graph refused the request as such: these devices fail
                for d in chunk:
                    self._set(d, state=FAILED, import_sent_at=None, error_name="ImportRejected", message=exc.message[:500])
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
            record = self.api.record(d.import_record_id or "")
            if record is None:
                self._set(d, state=FAILED, error_name="ImportRecordDeleted",
                          message="its import record was deleted before Intune finished processing it")
                continue
            answer = import_answer(record)
            if answer.state == IMPORTED:
                self._set(d, state=IMPORTED, message="imported; waiting for the Autopilot sync")
            elif answer.state == FAILED:
                self._set(d, state=FAILED, error_code=answer.error_code, error_name=answer.error_name,
                          message=f"Intune could not import it: {answer.error_name} ({answer.error_code})")

    def _follow_registration(self) -> None:
        waiting = self._where(lambda d: d.state == REGISTERED or (d.state == WAITING_FOR_SYNC and self.sync_started))
        for d in waiting:
            if not self._spend():
                return
            found = self.api.find(d.serial_number)
            if found is not None:
                self._registered(d, found, already=bool(d.already_registered))

    def _clean_up(self) -> None:
        """Intune's guidance: delete an import record once it has done its work."""
        for d in self._where(lambda d: d.state in (PROFILE_ASSIGNED, FAILED) and bool(d.import_record_id)
                             and not d.record_deleted):
            if not self._spend():
                return
            self.api.delete_record(d.import_record_id or "")
            self._set(d, record_deleted=True)

    def _time_out(self) -> None:
        for d in self._where(lambda d: not d.final):
            self._set(d, state=TIMED_OUT, message=f"still {d.state} at the job's deadline {iso(self.job.deadline)}")

    # --- helpers -----------------------------------------------------------------------------

    def _registered(self, d: DeviceRow, found: dict[str, object], already: bool) -> None:
        assigned = profile_assigned(found)
        self._set(d, state=PROFILE_ASSIGNED if assigned else REGISTERED, checked=True, autopilot_id=_id(found),
                  already_registered=already or None,
                  message="deployment profile assigned" if assigned else
                  f"registered; profile {found.get('deploymentProfileAssignmentStatus') or 'not reported'}")

    def _where(self, test: Callable[[DeviceRow], bool]) -> list[DeviceRow]:
        return [d for d in self.devices.values() if test(d)]

    def _set(self, d: DeviceRow, **changes: object) -> DeviceRow:
        changed = replace(self.devices[d.index], **changes, updated_at=self.now)  # type: ignore[arg-type]
        self.devices[d.index] = self.result.changed[d.index] = changed
        return changed

    def _spend(self) -> bool:
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
