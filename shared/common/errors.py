"""The app's one error model: every error it raises on purpose is an ``AppError`` with a
``code`` and the HTTP status our API answers with, and shared/api/routes.py turns any of them into the
same JSON answer (``{"error": {"code", "message"}}``) in one place.

- ``UpstreamError`` and its kinds: faults outside our control (Graph, the token endpoint, Table
  Storage, the queue), each naming its cause. Answers from Graph that are part of the contract
  (409 in progress, 429 cooldown) are *not* errors: the pipeline turns them into outcomes.
- Callers: ``Unauthenticated`` (401, a missing or invalid Entra token, with ``WWW-Authenticate``),
  ``Forbidden`` (403, a role or an operator group missing); ``EntraUnavailable`` (503) when the
  tenant's signing keys cannot be read (shared/api/callerauth.py).
- Input and configuration: ``UnknownTarget`` (404), ``InvalidItemId`` (400), ``ItemNotFound``
  (404), ``SettingsError`` (503, shared/common/settings.py), ``ApiError`` (any 4xx, shared/api/routes.py).
"""
from __future__ import annotations

from typing import Any

from .redact import redact_text


class AppError(Exception):
    code, http_status = "Error", 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, details: dict[str, Any] | None = None):
        # Messages reach answers, history and logs, and are often built from an exception's text,
        # which may hold a URL with its credentials (shared/common/redact.py).
        message = redact_text(message)
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.details = details or {}  # more fields for the JSON error (e.g. the rows of a bad import)


class UpstreamError(AppError):
    code, http_status = "UpstreamError", 502

    def __init__(
        self,
        message: str,
        *,
        graph_status: int | None = None,
        graph_code: str | None = None,
        request_id: str | None = None,
        client_request_id: str | None = None,
        maybe_sent: bool = False,
        retry_after_seconds: float | None = None,
    ):
        super().__init__(message)
        self.graph_status = graph_status
        self.graph_code = graph_code
        self.request_id = request_id
        self.client_request_id = client_request_id
        # A write that may have reached Graph although no answer came back (read timeout, a
        # connection dropped after sending): it may have started a sync.
        self.maybe_sent = maybe_sent
        self.retry_after_seconds = retry_after_seconds  # Graph's Retry-After, already sanitised


class GraphAccessDenied(UpstreamError):
    """Graph refused our identity (401 after one token refresh, or 403)."""

    code = "GraphAccessDenied"


class GraphResourceNotFound(UpstreamError):
    code = "GraphResourceNotFound"


class GraphRequestRejected(UpstreamError):
    """Any other 4xx: Graph did not accept what we sent."""

    code = "GraphRequestRejected"


class GraphUnavailable(UpstreamError):
    """5xx after retries, timeouts, connection failures."""

    code, http_status = "GraphUnavailable", 503


class TokenUnavailable(UpstreamError):
    code, http_status = "TokenUnavailable", 503


class StateStoreUnavailable(UpstreamError):
    code, http_status = "StateStoreUnavailable", 503


class EntraUnavailable(UpstreamError):
    """Entra's OpenID configuration or signing keys could not be read: no token can be checked."""

    code, http_status = "EntraUnavailable", 503


class Unauthenticated(AppError):
    """No valid Entra access token (CALLER_AUTH=entra): 401 naming what was wrong, never the token."""

    http_status = 401

    def __init__(self, code: str, message: str):
        # A header value: printable ASCII only (the host refuses anything else), no quote to break out of.
        description = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in message)
        super().__init__(message, headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'
                                           if code != "TokenMissing" else "Bearer"})
        self.code = code


class Forbidden(AppError):
    """A valid token without what the route needs (an app role, an operator group): 403."""

    http_status = 403

    def __init__(self, code: str, message: str, **details: Any):
        super().__init__(message, details=details or None)
        self.code = code


class UnsafeGraphPath(UpstreamError, ValueError):
    """A Graph path that is not built from constants and validated ids: refused before anything
    is sent (a bug of ours, never a sync that may have started)."""

    code, http_status = "UnsafeGraphPath", 500


class UnexpectedError(UpstreamError):
    """A bug of ours while calling Graph: whether the request went out is unknown."""

    code, http_status = "InternalError", 500


class UnknownTarget(AppError, LookupError):
    """A caller named a target that does not exist or is not enabled."""

    code, http_status = "UnknownTarget", 404


class InvalidItemId(AppError, ValueError):
    """A caller-supplied item id is not acceptable."""

    code, http_status = "InvalidItemId", 400


class HomeTenant(AppError):
    """A customer tenant's action named the app's own tenant (shared/tenancy/customers.py): refused, as
    syncing it as a customer too would sync it twice in one Graph window."""

    code, http_status = "HomeTenant", 409


class ItemNotFound(AppError, LookupError):
    """The item a caller named does not exist (or no longer does) in Graph."""

    code, http_status = "ItemNotFound", 404
