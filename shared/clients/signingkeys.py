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
TIMEOUT = (3.05, 10.0)  # connect, read: a caller is waiting


@dataclass
class TenantKeys:
    """A tenant's issuer and keys by ``kid``, and when they were fetched (``clock`` seconds)."""

    issuer: str
    keys: dict[str, Any] = field(default_factory=dict)
    fetched_at: float = 0.0


class SigningKeys:
    """Entra's signing keys for each tenant asked about, fetched on first use."""

    def __init__(self, authority: str, refresh_seconds: float, clock: Callable[[], float] = time.monotonic,
                 session: requests.Session | None = None):
        self.authority = authority.rstrip("/")
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.session = session or configure_session(requests.Session(), self.authority)
        self._tenants: dict[str, TenantKeys] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # key-set fetches made (the benchmark and tests read it)

    def issuer(self, tenant: str) -> str:
        """The tenant's token issuer (fetched with its keys)."""
        return self._current(tenant).issuer

    def key(self, tenant: str, kid: str) -> Any | None:
        """The public key ``kid`` of ``tenant``, or None when Entra does not publish it (after one
        refetch, if the last fetch is older than the refresh interval)."""
        known = self._current(tenant)
        if kid in known.keys:
            return known.keys[kid]
        with self._lock:
            known = self._tenants[tenant]
            if kid not in known.keys and self.clock() - known.fetched_at >= self.refresh_seconds:
                known = self._fetch(tenant)
        return known.keys.get(kid)

    def _current(self, tenant: str) -> TenantKeys:
        known = self._tenants.get(tenant)
        if known is not None and self.clock() - known.fetched_at < KEYS_LIFETIME:
            return known
        with self._lock:
            known = self._tenants.get(tenant)
            if known is None or self.clock() - known.fetched_at >= KEYS_LIFETIME:
                known = self._fetch(tenant)
            return known

    def _fetch(self, tenant: str) -> TenantKeys:
        """Both documents, read now (under the lock: one fetch per tenant at a time)."""
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
        self.fetches += 1
        fetched = TenantKeys(issuer, keys, self.clock())
        self._tenants[tenant] = fetched
        return fetched

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
