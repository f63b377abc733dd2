"""The clients of what is outside the process: Graph (with its retries and write limiter), the
managed identity and tenant credentials, Table and Queue Storage plumbing, notifications, and
the transport (proxies, CA bundle) they share. Depends on ``common`` only.
"""
from __future__ import annotations

from .graph import GraphClient, GraphResponse
from .identity import TenantCredentials, make_credential
from .notify import Notices, Notification, Notifier
from .storage import (
    CHANGED_OR_GONE,
    CONFLICTS,
    TableStore,
    from_row,
    queue_client,
    read_change_write,
    store_errors,
    table_client,
    table_missing,
    take,
    to_row,
)

__all__ = [
    "CHANGED_OR_GONE",
    "CONFLICTS",
    "GraphClient",
    "GraphResponse",
    "Notices",
    "Notification",
    "Notifier",
    "TableStore",
    "TenantCredentials",
    "from_row",
    "make_credential",
    "queue_client",
    "read_change_write",
    "store_errors",
    "table_client",
    "table_missing",
    "take",
    "to_row",
]
