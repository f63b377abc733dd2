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

import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..common import Clock, UpstreamError, iso, telemetry
from .credentials import KINDS, CredentialsRead, CredentialsReport, read_credentials
from .decisions import in_cooldown, in_flight, orphaned_claim
from .health import Rating, rate, worst
from .state import StateStore, UnitState
from .targets import GraphView, Target, Unit, read_connector_status

if TYPE_CHECKING:
    from ..clients import GraphClient
    from ..common import Settings

# 6 targets + connectorStatus per status call; room for a few services (instances of the app
# object) in one process, each with at most one read per target in flight.
MAX_READS = 32
# The keys of Intune's connectorStatus and of the Apple credentials among the status call's Graph
# reads (no target has them).
_CONNECTOR_STATUS = "connectorStatus"
_CREDENTIALS = "credentials"


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


class StatusReader:
    """GET /api/sync/status and the timer's health ratings: local state next to Graph's own.

    A collaborator of the sync service (shared/assembly/service.py): it reads the state table (``store``)
    and each enabled target's Graph status (``targets``), Intune's connectorStatus (``graph``),
    rates them with ``settings``' thresholds at ``clock``'s now, and logs ``health`` events under
    ``tenant``. It changes nothing and calls no other part of the service."""

    def __init__(self, settings: Settings, graph: GraphClient, store: StateStore, targets: Mapping[str, Target],
                 clock: Clock, tenant: str | None = None):
        self.settings = settings
        self.graph = graph
        self.store = store
        self.targets = targets
        self.clock = clock
        self.tenant = tenant

    def status(self) -> dict[str, Any]:
        """Local state next to Graph's own and a health rating, per enabled target and unit.

        Graph is read side by side (READS, above) while the table is read, and the answer
        comes within STATUS_DEADLINE_SECONDS with what is known: a target whose Graph read has
        not answered by then is reported like a Graph fault, inline and rated unhealthy (error
        code ``Unavailable``), and ``connectorStatus`` is null. Table reads: the state rows (one
        query) and one keys-only count per pending sync; no history."""
        started = time.monotonic()
        now = self.clock()
        reads = READS.start_all({
            **self._graph_reads(),
            _CONNECTOR_STATUS: ((self.graph, _CONNECTOR_STATUS), lambda: read_connector_status(self.graph)),
            _CREDENTIALS: ((self.graph, _CREDENTIALS), lambda: read_credentials(self.graph)),
        })
        local = {s.key: s for s in self.store.states()}
        asks = {key: 1 + self.store.count_asks(key, s.pending_id) for key, s in local.items() if s.pending_id}
        answers = self._answers(reads, started)
        targets: list[dict[str, Any]] = []
        for name in self.targets:
            graph = self._graph_json(name, answers[name], now)
            rows = [s for key, s in local.items() if key == name or key.startswith(f"{name}-")]
            targets.append(
                {
                    "target": name,
                    "health": worst([g["health"]["rating"] for g in graph]),
                    "units": [_state_json(s, now, asks.get(s.key, 0)) for s in sorted(rows, key=lambda s: s.key)],
                    "graph": graph,
                }
            )
        connectors = answers[_CONNECTOR_STATUS]
        if isinstance(connectors, BaseException):
            raise connectors
        credentials = credentials_json(answers[_CREDENTIALS], now, self.settings.token_expiry_warning_days)
        return {
            "now": iso(now),
            "health": worst([t["health"] for t in targets] + [a["rating"] for a in credentials["credentials"]]),
            "targets": targets,
            "credentials": credentials,
            "connectorStatus": None if isinstance(connectors, Unavailable) else connectors,
        }

    def report_health(self) -> dict[str, str]:
        """Rate every unit from Graph's own account and log each rating once (a ``health``
        event: the workbook's health column and the alert on unhealthy units read them). The
        timer's part, after its syncs: Graph is read as for GET /api/sync/status, side by side
        and within STATUS_DEADLINE_SECONDS. A target Graph did not list is rated unhealthy under
        the unit names its state rows know (the names every other rating uses). Unit -> rating."""
        started, now = time.monotonic(), self.clock()
        answers = self._answers(READS.start_all(self._graph_reads()), started)
        ratings: dict[str, str] = {}
        for name, answer in answers.items():
            for rated in self._rated(name, answer, now):
                units = [rated.unit] if rated.error is None or not self.targets[name].per_item \
                    else [Unit.of_state(s).name for s in self.store.states(f"{name}-")]
                for unit in units:
                    telemetry.emit("health", _LEVELS.get(rated.rating.rating, logging.ERROR), target=name, unit=unit,
                                   tenant=self.tenant, health=rated.rating.rating,
                                   lastSyncAt=rated.view.last_success if rated.view else None,
                                   errorCode=rated.error[0] if rated.error else None, message="; ".join(rated.rating.reasons))
                    ratings[unit] = rated.rating.rating
        return ratings

    def _graph_reads(self) -> dict[str, tuple[Hashable, Callable[[], Any]]]:
        """Each enabled target's Graph status read, for READS (joined by concurrent callers)."""
        return {name: ((target, "graph_status"), target.graph_status) for name, target in self.targets.items()}

    def _answers(self, reads: dict[str, Future[Any] | None], started: float) -> dict[str, Any]:
        deadline = self.settings.status_deadline_seconds
        return READS.answers(reads, deadline - (time.monotonic() - started), deadline)

    def _rated(self, name: str, answer: Any, now: datetime) -> list[_Rated]:
        """Graph's views of one target, each rated; or one unhealthy entry saying why there are none."""
        if isinstance(answer, (UpstreamError, Unavailable)):
            code = answer.code if isinstance(answer, UpstreamError) else "Unavailable"
            return [_Rated(name, Rating("unhealthy", (answer.message,)), error=(code, answer.message))]
        if isinstance(answer, BaseException):
            raise answer
        warning_hours, unhealthy_hours = self.settings.thresholds(name)
        return [_Rated(view.target, rate(view, now, warning_hours, unhealthy_hours, self.settings.token_expiry_warning_days),
                       view) for view in answer]

    def _graph_json(self, name: str, answer: Any, now: datetime) -> list[dict[str, Any]]:
        """Graph's views of one target, rated; or one entry saying why there are none (same
        shape as a unit's status: one schema)."""
        return [r.to_json() for r in self._rated(name, answer, now)]


_LEVELS = {"healthy": logging.INFO, "warning": logging.WARNING}  # unhealthy: ERROR


@dataclass(frozen=True)
class _Rated:
    """One unit's rating; ``view`` is Graph's account of it, ``error`` (code, message) why there is none."""

    unit: str
    rating: Rating
    view: GraphView | None = None
    error: tuple[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"target": self.unit, "error": {"code": self.error[0], "message": self.error[1]},
                    "health": self.rating.to_json()}
        fields = self.view.fields if self.view is not None else {}
        return {"target": self.unit, **fields, "health": self.rating.to_json()}


def _state_json(state: UnitState, now: datetime, asks: int = 0) -> dict[str, Any]:
    return {
        "target": state.key if state.item_id is None else f"{state.target}/{state.item_id}",
        "lastOutcome": state.last_outcome,
        "lastAttemptAt": iso(state.last_attempt_at),
        "lastStartedAt": iso(state.last_started_at),
        "nextAllowedAt": iso(state.next_allowed_at),
        "inCooldown": in_cooldown(state, now),
        "lease": {"active": in_flight(state, now), "expiresAt": iso(state.lease_expires_at)}
        if state.lease_owner
        else None,
        "lastHttpStatus": state.last_http_status,
        "graphRequestId": state.last_graph_request_id,
        "message": state.last_message,
        "pending": {"scheduledAt": iso(state.pending_at), "since": iso(state.pending_since), "asks": asks,
                    "firstAskedBy": state.pending_asked_by, "reschedules": state.pending_reschedules,
                    "deadline": iso(state.pending_deadline)}
        if state.pending_id
        else None,
        # The last deferred sync that was given up, and why (Graph kept refusing, or the item is gone).
        "deferred": {"gaveUpAt": iso(state.pending_failed_at), "reason": state.pending_failure}
        if state.pending_failed_at
        else None,
        # A claim whose holder never recorded Graph's answer (shown until the next reader records it).
        "unrecordedClaim": {"at": iso(state.claim_at), "by": state.claim_by}
        if orphaned_claim(state, now)
        else None,
    }




def credentials_json(answer: Any, now: datetime, warning_days: int) -> dict[str, Any]:
    """The Apple credentials part of the status document (a read not answered in time: every kind
    unavailable)."""
    if isinstance(answer, Unavailable):
        answer = CredentialsRead(unavailable=tuple((kind, answer.message) for kind in KINDS))
    if isinstance(answer, BaseException):
        raise answer
    return CredentialsReport.of(answer, now, warning_days).to_json()
