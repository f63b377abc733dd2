"""The vocabulary every package shares: the error model, the result model, ids, settings
(validated from one table), telemetry, redaction, queue messages and Graph-answer parsing.
Depends on nothing else in the app.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .faces import face

if TYPE_CHECKING:
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
    from .faces import face
    from .hosts import host_name, is_loopback, valid_host
    from .ids import new_guid, new_hex_id, parse_guid
    from .jsonbody import nesting_exceeds
    from .messages import InvalidMessage, log_invalid
    from .model import Clock, Outcome, SyncRequest, SyncResult, Trigger, iso, utcnow
    from .notices import configuration_notices
    from .permissions import GRAPH_APP_ROLES, TARGET_ROLES
    from .redact import redact_text, redact_url
    from .settings import DEFAULTS, KNOWN_TARGETS, LEASE_MARGIN_SECONDS, SYNC_TYPES, Settings, SettingsError
    from .timeouts import (
        CONNECT_TIMEOUT,
        TOKEN_BACKOFF_MAX,
        TOKEN_CONNECT_TIMEOUT,
        TOKEN_READ_TIMEOUT,
        TOKEN_RETRIES,
        TOKEN_WORST_CASE_SECONDS,
    )
    from .tokens import new_token, token_matches

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
    "configuration_notices",
    "face",
    "host_name",
    "is_loopback",
    "iso",
    "log_invalid",
    "messages",
    "nesting_exceeds",
    "new_guid",
    "new_hex_id",
    "new_token",
    "parse_graph_time",
    "parse_guid",
    "parse_http_date",
    "parse_retry_after",
    "redact_text",
    "redact_url",
    "telemetry",
    "token_matches",
    "utcnow",
    "valid_host",
]

__getattr__ = face(__name__, {
    "AppError": "errors",
    "CONNECT_TIMEOUT": "timeouts",
    "Clock": "model",
    "DEFAULTS": "settings",
    "GRAPH_APP_ROLES": "permissions",
    "GraphAccessDenied": "errors",
    "GraphRequestRejected": "errors",
    "GraphResourceNotFound": "errors",
    "GraphUnavailable": "errors",
    "HomeTenant": "errors",
    "InvalidItemId": "errors",
    "InvalidMessage": "messages",
    "ItemNotFound": "errors",
    "KNOWN_TARGETS": "settings",
    "LEASE_MARGIN_SECONDS": "settings",
    "MAX_RETRY_AFTER_SECONDS": "answers",
    "Outcome": "model",
    "SYNC_TYPES": "settings",
    "Settings": "settings",
    "SettingsError": "settings",
    "StateStoreUnavailable": "errors",
    "SyncRequest": "model",
    "SyncResult": "model",
    "TARGET_ROLES": "permissions",
    "TOKEN_BACKOFF_MAX": "timeouts",
    "TOKEN_CONNECT_TIMEOUT": "timeouts",
    "TOKEN_READ_TIMEOUT": "timeouts",
    "TOKEN_RETRIES": "timeouts",
    "TOKEN_WORST_CASE_SECONDS": "timeouts",
    "TokenUnavailable": "errors",
    "Trigger": "model",
    "UnexpectedError": "errors",
    "UnknownTarget": "errors",
    "UnsafeGraphPath": "errors",
    "UpstreamError": "errors",
    "as_utc": "answers",
    "ca_bundle_problem_text": "cabundle",
    "ca_bundle_setting": "cabundle",
    "configuration_notices": "notices",
    "face": "faces",
    "host_name": "hosts",
    "is_loopback": "hosts",
    "iso": "model",
    "log_invalid": "messages",
    "messages": "messages",
    "nesting_exceeds": "jsonbody",
    "new_guid": "ids",
    "new_hex_id": "ids",
    "new_token": "tokens",
    "parse_graph_time": "answers",
    "parse_guid": "ids",
    "parse_http_date": "answers",
    "parse_retry_after": "answers",
    "redact_text": "redact",
    "redact_url": "redact",
    "telemetry": "telemetry",
    "token_matches": "tokens",
    "utcnow": "model",
    "valid_host": "hosts",
})
