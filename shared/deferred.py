"""Deferred syncs: "make sure a sync runs as soon as it may".

A caller inside the cooldown (or the timer) asks with ``defer``; the asks for one unit become one
pending sync, recorded in the unit's state row (``pendingId``, ``pendingAt``…), and one Azure
Storage queue message whose visibility is delayed to ``pendingAt``. The queue-triggered function
fires it then, through the normal claim, so it can never cause a second sync in a window.

Why a storage queue: it is the platform's own delayed delivery (visibility timeout up to 7
days), survives restarts and scale-out, needs no process waiting or polling, and the Functions
host already watches queues for us. A message delivered twice, or one left over after another
caller's sync satisfied the asks, finds no matching ``pendingId`` in the row and does nothing.
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

from .errors import StateStoreUnavailable
from .model import iso

# A pending sync that Graph keeps refusing (503s, 429s) is retried with back-off for this long
# after its first due time, then given up (shown in GET /api/sync/status, notified as failed).
DEFERRED_BUDGET = timedelta(hours=1)
BACKOFF_FIRST, BACKOFF_MAX = timedelta(seconds=10), timedelta(minutes=5)
# A pending sync whose time passed this long ago without firing (its message was lost to the
# poison queue, say) is replaced by the next ask rather than joined.
STALE_PENDING = timedelta(minutes=5)
MAX_VISIBILITY = timedelta(days=7)  # the queue service's limit


def deferred_backoff(refusals: int, retry_after_seconds: float | None = None) -> timedelta:
    """How long to wait before firing again: Graph's Retry-After when it gave one (already
    sanitised), else 10 s doubling with each refusal, at most 5 minutes."""
    if retry_after_seconds:
        return timedelta(seconds=retry_after_seconds)
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(refusals, 16))


@dataclass(frozen=True)
class PendingFire:
    """The queue message that fires a pending sync."""

    unit_key: str
    target: str
    item_id: str | None
    pending_id: str
    scheduled_at: datetime
    generation: int = 0  # the pending sync's reschedule count when sent: older messages are stale

    def to_json(self) -> str:
        return json.dumps({"unitKey": self.unit_key, "target": self.target, "itemId": self.item_id,
                           "pendingId": self.pending_id, "scheduledAt": iso(self.scheduled_at),
                           "generation": self.generation})

    @classmethod
    def from_json(cls, text: str) -> "PendingFire":
        data: dict[str, Any] = json.loads(text)
        return cls(data["unitKey"], data["target"], data.get("itemId"), data["pendingId"],
                   datetime.fromisoformat(data["scheduledAt"].replace("Z", "+00:00")), int(data.get("generation", 0)))


class PendingQueue:
    """The queue of pending syncs. Its client is made on first use: most invocations never defer,
    and azure-storage-queue is a noticeable share of a cold start."""

    def __init__(self, make_client: Callable[[], Any]):
        self._make_client = make_client
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def _queue(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def schedule(self, fire: PendingFire, now: datetime) -> None:
        """Send the message, invisible until ``fire.scheduled_at`` (creating the queue on first use)."""
        delay = min(MAX_VISIBILITY, max(timedelta(0), fire.scheduled_at - now))
        try:
            try:
                self._send(fire, delay)
            except ResourceNotFoundError:
                try:
                    self._queue.create_queue()
                except ResourceExistsError:
                    pass
                self._send(fire, delay)
        except AzureError as exc:
            raise StateStoreUnavailable(
                f"Queue Storage ({self._queue.queue_name}) is unavailable: {type(exc).__name__}"
            ) from exc

    def _send(self, fire: PendingFire, delay: timedelta) -> None:
        self._queue.send_message(fire.to_json(), visibility_timeout=math.ceil(delay.total_seconds()))


def queue_client(storage: Any, queue_name: str, credential_factory: Callable[[str | None], Any]) -> Any:
    from azure.storage.queue import QueueClient, QueueServiceClient, TextBase64DecodePolicy, TextBase64EncodePolicy

    from .transport import azure_options

    # Base64, as the Functions host's queue trigger expects by default.
    codecs: dict[str, Any] = dict(message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy(),
                                  connection_timeout=5, read_timeout=15, retry_total=2)
    if storage.connection_string:
        # The SDK parses the connection string; its endpoint decides the proxy settings.
        endpoint = QueueServiceClient.from_connection_string(storage.connection_string).url
        return QueueClient.from_connection_string(storage.connection_string, queue_name, **codecs, **azure_options(endpoint))
    if not storage.queue_service_uri:
        raise StateStoreUnavailable("no queue endpoint: set AzureWebJobsStorage__queueServiceUri or __accountName")
    credential = credential_factory(storage.client_id if storage.use_managed_identity else None)
    return QueueClient(storage.queue_service_uri, queue_name, credential=credential, **codecs,
                       **azure_options(storage.queue_service_uri))
