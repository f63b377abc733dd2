"""The vocabulary every package shares: the error model, the result model, ids, settings
(validated from one table), telemetry, redaction, queue messages and Graph-answer parsing.
Depends on nothing else in the app.
"""
from __future__ import annotations

from . import messages, telemetry
from .answers import MAX_RETRY_AFTER_SECONDS, as_utc, parse_graph_time, parse_http_date, parse_retry_after
from .cabundle import ca_bundle_problem_text, ca_bundle_setting
from .errors import (
    AppError,
    GraphAccessDenied,
    GraphRequestRejected,
    GraphResourceNotFound,
    GraphUnavailable,
    HomeTenant,
    InvalidItemId,
    ItemNotFound,
    StateStoreUnavailable,
    TokenUnavailable,
    UnexpectedError,
    UnknownTarget,
    UnsafeGraphPath,
    UpstreamError,
)
from .hosts import host_name, is_loopback, valid_host
from .ids import new_guid, new_hex_id, parse_guid
from .jsonbody import nesting_exceeds
from .messages import InvalidMessage, log_invalid
from .model import Clock, Outcome, SyncRequest, SyncResult, Trigger, iso, utcnow
from .notices import notices
from .permissions import GRAPH_APP_ROLES, TARGET_ROLES
from .redact import redact_text, redact_url
from .settings import (
    DEFAULTS,
    KNOWN_TARGETS,
    LEASE_MARGIN_SECONDS,
    SYNC_TYPES,
    Settings,
    SettingsError,
)
from .timeouts import (
    CONNECT_TIMEOUT,
    TOKEN_BACKOFF_MAX,
    TOKEN_CONNECT_TIMEOUT,
    TOKEN_READ_TIMEOUT,
    TOKEN_RETRIES,
    TOKEN_WORST_CASE_SECONDS,
)

__all__ = [
    "AppError",
    "CONNECT_TIMEOUT",
    "Clock",
    "DEFAULTS",
    "GRAPH_APP_ROLES",
    "GraphAccessDenied",
    "GraphRequestRejected",
    "GraphResourceNotFound",
    "GraphUnavailable",
    "HomeTenant",
    "InvalidItemId",
    "InvalidMessage",
    "ItemNotFound",
    "KNOWN_TARGETS",
    "LEASE_MARGIN_SECONDS",
    "MAX_RETRY_AFTER_SECONDS",
    "Outcome",
    "SYNC_TYPES",
    "Settings",
    "SettingsError",
    "StateStoreUnavailable",
    "SyncRequest",
    "SyncResult",
    "TARGET_ROLES",
    "TOKEN_BACKOFF_MAX",
    "TOKEN_CONNECT_TIMEOUT",
    "TOKEN_READ_TIMEOUT",
    "TOKEN_RETRIES",
    "TOKEN_WORST_CASE_SECONDS",
    "TokenUnavailable",
    "Trigger",
    "UnexpectedError",
    "UnknownTarget",
    "UnsafeGraphPath",
    "UpstreamError",
    "as_utc",
    "ca_bundle_problem_text",
    "ca_bundle_setting",
    "host_name",
    "is_loopback",
    "iso",
    "log_invalid",
    "messages",
    "nesting_exceeds",
    "new_guid",
    "new_hex_id",
    "notices",
    "parse_graph_time",
    "parse_guid",
    "parse_http_date",
    "parse_retry_after",
    "redact_text",
    "redact_url",
    "telemetry",
    "utcnow",
    "valid_host",
]
