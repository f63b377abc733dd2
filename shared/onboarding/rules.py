"""Autopilot onboarding decisions, pure: what Graph's answers mean for one device of an import
job, which states are final, and what a job has left to do. The job that acts on them is
shared/onboarding/importjob.py; the rows it keeps are shared/onboarding/imports.py.

A device moves ``importing`` → ``imported`` → ``waitingForSync`` → ``registered`` →
``profileAssigned``; it ends ``failed`` (Graph's error name and code, and a hint) or
``timedOut`` (IMPORT_WAIT_TIMEOUT_SECONDS). A device already registered in the tenant skips the
import and goes straight to ``registered``.

Across jobs, one job imports a serial number at a time (it reserves the serial first); another job
with the same serial follows that job's import, and ends the device the way that import ended.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

IMPORTING, IMPORTED, FAILED = "importing", "imported", "failed"
WAITING_FOR_SYNC, REGISTERED, PROFILE_ASSIGNED, TIMED_OUT = "waitingForSync", "registered", "profileAssigned", "timedOut"
STATES = (IMPORTING, IMPORTED, FAILED, WAITING_FOR_SYNC, REGISTERED, PROFILE_ASSIGNED, TIMED_OUT)
FINAL = frozenset({FAILED, PROFILE_ASSIGNED, TIMED_OUT})
IMPORT_COMPLETE = frozenset({IMPORTED, WAITING_FOR_SYNC, REGISTERED, PROFILE_ASSIGNED})  # Intune finished its import
RECORD_DELETED = "ImportRecordDeleted"
# The names the app gives a failure itself; any other name on a failed device is Intune's answer to its import.
APP_ERRORS = frozenset({"AlreadyRegisteredWithOtherGroupTag", "ImportRejected", RECORD_DELETED, "GroupTagUpdateRefused",
                        "LookupRefused", "ImportRecordUnreadable"})
FOLLOW, WAIT, TAKE_OVER = "follow", "wait", "takeOver"  # what a job does about a serial another job reserved

# What an admin can do about each import error Graph reports (../shared/reference autopilot-import:
# Microsoft documents 806 and 808 by number; the others by name only, so names are what we match).
HINTS: dict[str, str] = {
    "ZtdDeviceAlreadyAssigned": "The device is already registered in this tenant: find its serial number under Windows "
                                "Autopilot devices; there is nothing to import.",
    "ZtdDeviceAssignedToOtherTenant": "The device is registered to another organisation (or has a stale record, e.g. in "
                                      "Microsoft Store for Business). Its current owner, or Microsoft Support with proof "
                                      "of ownership, must deregister it before it can be imported.",
    "ZtdDeviceAssignedToAnotherTenant": "The device is registered to another organisation; its current owner (or Microsoft "
                                        "Support with proof of ownership) must deregister it first.",
    "ZtdDeviceDuplicated": "The same hardware hash was imported more than once at the same time; only one import is "
                           "processed. Check the device's other row.",
    "InvalidZtdHardwareHash": "The hardware hash is invalid or lacks the manufacturer or serial number: collect it again "
                              "with Get-WindowsAutopilotInfo on the device.",
    "StorageError": "A transient error in the Autopilot service: import the device again later; contact Microsoft "
                    "Support if it persists.",
    "AlreadyRegisteredWithOtherGroupTag": "The device is already registered with another group tag. Send the request "
                                          "again with \"updateExisting\": true to change its group tag.",
    "ImportRejected": "Graph refused the import request itself; the message says why.",
    "ImportRecordDeleted": "Its import record was deleted before Intune finished processing it, and the device is not "
                           "registered: send the device again.",
}
UNKNOWN_HINT = "Look the error up in Intune's Windows Autopilot import errors, or import the device in the admin center to see it."
ERROR_CODES = {806: "ZtdDeviceAlreadyAssigned", 808: "ZtdDeviceAssignedToOtherTenant"}


@dataclass(frozen=True)
class ImportAnswer:
    """What one import record's ``state`` says: still processing, done, or failed and why."""

    state: str  # IMPORTING (still processing), IMPORTED or FAILED
    error_code: int | None = None
    error_name: str | None = None

    @property
    def hint(self) -> str | None:
        return hint_for(self.error_name) if self.state == FAILED else None


def hint_for(error_name: str | None) -> str:
    return HINTS.get(error_name or "", UNKNOWN_HINT)


def import_answer(record: Any) -> ImportAnswer:
    """Read an importedWindowsAutopilotDeviceIdentity's ``state.deviceImportStatus``
    (unknown / pending / partial / complete / error). Anything odd is "still processing": the job
    looks again, and its deadline bounds the wait."""
    state = record.get("state") if isinstance(record, dict) else None
    if not isinstance(state, dict):
        return ImportAnswer(IMPORTING)
    status = state.get("deviceImportStatus")
    if status == "complete":
        return ImportAnswer(IMPORTED)
    if status == "error":
        code = state.get("deviceErrorCode")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        name = state.get("deviceErrorName") if isinstance(state.get("deviceErrorName"), str) else None
        return ImportAnswer(FAILED, code, name or ERROR_CODES.get(code or 0) or "UnknownImportError")
    return ImportAnswer(IMPORTING)


def profile_assigned(device: Any) -> bool:
    """Whether a beta windowsAutopilotDeviceIdentity has its deployment profile: one of the
    ``assigned…`` values (assignedInSync, assignedOutOfSync, assignedUnkownSyncState, sic)."""
    status = device.get("deploymentProfileAssignmentStatus") if isinstance(device, dict) else None
    return isinstance(status, str) and status.startswith("assigned")


def find_device(answer: Any, serial_number: str) -> dict[str, Any] | None:
    """The device with exactly this serial number in a ``contains(serialNumber,…)`` answer (a
    substring match: ``ABC1`` also finds ``ABC12``). Serial numbers compare case-insensitively."""
    values = answer.get("value") if isinstance(answer, dict) else None
    for device in values if isinstance(values, list) else []:
        if isinstance(device, dict) and str(device.get("serialNumber", "")).upper() == serial_number.upper():
            return device
    return None


def group_tag_differs(device: dict[str, Any], wanted: str | None) -> bool:
    """A registered device's group tag differs from the request's (no tag asked: never)."""
    return wanted is not None and (device.get("groupTag") or "") != wanted


@dataclass(frozen=True)
class Owner:
    """The device of the job that reserved a serial number, as another job with that serial sees it."""

    running: bool  # that job still runs (not finished, not long past its deadline)
    state: str
    has_record: bool  # it has an import record (its own import, or one it follows)
    final_at: datetime | None = None  # when it became final, if it is
    error_code: int | None = None
    error_name: str | None = None


def reserved_elsewhere(owner: Owner | None, started: datetime) -> str:
    """What a job started at ``started`` does about a serial another job reserved: FOLLOW that
    job's import record (the import is shared, and so is its outcome); WAIT while that job still
    decides whether to import; else TAKE_OVER the serial and look the device up itself (that job is
    gone, finished or long past its deadline, ended the device without an import, or its import
    ended before this job started: a later request tries again)."""
    if owner is None:
        return TAKE_OVER
    if owner.has_record and (owner.final_at is None or owner.final_at >= started):
        return FOLLOW
    return WAIT if owner.running and owner.state == IMPORTING else TAKE_OVER


def followed_failure(owner: Owner | None) -> ImportAnswer | None:
    """Intune's failure of the followed import, as the job that made it recorded it; None if unknown."""
    if owner is None or owner.state != FAILED or not owner.error_name or owner.error_name in APP_ERRORS:
        return None
    return ImportAnswer(FAILED, owner.error_code, owner.error_name)


def record_vanished(owner: Owner | None, registered: bool) -> ImportAnswer | None:
    """What a device reached whose import record disappeared (deleted by its job once done, or by
    someone else) and whose failure is not known (followed_failure): None when Graph lists it as
    registered (read its registration); IMPORTED when the job whose import it was saw the import
    complete (the sync registers it); else FAILED ImportRecordDeleted: never assumed imported."""
    if registered:
        return None
    if owner is not None and owner.state in IMPORT_COMPLETE:
        return ImportAnswer(IMPORTED)
    return ImportAnswer(FAILED, None, RECORD_DELETED)


def counts(states: Iterable[str]) -> dict[str, int]:
    """How many devices are in each state, every state named (0 when none)."""
    found = Counter(states)
    return {state: found.get(state, 0) for state in STATES}


def all_final(states: Iterable[str]) -> bool:
    return all(state in FINAL for state in states)
