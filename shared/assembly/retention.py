"""Retention: the sweep that keeps the state table from growing forever.

Four kinds of rows would otherwise stay for good:

- history rows (``history-<inverted ticks>-…`` in a unit's partition): deleted once older than
  ``HISTORY_RETENTION_DAYS``;
- ask rows (``ask-<pendingId>-…``): deleted once their pending sync is no longer the unit's
  ``pendingId`` and they are older than ``ASK_GRACE`` (a day);
- operation rows (partition ``op-<id>``): deleted a day (``OPERATION_GRACE``) after their
  deadline, or a day after they finished. Polling such an operation then answers 404;
- Autopilot import jobs (partition ``import-<id>``: the job and its devices, hardware hashes
  included): deleted ``IMPORT_GRACE`` (7 days) after they finished. Their status URL then
  answers 404; the outcome stays in the notification and the log.

Each sweep does bounded work: at most ``limit`` deletes (``SWEEP_LIMIT`` by default), each kind
read with one query that returns only keys (``limit`` rows at most), and deletes batched per
partition in entity-group transactions of at most 100. A backlog (the first sweep after an
upgrade) is worked off over the following ticks. Two instances sweeping at once is harmless: a
row deleted by one is a 404 for the other, which leaves the rest of that batch to the next tick.
"""
from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import HttpResponseError

from ..clients import TableStore, store_errors
from ..common import Clock, StateStoreUnavailable, telemetry
from ..engine import ASK_PREFIX, HISTORY_PREFIX, MAX_TICKS, OPERATION_ROW, STATE_ROW

log = logging.getLogger(__name__)

SWEEP_LIMIT = 200  # deletes per sweep (watcher tick): a few seconds of table round trips at most
BATCH = 100  # Table Storage's limit of operations in one entity-group transaction
ASK_GRACE = timedelta(days=1)
OPERATION_GRACE = timedelta(days=1)
IMPORT_GRACE = timedelta(days=7)  # long enough to look a job up after a weekend; hashes are not kept for good


@dataclass(frozen=True)
class Swept:
    """What one sweep deleted."""

    asks: int = 0
    operations: int = 0
    history: int = 0
    imports: int = 0  # rows of finished import jobs (job and device rows)

    @property
    def total(self) -> int:
        return self.asks + self.operations + self.history + self.imports


def history_key_before(when: datetime) -> str:
    """The smallest history RowKey of an attempt made before ``when`` (newest first, so every
    RowKey from here up to the end of the prefix is older)."""
    ticks = int(when.timestamp() * 10_000_000)
    return f"{HISTORY_PREFIX}{MAX_TICKS - ticks + 1:019d}"


class RetentionStore(TableStore):
    """The sweep's table operations, on the state table (shared by units and operations)."""

    @classmethod
    def of(cls, store: TableStore) -> RetentionStore:
        return store.sibling(cls)

    def sweep(self, now: datetime, retention_days: int, limit: int = SWEEP_LIMIT) -> Swept:
        """Delete what has expired, at most ``limit`` rows."""
        asks = self.sweep_asks(now - ASK_GRACE, limit)
        operations = self.sweep_operations(now - OPERATION_GRACE, limit - asks)
        history = self.sweep_history(now - timedelta(days=retention_days), limit - asks - operations)
        imports = self.sweep_imports(now - IMPORT_GRACE, limit - asks - operations - history)
        return Swept(asks, operations, history, imports)

    @store_errors
    def sweep_imports(self, before: datetime, limit: int) -> int:
        """Import jobs that finished before ``before`` (or whose creation stopped half way before
        it): their device rows first, the job row last, so that a sweep cut short leaves the job to
        be found again by the next one."""
        from ..onboarding import CREATING, JOB_ROW  # the import jobs' module, loaded only when a sweep runs

        deleted = 0
        # Spaces around the parentheses: the SDK substitutes @names word by word.
        query = "RowKey eq @row and ( finishedAt lt @before or ( status eq @creating and createdAt lt @before ) )"
        for job in self._keys(query, {"row": JOB_ROW, "before": before, "creating": CREATING}, limit):
            room = limit - deleted
            devices = self._keys("PartitionKey eq @pk and RowKey ne @row", {"pk": job["PartitionKey"], "row": JOB_ROW}, room)
            if len(devices) >= room:  # no room for the job row: the next sweep finishes this job
                return deleted + self._delete(devices)
            deleted += self._delete(devices) + self._delete([job])
        return deleted

    @store_errors
    def sweep_history(self, before: datetime, limit: int) -> int:
        """History rows of attempts made before ``before``, in any partition."""
        rows = self._keys("RowKey ge @lo and RowKey lt @hi",
                          {"lo": history_key_before(before), "hi": HISTORY_PREFIX[:-1] + "."}, limit)
        return self._delete(rows)

    @store_errors
    def sweep_asks(self, before: datetime, limit: int) -> int:
        """Ask rows made before ``before`` whose pending sync is no longer the unit's pending one."""
        rows = self._keys("RowKey ge @lo and RowKey lt @hi and askedAt lt @before",
                          {"lo": ASK_PREFIX, "hi": ASK_PREFIX[:-1] + ".", "before": before}, limit)
        if not rows:
            return 0
        # One query for the units' current pending ids (state rows only).
        current = {
            (row["PartitionKey"], row.get("pendingId"))
            for row in self._table.query_entities("RowKey eq @row", parameters={"row": STATE_ROW},
                                                  select=["PartitionKey", "pendingId"])
        }
        stale = [r for r in rows if (r["PartitionKey"], _pending_id_of(r["RowKey"])) not in current]
        return self._delete(stale)

    @store_errors
    def sweep_operations(self, before: datetime, limit: int) -> int:
        """Operations whose deadline, or whose finish, was before ``before``."""
        return self._delete(self._keys("RowKey eq @row and (deadline lt @before or finishedAt lt @before )",
                                       {"row": OPERATION_ROW, "before": before}, limit))

    def _keys(self, query: str, parameters: dict[str, Any], limit: int) -> list[dict[str, str]]:
        """At most ``limit`` matching rows, keys only, without asking for a page beyond them."""
        if limit <= 0:
            return []
        rows = self._table.query_entities(query, parameters=parameters, select=["PartitionKey", "RowKey"],
                                          results_per_page=min(limit, 1000))
        return [{"PartitionKey": r["PartitionKey"], "RowKey": r["RowKey"]} for r in itertools.islice(rows, limit)]

    def _delete(self, rows: Iterable[dict[str, str]]) -> int:
        """Delete ``rows``: per partition, in transactions of at most BATCH. Returns how many."""
        partitions: dict[str, list[dict[str, str]]] = defaultdict(list)
        for row in rows:
            partitions[row["PartitionKey"]].append(row)
        deleted = 0
        for partition, keys in partitions.items():
            for start in range(0, len(keys), BATCH):
                chunk = keys[start:start + BATCH]
                if len(chunk) == 1:  # one row needs no transaction (and a 404 is no error)
                    self._table.delete_entity(chunk[0]["PartitionKey"], chunk[0]["RowKey"])
                    deleted += 1
                    continue
                try:
                    self._table.submit_transaction([("delete", key) for key in chunk])
                except HttpResponseError as exc:
                    if exc.status_code != 404 and "ResourceNotFound" not in str(exc):
                        raise
                    # Another sweeper got to some of these first; the rest go next time.
                    log.info("sweep: rows in %s were already deleted; leaving the batch to the next sweep", partition)
                    continue
                deleted += len(chunk)
        return deleted


def _pending_id_of(row_key: str) -> str:
    """``ask-<pendingId>-<id>`` → pendingId (pending ids are hex, without dashes)."""
    return row_key[len(ASK_PREFIX):].split("-", 1)[0]


class Retention:
    """The watcher's sweep for one service (its tenant's table): given the state store, the clock,
    HISTORY_RETENTION_DAYS and the tenant it reports for."""

    def __init__(self, store: TableStore, clock: Clock, retention_days: int, tenant: str | None):
        self.store = store
        self.clock = clock
        self.retention_days = retention_days
        self.tenant = tenant

    def sweep(self, limit: int = SWEEP_LIMIT) -> Swept:
        """Delete expired rows: history older than HISTORY_RETENTION_DAYS,
        asks of pending syncs that are over, operations a day past their deadline or finish. At
        most ``limit`` deletes. A Table Storage fault is logged, not raised: the next tick sweeps."""
        try:
            swept = RetentionStore.of(self.store).sweep(self.clock(), self.retention_days, limit)
        except StateStoreUnavailable as exc:
            log.warning("sweep skipped: %s", exc.message)
            return Swept()
        if swept.total:
            telemetry.emit("watch", tenant=self.tenant, outcome="swept", counts={
                "history": swept.history, "asks": swept.asks, "operations": swept.operations, "imports": swept.imports})
        return swept
