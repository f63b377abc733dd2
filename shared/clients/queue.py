"""Delayed queue messages (pending syncs, import job steps, the tenant fan-out): Azure Storage
queues, whose visibility timeout is the platform's own delayed delivery (up to 7 days)."""
from __future__ import annotations

import math
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

from ..common import StateStoreUnavailable

MAX_VISIBILITY = timedelta(days=7)  # the queue service's limit


class Message(Protocol):
    """A queue message: its body, and when it should become visible."""

    @property
    def scheduled_at(self) -> datetime: ...

    def to_json(self) -> str: ...


class PendingQueue:
    """A queue of delayed messages (pending syncs, import job steps). Its client is made on first use: most invocations never defer,
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

    def schedule(self, fire: Message, now: datetime) -> None:
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

    def _send(self, fire: Message, delay: timedelta) -> None:
        self._queue.send_message(fire.to_json(), visibility_timeout=math.ceil(delay.total_seconds()))
