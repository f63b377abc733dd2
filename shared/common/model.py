"""Value types shared by the service, the targets and the HTTP layer."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Outcome(StrEnum):
    STARTED = "started"
    COOLDOWN = "cooldown"
    IN_PROGRESS = "inProgress"
    SKIPPED = "skipped"
    FAILED = "failed"
    SCHEDULED = "scheduled"  # deferred: one pending sync will run when the window ends


class Trigger(StrEnum):
    TIMER = "timer"
    HTTP = "http"
    DEFERRED = "deferred"
    IMPORT = "import"  # an Autopilot import job asked for the sync (shared/onboarding/importjob.py)


@dataclass(frozen=True)
class SyncRequest:
    """What a caller asked for, already validated."""

    target: str
    item_id: str | None = None
    sync_type: str | None = None
    trigger: Trigger = Trigger.HTTP
    caller: str = "anonymous"  # who asked, as verified (a token's subject, "key", "timer")
    defer: bool = False  # inside the cooldown, schedule the next allowed sync instead of refusing
    claimed_caller: str | None = None  # key mode: who the request's own headers say asked (unverified)


@dataclass(frozen=True)
class SyncResult:
    """The one result shape every trigger and route answers with."""

    target: str
    outcome: Outcome
    next_allowed_at: datetime | None = None
    last_attempt_at: datetime | None = None
    graph_request_id: str | None = None
    client_request_id: str | None = None
    message: str = ""
    error_code: str | None = None
    # Not serialised: how our API should answer a failure (502 or 503), and Graph's own status.
    failure_status: int | None = None
    graph_status: int | None = None
    retry_after_seconds: int | None = None
    scheduled_at: datetime | None = None
    ambiguous: bool = False  # not serialised: Graph may have started the sync without our seeing it
    duration_ms: int | None = None  # not serialised: the attempt's Graph call (None: Graph was not called)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "outcome": self.outcome.value,
            "nextAllowedAt": iso(self.next_allowed_at),
            "lastAttemptAt": iso(self.last_attempt_at),
            "graphRequestId": self.graph_request_id,
            "clientRequestId": self.client_request_id,
            "message": self.message,
            "errorCode": self.error_code,
            "scheduledAt": iso(self.scheduled_at),
        }
