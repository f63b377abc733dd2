"""The Bicep in infra/: it parses, checkov finds nothing, and it agrees with the code about the
settings (names and defaults) and the roles the app's identity needs."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from conftest import ROOT
from shared import permissions
from shared.graph import PERMISSION
from shared.settings import DEFAULTS, Settings

INFRA = ROOT / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
# checkov's bundled parser predates Bicep extensions; only such a module may be left out.
EXTENSION_MODULES = [p for p in BICEP_FILES if re.search(r"^extension\s", p.read_text(), re.M)]


def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


def param_default(template: dict[str, Any], expression: Any) -> Any:
    """The default behind an app-setting value: a parameter, or string(parameter)."""
    if isinstance(expression, dict):
        function = expression["function"]
        assert function["type"] == "string", expression
        expression = function["parameters"]["value_to_convert"]
    return template["parameters"][expression]["default"]


def test_there_are_bicep_files_to_check():
    assert INFRA / "main.bicep" in BICEP_FILES and len(BICEP_FILES) >= 6


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_bicep_file_parses(path):
    assert parse(path)


def test_a_syntax_error_is_caught_by_the_parser(tmp_path):
    broken = tmp_path / "broken.bicep"
    broken.write_text("param x string =\nresource {\n")
    with pytest.raises(Exception):
        parse(broken)


def test_checkov_finds_no_failed_check_and_no_parsing_error():
    skip = [arg for p in EXTENSION_MODULES for arg in ("--skip-path", str(p.relative_to(INFRA)))]
    run = subprocess.run(
        [str(CHECKOV), "--framework", "bicep", "--skip-download", "-d", ".", *skip, "--compact", "--quiet"],
        cwd=INFRA, capture_output=True, text=True, timeout=600, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    summary = re.search(r"Passed checks: (\d+), Failed checks: (\d+), Skipped checks: (\d+)(.*)", run.stdout)
    assert summary, run.stdout + run.stderr
    passed, failed = int(summary.group(1)), int(summary.group(2))
    assert "Parsing errors" not in run.stdout, run.stdout
    assert failed == 0 and run.returncode == 0, run.stdout
    assert passed >= 15  # the scan really looked at the resources


def test_only_modules_with_an_extension_are_left_out_of_checkov():
    assert [p.name for p in EXTENSION_MODULES] == ["graph-permission.bicep"]


def test_every_checkov_suppression_carries_a_justification():
    for path in BICEP_FILES:
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                match = re.search(r"checkov:skip=(CKV\w+):\s*(.+)", line)
                assert match and len(match.group(2)) >= 40, f"{path.name}: {line.strip()}"


def test_bicep_sets_every_setting_the_code_reads_with_the_same_default():
    main = parse(INFRA / "main.bicep")
    sync_settings = main["variables"]["syncSettings"]["value"]
    assert set(sync_settings) == set(DEFAULTS)
    for name, expression in sync_settings.items():
        assert str(param_default(main, expression)) == DEFAULTS[name], name


def test_azd_parameters_use_the_same_defaults():
    values = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    main = parse(INFRA / "main.bicep")
    for param, entry in values.items():
        assert param in main["parameters"], param
        fallback = re.fullmatch(r"\$\{\w+=(.*)\}", str(entry["value"]))
        if fallback:
            default = main["parameters"][param]["default"]
            assert fallback.group(1) == (str(default).lower() if isinstance(default, bool) else str(default)), param


def test_the_function_app_gets_identity_based_storage_and_its_client_id():
    api = parse(INFRA / "app" / "api.bicep")
    union = api["variables"]["allSettings"]["value"]["function"]
    assert union["type"] == "union" and union["parameters"]["arg_1"] == "appSettings"
    fixed = union["parameters"]["arg_2"]
    assert fixed["AzureWebJobsStorage__credential"] == "managedidentity"
    assert fixed["AZURE_CLIENT_ID"] == fixed["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert "AzureWebJobsStorage" not in fixed and "FUNCTIONS_WORKER_RUNTIME" not in fixed
    # The code accepts exactly this shape (placeholder values for what Azure fills in).
    env = {name: "x" for name in fixed} | DEFAULTS | {
        "AZURE_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
        "AzureWebJobsStorage__clientId": "11111111-2222-3333-4444-555555555555",
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__accountName": "stexample",
        "AzureWebJobsStorage__tableServiceUri": "https://stexample.table.core.windows.net/",
    }
    settings = Settings.from_env(env)
    assert settings.storage.use_managed_identity and settings.storage.table_service_uri.endswith(".windows.net")


def test_the_storage_roles_granted_are_exactly_those_the_code_needs():
    rbac = parse(INFRA / "app" / "rbac.bicep")["variables"]
    assert set(rbac["storageRoles"]["value"].values()) == set(permissions.STORAGE_ROLES)
    assert {rbac["monitoringMetricsPublisher"]["value"]} == set(permissions.MONITORING_ROLES)


def test_the_queue_role_is_granted_because_the_code_uses_a_queue():
    queue_contributor = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
    assert "azure.storage.queue" in (ROOT / "shared" / "deferred.py").read_text()
    assert queue_contributor in permissions.STORAGE_ROLES
    storage = parse(INFRA / "app" / "storage.bicep")
    assert storage["resources"]["deferredQueue"]["config"]["name"] == "deferredQueueName"
    api = parse(INFRA / "app" / "api.bicep")
    assert "AzureWebJobsStorage__queueServiceUri" in api["variables"]["allSettings"]["value"]["function"]["parameters"]["arg_2"]


def test_the_graph_module_grants_exactly_the_roles_of_the_enabled_targets():
    main = parse(INFRA / "main.bicep")
    # The Bicep reads the code's own table...
    loaded = main["variables"]["targetRoles"]["value"]["function"]
    assert loaded["type"] == "load_json_content" and loaded["parameters"]["file_path"] == "../shared/graph-roles.json"
    assert json.loads((INFRA / "../shared/graph-roles.json").read_text()) == {t: list(r) for t, r in permissions.TARGET_ROLES.items()}
    # ...derives the roles from SYNC_TARGETS, and hands exactly those to the grant.
    per_target = main["variables"]["rolesPerTarget"]["value"]
    assert per_target["loop_type"]["detail"]["array_name"]["function"]["parameters"]["input_string"] == "syncTargets"
    assert per_target["config"]["operator"]["operands"]["operand_1"] == "targetRoles"
    assert "rolesPerTarget" in json.dumps(main["variables"]["graphAppRoles"])
    assert main["modules"]["graphPermission"]["config"]["config"]["params"]["appRoles"] == "graphAppRoles"
    graph = parse(INFRA / "app" / "graph-permission.bicep")
    assert "default" not in graph["parameters"]["appRoles"] or graph["parameters"]["appRoles"]["default"] is None
    app_id = graph["resources"]["microsoftGraph"]["config"]["appId"]
    assert graph["variables"][app_id]["value"] == "00000003-0000-0000-c000-000000000000"  # Microsoft Graph
    grants = graph["resources"]["grants"]
    assert grants["type"] == "Microsoft.Graph/appRoleAssignedTo"
    assert grants["config"]["loop_type"]["detail"]["array_name"] == "appRoles"  # one grant per role


def test_the_default_targets_need_only_the_service_config_role():
    assert permissions.roles_for(["autopilot"]) == (PERMISSION,)
    assert set(permissions.roles_for(permissions.TARGET_ROLES)) == set(permissions.GRAPH_APP_ROLES)


def test_the_graph_grant_is_behind_a_parameter_that_defaults_on():
    main = parse(INFRA / "main.bicep")
    assert main["parameters"]["grantGraphPermission"]["default"] is True
    module = main["modules"]["graphPermission"]
    assert module["detail"]["path"] == "app/graph-permission.bicep"
    assert module["config"]["condition"] == "grantGraphPermission"


def test_outputs_reveal_no_secret():
    main = parse(INFRA / "main.bicep")
    for name in main["outputs"]:
        assert not re.search(r"key|secret|password|connection", name, re.I), name


def test_azd_deploys_the_root_as_a_python_function_service():
    text = (ROOT / "azure.yaml").read_text()
    assert re.search(r"^\s+api:\s*$", text, re.M) and "host: function" in text and "language: python" in text


@pytest.mark.parametrize("script", sorted((ROOT / "scripts").glob("*.sh")) + [ROOT / ".ci" / "run"], ids=lambda p: p.name)
def test_shell_scripts_are_valid_bash(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_the_grant_script_grants_the_roles_the_code_names():
    text = (ROOT / "scripts" / "grant-graph-permission.sh").read_text()
    assert "from shared.permissions import roles_for" in text and "appRoleAssignments" in text
    assert "00000003-0000-0000-c000-000000000000" in text
