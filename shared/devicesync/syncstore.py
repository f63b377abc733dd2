"""Bulk device sync jobs in the state table: one partition per job (``devsync-<id>``) with the job
row (RowKey ``job``) and one row per device (``device-<nnnnnnn>``, by index).

The job row coordinates: its ``step`` names the one queue message allowed to act next, and a step
claims it with If-Match before touching Graph. A device row is ``pending`` until a step handles
it; it is written ``sending``, with the ticket of the budget claim it is about to make and its
place in that claim, before its syncDevice call. A later step that finds it so (its step died)
asks the budget what that ticket was granted: a row the grant did not cover was never sent
(``pending`` again); one it did cover may have reached Graph (``queued``, never sent again).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode

from ..clients import CHANGED_OR_GONE, TableStore, from_row, store_errors, table_missing, take, to_row

JOB_ROW = "job"
DEVICE_PREFIX = "device-"
PARTITION_PREFIX = "devsync-"
BATCH = 100  # Table Storage's limit of operations in one entity-group transaction
RUNNING, COMPLETED = "running", "completed"
RESOLVE, SYNC = "resolve", "sync"
PENDING, SENDING = "pending", "sending"
QUEUED, SKIPPED_RECENT, NOT_FOUND, NOT_SUPPORTED, FAILED = "queued", "skippedRecent", "notFound", "notSupported", "failed"
FINAL = (QUEUED, SKIPPED_RECENT, NOT_FOUND, NOT_SUPPORTED, FAILED)
COUNTED = (*FINAL, PENDING)  # the status's counts: pending includes sending


@dataclass(frozen=True)
class DeviceSyncJob:
    id: str
    created_at: datetime
    token_hash: str
    caller: str
    kind: str
    skip_minutes: int
    device_count: int  # device rows written so far (a filter or group job adds them as it resolves)
    filter: str | None = None
    group_id: str | None = None
    phase: str = SYNC
    next_link: str | None = None  # the resolve phase's next page
    status: str = RUNNING
    step: int = 0
    step_at: datetime | None = None
    step_owner: str | None = None
    step_until: datetime | None = None
    finished_at: datetime | None = None
    summary: str | None = None  # counts per state when finished (JSON)
    message: str | None = None  # the fault that held up the last step, if any
    refused: str | None = None  # why Graph refused the job's filter or group (no retry can help), if it did
    etag: str | None = None
    claimed_caller: str | None = None  # key mode: who the request's headers said asked (unverified)

    @property
    def job_id(self) -> str:
        return self.id

    @property
    def done(self) -> bool:
        return self.status != RUNNING

    def claimed(self, now: datetime) -> bool:
        return bool(self.step_owner) and self.step_until is not None and self.step_until > now

    def selector(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"kind": self.kind, "count": self.device_count, "skipSyncedWithinMinutes": self.skip_minutes}
        if self.filter:
            shown["filter"] = self.filter
        if self.group_id:
            shown["groupId"] = self.group_id
        return shown


@dataclass(frozen=True)
class DeviceRow:
    index: int
    state: str = PENDING
    device_id: str | None = None  # the Intune managed device id, once known
    serial_number: str | None = None
    azure_ad_device_id: str | None = None  # a group member, looked up by it
    device_name: str | None = None
    last_sync: str | None = None  # Graph's lastSyncDateTime when looked up
    resolved: bool = False  # looked up (or listed) in managedDevices
    error_code: str | None = None
    error_message: str | None = None
    updated_at: datetime | None = None
    ticket: str | None = None  # while ``sending``: the budget claim (shared/clients/budget.py) it goes under
    slot: int | None = None  # its place in that claim: the first ``granted`` of a claim's rows are sent

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"deviceId": self.device_id, "serialNumber": self.serial_number,
                                 "deviceName": self.device_name, "state": self.state, "lastSyncDateTime": self.last_sync}
        shown = {k: v for k, v in shown.items() if v is not None}
        if self.state == SENDING:
            shown["state"] = PENDING
        if self.error_code or self.error_message:
            shown["error"] = {"code": self.error_code or "", "message": self.error_message or ""}
        return shown


def partition(job_id: str) -> str:
    return f"{PARTITION_PREFIX}{job_id}"


def device_key(index: int) -> str:
    return f"{DEVICE_PREFIX}{index:07d}"


def tally(states: Iterable[str]) -> dict[str, int]:
    found = Counter(PENDING if s == SENDING else s for s in states)
    return {state: found.get(state, 0) for state in COUNTED}


class DeviceSyncStore(TableStore):
    @store_errors
    def create(self, job: DeviceSyncJob) -> DeviceSyncJob:
        meta = self._table.create_entity(self._job_entity(job))
        return replace(job, etag=meta["etag"])

    @store_errors
    def job(self, job_id: str) -> DeviceSyncJob | None:
        try:
            entity = self._table.get_entity(partition_key=partition(job_id), row_key=JOB_ROW)
        except ResourceNotFoundError as exc:
            if table_missing(exc):
                raise
            return None
        return from_row(DeviceSyncJob, entity, skip=("id", "etag"), id=job_id, etag=entity.metadata.get("etag"))

    @store_errors
    def update(self, job: DeviceSyncJob) -> DeviceSyncJob | None:
        """Write the job row if nobody changed it since it was read; None if somebody did."""
        try:
            meta = self._table.update_entity(self._job_entity(job), mode=UpdateMode.REPLACE, etag=job.etag,
                                             match_condition=MatchConditions.IfNotModified)
        except CHANGED_OR_GONE:
            return None
        return replace(job, etag=meta["etag"])

    @store_errors
    def save_devices(self, job_id: str, devices: list[DeviceRow]) -> None:
        """Upsert device rows, one entity-group transaction per BATCH rows."""
        rows = [to_row(d, partition(job_id), device_key(d.index)) for d in devices]
        for start in range(0, len(rows), BATCH):
            self.transact([("upsert", row, {"mode": UpdateMode.REPLACE}) for row in rows[start:start + BATCH]])

    @store_errors
    def in_state(self, job_id: str, state: str, limit: int) -> list[DeviceRow]:
        """At most ``limit`` device rows in ``state`` (the only rows a step reads)."""
        rows = self._table.query_entities("PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi and state eq @state",
                                          parameters={"pk": partition(job_id), "lo": DEVICE_PREFIX,
                                                      "hi": DEVICE_PREFIX[:-1] + ".", "state": state},
                                          results_per_page=min(limit, 1000))
        return [from_row(DeviceRow, row) for row in take(rows, limit)]

    @store_errors
    def page(self, job_id: str, first: int, size: int) -> list[DeviceRow]:
        """The device rows with index ``first`` to ``first + size - 1``."""
        rows = self._table.query_entities("PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                                          parameters={"pk": partition(job_id), "lo": device_key(first),
                                                      "hi": device_key(first + size)})
        return sorted((from_row(DeviceRow, row) for row in rows), key=lambda d: d.index)

    @store_errors
    def counts(self, job_id: str) -> dict[str, int]:
        """Devices per state, counted as the rows stream past (only their state is read)."""
        rows = self._table.query_entities("PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                                          parameters={"pk": partition(job_id), "lo": DEVICE_PREFIX,
                                                      "hi": DEVICE_PREFIX[:-1] + "."}, select=["state"])
        return tally(str(row.get("state")) for row in rows)

    @store_errors
    def running(self) -> list[DeviceSyncJob]:
        """Every running job (one query; the watcher looks for overdue steps)."""
        rows = self._table.query_entities("PartitionKey ge @lo and PartitionKey lt @hi and RowKey eq @row and status eq @status",
                                          parameters={"lo": PARTITION_PREFIX, "hi": PARTITION_PREFIX[:-1] + ".",
                                                      "row": JOB_ROW, "status": RUNNING})
        return [from_row(DeviceSyncJob, row, skip=("id", "etag"), id=row["PartitionKey"][len(PARTITION_PREFIX):],
                         etag=row.metadata.get("etag")) for row in rows]

    def _job_entity(self, job: DeviceSyncJob) -> dict[str, Any]:
        return to_row(job, partition(job.id), JOB_ROW, skip=("id", "etag"))
