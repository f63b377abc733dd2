"""Structured telemetry: one log record per thing an operator counts, with named fields.

Every sync attempt or refusal, deferred firing, watcher finding, onboarding step, tenant outcome
and timer tick is logged once, by ``emit``, as ``IntuneSync {json}`` on the logger
``intune_sync.events``. Why JSON in the message: the Python worker forwards only a record's
message, level, logger name and invocation id to the Functions host (``extra`` fields never
reach Application Insights' customDimensions), and an SDK of our own would add to the cold start
and send every trace twice. KQL reads the fields with ``parse_json(substring(message, 11))``
(docs/monitoring.md); the workbook (infra/app/workbook.json) and the alerts (infra/app/alerts.bicep)
do exactly that, and tests/test_monitoring.py checks that they name only the fields below.

No secret ever goes in: the fields are a closed set (an unknown name is a bug and raises), and
every string is scrubbed of tokens, signatures and keys before it is written.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any
from urllib.parse import unquote

from .model import SyncRequest, SyncResult, iso
from .redact import redact_text

LOGGER = "intune_sync.events"
PREFIX = "IntuneSync "  # KQL: where message startswith "IntuneSync " | extend e = parse_json(substring(message, 11))

# The events; every record has "event" set to one of them.
EVENTS = {
    "sync": "one unit's sync through any trigger: Graph called (attempted) or refused before it",
    "deferred": "a pending sync's queue message arrived: what it did (its sync is a sync event too)",
    "watch": "a watcher finding: a sync Graph reports finished, an overdue message sent again, a sweep",
    "import": "an Autopilot import job started, ran a step, or finished",
    "devices": "a bulk device sync job started, ran a step, or finished",
    "tenant": "a registered customer tenant's outcome in the timer's fan-out",
    "timer": "a timer tick: how many units it synced, by outcome",
    "health": "a unit's health, rated from Graph's own account after each timer tick",
    "notice": "something an operator should know about the configuration (e.g. a legacy target)",
    "expiry": "an Apple credential (APNs certificate, ADE or VPP token) in the daily check: its days left and state",
}

# The fields, and what they hold. Nothing else can be logged (see emit).
FIELDS = {
    "event": "one of EVENTS",
    "trigger": "what started it: timer, http, deferred, import, tenant",
    "caller": "who asked, as verified: a token's user or app with its object id and role, 'key', 'timer', the import job",
    "claimedCaller": "key mode: who the request's own headers said asked (x-ms-client-principal-name...), unverified",
    "target": "autopilot, exchange, appleAde, vpp, managedGooglePlay, driverInventory; expiry events: apnsCertificate, "
              "adeToken, vppToken",
    "unit": "what one sync covers: the target, or target/<item id> (a connector, a token)",
    "tenant": "the customer tenant's id; empty for the app's own tenant",
    "outcome": "sync: started, cooldown, inProgress, skipped, failed, scheduled, unknown (a claim whose holder "
               "never recorded Graph's answer); other events: what happened",
    "attempted": "true when Graph was called (a claimed attempt), false for a refusal answered from state",
    "httpStatus": "Graph's HTTP status for the attempt, if any",
    "graphRequestId": "Graph's request-id header (give it to Microsoft support)",
    "clientRequestId": "the client-request-id we sent",
    "durationMs": "how long the attempt's Graph call took",
    "errorCode": "the app's error code (docs/operations.md lists them)",
    "message": "what happened, in words",
    "nextAllowedAt": "when the unit may sync again (UTC)",
    "scheduledAt": "when a deferred sync will fire (UTC)",
    "importId": "the Autopilot import job",
    "step": "the import job's step number",
    "devices": "an import job's device count",
    "counts": "per outcome or state, how many (timer ticks, finished import jobs, sweeps)",
    "health": "a unit's rating from Graph's own account: healthy, warning, unhealthy (health events)",
    "lastSyncAt": "the last good sync Graph reports for the unit (health events)",
    "code": "a notice's code",
    "jobId": "the bulk device sync job",
    "waitedSeconds": "how long a device sync step put off the next one (write budget or Graph's Retry-After)",
    "pacedSeconds": "how long a device sync step slept within itself for the write budget (waits under a second)",
    "throttled": "device syncs Graph answered 429 in a device sync step (sent again later)",
    "lateGrants": "write-budget grants a device sync step dropped: back too late to send (their devices sent later)",
    "credentialId": "an Apple credential's id in Graph (expiry events)",
    "name": "an Apple credential's name: the certificate's topic, a token's name (expiry events)",
    "appleId": "the Apple ID (Managed Apple ID) a credential belongs to: renew with the same one (expiry events)",
    "expiresAt": "when the credential expires (UTC, expiry events)",
    "daysLeft": "days until it expires, negative once expired (expiry events)",
    "threshold": "the threshold told in this check (30, 14, 7, 1; 0: expired), if any (expiry events)",
}

MAX_TEXT = 500
# A query parameter whose name says credential (token, sig, code, key, secret, assertion).
_SECRET_QUERY = re.compile(r"(?i)([?&][\w.-]*(?:token|sig|code|key|secret|assertion)[\w.-]*=)[^&\s\"']+")
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_KEYED = re.compile(r"(?i)\b(AccountKey|SharedAccessSignature|x-functions-key|\w*secret)\s*[=:]\s*[^;&\s\"']+")

log = logging.getLogger(LOGGER)


def scrub(text: str) -> str:
    """The text without anything that could be a credential: every URL's user-info and query
    (shared/common/redact.py), query tokens and signatures (also percent-encoded), bearer tokens, JWTs,
    storage keys, a function key header."""
    text = redact_text(text)
    if "%" in text:
        text = unquote(text)
        text = redact_text(text)  # a URL that was percent-encoded as a whole
    text = _SECRET_QUERY.sub(r"\1***", text)
    text = _KEYED.sub(lambda m: f"{m.group(1)}=***", text)
    text = _BEARER.sub("Bearer ***", text)
    return _JWT.sub("***", text)


def _value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Enum):  # Outcome, Trigger
        return value.value
    if isinstance(value, Mapping):
        return {str(k)[:100]: _value(v) for k, v in value.items()}
    # Cut before scrubbing: callers control some of this text (a flow's name), and the patterns'
    # cost grows with its length. Twice the limit keeps a secret that straddles the cut whole.
    return scrub(str(value)[:2 * MAX_TEXT])[:MAX_TEXT]


def fields_of(event: str, **fields: Any) -> dict[str, Any]:
    """The record's fields: known names only, None left out, strings scrubbed and cut."""
    if event not in EVENTS:
        raise ValueError(f"unknown telemetry event {event!r}")
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown telemetry field(s) {sorted(unknown)}: add them to telemetry.FIELDS")
    return {"event": event, **{k: _value(v) for k, v in fields.items() if v is not None and v != ""}}


def emit(event: str, level: int = logging.INFO, **fields: Any) -> dict[str, Any]:
    """Log one event. Returns its fields (for tests). An unknown event or field raises (a bug the
    tests catch); a fault in logging itself never does: the sync it describes has happened."""
    record = fields_of(event, **fields)
    try:
        log.log(level, "%s%s", PREFIX, json.dumps(record, separators=(",", ":"), default=str),
                extra={"intune_sync": record})
    except Exception:  # a handler that raises (logging.raiseExceptions only covers handleError)
        logging.getLogger(__name__).debug("telemetry record not logged", exc_info=True)
    return record


def sync_result(result: SyncResult, request: SyncRequest, tenant: str | None) -> dict[str, Any]:
    """The one record of one unit's sync (attempt or refusal)."""
    level = logging.ERROR if result.outcome.value == "failed" else logging.INFO
    return emit(
        "sync", level, trigger=request.trigger, caller=request.caller, claimedCaller=request.claimed_caller,
        target=request.target, unit=result.target,
        tenant=tenant, outcome=result.outcome, attempted=result.duration_ms is not None,
        httpStatus=result.graph_status, graphRequestId=result.graph_request_id,
        clientRequestId=result.client_request_id, durationMs=result.duration_ms, errorCode=result.error_code,
        message=result.message, nextAllowedAt=result.next_allowed_at, scheduledAt=result.scheduled_at,
    )
