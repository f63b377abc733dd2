"""Cooldown, lease and history in Azure Table Storage.

One partition per sync unit (``autopilot``, ``exchange-<guid>``) holds:
- the state row (RowKey ``state``): ``nextAllowedAt``, the in-flight lease, the last outcome;
- history rows (RowKey ``history-<inverted ticks>-<id>``, newest first): one per attempt.

The guarantee "at most one Graph sync per unit per cooldown window" rests on the table's
optimistic concurrency: a claim is an insert-if-absent or an update with ``If-Match`` on the
ETag that was read, so of any number of concurrent claimers exactly one wins. The outcome and
its history row are written in one entity-group transaction (same partition), so no attempt is
recorded without its outcome or vice versa.

Round trips: a refusal is one read; a granted sync is read, claim, commit (three).
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode

from ..clients import (
    CHANGED_OR_GONE,
    CONFLICTS,
    TableStore,
    from_row,
    read_change_write,
    store_errors,
    table_missing,
    take,
    to_row,
)
from ..common import StateStoreUnavailable, as_utc, new_hex_id

log = logging.getLogger(__name__)

STATE_ROW = "state"
HISTORY_PREFIX = "history-"
ASK_PREFIX = "ask-"  # one row per caller who joined a pending (deferred) sync
MAX_TICKS = 10**19 - 1  # inverted so that the newest history row sorts first
HISTORY_READERS = 8  # units whose history rows are read at once (GET /api/sync/history)
_T = TypeVar("_T")


@dataclass(frozen=True)
class UnitState:
    """The state row of one unit as read, with the ETag that a claim must match."""

    key: str
    etag: str | None = None  # None: no row yet
    target: str | None = None
    item_id: str | None = None
    next_allowed_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    last_outcome: str | None = None
    last_attempt_at: datetime | None = None
    last_started_at: datetime | None = None
    last_http_status: int | None = None
    last_graph_request_id: str | None = None
    last_client_request_id: str | None = None
    last_message: str | None = None
    last_error_code: str | None = None
    # Set when a sync starts; cleared by whoever first sees Graph report it finished.
    completion_pending: bool | None = None
    last_completed_at: datetime | None = None
    last_sync_status: str | None = None
    # A deferred sync waiting for the window to end (shared/engine/deferred.py); cleared by any sync that starts.
    pending_id: str | None = None
    pending_at: datetime | None = None
    pending_since: datetime | None = None
    pending_asked_by: str | None = None
    pending_reschedules: int | None = None
    pending_deadline: datetime | None = None  # after this, Graph's refusals give the pending sync up
    # The last pending sync that was given up, and why (shown in GET /api/sync/status).
    pending_failed_at: datetime | None = None
    pending_failure: str | None = None
    # The claim in flight (pessimistic): who claimed, when, for which sync type. A claim whose
    # lease expired with these still set never recorded its outcome; the next reader records it.
    claim_at: datetime | None = None
    claim_by: str | None = None
    claim_sync_type: str | None = None

    def without_pending(self) -> UnitState:
        return replace(self, pending_id=None, pending_at=None, pending_since=None,
                       pending_asked_by=None, pending_reschedules=None, pending_deadline=None)

    def without_claim(self) -> UnitState:
        return replace(self, lease_owner=None, lease_expires_at=None, claim_at=None, claim_by=None, claim_sync_type=None)

    def to_entity(self) -> dict[str, Any]:
        return to_row(self, self.key, STATE_ROW, skip=("key", "etag"))

    @classmethod
    def from_entity(cls, key: str, entity: Any) -> UnitState:
        return from_row(cls, entity, skip=("key", "etag"), key=key, etag=entity.metadata.get("etag"))


@dataclass(frozen=True)
class Lease:
    state: UnitState  # the row as it stands after the claim; its etag is the lease's
    owner: str
    expires_at: datetime


@dataclass(frozen=True)
class Attempt:
    """One attempt that got past the claim; becomes a history row."""

    attempt_at: datetime
    finished_at: datetime
    trigger: str
    caller: str
    outcome: str
    claimed_caller: str | None = None  # what a key holder's headers said (shared/api/callerauth.py)
    http_status: int | None = None
    graph_request_id: str | None = None
    client_request_id: str | None = None
    duration_ms: int | None = None
    error: str | None = None
    sync_type: str | None = None
    next_allowed_at: datetime | None = None
    # True when Graph may have received the POST without our seeing its answer (timeout).
    ambiguous: bool | None = None
    # The claim's lease owner: the row key is derived from it, so that the attempt is one row
    # whether its holder records it late or the next reader records it as unknown.
    attempt_id: str | None = None

    def to_entity(self, key: str) -> dict[str, Any]:
        ticks = int(self.attempt_at.timestamp() * 10_000_000)
        suffix = (self.attempt_id or new_hex_id())[:12]
        return to_row(self, key, f"{HISTORY_PREFIX}{MAX_TICKS - ticks:019d}-{suffix}", skip=("attempt_id",))


@dataclass(frozen=True)
class HistoryRow:
    """One recorded attempt (a history row) with the unit it was made for, as its state row names it."""

    key: str  # the unit's partition: ``autopilot``, ``exchange-<guid>``
    target: str
    item_id: str | None
    attempt: Attempt
    row_key: str  # ``history-<inverted ticks>-<id>``: sorts newest first, across units too

    @classmethod
    def from_entity(cls, unit: UnitState, entity: Any) -> HistoryRow:
        return cls(unit.key, unit.target or unit.key, unit.item_id,
                   from_row(Attempt, entity, skip=("attempt_id",), attempt_id=None), str(entity["RowKey"]))


# What a sync attempt decides; everything else on the row belongs to whoever wrote it.
_OUTCOME_FIELDS = ("last_outcome", "last_attempt_at", "last_http_status", "last_graph_request_id",
                   "last_client_request_id", "last_message", "last_error_code")
_STARTED_FIELDS = ("last_started_at", "completion_pending")


def _merge(current: UnitState, outcome: UnitState, lease: Lease, definite: bool = True) -> UnitState:
    """Our outcome on top of a row that others changed while our sync ran.

    Our lease is released (another instance's is kept), ``nextAllowedAt`` never moves backwards,
    and a pending deferred sync stays unless it was asked for before this sync began."""
    started = outcome.last_outcome == "started"
    fields = {f: getattr(outcome, f) for f in _OUTCOME_FIELDS + (_STARTED_FIELDS if started else ())}
    ours = current.lease_owner == lease.owner
    # While our claim stands, its pessimistic nextAllowedAt is ours to replace; otherwise it only
    # ever moves forward.
    fields["next_allowed_at"] = outcome.next_allowed_at if ours else \
        max((t for t in (current.next_allowed_at, outcome.next_allowed_at) if t), default=None)
    merged = replace(current, **fields)
    if ours:
        merged = merged.without_claim()
    answered = current.pending_since is not None and outcome.last_attempt_at is not None \
        and current.pending_since <= outcome.last_attempt_at
    return merged.without_pending() if started and definite and answered else merged


class StateStore(TableStore):

    @store_errors
    def read(self, key: str) -> UnitState:
        try:
            entity = self._table.get_entity(partition_key=key, row_key=STATE_ROW)
        except ResourceNotFoundError as exc:
            if table_missing(exc):
                raise
            return UnitState(key=key)
        return UnitState.from_entity(key, entity)

    @store_errors
    def claim(
        self, state: UnitState, now: datetime, lease_seconds: int, hold_until: datetime | None = None,
        claim_by: str | None = None, claim_sync_type: str | None = None, **identity: Any,
    ) -> Lease | None:
        """Take the in-flight lease if nobody changed the row since ``state`` was read.

        The claim is pessimistic: it also moves ``nextAllowedAt`` to ``hold_until`` (the end of the
        window a sync sent under this lease could start), so that if the outcome is never recorded
        the unit stays closed for that window. The commit puts the real value back.
        Returns None when another caller got there first (the race is normal, not an error).
        """
        owner = new_hex_id()
        expires = now + timedelta(seconds=lease_seconds)
        hold = max((t for t in (state.next_allowed_at, hold_until) if t), default=None)
        claimed = replace(state, lease_owner=owner, lease_expires_at=expires, next_allowed_at=hold,
                          claim_at=now, claim_by=claim_by, claim_sync_type=claim_sync_type, **identity)
        try:
            if state.etag is None:
                meta = self._table.create_entity(claimed.to_entity())
            else:
                meta = self._table.update_entity(
                    claimed.to_entity(),
                    mode=UpdateMode.REPLACE,
                    etag=state.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except CONFLICTS:
            # Usually a lost race. But if our write landed and only its answer was lost, the
            # client's retry sees our own change as a conflict: the row then names us.
            current = self.read(state.key)
            if current.lease_owner == owner and current.etag:
                return Lease(state=current, owner=owner, expires_at=expires)
            return None
        except ResourceNotFoundError as exc:
            if table_missing(exc):
                raise
            return None  # the row vanished under us: treat like a lost race
        return Lease(state=replace(claimed, etag=meta["etag"]), owner=owner, expires_at=expires)

    @store_errors
    def commit(self, lease: Lease, outcome: UnitState, attempt: Attempt) -> None:
        """Release the lease, record the outcome and append the attempt, atomically.

        ``outcome`` is the new state row, its lease cleared. If the row changed during the sync (a
        deferred ask, the completion watcher, or another instance after our lease expired), the
        attempt is still recorded: our outcome is merged into the current row (see ``_merge``).
        """
        history = attempt.to_entity(lease.state.key)

        def record(current: UnitState) -> UnitState | None:
            if current is lease.state:  # the first try: the row as our claim left it
                return replace(outcome, etag=lease.state.etag)
            if current.etag is None:
                raise StateStoreUnavailable(f"state row {lease.state.key} disappeared during a sync")
            if outcome.last_client_request_id and (current.last_client_request_id, current.last_attempt_at) == (
                outcome.last_client_request_id,
                outcome.last_attempt_at,
            ):
                return None  # our transaction landed; only its answer was lost
            log.info("state of %s changed during the sync; merged the outcome", lease.state.key)
            return replace(_merge(current, outcome, lease, definite=not attempt.ambiguous), etag=current.etag)

        def write(row: UnitState) -> UnitState | None:
            try:
                self.transact([
                    ("update", row.to_entity(),
                     {"mode": UpdateMode.REPLACE, "etag": row.etag, "match_condition": MatchConditions.IfNotModified}),
                    ("upsert", history, {"mode": UpdateMode.REPLACE}),
                ])
            except CONFLICTS:
                return None
            return row

        # After every lost write, the last one included, the row is read again: it may show that
        # our transaction landed (last_look).
        read_change_write(lambda: self.read(lease.state.key), record, write,
                          f"record the outcome of {lease.state.key}", current=lease.state, last_look=True)

    @store_errors
    def record_orphan(self, state: UnitState, attempt: Attempt) -> UnitState | None:
        """Record a claim that never recorded its own outcome, and clear it (keeping its
        pessimistic ``nextAllowedAt``). None if the row changed meanwhile (someone else did)."""
        cleared = replace(state.without_claim(), last_outcome=attempt.outcome, last_attempt_at=attempt.attempt_at,
                          last_message=attempt.error, last_http_status=None, last_graph_request_id=None,
                          last_client_request_id=None, last_error_code="OutcomeNotRecorded")
        try:
            result = self.transact([
                ("update", cleared.to_entity(),
                 {"mode": UpdateMode.REPLACE, "etag": state.etag, "match_condition": MatchConditions.IfNotModified}),
                ("upsert", attempt.to_entity(state.key), {"mode": UpdateMode.MERGE}),
            ])
        except CONFLICTS:
            return None
        etag = result[0].get("etag") if result and isinstance(result[0], dict) else None
        return replace(cleared, etag=etag) if etag else self.read(state.key)

    def change(
        self, key: str, change: Callable[[UnitState], UnitState | None], what: str, attempts: int = 5,
        current: UnitState | None = None,
    ) -> tuple[UnitState, UnitState] | None:
        """Read, change, write with If-Match; on a conflict read again and change again (see
        storage.read_change_write). Returns (before, after), or None when ``change`` found nothing
        to do; raises StateStoreUnavailable naming ``what`` if the row kept changing. ``current``,
        the row just read, saves the first read."""
        return read_change_write(lambda: self.read(key), change, self.update, f"{what} of {key}", attempts, current)

    @store_errors
    def update(self, state: UnitState) -> UnitState | None:
        """Write the row if nobody changed it since it was read; None if somebody did. A row read
        as absent (no ETag) is created, if it is still absent."""
        try:
            if state.etag is None:
                meta = self._table.create_entity(state.to_entity())
                return replace(state, etag=meta["etag"])
            meta = self._table.update_entity(
                state.to_entity(), mode=UpdateMode.REPLACE, etag=state.etag, match_condition=MatchConditions.IfNotModified
            )
        except CHANGED_OR_GONE:  # a row read as absent that appears meanwhile is a conflict too
            return None
        return replace(state, etag=meta["etag"])

    @store_errors
    def add_ask(self, key: str, pending_id: str, caller: str, at: datetime) -> None:
        """Join a pending sync: an insert of its own, so that many joiners never contend."""
        self._table.create_entity({"PartitionKey": key, "RowKey": f"{ASK_PREFIX}{pending_id}-{new_hex_id()}",
                                   "caller": caller[:200], "askedAt": at})

    @store_errors
    def asks(self, key: str, pending_id: str, limit: int = 1000) -> list[tuple[datetime, str]]:
        """Who joined a pending sync, oldest first: the first ``limit`` (one round trip)."""
        prefix = f"{ASK_PREFIX}{pending_id}-"
        rows = self._table.query_entities("PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                                          parameters={"pk": key, "lo": prefix, "hi": prefix[:-1] + "."},
                                          select=["askedAt", "caller"], results_per_page=min(limit, 1000))
        return sorted((as_utc(row["askedAt"]), row["caller"]) for row in itertools.islice(rows, limit))

    @store_errors
    def states(self, key_prefix: str = "") -> list[UnitState]:
        """Every state row, or those whose key starts with ``key_prefix`` (one round trip)."""
        query, parameters = "RowKey eq @row", {"row": STATE_ROW}
        if key_prefix:
            query += " and PartitionKey ge @lo and PartitionKey lt @hi"
            parameters |= {"lo": key_prefix, "hi": key_prefix[:-1] + chr(ord(key_prefix[-1]) + 1)}
        rows = self._table.query_entities(query, parameters=parameters)
        return [UnitState.from_entity(row["PartitionKey"], row) for row in rows]

    @store_errors
    def history(self, key: str, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": key, "lo": HISTORY_PREFIX, "hi": HISTORY_PREFIX[:-1] + "."},
            results_per_page=limit,
        )
        return [dict(row) for row in take(rows, limit)]

    @store_errors
    def latest_history(self, limit: int) -> list[HistoryRow]:
        """The newest ``limit`` attempts of every unit, newest first: the units' state rows (one query), each
        unit's newest ``limit`` history rows (a query each, side by side), merged by RowKey (inverted ticks)."""
        units = self.states()
        with ThreadPoolExecutor(max_workers=max(1, min(HISTORY_READERS, len(units))), thread_name_prefix="history") as pool:
            found = pool.map(lambda unit: [HistoryRow.from_entity(unit, row) for row in self.history(unit.key, limit)], units)
            return sorted((row for rows in found for row in rows), key=lambda row: (row.row_key, row.key))[:limit]

    @store_errors
    def count_asks(self, key: str, pending_id: str, limit: int = 1000) -> int:
        """How many callers joined a pending sync, counted up to ``limit`` (one round trip for at
        most 1,000; only RowKeys come back)."""
        prefix = f"{ASK_PREFIX}{pending_id}-"
        rows = self._table.query_entities("PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                                          parameters={"pk": key, "lo": prefix, "hi": prefix[:-1] + "."},
                                          select=["RowKey"], results_per_page=min(limit, 1000))
        return sum(1 for _ in itertools.islice(rows, limit))  # islice: no request for a next page
