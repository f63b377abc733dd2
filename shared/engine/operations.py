"""Long-running "sync and wait" operations, kept in the state table so any instance can answer
a poll.

A caller polls the operation's URL (the Location of a 202). Power Automate does not send a
custom connector's credentials when it follows a Location header, so the URL itself carries the
credential: an unguessable token (valet-key pattern). Only its SHA-256 is stored, it grants
reading this one operation's status and nothing else, and it expires with the operation.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from ..clients import TableStore, from_row, store_errors, table_missing, to_row
from ..common import iso, new_token, token_matches

OPERATION_ROW = "operation"


@dataclass(frozen=True)
class Operation:
    id: str
    target: str  # the unit's name: "autopilot", "exchange/<id>"
    unit_target: str
    item_id: str | None
    since: datetime  # when the sync was triggered
    deadline: datetime
    token_hash: str
    status: str = "running"  # then "completed", "failed" or "timedOut"
    last_sync_date_time: str | None = None
    sync_status: str | None = None
    message: str = ""
    finished_at: datetime | None = None
    tenant_id: str | None = None  # a registered customer tenant's sync (None: the app's own tenant)
    etag: str | None = None

    @property
    def done(self) -> bool:
        return self.status != "running"

    def to_json(self) -> dict[str, Any]:
        return {
            "operationId": self.id,
            "target": self.target,
            "status": self.status,
            "startedAt": iso(self.since),
            "deadline": iso(self.deadline),
            "finishedAt": iso(self.finished_at),
            "lastSyncDateTime": self.last_sync_date_time,
            "syncStatus": self.sync_status,
            "message": self.message,
            **({"tenantId": self.tenant_id} if self.tenant_id else {}),
        }

    def matches(self, token: str) -> bool:
        return token_matches(self.token_hash, token)


class OperationStore(TableStore):
    @store_errors
    def create(self, target: str, unit_target: str, item_id: str | None, since: datetime, deadline: datetime, message: str,
               tenant_id: str | None = None) -> tuple[Operation, str]:
        token, token_hash = new_token()
        operation = Operation(
            id=str(uuid.uuid4()), target=target, unit_target=unit_target, item_id=item_id,
            since=since, deadline=deadline, token_hash=token_hash, message=message, tenant_id=tenant_id,
        )
        meta = self._table.create_entity(self._entity(operation))
        return replace(operation, etag=meta["etag"]), token

    @store_errors
    def get(self, operation_id: str) -> Operation | None:
        try:
            entity = self._table.get_entity(partition_key=f"op-{operation_id}", row_key=OPERATION_ROW)
        except ResourceNotFoundError as exc:
            if table_missing(exc):
                raise
            return None
        operation = from_row(Operation, entity, skip=("id", "etag"), id=operation_id, etag=entity.metadata.get("etag"))
        return replace(operation, message=operation.message or "")

    @store_errors
    def finish(self, operation: Operation) -> None:
        """Record a final status; last writer wins (every poller computes the same answer)."""
        self._table.upsert_entity(self._entity(operation))

    def _entity(self, operation: Operation) -> dict[str, Any]:
        return to_row(operation, f"op-{operation.id}", OPERATION_ROW, skip=("id", "etag"))
