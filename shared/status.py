"""Graph reads for ``GET /api/sync/status``: side by side, with a deadline, never joined.

Each enabled target's ``graph_status()`` and Intune's ``connectorStatus`` are read on a shared,
bounded pool. The status call waits for them until its deadline (``STATUS_DEADLINE_SECONDS``)
and answers with what it has; a read still running is reported ``Unavailable`` and left to
finish on its own (it ends within the Graph client's timeout and retries). Bounds:

- one read per (target, what) at a time: a status call that finds the same read still running
  from an earlier call waits for that one instead of starting another, so repeated calls against
  a hanging Graph add no threads and no Graph requests;
- at most ``MAX_READS`` reads in flight in the process (the pool's size), so every read that is
  started runs at once (nothing queues behind stragglers); a read that finds no free slot is not
  started and is reported ``Unavailable`` at once.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Hashable

# 6 targets + connectorStatus per status call; room for a few services (instances of the app
# object) in one process, each with at most one read per target in flight.
MAX_READS = 32


@dataclass(frozen=True)
class Unavailable:
    """A read with no answer in time (or not started: the pool was full)."""

    message: str


class Reads:
    """A bounded pool whose reads are shared by concurrent callers asking for the same thing."""

    def __init__(self, limit: int = MAX_READS):
        self.limit = limit
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="status-read")
        self._lock = threading.Lock()
        self._running: dict[Hashable, Future[Any]] = {}

    def start(self, key: Hashable, read: Callable[[], Any]) -> Future[Any] | None:
        """The running read for ``key``, or a new one; None when ``limit`` reads are in flight."""
        with self._lock:
            running = self._running.get(key)
            if running is not None:
                return running
            if len(self._running) >= self.limit:
                return None
            future = self._pool.submit(read)
            self._running[key] = future
        future.add_done_callback(lambda done: self._forget(key, done))
        return future

    def _forget(self, key: Hashable, done: Future[Any]) -> None:
        with self._lock:
            if self._running.get(key) is done:
                del self._running[key]

    def in_flight(self) -> int:
        with self._lock:
            return len(self._running)

    def start_all(self, reads: dict[str, tuple[Hashable, Callable[[], Any]]]) -> dict[str, Future[Any] | None]:
        """Start (or join) every read now; ``answers`` collects them."""
        return {name: self.start(key, read) for name, (key, read) in reads.items()}

    def answers(self, futures: dict[str, Future[Any] | None], timeout: float, deadline_seconds: float) -> dict[str, Any]:
        """Wait at most ``timeout`` seconds, never for stragglers beyond it. Per name: the read's
        value, the exception it raised, or ``Unavailable``."""
        pending = [f for f in futures.values() if f is not None]
        if pending:
            wait(pending, timeout=max(0.0, timeout))
        result: dict[str, Any] = {}
        for name, future in futures.items():
            if future is None:
                result[name] = Unavailable(f"not read: {self.limit} earlier Graph reads are still waiting for an answer")
            elif not future.done():
                result[name] = Unavailable(f"no answer from Graph within {deadline_seconds:g} s")
            elif future.exception() is not None:
                result[name] = future.exception()
            else:
                result[name] = future.result()
        return result


READS = Reads()
