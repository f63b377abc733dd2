"""Managed-identity endpoint emulator: the App Service protocol behind IDENTITY_ENDPOINT.

azure-identity's ManagedIdentityCredential calls
``GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=...&client_id=...`` with the header
``X-IDENTITY-HEADER: {IDENTITY_HEADER}``; this answers the same way Azure does.

Tokens carry what Entra's tokens for a managed identity carry and a federated identity credential
is matched on: ``sub`` and ``oid`` = the identity's principal (object) id (a stable GUID derived from
the requested ``client_id``, or the configured ``principalId``), ``iss`` =
``https://login.microsoftonline.com/{tenant}/v2.0`` and ``tid`` = the identity's (home) tenant. Any
resource may be asked for, ``api://AzureADTokenExchange`` included (the token's ``aud`` is then
that string).

Test controls (no auth): ``POST /_emulator/config`` ``{"roles": [...], "failing": bool,
"lifetimeSeconds": n, "hangSeconds": s, "hangTimes": n, "tenantId": "<home tenant>",
"principalId": "<guid>" | null}`` (hang: the next n token requests wait s seconds before
answering: a hanging endpoint; principalId null: derived from the client id again),
``GET /_emulator/stats`` (``tokenRequests``, ``roles``, ``byResource``: requests per resource).
"""
from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from .server import JsonHandler, Server
from .tokens import ALL_ROLES, HOME_TENANT, issue, issuer, principal_id

TOKEN_PATH = "/msi/token"
DEFAULT_SECRET = "local-identity-header"


class IdentityEmulator(Server):
    def __init__(self, port: int = 0, secret: str = DEFAULT_SECRET):
        super().__init__(_Handler, port)
        self.secret = secret
        self.lock = threading.Lock()
        self.roles: list[str] = list(ALL_ROLES)
        self.failing = False
        self.lifetime = 3600
        self.token_requests = 0
        self.by_resource: dict[str, int] = {}
        self.hang_seconds, self.hang_times = 0.0, 0
        self.tenant_id = HOME_TENANT
        self.principal: str | None = None  # None: derived from the client id

    def principal_id(self, client_id: str | None) -> str:
        """The object (principal) id of the identity with ``client_id``: the subject a federated
        identity credential must name."""
        return self.principal or principal_id(client_id)

    @property
    def endpoint(self) -> str:
        return self.base_url + TOKEN_PATH

    def env(self) -> dict[str, str]:
        """The variables App Service sets for a managed identity."""
        return {"IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self.secret}

    def configure(self, **config: Any) -> None:
        with self.lock:
            if "roles" in config:
                self.roles = list(config["roles"])
            if "failing" in config:
                self.failing = bool(config["failing"])
            if "lifetimeSeconds" in config:
                self.lifetime = int(config["lifetimeSeconds"])
            if "hangSeconds" in config:
                self.hang_seconds = float(config["hangSeconds"])
                self.hang_times = int(config.get("hangTimes", 1))
            if "tenantId" in config:
                self.tenant_id = str(config["tenantId"])
            if "principalId" in config:
                self.principal = config["principalId"] or None
            if config.get("resetStats"):
                self.token_requests = 0
                self.by_resource = {}


class _Handler(JsonHandler):
    server: IdentityEmulator

    def dispatch(self) -> None:
        em = self.server
        if self.path_only == "/_emulator/config" and self.command == "POST":
            em.configure(**(self.read_json() or {}))
            return self.send_json(204)
        if self.path_only == "/_emulator/stats":
            with em.lock:
                stats = {"tokenRequests": em.token_requests, "roles": em.roles, "byResource": dict(em.by_resource)}
            return self.send_json(200, stats)
        if self.path_only != TOKEN_PATH or self.command != "GET":
            return self.send_json(404, {"error": "not_found"})
        if self.headers.get("X-IDENTITY-HEADER") != em.secret:
            return self.send_json(401, {"error": "unauthorized", "error_description": "X-IDENTITY-HEADER missing or wrong"})
        resource = self.query.get("resource")
        if self.query.get("api-version") != "2019-08-01" or not resource:
            return self.send_json(400, {"error": "invalid_request", "error_description": "api-version and resource are required"})
        with em.lock:
            hang = em.hang_seconds if em.hang_times > 0 else 0.0
            em.hang_times -= 1 if hang else 0
        if hang:
            time.sleep(hang)
        with em.lock:
            em.token_requests += 1
            em.by_resource[resource] = em.by_resource.get(resource, 0) + 1
            if em.failing:
                return self.send_json(500, {"error": "server_error", "error_description": "emulated outage"})
            roles, lifetime, tenant = list(em.roles), em.lifetime, em.tenant_id
        client_id = self.query.get("client_id")
        principal = em.principal_id(client_id)
        token, expires = issue(resource.rstrip("/"), roles, lifetime, client_id,
                               sub=principal, oid=principal, tid=tenant, iss=issuer(tenant))
        self.send_json(
            200,
            {
                "access_token": token,
                "expires_on": str(expires),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id or "system-assigned",
            },
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8091)
    args = parser.parse_args()
    server = IdentityEmulator(port=args.port)
    print(f"identity emulator on {server.endpoint}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        time.sleep(0)


if __name__ == "__main__":
    main()
