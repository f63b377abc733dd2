"""A small Microsoft Graph client on ``requests``: pooled connections, explicit timeouts, one
cached token per process, a ``client-request-id`` on every request, and retries for faults only.

Retries are urllib3's ``Retry`` (bounded exponential backoff, honours ``Retry-After``) with one
change: a 429 on a write is an answer, not a fault. Graph's Autopilot sync answers 429 for ten
minutes after a sync, and SDK retry handlers that retry it are what fail with "more than 3
retries" in the scripts this service replaces.
"""
from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Self

import requests
from azure.core.credentials import AccessToken, TokenCredential
from requests import PreparedRequest
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NameResolutionError, NewConnectionError, ResponseError
from urllib3.util.retry import Retry

from ..common import (
    CONNECT_TIMEOUT,
    GRAPH_APP_ROLES,
    TOKEN_WORST_CASE_SECONDS,
    GraphAccessDenied,
    GraphRequestRejected,
    GraphResourceNotFound,
    GraphUnavailable,
    StateStoreUnavailable,
    TokenUnavailable,
    UnsafeGraphPath,
    parse_http_date,
    parse_retry_after,
    utcnow,
)
from .budget import BudgetExhausted, LocalBudget, WriteBudget, area_of
from .safety import SAFE_PATH, safe_query
from .transport import configure_session

log = logging.getLogger(__name__)
PERMISSION = GRAPH_APP_ROLES[0]
USER_AGENT = "intune-sync/1.0"
_READ_METHODS = frozenset({"GET", "HEAD"})
# Entra's answers that waiting will not change: the app is not consented in (or not known to)
# the tenant (../shared/reference entra/...). Answered 502 like Graph's 403, not 503.
_TOKEN_REFUSED = re.compile(r"AADSTS(700016|65001|90094|500011|650057|7000112|90002|90038)\b")
_CLAIMS = re.compile(r'claims="([^"]+)"')
_TOKEN_REFRESH_MARGIN = 300  # seconds before expiry at which a cached token is renewed




@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff_factor: float = 0.5
    backoff_max: float = 8.0


@dataclass(frozen=True)
class RequestContext:
    """What the retry code must know about one request; it travels with that request (the client
    hands it to ``Session.send``, which passes it on to the adapter, which gives the request
    retries of its own built from it)."""

    deadline: float | None = None  # time.monotonic() by which the whole logical request must end
    send_once: bool = False  # a write not repeated on a 5xx answer (it may have been carried out)
    attempt_seconds: float = 0.0  # the longest the attempt being sent may take (connect + read)


_NO_CONTEXT = RequestContext()


class _GraphRetry(Retry):
    def __init__(self, *args: Any, context: RequestContext = _NO_CONTEXT, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.context = context

    def new(self, **kw: Any) -> Self:
        # urllib3 copies the Retry for every attempt, and the adapter makes one per request from
        # its own: the context goes along unless a new one is given.
        return super().new(**{"context": self.context, **kw})

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code == 429 and method.upper() not in _READ_METHODS:
            return False
        if self.context.send_once and method.upper() not in _READ_METHODS:
            return False  # a write that must not be repeated: a 502/504 may come after it was carried out
        return super().is_retry(method, status_code, has_retry_after)

    def increment(  # type: ignore[override]
        self, method: str | None = None, url: str | None = None, *args: Any, **kwargs: Any
    ) -> Retry:
        # A write that timed out after it was sent may have been carried out: sending it again
        # could start a second sync. Connect errors (nothing sent) and 5xx answers are retried.
        error = kwargs.get("error")
        if error is not None and method and method.upper() not in _READ_METHODS and self._is_read_error(error):
            raise error
        retry = super().increment(method, url, *args, **kwargs)
        deadline, attempt_seconds = self.context.deadline, self.context.attempt_seconds
        if deadline is not None:
            # Another attempt only if it can finish before the deadline; otherwise the last
            # answer (or error) stands, as if the retries were used up.
            wait = retry.get_backoff_time()
            response = kwargs.get("response")
            if response is not None:
                wait = max(wait, self.get_retry_after(response) or 0.0)
            if time.monotonic() + wait + attempt_seconds > deadline:
                reason = error or ResponseError(f"no time left before the deadline (status {getattr(response, 'status', None)})")
                raise MaxRetryError(kwargs.get("_pool"), url or "", reason)  # type: ignore[arg-type]
        return retry

    def get_retry_after(self, response: Any) -> float | None:
        # Sanitised (garbage, inf and negatives are ignored) and bounded: a read answered
        # "Retry-After: 600" is not worth a ten-minute sleep in a function.
        value = parse_retry_after(response.headers.get("Retry-After"), utcnow())
        return None if value is None else min(value, self.backoff_max)


class _GraphAdapter(HTTPAdapter):
    """requests' adapter, giving each request retries of its own built from its RequestContext
    (``Session.send`` passes keyword arguments it does not know on to the adapter)."""

    def send(
        self, request: PreparedRequest, stream: bool = False, timeout: Any = None, verify: bool | str = True,
        cert: Any = None, proxies: Mapping[str, str] | None = None, context: RequestContext = _NO_CONTEXT,
    ) -> requests.Response:
        # HTTPAdapter.send takes its retries from self.max_retries, and this adapter serves every
        # thread: the request goes through a shallow view of it (the same connection pools; not
        # copy.copy, which would build new ones) whose retries carry this request's context.
        view = object.__new__(HTTPAdapter)
        view.__dict__.update(vars(self), max_retries=self.max_retries.new(context=context))
        return view.send(request, stream, timeout, verify, cert, proxies)


@dataclass(frozen=True)
class GraphResponse:
    method: str
    path: str
    status: int
    body: Any
    headers: Mapping[str, str] = field(repr=False)
    client_request_id: str
    duration_ms: int

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def request_id(self) -> str | None:
        return self.headers.get("request-id")

    @property
    def date(self) -> datetime | None:
        """Graph's clock when it answered (its ``Date`` header, whole seconds); None without one."""
        return parse_http_date(self.headers.get("Date"))

    @property
    def retry_after_seconds(self) -> float | None:
        """Graph's Retry-After in seconds, clamped (shared/common/answers.py); None if absent or invalid.
        A Retry-After date is counted from Graph's own Date, not our clock: they may differ."""
        return parse_retry_after(self.headers.get("Retry-After"), self.date or utcnow())

    @property
    def error_code(self) -> str | None:
        return _odata_error(self.body)[0]

    @property
    def error_message(self) -> str | None:
        return _odata_error(self.body)[1]

    def raise_for_status(self, what: str, roles: tuple[str, ...] = (PERMISSION,)) -> GraphResponse:
        """Turn a failure status into the error that names its cause; return self when 2xx.

        ``roles`` are the application permissions the call needs, named in a 401/403."""
        if self.ok:
            return self
        detail = f"Graph answered {self.status}" + (f" {self.error_code}" if self.error_code else "")
        if self.error_message:
            detail += f": {self.error_message}"
        context: dict[str, Any] = dict(
            graph_status=self.status,
            graph_code=self.error_code,
            request_id=self.request_id,
            client_request_id=self.client_request_id,
            retry_after_seconds=self.retry_after_seconds,
        )
        if self.status in (401, 403):
            raise GraphAccessDenied(
                f"Graph refused the app's identity for {what} ({detail}). The managed identity needs "
                f"the application permission {' and '.join(roles)} (admin-consented app role) and the "
                f"tenant needs an active Intune licence.",
                **context,
            )
        if self.status == 404:
            raise GraphResourceNotFound(f"Graph found no such resource for {what} ({detail}).", **context)
        if self.status >= 500 or self.status == 429:
            raise GraphUnavailable(f"Graph is unavailable for {what} after retries ({detail}).", **context)
        raise GraphRequestRejected(f"Graph rejected {what} ({detail}).", **context)


def _odata_error(body: Any) -> tuple[str | None, str | None]:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return err.get("code"), err.get("message")
    return None, None


def _draw(budget: WriteBudget, area: str, bulk: bool, deadline: float | None, what: str) -> None:
    try:
        budget.acquire(area, 1, bulk=bulk, deadline=deadline)
    except BudgetExhausted as exc:
        raise GraphUnavailable(f"Intune's write budget for {area} had no room for {what} before the deadline ({exc})",
                               maybe_sent=False) from None


class GraphClient:
    def __init__(
        self,
        base_url: str,
        credential: TokenCredential,
        scope: str,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        pool_size: int = 32,  # at least the fan-out's workers, so connections are reused
        budget: WriteBudget | None = None,  # Intune's write budget (shared/clients/budget.py); in-process if None
        token_source: str = "the identity endpoint",  # named in a token error
    ):
        self.base_url = base_url.rstrip("/")
        self._credential = credential
        self._scope = scope
        self._timeout = (min(CONNECT_TIMEOUT, timeout), timeout)  # (connect, read)
        self._token: AccessToken | None = None
        self._token_lock = threading.Lock()
        self.budget: WriteBudget = budget or LocalBudget()
        self._token_source = token_source
        self._session = requests.Session()
        adapter = _GraphAdapter(
            pool_connections=1,
            pool_maxsize=pool_size,
            max_retries=_GraphRetry(
                total=retry.retries,
                connect=retry.retries,
                read=retry.retries,
                status=retry.retries,
                other=0,
                allowed_methods=frozenset({"GET", "POST", "DELETE"}),  # a DELETE is idempotent
                status_forcelist=(429, 500, 502, 503, 504),
                backoff_factor=retry.backoff_factor,
                backoff_max=retry.backoff_max,
                respect_retry_after_header=True,
                raise_on_status=False,
            ),
        )
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        # Proxies for our one host and the CA bundle are read once, not on every call.
        configure_session(self._session, self.base_url)

    def close(self) -> None:
        self._session.close()

    def get(self, path: str, params: Mapping[str, str] | None = None) -> GraphResponse:
        return self.request("GET", path, params=params)

    def delete(self, path: str, *, bulk: bool = False) -> GraphResponse:
        return self.request("DELETE", path, bulk=bulk)

    def post(self, path: str, json: Mapping[str, Any] | None = None, deadline: float | None = None,
             once: bool = False, *, bulk: bool = False) -> GraphResponse:
        """``once``: a 5xx answer is not retried (an import that a gateway answered 502 may have
        been carried out; sending it again would import twice). Connect errors still are.
        ``bulk``: a job's write (imports, clean-up), drawn from the tenant's shared write budget;
        otherwise a sync action, drawn from its reserve (shared/clients/budget.py)."""
        return self.request("POST", path, json=json, deadline=deadline, once=once, bulk=bulk)

    def request(
        self, method: str, path: str, json: Mapping[str, Any] | None = None, deadline: float | None = None,
        params: Mapping[str, str] | None = None, once: bool = False, *, bulk: bool = False, claimed: bool = False,
    ) -> GraphResponse:
        """Send one logical request; any HTTP status comes back, transport faults raise.

        A 401 gets one retry with a fresh token (using Graph's claims challenge when it sends one).
        ``deadline`` (time.monotonic()) bounds the whole request, retries, token and resend
        included: no attempt starts that could not end before it.

        A write draws on the write budget first (``claimed``: the caller already took it): a sync
        action on the reserve, a ``bulk`` write on the tenant's shared budget. A bulk write answered
        429 pauses its area for every instance (a sync action's 429 is its unit's own window).
        """
        if not SAFE_PATH.match(path):
            raise UnsafeGraphPath(f"refusing to call Graph with an unsafe path: {path!r}")
        for name, value in (params or {}).items():
            if not safe_query(name, value):
                raise UnsafeGraphPath(f"refusing to call Graph with an unsafe query option: {name}={value!r}")
        write = method not in _READ_METHODS
        if write and not claimed:
            _draw(self.budget, area_of(path), bulk, deadline, f"{method} {path}")
        # One client-request-id for the logical request, its transport retries and a resend after
        # a 401, so that history names every request Graph saw.
        client_request_id = str(uuid.uuid4())
        response = self._request(method, path, json, RequestContext(deadline, send_once=once), params, client_request_id)
        if write and bulk and response.status == 429:
            self.throttled(area_of(path), response.retry_after_seconds)
        return response

    def throttled(self, area: str, retry_after: float | None) -> None:
        """Graph answered a write 429: pause the area (for every instance when the budget is
        shared). A storage fault here is logged: the answer itself still stands."""
        try:
            self.budget.pause(area, retry_after or 1.0)
        except StateStoreUnavailable as exc:
            log.warning("could not record Graph's 429 for %s writes: %s", area, exc.message)

    def _request(self, method: str, path: str, json: Mapping[str, Any] | None, context: RequestContext,
                 params: Mapping[str, str] | None, client_request_id: str) -> GraphResponse:
        response = self._send(method, path, json, self._get_token(), context, client_request_id, params)
        if response.status == 401:
            deadline = context.deadline
            if deadline is not None and time.monotonic() + TOKEN_WORST_CASE_SECONDS + sum(self._timeout) > deadline:
                return response  # no time for a new token and a resend: the 401 stands
            claims = _CLAIMS.search(response.headers.get("WWW-Authenticate", ""))
            try:
                token = self._get_token(force=True, claims=claims.group(1) if claims else None)
            except TokenUnavailable as exc:
                exc.client_request_id, exc.graph_status = client_request_id, 401
                raise
            response = self._send(method, path, json, token, context, client_request_id, params)
        return response

    def current_token(self) -> str:
        """The token this client uses now (fetched if needed)."""
        return self._get_token()

    def ensure_token(self) -> None:
        """Get (or reuse) the token now. The service calls this before it claims a unit, so that
        a slow or dead identity endpoint never holds a lease."""
        self._get_token()

    def _send(
        self, method: str, path: str, json: Mapping[str, Any] | None, token: str, context: RequestContext,
        client_request_id: str, params: Mapping[str, str] | None = None,
    ) -> GraphResponse:
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "client-request-id": client_request_id,
            "return-client-request-id": "true",
            "User-Agent": USER_AGENT,
        }
        started = time.perf_counter()
        connect, read = self._timeout
        deadline = context.deadline
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining < connect + 1:
                raise GraphUnavailable(f"no time left to send {method} {path} before the deadline",
                                       client_request_id=client_request_id)
            read = min(read, remaining - connect)
        try:
            # What Session.request does, with the context passed on to the adapter.
            prepared = self._session.prepare_request(
                requests.Request(method, self.base_url + path, headers=headers, json=json, params=params or {}))
            raw = self._session.send(prepared, timeout=(connect, read),
                                     context=replace(context, attempt_seconds=connect + read))
        except requests.RequestException as exc:
            maybe_sent = method not in _READ_METHODS and not _provably_not_sent(exc)
            kind = "timed out" if _is_timeout(exc) else "could not be reached"
            if maybe_sent and not _is_timeout(exc):
                kind = "dropped the connection before answering"
            raise GraphUnavailable(
                f"Graph {kind} for {method} {path}: {type(exc).__name__}",
                client_request_id=client_request_id,
                maybe_sent=maybe_sent,
            ) from exc
        duration_ms = int((time.perf_counter() - started) * 1000)
        try:
            body = raw.json() if raw.content else None
        except ValueError:
            body = None
        return GraphResponse(
            method=method,
            path=path,
            status=raw.status_code,
            body=body,
            headers=raw.headers,
            client_request_id=client_request_id,
            duration_ms=duration_ms,
        )

    def _get_token(self, force: bool = False, claims: str | None = None) -> str:
        # One token per process and lifetime: the lock makes concurrent first calls share a fetch.
        with self._token_lock:
            cached = self._token
            if not force and cached and cached.expires_on - _TOKEN_REFRESH_MARGIN > time.time():
                return cached.token
            try:
                self._token = (
                    self._credential.get_token(self._scope, claims=claims)
                    if claims
                    else self._credential.get_token(self._scope)
                )
            except Exception as exc:  # azure-identity raises several unrelated types
                self._token = None
                text = str(exc).splitlines()[0] if str(exc) else ""
                error = TokenUnavailable(f"Could not get a token for {self._scope} from {self._token_source}: "
                                         f"{type(exc).__name__}: {text}")
                if _TOKEN_REFUSED.search(text):  # Entra refused for good (no consent, unknown tenant): not an outage
                    error.http_status = 502
                raise error from exc
            return self._token.token


def _provably_not_sent(exc: requests.RequestException) -> bool:
    """Whether a failed request certainly never reached Graph: the connection was never made
    (refused, name not resolved, connect timeout). Anything else may have been received."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if type(exc) is not requests.ConnectionError:
        return False
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, (NewConnectionError, NameResolutionError, ConnectTimeoutError))


def _is_timeout(exc: BaseException) -> bool:
    text = repr(exc)
    return isinstance(exc, requests.Timeout) or "Timeout" in text or "timed out" in text


__all__ = ["GraphClient", "GraphResponse", "RetryPolicy", "PERMISSION"]
