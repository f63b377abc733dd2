"""The clients of what is outside the process: Graph (with its retries and write limiter), the
managed identity and tenant credentials, Table and Queue Storage plumbing, notifications, and
the transport (proxies, CA bundle) they share. Depends on ``common`` only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import face

if TYPE_CHECKING:
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

__getattr__ = face(__name__, {
    "CHANGED_OR_GONE": "storage",
    "CONFLICTS": "storage",
    "GraphClient": "graph",
    "GraphResponse": "graph",
    "Notices": "notify",
    "Notification": "notify",
    "Notifier": "notify",
    "TableStore": "storage",
    "TenantCredentials": "identity",
    "from_row": "storage",
    "make_credential": "identity",
    "queue_client": "storage",
    "read_change_write": "storage",
    "store_errors": "storage",
    "table_client": "storage",
    "table_missing": "storage",
    "take": "storage",
    "to_row": "storage",
})
