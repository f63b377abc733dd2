"""Autopilot import jobs in the state table: one partition per job (``import-<id>``) with the
job row (RowKey ``job``) and one row per device (``device-<nnnn>``).

The job row is what coordinates: its ``step`` names the one queue message allowed to act next
(an older or duplicated message finds another number and does nothing), and a step claims it
with ``If-Match`` before touching Graph, so that two deliveries of one message never act twice.
Device rows are written only by the step that holds the claim.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from .devices import Device
from .errors import StateStoreUnavailable
from .model import iso
from .onboarding import FAILED, FINAL, IMPORTING, counts, hint_for
from .storage import TableStore, from_row, store_errors, table_missing, to_row

JOB_ROW = "job"
DEVICE_PREFIX = "device-"
PARTITION_PREFIX = "import-"
BATCH = 100  # Table Storage's limit of operations in one entity-group transaction
CREATING, RUNNING, COMPLETED = "creating", "running", "completed"


@dataclass(frozen=True)
class ImportJob:
    id: str
    created_at: datetime
    deadline: datetime  # devices not final by then end timedOut
    token_hash: str  # the poll URL's valet token, hashed (shared/operations.py)
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

    @property
    def done(self) -> bool:
        return self.status != RUNNING

    def claimed(self, now: datetime) -> bool:
        return bool(self.step_owner) and self.step_until is not None and self.step_until > now

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


def partition(import_id: str) -> str:
    return f"{PARTITION_PREFIX}{import_id}"


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
        except (ResourceModifiedError, ResourceNotFoundError):
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

    def _job_entity(self, job: ImportJob) -> dict[str, Any]:
        return to_row(job, partition(job.id), JOB_ROW, skip=("id", "etag"))

    def _device_entity(self, import_id: str, device: DeviceRow) -> dict[str, Any]:
        return to_row(device, partition(import_id), f"{DEVICE_PREFIX}{device.index:04d}")


def new_import_id() -> str:
    return str(uuid.uuid4())


def summary_json(counts: dict[str, int]) -> str:
    return json.dumps(counts, separators=(",", ":"))
