"""Unsigned JWT-shaped tokens shared by the identity and Graph emulators.

Real Entra tokens are signed; the emulators only need the claims Graph checks: the audience,
the expiry, the issue time (for revocation) and the application roles.
"""
from __future__ import annotations

import base64
import json
import time
from typing import Any

PERMISSION = "DeviceManagementServiceConfig.ReadWrite.All"
# What the emulated app registration is granted unless a test says otherwise.
ALL_ROLES = (PERMISSION, "DeviceManagementConfiguration.ReadWrite.All")


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def issue(audience: str, roles: list[str], lifetime: int, client_id: str | None) -> tuple[str, int]:
    now = time.time()
    expires = int(now + lifetime)
    claims = {
        "aud": audience,
        "iat": now,
        "exp": expires,
        "appid": client_id or "system-assigned",
        "roles": roles,
        "idtyp": "app",
    }
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.emulator", expires


def decode(token: str) -> dict[str, Any] | None:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    return claims if isinstance(claims, dict) else None
