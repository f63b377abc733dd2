"""The write budget in the tenant's state table, shared by every instance (the rules, and why,
are in shared/clients/budget.py; this is its storage)."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from .budget import (
    BUDGET_PARTITION,
    BudgetExhausted,
    BudgetRow,
    Grant,
    Limits,
    LocalBudget,
    decide,
    granted_under,
    paused,
    wait_for,
)
from .storage import TableStore, read_change_write, store_errors, table_missing


class SharedBudget(TableStore):
    """The tenant's budget in its state table (one row per area). Sync actions (``bulk=False``)
    draw on the reserve in this process; everything else claims from the row."""

    limits: Limits = Limits()

    def __init__(self, table: Any, limits: Limits | None = None, clock: Callable[[], float] = time.time):
        super().__init__(table)
        self.limits = limits or Limits()
        self.clock = clock  # wall-clock seconds: every instance's grants are compared in one row
        # The reserve, per process: its writes are bounded by the units' cooldowns anyway.
        self.local = LocalBudget(self.limits)

    def with_limits(self, limits: Limits) -> SharedBudget:
        budget = self.sibling(SharedBudget)
        budget.limits, budget.local = limits, LocalBudget(limits)
        return budget

    def take(self, area: str, count: int, *, bulk: bool = True, ticket: str | None = None) -> Grant:
        if not bulk:  # a sync action: counted in this process only (see budget.py, "Sync actions")
            return self.local.take(area, count, bulk=False)
        paused_left = self.local.paused_for(area)  # a 429 this process saw, even if its row write failed
        if paused_left:
            return Grant(0, paused_left)
        outcome: list[Grant] = []

        def change(row: BudgetRow) -> BudgetRow | None:
            grant, after = decide(row, self.limits, area, count, bulk, self.clock(), ticket)
            outcome[:] = [grant]
            return after

        read_change_write(lambda: self._read(area), change, lambda row: self._write(area, row), f"claim {area} writes",
                          attempts=8)
        return outcome[0]

    def granted_for(self, area: str, ticket: str) -> int | None:
        return granted_under(self._read(area).tickets, ticket, self.clock(), self.limits.ticket_seconds)

    def acquire(self, area: str, count: int = 1, *, bulk: bool = False, deadline: float | None = None) -> float:
        if not bulk:
            paused_left = self.local.paused_for(area)
            if paused_left:  # a pause this process knows of: sync actions wait for it too
                if deadline is not None and time.monotonic() + paused_left > deadline:
                    raise BudgetExhausted(f"Graph asked to wait {paused_left:.0f} s before the next write")
                time.sleep(paused_left)
        return wait_for(lambda: self.take(area, count, bulk=bulk), deadline)

    def pause(self, area: str, seconds: float) -> None:
        self.local.pause(area, seconds)
        read_change_write(lambda: self._read(area), lambda row: paused(row, seconds, self.clock(), self.limits.window),
                          lambda row: self._write(area, row), f"pause {area} writes", attempts=8)

    @store_errors
    def _read(self, area: str) -> BudgetRow:
        try:
            entity = self._table.get_entity(partition_key=BUDGET_PARTITION, row_key=area)
        except ResourceNotFoundError as exc:
            if table_missing(exc):
                raise
            return BudgetRow()
        grants = [(float(at), int(n)) for at, n in json.loads(entity.get("grants") or "[]")]
        tickets = {str(t): int(n) for t, n in json.loads(entity.get("tickets") or "{}").items()}
        return BudgetRow(grants, float(entity.get("pausedUntil") or 0), int(entity.get("strikes") or 0),
                         float(entity.get("lastThrottle") or 0), entity.metadata.get("etag"), tickets)

    @store_errors
    def _write(self, area: str, row: BudgetRow) -> BudgetRow | None:
        entity = {"PartitionKey": BUDGET_PARTITION, "RowKey": area,
                  # Rounded up to the millisecond: a grant is never forgotten earlier than it was made.
                  "grants": json.dumps([[math.ceil(at * 1000) / 1000, n] for at, n in row.grants]),
                  "tickets": json.dumps(row.tickets, separators=(",", ":")),
                  "pausedUntil": row.paused_until, "strikes": row.strikes, "lastThrottle": row.last_throttle}
        etag = self._create_or_replace(entity, row.etag)
        return None if etag is None else replace(row, etag=etag)
