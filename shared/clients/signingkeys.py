"""The keys Entra signs access tokens with, per tenant, read from the tenant's OpenID configuration
(``{authority}/{tenant}/v2.0/.well-known/openid-configuration`` names ``jwks_uri`` and ``issuer``).

Kept in the process for a day (Entra publishes a new key well before it signs with it). A token
whose ``kid`` is not among them fetches the keys again, at most once per CALLER_KEYS_REFRESH_SECONDS
per tenant, so that a key rollover is followed within that interval and a flood of tokens with
made-up key ids costs Entra one request per interval, not one per token. Only tenants the caller
already allowed (shared/api/callerauth.py) are ever fetched.

The keys are parsed by PyJWT (``PyJWKSet``); the fetch is ``requests`` with the app's transport
(proxies, CA bundle), not PyJWT's ``PyJWKClient``, which refetches on every unknown ``kid``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import requests

from ..common import EntraUnavailable
from .transport import configure_session

KEYS_LIFETIME = 24 * 3600.0  # seconds a fetched key set is used before it is fetched again anyway
FAILURE_BACKOFF = 5.0  # after a failed fetch, at most: the next request tries again only after this
TIMEOUT = (3.05, 10.0)  # connect, read: a caller is waiting

log = logging.getLogger(__name__)


@dataclass
class TenantKeys:
    """A tenant's issuer and keys by ``kid``; when they were fetched and last tried (``clock``
    seconds), and why the last try failed."""

    issuer: str | None = None
    keys: dict[str, Any] = field(default_factory=dict)
    fetched_at: float = float("-inf")
    tried_at: float = float("-inf")
    failure: str | None = None


class SigningKeys:
    """Entra's signing keys for each tenant asked about, fetched on first use.

    A failed fetch is remembered: the next try waits FAILURE_BACKOFF (or the refresh interval, if
    shorter), so that an Entra outage, or forged tokens naming an allowed tenant, cost Entra one
    request per interval and the callers an immediate 503, not a queue of timeouts; keys already
    fetched are kept and used (a day-old key set is better than none while Entra is down). One
    fetch per tenant at a time, outside any lock other tenants wait on."""

    def __init__(self, authority: str, refresh_seconds: float, clock: Callable[[], float] = time.monotonic,
                 session: requests.Session | None = None):
        self.authority = authority.rstrip("/")
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.session = session or configure_session(requests.Session(), self.authority)
        self._tenants: dict[str, TenantKeys] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the two dicts only, never held during a fetch
        self.fetches = 0  # key-set fetches tried (the benchmark and tests read it)

    def issuer(self, tenant: str) -> str:
        """The tenant's token issuer (fetched with its keys)."""
        return str(self._usable(tenant).issuer)

    def key(self, tenant: str, kid: str) -> Any | None:
        """The public key ``kid`` of ``tenant``, or None when Entra does not publish it (after one
        refetch, if the last try is older than the refresh interval)."""
        known = self._usable(tenant)
        if kid in known.keys:
            return known.keys[kid]
        with self._tenant_lock(tenant):
            known = self._tenants[tenant]
            if kid not in known.keys and self.clock() - known.tried_at >= self.refresh_seconds:
                known = self._refresh(tenant, known)
        return known.keys.get(kid)

    def _usable(self, tenant: str) -> TenantKeys:
        """Keys to check a token with: fresh, else fetched now, else (Entra failing) the last ones
        fetched; EntraUnavailable when there are none."""
        known = self._tenants.get(tenant)
        if known is not None and known.keys and self.clock() - known.fetched_at < KEYS_LIFETIME:
            return known
        with self._tenant_lock(tenant):
            known = self._tenants.get(tenant) or TenantKeys()
            stale = not known.keys or self.clock() - known.fetched_at >= KEYS_LIFETIME
            if stale and self.clock() - known.tried_at >= min(FAILURE_BACKOFF, self.refresh_seconds):
                known = self._refresh(tenant, known)
        if not known.keys:
            raise EntraUnavailable(known.failure or f"tenant {tenant}'s signing keys could not be read")
        return known

    def _refresh(self, tenant: str, known: TenantKeys) -> TenantKeys:
        """Fetch now (the caller holds the tenant's lock); a failure keeps the keys there were."""
        self.fetches += 1
        try:
            fresh = self._fetch(tenant)
        except EntraUnavailable as exc:
            fresh = TenantKeys(known.issuer, known.keys, known.fetched_at, self.clock(), exc.message)
            if known.keys:
                log.warning("Entra ID signing keys: %s; the keys fetched before stay in use", exc.message)
        self._tenants[tenant] = fresh
        return fresh

    def _tenant_lock(self, tenant: str) -> threading.Lock:
        with self._lock:  # tenants are the allowed ones only (shared/api/callerauth.py): a bounded dict
            return self._locks.setdefault(tenant, threading.Lock())

    def _fetch(self, tenant: str) -> TenantKeys:
        """Both documents, read now."""
        where = f"{self.authority}/{tenant}/v2.0/.well-known/openid-configuration"
        config = self._json(where, f"tenant {tenant}'s OpenID configuration")
        jwks_uri, issuer = config.get("jwks_uri"), config.get("issuer")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://") or not isinstance(issuer, str):
            raise EntraUnavailable(f"tenant {tenant}'s OpenID configuration names no https jwks_uri and issuer")
        document = self._json(jwks_uri, f"tenant {tenant}'s signing keys")
        try:
            keys = {k.key_id: k.key for k in jwt.PyJWKSet.from_dict(document).keys if k.key_id}
        except (jwt.PyJWKSetError, jwt.InvalidKeyError, KeyError, TypeError, ValueError) as exc:
            raise EntraUnavailable(f"tenant {tenant}'s signing keys could not be read: {type(exc).__name__}: {exc}") from None
        now = self.clock()
        return TenantKeys(issuer, keys, now, now)
    def _json(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = self.session.get(url, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise EntraUnavailable(f"{what} could not be read: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise EntraUnavailable(f"{what} could not be read: Entra answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise EntraUnavailable(f"{what} could not be read: the answer is not JSON") from None
        if not isinstance(body, dict):
            raise EntraUnavailable(f"{what} could not be read: the answer is not a JSON object")
        return body
