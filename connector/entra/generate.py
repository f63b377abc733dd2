"""Writes connector/entra/apiDefinition.swagger.json from connector/apiDefinition.swagger.json: the same
paths, operations, parameters, schemas and answers, signed in with Entra ID (OAuth 2.0, authorization
code) instead of a function key, for an app with CALLER_AUTH=entra (docs/security.md).

    python connector/entra/generate.py          # rewrite the file
    python connector/entra/generate.py --check  # exit 1 if the file is not what this writes

tests/test_connector.py checks that the file is exactly what this writes, so a change to the key
variant is carried over by rerunning it."""
from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KEY_SWAGGER = HERE.parent / "apiDefinition.swagger.json"
ENTRA_SWAGGER = HERE / "apiDefinition.swagger.json"

SCHEME = "oauth2_auth"
# Microsoft's form for an Entra ID (Azure AD) protected API in a custom connector: the connector's
# own authorization-code flow; the resource, tenant and client come from apiProperties.json.
SECURITY_DEFINITION = {
    "type": "oauth2",
    "flow": "accessCode",
    "authorizationUrl": "https://login.microsoftonline.com/common/oauth2/authorize",
    "tokenUrl": "https://login.microsoftonline.com/common/oauth2/token",
    "scopes": {},
}

# The app role each operation needs, by method and path, as the app checks it (ROLE_OF in
# shared/api/routes.py; tests/test_connector.py compares the two). The valet-token polls and the
# health check are declared without security and need none.
ROLE_OF_OPERATION = (
    ("get", r"^(/tenants/\{tenantId\})?/sync/status$", "Status.Read"),
    ("post", r"^(/tenants/\{tenantId\})?/sync/", "Sync.Run"),
    ("post", r"^/autopilot/", "Devices.Import"),
    ("post", r"^(/tenants/\{tenantId\})?/devices/", "Devices.Sync"),
    ("get", r"^/tenants(/\{tenantId\})?$", "Status.Read"),  # reading the registry
    ("put", r"^/tenants/\{tenantId\}$", "Tenants.Manage"),
    ("delete", r"^/tenants/\{tenantId\}$", "Tenants.Manage"),
)

UNAUTHORIZED = ("No valid Entra ID access token for the API (missing, expired, for another audience or tenant, or "
                "signed by an unknown key): WWW-Authenticate: Bearer, and error.code says what was wrong.")
ERROR = {"$ref": "#/definitions/Error"}


def role_of(method: str, path: str) -> str:
    for verb, pattern, role in ROLE_OF_OPERATION:
        if verb == method and re.search(pattern, path):
            return role
    raise ValueError(f"no app role for {method.upper()} {path}: add it to ROLE_OF_OPERATION and docs/security.md")


def entra_variant(key: dict[str, Any]) -> dict[str, Any]:
    """The key swagger with Entra ID sign-in: OAuth 2.0 security, and for each operation that needs
    it a 401 that speaks of tokens and a 403 naming the app role it lacks."""
    swagger = copy.deepcopy(key)
    assert set(swagger["securityDefinitions"]) == {"api_key"} and swagger["security"] == [{"api_key": []}]
    swagger["info"]["title"] = f"{key['info']['title']} (Entra ID)"
    swagger["info"]["description"] = (f"{key['info']['description']} Signs in with Entra ID; each action needs "
                                      "an app role of the intune-sync API.")
    swagger["securityDefinitions"] = {SCHEME: SECURITY_DEFINITION}
    swagger["security"] = [{SCHEME: []}]
    for path, operations in swagger["paths"].items():
        for method, operation in operations.items():
            if operation.get("security") == []:  # anonymous at the host and in the app
                operation["description"] = re.sub(r"\bno key is needed\b", "no token is needed",
                                                  re.sub(r"\bNeeds no key\b", "Needs no token", operation["description"]))
                continue
            assert "security" not in operation, (path, operation["operationId"])
            role = role_of(method, path)
            responses = operation["responses"]
            assert "401" in responses and "403" not in responses, (path, operation["operationId"])
            responses["401"] = {"description": UNAUTHORIZED}
            refused = f"The token lacks the app role {role} (error.code MissingRole)."
            if path.startswith("/tenants/{tenantId}/"):
                refused += " Or the tenant lists operatorGroups and the token's groups claim names none of them (error.code says which)."
            responses["403"] = {"description": refused, "schema": ERROR}
            operation["responses"] = dict(sorted(responses.items()))
    return swagger


def render(swagger: dict[str, Any]) -> str:
    return json.dumps(swagger, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render(entra_variant(json.loads(KEY_SWAGGER.read_text(encoding="utf-8"))))
    if "--check" in argv:
        same = ENTRA_SWAGGER.exists() and ENTRA_SWAGGER.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{ENTRA_SWAGGER} differs: run python {Path(__file__).as_posix()}")
        return 0 if same else 1
    ENTRA_SWAGGER.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
