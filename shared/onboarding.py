"""Autopilot onboarding decisions, pure: what Graph's answers mean for one device of an import
job, which states are final, and what a job has left to do. The job that acts on them is
shared/importjob.py; the rows it keeps are shared/imports.py.

A device moves ``importing`` → ``imported`` → ``waitingForSync`` → ``registered`` →
``profileAssigned``; it ends ``failed`` (Graph's error name and code, and a hint) or
``timedOut`` (IMPORT_WAIT_TIMEOUT_SECONDS). A device already registered in the tenant skips the
import and goes straight to ``registered``.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

IMPORTING, IMPORTED, FAILED = "importing", "imported", "failed"
WAITING_FOR_SYNC, REGISTERED, PROFILE_ASSIGNED, TIMED_OUT = "waitingForSync", "registered", "profileAssigned", "timedOut"
STATES = (IMPORTING, IMPORTED, FAILED, WAITING_FOR_SYNC, REGISTERED, PROFILE_ASSIGNED, TIMED_OUT)
FINAL = frozenset({FAILED, PROFILE_ASSIGNED, TIMED_OUT})

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


def counts(states: Iterable[str]) -> dict[str, int]:
    """How many devices are in each state, every state named (0 when none)."""
    found = Counter(states)
    return {state: found.get(state, 0) for state in STATES}


def all_final(states: Iterable[str]) -> bool:
    return all(state in FINAL for state in states)
