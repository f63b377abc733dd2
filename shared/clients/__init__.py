"""The clients of what is outside the process: Graph (with its retries and write limiter), the
managed identity and tenant credentials, Table and Queue Storage plumbing, notifications, and
the transport (proxies, CA bundle) they share. Depends on ``common`` only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import face

if TYPE_CHECKING:
    from .batch import MAX_BATCH, BatchAnswer, BatchRequest, send_batch
    from .budget import DEVICES, Limits, WriteBudget, late, new_ticket
    from .graph import GraphClient, GraphResponse
    from .identity import TenantCredentials, make_credential
    from .notify import Notification, Notifier, ServiceNotifier
    from .queue import PendingQueue
    from .sharedbudget import SharedBudget
    from .signingkeys import SigningKeys
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
    "BatchAnswer",
    "BatchRequest",
    "CHANGED_OR_GONE",
    "CONFLICTS",
    "DEVICES",
    "GraphClient",
    "GraphResponse",
    "Limits",
    "MAX_BATCH",
    "Notification",
    "Notifier",
    "PendingQueue",
    "ServiceNotifier",
    "SharedBudget",
    "SigningKeys",
    "TableStore",
    "TenantCredentials",
    "WriteBudget",
    "from_row",
    "late",
    "make_credential",
    "new_ticket",
    "queue_client",
    "read_change_write",
    "send_batch",
    "store_errors",
    "table_client",
    "table_missing",
    "take",
    "to_row",
]

__getattr__ = face(__name__, {
    "BatchAnswer": "batch",
    "BatchRequest": "batch",
    "CHANGED_OR_GONE": "storage",
    "CONFLICTS": "storage",
    "DEVICES": "budget",
    "GraphClient": "graph",
    "GraphResponse": "graph",
    "Limits": "budget",
    "MAX_BATCH": "batch",
    "Notification": "notify",
    "Notifier": "notify",
    "PendingQueue": "queue",
    "ServiceNotifier": "notify",
    "SharedBudget": "sharedbudget",
    "SigningKeys": "signingkeys",
    "TableStore": "storage",
    "TenantCredentials": "identity",
    "WriteBudget": "budget",
    "from_row": "storage",
    "late": "budget",
    "make_credential": "identity",
    "new_ticket": "budget",
    "queue_client": "storage",
    "read_change_write": "storage",
    "send_batch": "batch",
    "store_errors": "storage",
    "table_client": "storage",
    "table_missing": "storage",
    "take": "storage",
    "to_row": "storage",
})
