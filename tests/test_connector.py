"""The Power Automate connector: its files validate, and the swagger is the app's contract."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import json5
import jsonschema
import pytest
import requests
from conftest import APP_FUNCTIONS, ROOT
from openapi_spec_validator import validate

from shared.api.callerauth import ROLES as CALLER_ROLES
from shared.api.routes import ROLE_OF
from shared.common.settings import DEVICES
from shared.engine.targets import TARGETS

CONNECTOR = ROOT / "connector"
# A copy inside the project (its SOURCE.md and LICENSE): a fresh clone has nothing beside it.
SCHEMAS = ROOT / "tests" / "fixtures" / "powerplatform-connector-schemas"
SWAGGER = json.loads((CONNECTOR / "apiDefinition.swagger.json").read_text())
KEY = "test-function-key"
GUID = "6a1c2f8e-2b1d-4d7e-9a55-3c1f0e6b9d01"
# Proper nouns allowed to keep their capital in a sentence-case summary.
PROPER = {"Windows", "Autopilot", "Exchange", "Intune", "Graph", "Microsoft", "Apple", "VPP", "Managed", "Google", "Play"}
OPERATIONS = [(path, method, op) for path, ops in SWAGGER["paths"].items() for method, op in ops.items()]


@pytest.fixture
def host(start_app_hosts, env):
    """The app behind a real HTTP server that enforces a function key, as in Azure, with every
    target enabled, and bulk device sync (``devices``) too."""
    settings = {**env, "SYNC_TARGETS": ",".join([*TARGETS, DEVICES])}
    url = start_app_hosts(1, settings, function_key=KEY)[0]
    return url + SWAGGER["basePath"]


def test_the_swagger_validates_against_the_power_platform_schema():
    schema = json5.loads((SCHEMAS / "apiDefinition.swagger.schema.json").read_text())
    errors = [e.message for e in jsonschema.Draft4Validator(schema).iter_errors(SWAGGER)]
    assert errors == []


def test_the_swagger_is_valid_openapi_2():
    validate(SWAGGER)  # raises on any error
    assert SWAGGER["swagger"] == "2.0"


def test_api_properties_validate_against_the_paconn_schema():
    schema = json5.loads((SCHEMAS / "paconn-apiProperties.schema.json").read_text())
    properties = json.loads((CONNECTOR / "apiProperties.json").read_text())
    assert [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(properties)] == []
    key = properties["properties"]["connectionParameters"]["api_key"]
    assert key["type"] == "securestring"
    assert SWAGGER["securityDefinitions"]["api_key"] == {"type": "apiKey", "in": "header", "name": "x-functions-key"}


@pytest.mark.parametrize("path,method,op", OPERATIONS, ids=[f"{m.upper()} {p}" for p, m, _ in OPERATIONS])
def test_summaries_are_sentence_case_and_everything_is_described(path, method, op):
    words = op["summary"].split()
    assert words[0][0].isupper() and not op["summary"].endswith(".")
    assert all(not w[0].isupper() or w in PROPER for w in words[1:]), op["summary"]
    assert op["description"] and op["operationId"]
    for parameter in op.get("parameters", []):
        assert parameter.get("x-ms-summary") and parameter.get("description"), parameter["name"]
    for status, response in op["responses"].items():
        assert response["description"]
        if status != "401":
            assert "schema" in response, f"{status} has no typed schema"


# Routes for the web console only (docs/console.md), no Power Automate operations: its static files
# and sign-in settings, who the caller is, the history view and the CSV check before an import.
CONSOLE_ROUTES = {"console", "console/config.json", "console/{*path}", "me", "sync/history",
                  "tenants/{tenantId}/sync/history", "autopilot/devices/validate"}


def test_every_app_route_is_in_the_swagger():
    templates = [fn.get_trigger().route for fn in APP_FUNCTIONS
                 if fn.get_trigger().type == "httpTrigger" and fn.get_trigger().route not in CONSOLE_ROUTES]
    swagger_paths = [p.strip("/") for p in SWAGGER["paths"]]
    for template in templates:
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        assert any(re.match(pattern, path.replace("{", "x").replace("}", "x")) for path in swagger_paths), template


def test_anonymous_routes_are_exactly_the_operations_without_security():
    anonymous = {
        fn.get_trigger().route
        for fn in APP_FUNCTIONS
        if fn.get_trigger().type == "httpTrigger" and str(fn.get_trigger().auth_level.value).lower() == "anonymous"
        and fn.get_trigger().route not in CONSOLE_ROUTES
    }
    open_ops = {p.strip("/") for p, _, op in OPERATIONS if op.get("security") == []}
    assert {re.sub(r"\{[^}]+\}", "{}", r) for r in anonymous} == {re.sub(r"\{[^}]+\}", "{}", p) for p in open_ops}


# Items the Graph emulator has, so that each operation reaches Graph.
ITEMS = {"/sync/exchange/{connectorId}": GUID, "/sync/appleAde/{tokenId}": "2f0a8b6e-6c3d-4f5e-9a1b-7c2d3e4f5a01",
         "/sync/vpp/{tokenId}": "7b1c9d2e-3f4a-4b5c-8d6e-9f0a1b2c3d01",
         "/sync/driverInventory/{profileId}": "c4d5e6f7-0a1b-4c2d-9e3f-4a5b6c7d8e01"}


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", ITEMS.get(path, GUID), path)


def test_every_target_has_its_operations():
    for name, kind in TARGETS.items():
        assert f"/sync/{name}" in SWAGGER["paths"], name
        assert kind.per_item == any(p.startswith(f"/sync/{name}/") for p in SWAGGER["paths"]), name


@pytest.mark.parametrize("path,method,op", OPERATIONS, ids=[f"{m.upper()} {p}" for p, m, _ in OPERATIONS])
def test_every_operation_is_served_with_its_method_and_other_methods_get_405(host, graph, path, method, op):
    headers = {"x-functions-key": KEY}
    served = requests.request(method, host + concrete(path), headers=headers, params={"token": "x"}, timeout=30)
    assert served.status_code != 405 and str(served.status_code) in op["responses"]
    if path.startswith("/sync/") and path != "/sync/status":
        assert served.status_code in (200, 202), served.text  # served for real, not "unknown target"
    assert served.headers["Content-Type"].startswith("application/json")
    for other in {"get", "post", "put", "delete", "patch"} - set(SWAGGER["paths"][path]):  # a path may have several
        refused = requests.request(other, host + concrete(path), headers=headers, timeout=30)
        assert refused.status_code == 405 and "Allow" in refused.headers


def test_function_level_operations_need_the_key(host, graph):
    assert requests.post(host + "/sync/autopilot", timeout=30).status_code == 401
    assert requests.get(host + "/health", timeout=30).status_code == 200  # declared without security


def test_power_automate_can_follow_the_location_without_the_key(host, graph):
    started = requests.post(host + "/sync/autopilot", params={"wait": "true"}, headers={"x-functions-key": KEY}, timeout=30)
    assert started.status_code == 202 and started.headers["Location"].startswith("http://127.0.0.1:")
    declared = SWAGGER["paths"]["/sync/autopilot"]["post"]["responses"]["202"]["headers"]
    assert {"Location", "Retry-After"} <= set(declared) <= set(started.headers)
    running = requests.get(started.headers["Location"], timeout=30)  # no key, as Power Automate polls
    assert running.status_code == 202 and running.json()["status"] == "running"
    requests.post(f"{graph.base_url}/_emulator/clock", json={"advanceSeconds": 31}, timeout=5)
    done = requests.get(running.headers["Location"], timeout=30)
    assert done.status_code == 200 and done.json()["status"] == "completed"


# What the device sync operations' schema cannot say: exactly one selector, and a filter in the app's
# grammar (shared/devicesync/selector.py); those fields are set right in a valid generated body.
# What the import operations' schema cannot say (cheaply): each serial number once per request, and a
# hash that decodes to 512-16,384 bytes (a pattern spelling that makes generation minutes slower). A
# valid import generated from the schema is completed here, and only those two fields; the app must
# accept it (positive_data_acceptance), and refuse every invalid one as generated.
IMPORT_HOOKS = """
import base64
import binascii

import schemathesis

HASH = base64.b64encode(bytes(range(256)) * 4).decode()


def _valid_hash(value):
    try:
        return isinstance(value, str) and 512 <= len(base64.b64decode(value, validate=True)) <= 16384
    except (binascii.Error, ValueError):
        return False


SELECTORS = ("deviceIds", "serialNumbers", "filter", "groupId")


def _one_selector(body):
    # Exactly one selector (what Swagger 2.0 cannot say) and a filter in the app's grammar.
    given = [name for name in SELECTORS if name in body]
    for name in given[1:]:
        del body[name]
    if not given:
        body["deviceIds"] = ["6a1c2f8e-2b1d-4d7e-9a55-3c1f0e6b9d01"]
    elif given[0] == "filter":
        body["filter"] = "operatingSystem eq 'Windows'"


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.operation.path.endswith(("/devices/sync", "/devices/syncJobs")):
        if case.meta is not None and case.meta.generation.mode.is_positive and isinstance(case.body, dict):
            _one_selector(case.body)
        return
    if case.operation.path not in ("/autopilot/devices", "/autopilot/imports"):
        return
    if case.meta is None or not case.meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return
    seen = set()
    for number, device in enumerate(case.body.get("devices") or [], start=1):
        serial = device["serialNumber"]
        while serial.upper() in seen:
            serial = f"{serial[:120]}-{number}"
        seen.add(serial.upper())
        device["serialNumber"] = serial
        if not _valid_hash(device["hardwareIdentifier"]):
            device["hardwareIdentifier"] = HASH
"""


def test_schemathesis_finds_no_server_error_and_no_response_outside_the_contract(host, graph, tmp_path):
    hooks = tmp_path / "import_hooks.py"
    hooks.write_text(IMPORT_HOOKS)
    run = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", str(CONNECTOR / "apiDefinition.swagger.json"),
         "--url", host, "-H", f"x-functions-key: {KEY}", "--checks", "all", "--mode", "all",
         "--max-examples", "25", "--seed", "20261123", "--workers", "1", "--report-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "SCHEMATHESIS_HOOKS": str(hooks)},
    )
    assert run.returncode == 0, run.stdout[-6000:]
    tested = re.search(r"(\d+) generated", run.stdout)
    assert tested and int(tested.group(1)) >= 100, run.stdout[-2000:]
    assert "Coverage" in run.stdout and "Fuzzing" in run.stdout  # negative and positive data both ran


# --- the connector for CALLER_AUTH=entra (issue 22): the same operations, signed in with Entra ID ---


ENTRA = CONNECTOR / "entra"
ENTRA_SWAGGER = json.loads((ENTRA / "apiDefinition.swagger.json").read_text())
ENTRA_PROPERTIES = json.loads((ENTRA / "apiProperties.json").read_text())
# What Power Automate requires of OAuth connectors since 2024 (a redirect URI per connector); the
# copy of Microsoft's paconn schema in tests/fixtures predates it and lists only Global and Direct.
PER_CONNECTOR_REDIRECT = "GlobalPerConnector"


def entra_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("connector_entra_generate", ENTRA / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def without_security(swagger: dict) -> dict:
    """The swagger less what signing in changes: security, the title and description, and each
    operation's description, 401 and 403."""
    rest = {key: value for key, value in swagger.items() if key not in ("securityDefinitions", "security", "info")}
    rest["paths"] = {
        path: {method: {key: value for key, value in op.items() if key != "description"}
               | {"responses": {s: r for s, r in op["responses"].items() if s not in ("401", "403")}}
               for method, op in ops.items()}
        for path, ops in swagger["paths"].items()
    }
    return rest


def test_the_entra_swagger_is_what_the_generator_writes_from_the_key_swagger():
    generator = entra_generator()
    assert generator.KEY_SWAGGER == CONNECTOR / "apiDefinition.swagger.json"
    expected = generator.render(generator.entra_variant(SWAGGER))
    assert (ENTRA / "apiDefinition.swagger.json").read_text() == expected, "run: python connector/entra/generate.py"


def test_the_entra_swagger_has_the_same_operations_and_differs_only_in_security():
    assert without_security(ENTRA_SWAGGER) == without_security(SWAGGER)
    key_ops = {(p, m, op["operationId"], op.get("security") == []) for p, m, op in OPERATIONS}
    entra_ops = {(p, m, op["operationId"], op.get("security") == []) for p, ops in ENTRA_SWAGGER["paths"].items()
                 for m, op in ops.items()}
    assert key_ops == entra_ops  # the same anonymous operations: health and the valet-token polls


def test_the_entra_swagger_validates_against_the_power_platform_schema_and_openapi_2():
    schema = json5.loads((SCHEMAS / "apiDefinition.swagger.schema.json").read_text())
    assert [e.message for e in jsonschema.Draft4Validator(schema).iter_errors(ENTRA_SWAGGER)] == []
    validate(ENTRA_SWAGGER)


def test_the_entra_swagger_signs_in_with_oauth2_and_nothing_sends_a_function_key():
    assert ENTRA_SWAGGER["securityDefinitions"] == {"oauth2_auth": {
        "type": "oauth2", "flow": "accessCode",
        "authorizationUrl": "https://login.microsoftonline.com/common/oauth2/authorize",
        "tokenUrl": "https://login.microsoftonline.com/common/oauth2/token", "scopes": {}}}
    assert ENTRA_SWAGGER["security"] == [{"oauth2_auth": []}]
    text = json.dumps(ENTRA_SWAGGER)
    assert "api_key" not in text and "x-functions-key" not in text and "function key" not in text.lower()


# Which of the app's actions (shared/api/routes.py) serves each signed-in operation.
ACTION_OF_OPERATION = {
    ("post", "/autopilot/devices"): "import_devices", ("post", "/autopilot/imports"): "start_import",
    ("post", "/devices/sync"): "device_sync", ("post", "/devices/syncJobs"): "start_device_sync",
    ("get", "/sync/status"): "status", ("get", "/tenants/{tenantId}/sync/status"): "tenant_status",
    ("get", "/tenants"): "tenants_list", ("get", "/tenants/{tenantId}"): "tenant_get",
    ("put", "/tenants/{tenantId}"): "tenant_put", ("delete", "/tenants/{tenantId}"): "tenant_delete",
    ("post", "/tenants/{tenantId}/devices/sync"): "tenant_device_sync",
    ("post", "/tenants/{tenantId}/devices/syncJobs"): "start_tenant_device_sync",
    ("post", "/tenants/{tenantId}/sync/{target}"): "tenant_sync", ("post", "/tenants/{tenantId}/sync/{target}/{itemId}"): "tenant_sync",
}


def code_role(method: str, path: str) -> str | None:
    """The role the app checks for an operation: ROLE_OF of the action that serves it."""
    roles = {action.__name__: role for action, role in ROLE_OF.items()}
    action = ACTION_OF_OPERATION.get((method, path)) or ("sync" if method == "post" and path.startswith("/sync/") else None)
    assert action in roles, (method, path, action)
    return roles[action]


def test_every_signed_in_entra_operation_answers_401_and_403_naming_the_role_the_app_checks():
    generator = entra_generator()
    seen = set()
    for path, ops in ENTRA_SWAGGER["paths"].items():
        for method, op in ops.items():
            if op.get("security") == []:
                assert "403" not in op["responses"], (method, path)
                continue
            role = generator.role_of(method, path)
            assert role == code_role(method, path), (method, path)  # the connector says what the app does
            seen.add(role)
            assert "Bearer" in op["responses"]["401"]["description"]
            refused = op["responses"]["403"]
            assert f"app role {role} " in refused["description"] and refused["schema"] == {"$ref": "#/definitions/Error"}
    assert seen == set(CALLER_ROLES)  # every role guards some operation
    # The anonymous operations are those the app opens to anyone.
    open_actions = {action.__name__ for action, role in ROLE_OF.items() if role is None}
    assert open_actions == {"operation", "import_status", "device_sync_status", "tenant_device_sync_status", "health"}
    assert len([op for ops in ENTRA_SWAGGER["paths"].values() for op in ops.values() if op.get("security") == []]) == 5


def test_the_entra_api_properties_validate_against_the_paconn_schema():
    schema = json5.loads((SCHEMAS / "paconn-apiProperties.schema.json").read_text())
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(ENTRA_PROPERTIES))
    # Against the schema as copied, the one complaint is the per-connector redirect mode...
    causes = [c for e in errors for c in e.context if c.validator == "enum" and list(c.absolute_path)[-1:] == ["redirectMode"]]
    assert len(errors) == 1 and [c.instance for c in causes] == [PER_CONNECTOR_REDIRECT]
    # ...and with that mode allowed it validates entirely.
    modes = schema["definitions"]["oAuthSettings"]["properties"]["redirectMode"]["enum"]
    assert PER_CONNECTOR_REDIRECT not in modes
    modes.append(PER_CONNECTOR_REDIRECT)
    assert [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(ENTRA_PROPERTIES)] == []


def test_the_entra_connection_signs_in_to_the_api_registration_and_keeps_the_host_name():
    key_properties = json.loads((CONNECTOR / "apiProperties.json").read_text())["properties"]
    properties = ENTRA_PROPERTIES["properties"]
    parameters = properties["connectionParameters"]
    assert set(parameters) == {"hostName", "token"}
    assert parameters["hostName"] == key_properties["connectionParameters"]["hostName"]
    assert properties["policyTemplateInstances"] == key_properties["policyTemplateInstances"]  # the host name routes it
    token = parameters["token"]
    assert token["type"] == "oauthSetting"
    settings = token["oAuthSettings"]
    assert settings["identityProvider"] == "aad" and settings["scopes"] == [] and settings["redirectMode"] == PER_CONNECTOR_REDIRECT
    assert settings["clientId"] == "<CONNECTOR_CLIENT_ID>" and "clientSecret" not in settings  # given to paconn, never stored
    custom = {name: value["value"] for name, value in settings["customParameters"].items()}
    assert custom == {"loginUri": "https://login.microsoftonline.com", "tenantId": "<AZURE_TENANT_ID>",
                      "resourceUri": "api://<API_CLIENT_ID>"}
    assert settings["properties"]["AzureActiveDirectoryResourceId"] == custom["resourceUri"]
    readme = (CONNECTOR / "README.md").read_text()
    for placeholder in ("<CONNECTOR_CLIENT_ID>", "<AZURE_TENANT_ID>", "<API_CLIENT_ID>"):
        assert placeholder in readme, placeholder  # the README says what to put there
