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


def test_every_app_route_is_in_the_swagger():
    templates = [fn.get_trigger().route for fn in APP_FUNCTIONS if fn.get_trigger().type == "httpTrigger"]
    swagger_paths = [p.strip("/") for p in SWAGGER["paths"]]
    for template in templates:
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        assert any(re.match(pattern, path.replace("{", "x").replace("}", "x")) for path in swagger_paths), template


def test_anonymous_routes_are_exactly_the_operations_without_security():
    anonymous = {
        fn.get_trigger().route
        for fn in APP_FUNCTIONS
        if fn.get_trigger().type == "httpTrigger" and str(fn.get_trigger().auth_level.value).lower() == "anonymous"
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
