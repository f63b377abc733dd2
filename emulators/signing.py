"""Signed access tokens for the app's own API, as Entra issues them to callers (people and flows):
RS256 with a key published at the tenant's ``jwks_uri``, v2.0 claims (``iss``
``{authority}/{tid}/v2.0``, ``aud`` the API's client id, ``tid``, ``oid``, ``preferred_username``
or ``azp`` for an app-only token, ``roles``, ``groups`` or the overage indicator).

The keys roll over as Entra's do: ``rotate()`` makes a new signing key and publishes it beside the
old one (``keep_old``) or instead of it. ``caller_token`` can also make the bad tokens a validator
must refuse: signed with a key never published, ``alg: none``, or HS256 keyed with the public key.
"""
from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

API_CLIENT_ID = "7d3f9a52-1c4e-4b8a-9e6d-2a5c8b1f0e34"  # the emulated API app registration (CALLER_AUTH=entra)
# The API's app roles (shared/api/callerauth.py ROLES; the emulators do not import the app).
API_ROLES = ("Sync.Run", "Devices.Import", "Devices.Sync", "Tenants.Manage", "Status.Read")
CLIENT_APP_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"  # the app a person signs in with (Azure CLI's id)
USER_OBJECT = uuid.UUID("0b1d7a60-6f8e-4c1a-9f2e-5d3c4b2a1908")
OVERAGE = {"_claim_names": {"groups": "src1"},
           "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/{oid}/getMemberObjects"}}}


@dataclass
class _Key:
    kid: str
    private: rsa.RSAPrivateKey

    def jwk(self) -> dict[str, Any]:
        public = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        return {"kty": "RSA", "use": "sig", "kid": self.kid, "x5t": self.kid, "n": public["n"], "e": public["e"]}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)


def _new_key() -> _Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _Key(base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode(), private)


class SigningKeys:
    """The keys the emulator signs callers' tokens with; ``published`` is what ``jwks_uri`` serves."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current = _new_key()
        self.published: list[_Key] = [self.current]
        self.unpublished = _new_key()  # signs the "unknown key" tokens: never served
        self.jwks_requests = 0

    def jwks(self) -> dict[str, Any]:
        with self.lock:
            self.jwks_requests += 1
            return {"keys": [k.jwk() for k in self.published]}

    def rotate(self, keep_old: bool = True) -> str:
        """A new signing key, published (beside the old one when ``keep_old``); its kid."""
        with self.lock:
            self.current = _new_key()
            self.published = [*(self.published if keep_old else []), self.current]
            return self.current.kid

    def caller_token(self, base_url: str, *, tenant: str, audience: str = API_CLIENT_ID, roles: list[str] | None = None,
                     upn: str | None = "alice@contoso.com", app_only: bool = False, object_id: str | None = None,
                     groups: list[str] | None = None, groups_overage: bool = False, lifetime: int = 3600,
                     not_before_in: int = 0, issuer: str | None = None, sign: str = "current",
                     **claims: Any) -> str:
        """An access token for the API. ``sign``: ``current`` (the published signing key), ``unknown``
        (a key never published), ``none`` (``alg: none``, no signature), ``hs256-public`` (HS256
        keyed with the published public key: the algorithm-confusion attack)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "aud": audience, "iss": issuer or f"{base_url}/{tenant}/v2.0", "iat": now, "nbf": now + not_before_in,
            "exp": now + lifetime, "tid": tenant, "ver": "2.0", "roles": list(roles or []),
            "oid": object_id or str(uuid.uuid5(USER_OBJECT, f"{tenant}/{upn or 'app'}/{app_only}")),
            "azp": CLIENT_APP_ID, "azpacr": "0", "uti": uuid.uuid4().hex[:22],
        }
        body["sub"] = body["oid"]
        if app_only:
            body["idtyp"] = "app"
        else:
            body |= {"preferred_username": upn, "name": (upn or "").split("@")[0].title(), "scp": "user_impersonation"}
        if groups_overage:
            body |= json.loads(json.dumps(OVERAGE).replace("{oid}", body["oid"]))
        elif groups is not None:
            body["groups"] = list(groups)
        body |= claims
        with self.lock:
            key = self.unpublished if sign == "unknown" else self.current
        if sign == "none":
            return jwt.encode(body, None, algorithm="none", headers={"kid": key.kid})
        if sign == "hs256-public":
            return _hs256(body, key.public_pem(), key.kid)
        return jwt.encode(body, key.private, algorithm="RS256", headers={"kid": key.kid, "typ": "JWT"})


def _hs256(body: dict[str, Any], secret: bytes, kid: str) -> str:
    """HS256 by hand: PyJWT refuses an asymmetric key's PEM as an HMAC secret (that refusal is the
    defence this token tests)."""
    import hashlib
    import hmac

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()

    signing_input = f"{part({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{part(body)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
