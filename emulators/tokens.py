"""Unsigned JWT-shaped tokens shared by the identity, Entra and Graph emulators.

Real Entra tokens are signed; the emulators only need the claims Graph and Entra check: the
audience, the expiry, the issue time (for revocation), the application roles, the tenant
(``tid``), and, for a managed identity's token presented as a federated credential, the issuer
and the subject (the identity's principal id).
"""
from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

PERMISSION = "DeviceManagementServiceConfig.ReadWrite.All"
# What the emulated app registration is granted unless a test says otherwise.
ALL_ROLES = (PERMISSION, "DeviceManagementConfiguration.ReadWrite.All", "DeviceManagementManagedDevices.Read.All",
             "DeviceManagementManagedDevices.PrivilegedOperations.All", "GroupMember.Read.All")
# The tenant that owns the app, its managed identity and the multi-tenant app registration.
HOME_TENANT = "8f3c2a1e-5b7d-4e6f-9a0b-1c2d3e4f5a6b"
# The audience of a managed identity's token that Entra exchanges (global cloud).
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
_PRINCIPALS = uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")


def principal_id(client_id: str | None) -> str:
    """A managed identity's object (principal) id: a stable GUID derived from its client id."""
    return str(uuid.uuid5(_PRINCIPALS, client_id or "system-assigned"))


def issuer(tenant: str) -> str:
    """The v2.0 issuer of a tenant (what a federated identity credential names as issuer)."""
    return f"https://login.microsoftonline.com/{tenant}/v2.0"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def issue(audience: str, roles: list[str], lifetime: int, client_id: str | None,
          **claims: Any) -> tuple[str, int]:
    """A token for ``audience``; ``claims`` adds or overrides claims (``tid``, ``sub``, ``oid``, ``iss``...)."""
    now = time.time()
    expires = int(now + lifetime)
    body = {
        "aud": audience,
        "iat": now,
        "exp": expires,
        "appid": client_id or "system-assigned",
        "roles": roles,
        "idtyp": "app",
        **claims,
    }
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(body)}.emulator", expires


def decode(token: str) -> dict[str, Any] | None:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    return claims if isinstance(claims, dict) else None
