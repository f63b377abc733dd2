"""Autopilot import jobs in the state table: one partition per job (``import-<id>``) with the
job row (RowKey ``job``) and one row per device (``device-<nnnn>``).

The job row is what coordinates: its ``step`` names the one queue message allowed to act next
(an older or duplicated message finds another number and does nothing), and a step claims it
with ``If-Match`` before touching Graph, so that two deliveries of one message never act twice.
Device rows are written only by the step that holds the claim.

Across jobs, a serial number is imported by one job at a time: a job reserves each serial (a row
in partition ``autopilot-serials``, inserted if absent) before it looks the device up and imports
it; another job with the same serial follows that job's import (shared/onboarding/importsteps.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from ..clients import CHANGED_OR_GONE, TableStore, from_row, store_errors, table_missing, to_row
from ..common import StateStoreUnavailable, iso, new_guid
from .devices import Device
from .rules import FAILED, FINAL, IMPORTING, counts, hint_for

JOB_ROW = "job"
DEVICE_PREFIX = "device-"
PARTITION_PREFIX = "import-"
BATCH = 100  # Table Storage's limit of operations in one entity-group transaction
CREATING, RUNNING, COMPLETED = "creating", "running", "completed"
SERIALS = "autopilot-serials"  # the partition of the serial numbers reserved by running jobs
SERIAL_PREFIX = "serial-"


@dataclass(frozen=True)
class ImportJob:
    id: str
    created_at: datetime
    deadline: datetime  # devices not final by then end timedOut
    token_hash: str  # the poll URL's valet token, hashed (shared/engine/operations.py)
    caller: str
    device_count: int
    update_existing: bool = False
    status: str = RUNNING
    step: int = 0  # the number the next queue message must carry
    step_at: datetime | None = None  # when that message is due (the watcher resends it if overdue)
    step_owner: str | None = None  # the step in progress, and until when it holds the job
    step_until: datetime | None = None
    sync_asked_at: datetime | None = None  # when the job asked for the Autopilot sync
    finished_at: datetime | None = None
    summary: str | None = None  # counts per state when finished (JSON), for the notification
    message: str | None = None  # the fault that held up the last step, if any
    etag: str | None = None
    claimed_caller: str | None = None  # key mode: who the request's headers said asked (unverified)

    @property
    def done(self) -> bool:
        return self.status != RUNNING

    def claimed(self, now: datetime) -> bool:
        return bool(self.step_owner) and self.step_until is not None and self.step_until > now

    def resend_due(self, now: datetime, overdue: timedelta) -> bool:
        """Whether the watcher sends this step's message again: the step that claimed the job
        stopped renewing its claim (it died: at once), or the message is ``overdue`` (lost)."""
        if self.done or self.claimed(now) or self.step_at is None:
            return False
        return bool(self.step_owner) or self.step_at < now - overdue

    def to_json(self, devices: list[DeviceRow]) -> dict[str, Any]:
        return {
            "importId": self.id,
            "status": self.status,
            "createdAt": iso(self.created_at),
            "deadline": iso(self.deadline),
            "finishedAt": iso(self.finished_at),
            "updateExisting": self.update_existing,
            "syncRequestedAt": iso(self.sync_asked_at),
            "message": self.message or "",
            "counts": counts(d.state for d in devices),
            "devices": [d.to_json() for d in devices],
        }


@dataclass(frozen=True)
class DeviceRow:
    index: int
    serial_number: str
    hardware_identifier: str
    product_key: str | None = None
    group_tag: str | None = None
    assigned_user_principal_name: str | None = None
    state: str = IMPORTING
    checked: bool | None = None  # looked up in windowsAutopilotDeviceIdentities before importing
    import_sent_at: datetime | None = None  # an import call that may have created its record
    import_record_id: str | None = None
    record_foreign: bool | None = None  # another job's (or the portal's) record for this serial: followed, not deleted
    follows_import: str | None = None  # the job that reserved this serial: its import is followed, not repeated
    follows_index: int | None = None  # that job's device
    record_kept: bool | None = None  # Graph refused to delete the record: left for the admin
    autopilot_id: str | None = None
    already_registered: bool | None = None  # found registered before the import: not imported again
    group_tag_updated: bool | None = None
    record_deleted: bool | None = None
    error_code: int | None = None
    error_name: str | None = None
    message: str | None = None
    updated_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL

    @classmethod
    def of(cls, index: int, device: Device) -> DeviceRow:
        return cls(index, device.serial_number, device.hardware_identifier, device.product_key, device.group_tag,
                   device.assigned_user_principal_name)

    def to_json(self) -> dict[str, Any]:
        failed = self.state == FAILED
        return {
            "serialNumber": self.serial_number,
            "state": self.state,
            "groupTag": self.group_tag,
            "alreadyRegistered": bool(self.already_registered),
            "groupTagUpdated": bool(self.group_tag_updated),
            "autopilotDeviceId": self.autopilot_id,
            "importRecordId": self.import_record_id,
            "errorCode": self.error_code if failed else None,
            "errorName": self.error_name if failed else None,
            "hint": hint_for(self.error_name) if failed else None,
            "message": self.message,
            "updatedAt": iso(self.updated_at),
        }


@dataclass(frozen=True)
class SerialReservation:
    """A serial number reserved by one job for its device ``index``: only that job imports it."""

    serial_number: str
    import_id: str
    index: int
    reserved_at: datetime
    etag: str | None = None


def partition(import_id: str) -> str:
    return f"{PARTITION_PREFIX}{import_id}"


def serial_key(serial_number: str) -> str:
    """The RowKey of a serial's reservation: case-insensitive, and hex because a serial may hold a
    ``/``, which a RowKey may not."""
    return SERIAL_PREFIX + serial_number.upper().encode().hex()


class ImportStore(TableStore):
    @store_errors
    def create(self, job: ImportJob, devices: list[DeviceRow]) -> ImportJob:
        """The job row first as ``creating`` (the retention sweep finds it if we stop half way),
        then the devices, then the job ``running``: a running job always has all its devices."""
        meta = self._table.create_entity(self._job_entity(replace(job, status=CREATING)))
        self.save_devices(job.id, devices)
        written = self.update(replace(job, etag=meta["etag"]))
        if written is None:
            raise StateStoreUnavailable(f"import {job.id}: its job row changed while it was created")
        return written

    @store_errors
    def job(self, import_id: str) -> ImportJob | None:
        try:
            entity = self._table.get_entity(partition_key=partition(import_id), row_key=JOB_ROW)
        except ResourceNotFoundError as exc:
            if table_missing(exc):
                raise
            return None
        return from_row(ImportJob, entity, skip=("id", "etag"), id=import_id, etag=entity.metadata.get("etag"))

    @store_errors
    def devices(self, import_id: str) -> list[DeviceRow]:
        rows = self._table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": partition(import_id), "lo": DEVICE_PREFIX, "hi": DEVICE_PREFIX[:-1] + "."},
        )
        return sorted((from_row(DeviceRow, row) for row in rows), key=lambda d: d.index)

    @store_errors
    def update(self, job: ImportJob) -> ImportJob | None:
        """Write the job row if nobody changed it since it was read; None if somebody did."""
        try:
            meta = self._table.update_entity(self._job_entity(job), mode=UpdateMode.REPLACE, etag=job.etag,
                                             match_condition=MatchConditions.IfNotModified)
        except CHANGED_OR_GONE:  # changed, or gone, since it was read
            return None
        return replace(job, etag=meta["etag"])

    @store_errors
    def save_devices(self, import_id: str, devices: list[DeviceRow]) -> None:
        rows = [self._device_entity(import_id, d) for d in devices]
        for start in range(0, len(rows), BATCH):
            self._table.submit_transaction([("upsert", row, {"mode": UpdateMode.REPLACE}) for row in rows[start:start + BATCH]])

    @store_errors
    def running(self) -> list[ImportJob]:
        """Every running job (one query; the watcher looks for overdue steps)."""
        rows = self._table.query_entities("RowKey eq @row and status eq @status",
                                          parameters={"row": JOB_ROW, "status": RUNNING})
        return [from_row(ImportJob, row, skip=("id", "etag"), id=row["PartitionKey"][len(PARTITION_PREFIX):],
                         etag=row.metadata.get("etag")) for row in rows]

    @store_errors
    def device(self, import_id: str, index: int) -> DeviceRow | None:
        """One device row of a job (the job that reserved a serial, as another job reads it)."""
        try:
            entity = self._table.get_entity(partition_key=partition(import_id), row_key=f"{DEVICE_PREFIX}{index:04d}")
        except ResourceNotFoundError as exc:
            if table_missing(exc):
                raise
            return None
        return from_row(DeviceRow, entity)

    @store_errors
    def reserve(self, serial_number: str, import_id: str, index: int, now: datetime) -> SerialReservation:
        """Reserve a serial for this job's device if no job holds it (insert-if-absent). Returns
        the reservation as it stands: this job's, or the one of the job that holds it."""
        wanted = SerialReservation(serial_number.upper(), import_id, index, now)
        for _ in range(3):  # a reservation released between our insert and our read: insert again
            try:
                meta = self._table.create_entity(self._reservation_entity(wanted))
                return replace(wanted, etag=meta["etag"])
            except ResourceExistsError:
                held = self._reservation(serial_number)
                if held is not None:
                    return held
        raise StateStoreUnavailable(f"the reservation of serial number {serial_number} keeps changing")

    @store_errors
    def take_over(self, held: SerialReservation, import_id: str, index: int, now: datetime) -> SerialReservation | None:
        """Take a reservation whose job will not import the serial (If-Match); None if another job did first."""
        mine = SerialReservation(held.serial_number, import_id, index, now)
        try:
            meta = self._table.update_entity(self._reservation_entity(mine), mode=UpdateMode.REPLACE, etag=held.etag,
                                             match_condition=MatchConditions.IfNotModified)
        except CHANGED_OR_GONE:
            return None
        return replace(mine, etag=meta["etag"])

    @store_errors
    def release(self, import_id: str) -> int:
        """Delete the reservations this job still holds (it ended); those taken over stay. How many."""
        rows = self._table.query_entities("PartitionKey eq @pk and importId eq @id", parameters={"pk": SERIALS, "id": import_id},
                                          select=["PartitionKey", "RowKey"])
        released = 0
        for row in rows:
            try:
                self._table.delete_entity(row["PartitionKey"], row["RowKey"], etag=row.metadata["etag"],
                                          match_condition=MatchConditions.IfNotModified)
                released += 1
            except CHANGED_OR_GONE:
                pass  # taken over by another job meanwhile: it is that job's now
        return released

    def _reservation(self, serial_number: str) -> SerialReservation | None:
        try:
            entity = self._table.get_entity(partition_key=SERIALS, row_key=serial_key(serial_number))
        except ResourceNotFoundError:
            return None
        return from_row(SerialReservation, entity, skip=("etag",), etag=entity.metadata.get("etag"))

    def _reservation_entity(self, reservation: SerialReservation) -> dict[str, Any]:
        return to_row(reservation, SERIALS, serial_key(reservation.serial_number), skip=("etag",))

    def _job_entity(self, job: ImportJob) -> dict[str, Any]:
        return to_row(job, partition(job.id), JOB_ROW, skip=("id", "etag"))

    def _device_entity(self, import_id: str, device: DeviceRow) -> dict[str, Any]:
        return to_row(device, partition(import_id), f"{DEVICE_PREFIX}{device.index:04d}")


def new_import_id() -> str:
    return new_guid()


def summary_json(counts: dict[str, int]) -> str:
    return json.dumps(counts, separators=(",", ":"))
