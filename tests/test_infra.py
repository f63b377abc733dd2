"""The Bicep in infra/: it parses, checkov finds nothing, and it agrees with the code about the
settings (names and defaults) and the roles the app's identity needs; it sets nothing Flex
Consumption rejects and nothing Microsoft's published Bicep types do not define."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from pycep import BicepParser

from shared.api.callerauth import ROLES as CALLER_ROLES
from shared.clients.graph import PERMISSION
from shared.clients.identity import EXCHANGE_AUDIENCE, EXCHANGE_AUDIENCES
from shared.common import permissions
from shared.common.settings import DEFAULTS, Settings

INFRA = ROOT / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
# checkov's bundled parser predates Bicep extensions; only such a module may be left out.
EXTENSION_MODULES = [p for p in BICEP_FILES if re.search(r"^extension\s", p.read_text(), re.M)]


def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


def condition_default(template: dict[str, Any], name: str) -> bool:
    """What a condition evaluates to with the parameters' defaults: a bool parameter, or a variable
    `param == 'literal'` (e.g. entraCallers = callerAuth == 'entra')."""
    if name in template["parameters"]:
        condition = template["parameters"][name]
        assert condition["type"] == "bool", name
        return condition["default"]
    comparison = template["variables"][name]["value"]["operator"]
    assert comparison["type"] == "equals", comparison
    operands = comparison["operands"]
    return template["parameters"][operands["operand_1"]]["default"] == operands["operand_2"]


def param_default(template: dict[str, Any], expression: Any) -> Any:
    """The default behind an app-setting value: a parameter, string(parameter), a literal '' or
    `flag ? x : y` on a condition (the branch its default picks, see condition_default)."""
    if isinstance(expression, dict) and expression.get("operator", {}).get("type") == "conditional":
        operands = expression["operator"]["operands"]
        chosen = condition_default(template, operands["condition"])
        return param_default(template, operands["true_value" if chosen else "false_value"])
    if expression == "":
        return ""
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
    assert [p.name for p in EXTENSION_MODULES] == ["callerapi.bicep", "graph-permission.bicep", "multitenant.bicep"]


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
    assert accessor(fixed["AZURE_TENANT_ID"]) == [{"function": {"type": "tenant"}}, "tenantId"]  # the home tenant
    assert fixed["AZURE_AUTHORITY_HOST"] == "authorityHost"
    assert "AzureWebJobsStorage" not in fixed and "FUNCTIONS_WORKER_RUNTIME" not in fixed
    # The code accepts exactly this shape (placeholder values for what Azure fills in).
    env = {name: "x" for name in fixed} | DEFAULTS | {
        "AZURE_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
        "AzureWebJobsStorage__clientId": "11111111-2222-3333-4444-555555555555",
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__accountName": "stexample",
        "AzureWebJobsStorage__tableServiceUri": "https://stexample.table.core.windows.net/",
        "AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com",
    }
    settings = Settings.from_env(env)
    assert settings.storage.use_managed_identity and settings.storage.table_service_uri.endswith(".windows.net")


def test_the_storage_roles_granted_are_exactly_those_the_code_needs():
    rbac = parse(INFRA / "app" / "rbac.bicep")["variables"]
    assert set(rbac["storageRoles"]["value"].values()) == set(permissions.STORAGE_ROLES)
    assert {rbac["monitoringMetricsPublisher"]["value"]} == set(permissions.MONITORING_ROLES)


def test_the_queue_role_is_granted_because_the_code_uses_a_queue():
    queue_contributor = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
    assert "azure.storage.queue" in (ROOT / "shared" / "clients" / "storage.py").read_text()  # the client deferred syncs use
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
    # ...adds, whatever SYNC_TARGETS says, the roles of what is always on (the credentials check)...
    assert main["variables"]["alwaysOn"]["value"] == list(permissions.ALWAYS)
    always = main["variables"]["rolesAlwaysOn"]["value"]
    assert always["loop_type"]["detail"]["array_name"] == "alwaysOn"
    assert always["config"]["operator"]["operands"]["operand_1"] == "targetRoles"
    union = main["variables"]["graphAppRoles"]["value"]["function"]
    assert union["type"] == "union"
    assert [arg["function"] for arg in union["parameters"].values()] == [
        {"type": "flatten", "parameters": {"array_to_flattern": "rolesPerTarget"}},  # the targets' roles first
        {"type": "flatten", "parameters": {"array_to_flattern": "rolesAlwaysOn"}},
    ]
    assert main["modules"]["graphPermission"]["config"]["config"]["params"]["appRoles"] == "graphAppRoles"
    graph = parse(INFRA / "app" / "graph-permission.bicep")
    assert "default" not in graph["parameters"]["appRoles"] or graph["parameters"]["appRoles"]["default"] is None
    app_id = graph["resources"]["microsoftGraph"]["config"]["appId"]
    assert graph["variables"][app_id]["value"] == "00000003-0000-0000-c000-000000000000"  # Microsoft Graph
    grants = graph["resources"]["grants"]
    assert grants["type"] == "Microsoft.Graph/appRoleAssignedTo"
    assert grants["config"]["loop_type"]["detail"]["array_name"] == "appRoles"  # one grant per role


CREDENTIALS_ROLE = "DeviceManagementServiceConfig.Read.All"


def test_the_default_targets_need_only_the_service_config_role_and_the_credentials_read():
    assert permissions.roles_for(["autopilot"]) == (PERMISSION, CREDENTIALS_ROLE)
    assert permissions.roles_for([]) == (CREDENTIALS_ROLE,)
    assert set(permissions.roles_for(permissions.TARGET_ROLES)) == set(permissions.GRAPH_APP_ROLES)


def test_the_credentials_check_is_always_on_with_one_read_only_role():
    from shared.common.settings import DEVICES, TARGET_COOLDOWNS
    from shared.engine.targets import TARGETS

    assert permissions.CREDENTIALS_CAPABILITY == "credentials" and permissions.ALWAYS == ("credentials",)
    # A capability, not a sync target, and not something SYNC_TARGETS switches on.
    assert "credentials" not in TARGETS and "credentials" not in TARGET_COOLDOWNS and DEVICES != "credentials"
    # The least privileged role Graph documents for reading the APNs certificate, ADE and VPP tokens: no ReadWrite.
    assert permissions.TARGET_ROLES["credentials"] == (CREDENTIALS_ROLE,)
    assert not [r for r in permissions.TARGET_ROLES["credentials"] if "ReadWrite" in r]
    # Granted with every SYNC_TARGETS, after the targets' own roles, and only once.
    for names in (["autopilot"], ["devices"], ["managedGooglePlay", "driverInventory"], list(permissions.TARGET_ROLES)):
        roles = permissions.roles_for(names)
        assert roles[-1] == CREDENTIALS_ROLE and roles.count(CREDENTIALS_ROLE) == 1, names
    assert CREDENTIALS_ROLE in permissions.GRAPH_APP_ROLES


def bicep_graph_app_roles(sync_targets: str) -> list[str]:
    """What main.bicep's graphAppRoles evaluates to for ``sync_targets``: union(flatten([for target
    in split(syncTargets, ','): targetRoles[trim(target)]]), flatten([for capability in alwaysOn:
    targetRoles[capability]])), the roles of each name and then of what is always on, each once, in
    order (the shape is checked in test_the_graph_module_grants_exactly_the_roles_of_the_enabled_targets)."""
    table = json.loads((INFRA / "../shared/graph-roles.json").read_text())
    always = parse(INFRA / "main.bicep")["variables"]["alwaysOn"]["value"]
    names = [target.strip() for target in sync_targets.split(",")] + always
    return list(dict.fromkeys(role for name in names for role in table[name]))


DEVICE_ROLES = {
    "DeviceManagementManagedDevices.PrivilegedOperations.All",  # managedDevices/{id}/syncDevice
    "DeviceManagementManagedDevices.Read.All",  # list / get managedDevices
    "GroupMember.Read.All",  # groups/{id}/transitiveMembers
    "Device.Read.All",  # the device members' deviceId (else "limited information")
}


def test_devices_in_sync_targets_is_a_capability_with_its_own_roles_and_no_sync_target():
    from shared.common.settings import DEVICES, TARGET_COOLDOWNS
    from shared.engine.targets import TARGETS

    assert permissions.DEVICES_CAPABILITY == DEVICES == "devices"
    # Every entry of the table is a sync target, the devices capability or what is always on (the
    # credentials check), and devices is no target.
    capabilities = {DEVICES, *permissions.ALWAYS}
    assert set(permissions.TARGET_ROLES) == set(TARGET_COOLDOWNS) | capabilities == set(TARGETS) | capabilities
    assert DEVICES not in TARGETS and DEVICES not in TARGET_COOLDOWNS
    assert set(permissions.TARGET_ROLES[DEVICES]) == DEVICE_ROLES
    assert set(permissions.GRAPH_APP_ROLES) >= DEVICE_ROLES
    assert permissions.GRAPH_APP_ROLES[0] == PERMISSION  # the role a 403 of the default target names
    # Read-only apart from the sync action itself: no ReadWrite, no Directory.* or Group.Read.All.
    assert not [r for r in DEVICE_ROLES if "ReadWrite" in r or r.startswith("Directory.") or r == "Group.Read.All"]
    # The settings read devices as the switch, not as a target.
    env = DEFAULTS | {"SYNC_TARGETS": "autopilot,devices", "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    settings = Settings.from_env(env)
    assert settings.sync_targets == ("autopilot",) and settings.device_sync is True
    assert Settings.from_env(env | {"SYNC_TARGETS": "autopilot"}).device_sync is False


@pytest.mark.parametrize("sync_targets", ["autopilot", "autopilot,devices", "autopilot, devices,vpp", "devices,exchange",
                                          "autopilot,exchange,appleAde,vpp,managedGooglePlay,driverInventory,devices"])
def test_the_bicep_grants_the_device_roles_only_when_sync_targets_names_devices(sync_targets):
    granted = bicep_graph_app_roles(sync_targets)
    names = [t.strip() for t in sync_targets.split(",")]
    assert granted == list(permissions.roles_for(names))  # the same roles the code names, in the same order
    assert len(granted) == len(set(granted))  # union() drops duplicates
    if "devices" in names:
        assert set(granted) >= DEVICE_ROLES
    else:
        assert not DEVICE_ROLES & set(granted)
    assert granted[-1] == CREDENTIALS_ROLE  # the credentials check's read, whatever SYNC_TARGETS says
    # The identity's grant and the multi-tenant app's required roles are the same variable.
    main = parse(INFRA / "main.bicep")
    assert main["modules"]["graphPermission"]["config"]["config"]["params"]["appRoles"] == "graphAppRoles"
    assert main["modules"]["multiTenantApp"]["config"]["config"]["params"]["appRoles"] == "graphAppRoles"


@pytest.mark.parametrize("sync_targets", ["autopilot", "autopilot,devices", " devices , vpp ", "managedGooglePlay"])
def test_the_grant_script_grants_the_roles_the_bicep_grants(sync_targets):
    text = (ROOT / "scripts" / "grant-graph-permission.sh").read_text()
    [program] = re.findall(r"python3 -c '([^']+)'", text)
    run = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "SYNC_TARGETS": sync_targets}, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == bicep_graph_app_roles(sync_targets)
    assert CREDENTIALS_ROLE in run.stdout.split()  # the credentials check's read, granted with any SYNC_TARGETS


def test_every_queue_the_code_reads_is_created_by_the_bicep_with_its_setting():
    from shared.common.settings import QUEUE_SETTINGS

    main = parse(INFRA / "main.bicep")
    sync_settings = main["variables"]["syncSettings"]["value"]
    storage_params = main["modules"]["storage"]["config"]["params"]
    storage = parse(INFRA / "app" / "storage.bicep")
    queues = {body["config"]["name"] for body in storage["resources"].values()
              if body["type"] == "Microsoft.Storage/storageAccounts/queueServices/queues"}
    assert "DEVICE_SYNC_QUEUE" in QUEUE_SETTINGS
    for setting in QUEUE_SETTINGS:
        param = sync_settings[setting]  # the main.bicep parameter the setting comes from
        assert storage_params[param] == param and param in queues, setting
        assert main["parameters"][param]["default"] == DEFAULTS[setting], setting


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
    assert "from shared.common.permissions import roles_for" in text and "appRoleAssignments" in text
    assert "00000003-0000-0000-c000-000000000000" in text


# --- Flex Consumption, storage redundancy, the Graph grant's ordering, Microsoft's Bicep types ---

# Site properties Flex Consumption rejects or has replaced. Source: ../shared/reference/azure/
# flex-consumption-facts.md, "Unsupported / deprecated site properties and app settings" (Microsoft's
# Flex Consumption deprecations table, F3), and ARM's BadRequest 51021 for Site.SiteConfig.FtpsState.
# The table writes properties.X; most are siteConfig properties, some are site properties, so both
# levels are checked, without regard to case. `reserved` is the site property the table calls isReserved.
FLEX_CONSUMPTION_UNSUPPORTED_SITE_PROPERTIES = frozenset({
    "ftpsState", "use32BitWorkerProcess", "isReserved", "reserved", "isXenon", "windowsFxVersion",
    "alwaysOn", "preWarmedInstanceCount", "functionAppScaleLimit", "containerSize", "javaVersion",
    "powerShellVersion", "netFrameworkVersion", "linuxFxVersion",
})
# App settings of the same table (F3), and those the GA page (F1) names as unsupported.
FLEX_CONSUMPTION_UNSUPPORTED_APP_SETTINGS = frozenset({
    "FUNCTIONS_EXTENSION_VERSION", "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY", "FUNCTIONS_WORKER_PROCESS_COUNT",
    "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED", "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE", "WEBSITE_NODE_DEFAULT_VERSION", "WEBSITE_LOAD_CERTIFICATES",
    "WEBSITE_TIME_ZONE", "TZ",
})

# Microsoft's published Bicep types for the API versions the Bicep uses: for every resource type it
# deploys, the writable properties (ReadOnly ones left out) of each object it sets, at that object's
# path ("x[]" is an array item). Taken from Azure/bicep-types-az @ 1f896de2db966ad91e8f7d7d981e11d32e4f5d8d,
# generated/<provider>/<namespace>/<api-version>/types.json (web, storage, resources_11, msi,
# operationalinsights, applicationinsights, authorization; the monitoring resources of issue 14 from
# applicationinsights/microsoft.insights/2023-06-01 (workbooks) and monitor_1/microsoft.insights/
# 2023-12-01 (scheduledQueryRules) and 2023-01-01 (actionGroups)), and for Microsoft.Graph from
# microsoftgraph/msgraph-bicep-types @ bc4390567a8808286eb5e48815fda8ebd6e9eea8,
# generated/microsoftgraph/microsoft.graph/v1.0/1.0.0/types.json (the extension version in
# infra/bicepconfig.json). A new resource, API version or nested object needs its entry from there.
BICEP_TYPES = {
    "Microsoft.Authorization/roleAssignments@2022-04-01": {
        "": "name properties",
        "properties": (
            "condition conditionVersion delegatedManagedIdentityResourceId description principalId "
            "principalType roleDefinitionId"
        ),
    },
    "Microsoft.Graph/appRoleAssignedTo@v1.0": {
        "": "appRoleId principalId resourceDisplayName resourceId",
    },
    "Microsoft.Graph/servicePrincipals@v1.0": {
        "": (
            "accountEnabled addIns alternativeNames appDescription appDisplayName appId "
            "appRoleAssignmentRequired appRoles customSecurityAttributes description "
            "disabledByMicrosoftStatus displayName homepage info keyCredentials loginUrl logoutUrl notes "
            "notificationEmailAddresses oauth2PermissionScopes owners passwordCredentials "
            "preferredSingleSignOnMode preferredTokenSigningKeyThumbprint replyUrls "
            "samlSingleSignOnSettings servicePrincipalNames servicePrincipalType tags "
            "tokenEncryptionKeyId verifiedPublisher"
        ),
    },
    "Microsoft.Graph/applications@v1.0": {
        "": (
            "addIns api appRoles authenticationBehaviors defaultRedirectUri description "
            "disabledByMicrosoftStatus displayName groupMembershipClaims identifierUris info "
            "isDeviceOnlyAuthSupported isFallbackPublicClient keyCredentials logo "
            "nativeAuthenticationApisEnabled notes optionalClaims owners parentalControlSettings "
            "passwordCredentials publicClient requestSignatureVerification requiredResourceAccess "
            "samlMetadataUrl serviceManagementReference servicePrincipalLockConfiguration "
            "signInAudience spa tags tokenEncryptionKeyId uniqueName verifiedPublisher web"
        ),
        "requiredResourceAccess[]": "resourceAccess resourceAppId",
        "requiredResourceAccess[].resourceAccess[]": "id type",
        "appRoles[]": "allowedMemberTypes description displayName id isEnabled value",
        "api": (
            "acceptMappedClaims knownClientApplications oauth2PermissionScopes preAuthorizedApplications "
            "requestedAccessTokenVersion"
        ),
        "api.oauth2PermissionScopes[]": (
            "adminConsentDescription adminConsentDisplayName id isEnabled type userConsentDescription "
            "userConsentDisplayName value"
        ),
        "spa": "redirectUris",
    },
    "Microsoft.Graph/applications/federatedIdentityCredentials@v1.0": {
        "": "audiences description issuer name subject",
    },
    "Microsoft.Insights/actionGroups@2023-01-01": {
        "": "location name properties tags",
        "properties": (
            "armRoleReceivers automationRunbookReceivers azureAppPushReceivers azureFunctionReceivers "
            "emailReceivers enabled eventHubReceivers groupShortName itsmReceivers logicAppReceivers "
            "smsReceivers voiceReceivers webhookReceivers"
        ),
        "properties.emailReceivers[]": "emailAddress name useCommonAlertSchema",
    },
    "Microsoft.Insights/components@2020-02-02": {
        "": "etag kind location name properties tags",
        "properties": (
            "Application_Type DisableIpMasking DisableLocalAuth Flow_Type "
            "ForceCustomerStorageForProfiler HockeyAppId ImmediatePurgeDataOn30Days IngestionMode "
            "Request_Source RetentionInDays SamplingPercentage WorkspaceResourceId "
            "publicNetworkAccessForIngestion publicNetworkAccessForQuery"
        ),
    },
    "Microsoft.Insights/scheduledQueryRules@2023-12-01": {
        "": "identity kind location name properties tags",
        "identity": "type userAssignedIdentities",
        "properties": (
            "actions autoMitigate checkWorkspaceAlertsStorageConfigured criteria description displayName "
            "enabled evaluationFrequency muteActionsDuration overrideQueryTimeRange resolveConfiguration "
            "scopes severity skipQueryValidation targetResourceTypes windowSize"
        ),
        "properties.criteria": "allOf",
        "properties.criteria.allOf[]": (
            "dimensions failingPeriods metricMeasureColumn metricName operator query resourceIdColumn "
            "threshold timeAggregation"
        ),
        "properties.criteria.allOf[].dimensions[]": "name operator values",
        "properties.criteria.allOf[].failingPeriods": "minFailingPeriodsToAlert numberOfEvaluationPeriods",
        "properties.actions": "actionGroups actionProperties customProperties",
        "properties.resolveConfiguration": "autoResolved timeToResolve",
    },
    "Microsoft.Insights/workbooks@2023-06-01": {
        "": "etag identity kind location name properties tags",
        "identity": "type userAssignedIdentities",
        "properties": "category description displayName serializedData sourceId storageUri tags version",
    },
    "Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31": {
        "": "location name tags",
    },
    "Microsoft.OperationalInsights/workspaces@2023-09-01": {
        "": "etag identity location name properties tags",
        "properties": (
            "defaultDataCollectionRuleResourceId features forceCmkForQuery "
            "publicNetworkAccessForIngestion publicNetworkAccessForQuery retentionInDays sku "
            "workspaceCapping"
        ),
        "properties.sku": "capacityReservationLevel name",
        "properties.features": (
            "clusterResourceId disableLocalAuth enableDataExport "
            "enableLogAccessUsingOnlyResourcePermissions immediatePurgeDataOn30Days"
        ),
    },
    "Microsoft.Resources/resourceGroups@2024-03-01": {
        "": "location managedBy name properties tags",
    },
    "Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01": {
        "": "name properties",
        "properties": (
            "defaultEncryptionScope denyEncryptionScopeOverride enableNfsV3AllSquash "
            "enableNfsV3RootSquash immutableStorageWithVersioning metadata publicAccess"
        ),
    },
    "Microsoft.Storage/storageAccounts/blobServices@2023-05-01": {
        "": "name properties",
        "properties": (
            "automaticSnapshotPolicyEnabled changeFeed containerDeleteRetentionPolicy cors "
            "defaultServiceVersion deleteRetentionPolicy isVersioningEnabled "
            "lastAccessTimeTrackingPolicy restorePolicy"
        ),
        "properties.deleteRetentionPolicy": "allowPermanentDelete days enabled",
        "properties.containerDeleteRetentionPolicy": "allowPermanentDelete days enabled",
    },
    "Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01": {
        "": "name properties",
    },
    "Microsoft.Storage/storageAccounts/queueServices@2023-05-01": {
        "": "name properties",
    },
    "Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01": {
        "": "name properties",
    },
    "Microsoft.Storage/storageAccounts/tableServices@2023-05-01": {
        "": "name properties",
    },
    "Microsoft.Storage/storageAccounts@2023-05-01": {
        "": "extendedLocation identity kind location name properties sku tags",
        "sku": "name",
        "properties": (
            "accessTier allowBlobPublicAccess allowCrossTenantReplication allowSharedKeyAccess "
            "allowedCopyScope azureFilesIdentityBasedAuthentication customDomain "
            "defaultToOAuthAuthentication dnsEndpointType enableExtendedGroups encryption "
            "immutableStorageWithVersioning isHnsEnabled isLocalUserEnabled isNfsV3Enabled "
            "isSftpEnabled keyPolicy largeFileSharesState minimumTlsVersion networkAcls "
            "publicNetworkAccess routingPreference sasPolicy supportsHttpsTrafficOnly"
        ),
        "properties.networkAcls": (
            "bypass defaultAction ipRules resourceAccessRules virtualNetworkRules"
        ),
        "properties.encryption": (
            "identity keySource keyvaultproperties requireInfrastructureEncryption services"
        ),
        "properties.encryption.services": "blob file queue table",
        "properties.encryption.services.blob": "enabled keyType",
        "properties.encryption.services.file": "enabled keyType",
        "properties.encryption.services.table": "enabled keyType",
        "properties.encryption.services.queue": "enabled keyType",
    },
    "Microsoft.Web/serverfarms@2024-04-01": {
        "": "extendedLocation kind location name properties sku tags",
        "sku": "capabilities capacity family locations name size skuCapacity tier",
        "properties": (
            "elasticScaleEnabled freeOfferExpirationTime hostingEnvironmentProfile hyperV isSpot "
            "isXenon kubeEnvironmentProfile maximumElasticWorkerCount perSiteScaling reserved "
            "spotExpirationTime targetWorkerCount targetWorkerSizeId workerTierName zoneRedundant"
        ),
    },
    "Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01": {
        "": "kind name properties",
        "properties": "allow",
    },
    "Microsoft.Web/sites@2024-04-01": {
        "": "extendedLocation identity kind location name properties tags",
        "identity": "type userAssignedIdentities",
        "properties": (
            "autoGeneratedDomainNameLabelScope clientAffinityEnabled clientCertEnabled "
            "clientCertExclusionPaths clientCertMode cloningInfo containerSize "
            "customDomainVerificationId dailyMemoryTimeQuota daprConfig dnsConfiguration enabled "
            "endToEndEncryptionEnabled functionAppConfig hostNameSslStates hostNamesDisabled "
            "hostingEnvironmentProfile httpsOnly hyperV ipMode isXenon keyVaultReferenceIdentity "
            "managedEnvironmentId publicNetworkAccess redundancyMode reserved resourceConfig "
            "scmSiteAlsoStopped serverFarmId siteConfig storageAccountRequired "
            "virtualNetworkSubnetId vnetBackupRestoreEnabled vnetContentShareEnabled "
            "vnetImagePullEnabled vnetRouteAllEnabled workloadProfileName"
        ),
        "properties.siteConfig": (
            "acrUseManagedIdentityCreds acrUserManagedIdentityID alwaysOn apiDefinition "
            "apiManagementConfig appCommandLine appSettings autoHealEnabled autoHealRules "
            "autoSwapSlotName azureStorageAccounts connectionStrings cors defaultDocuments "
            "detailedErrorLoggingEnabled documentRoot elasticWebAppScaleLimit experiments ftpsState "
            "functionAppScaleLimit functionsRuntimeScaleMonitoringEnabled handlerMappings "
            "healthCheckPath http20Enabled httpLoggingEnabled ipSecurityRestrictions "
            "ipSecurityRestrictionsDefaultAction javaContainer javaContainerVersion javaVersion "
            "keyVaultReferenceIdentity limits linuxFxVersion loadBalancing localMySqlEnabled "
            "logsDirectorySizeLimit managedPipelineMode managedServiceIdentityId metadata "
            "minTlsCipherSuite minTlsVersion minimumElasticInstanceCount netFrameworkVersion "
            "nodeVersion numberOfWorkers phpVersion powerShellVersion preWarmedInstanceCount "
            "publicNetworkAccess publishingUsername push pythonVersion remoteDebuggingEnabled "
            "remoteDebuggingVersion requestTracingEnabled requestTracingExpirationTime "
            "scmIpSecurityRestrictions scmIpSecurityRestrictionsDefaultAction "
            "scmIpSecurityRestrictionsUseMain scmMinTlsVersion scmType tracingOptions "
            "use32BitWorkerProcess virtualApplications vnetName vnetPrivatePortsCount "
            "vnetRouteAllEnabled webSocketsEnabled websiteTimeZone windowsFxVersion "
            "xManagedServiceIdentityId"
        ),
        "properties.siteConfig.appSettings[]": "name value",
        "properties.functionAppConfig": "deployment runtime scaleAndConcurrency",
        "properties.functionAppConfig.deployment": "storage",
        "properties.functionAppConfig.deployment.storage": "authentication type value",
        "properties.functionAppConfig.deployment.storage.authentication": (
            "storageAccountConnectionStringName type userAssignedIdentityResourceId"
        ),
        "properties.functionAppConfig.scaleAndConcurrency": (
            "alwaysReady instanceMemoryMB maximumInstanceCount triggers"
        ),
        "properties.functionAppConfig.runtime": "name version",
    },
}

# The same source: the values those types list for the strings the Bicep sets. (The Microsoft Graph
# types declare these strings as plain strings; their values are those the property's description
# in the same types.json names as the possible values.)
BICEP_TYPE_VALUES = {
    "Microsoft.Graph/applications@v1.0": {
        "signInAudience": (
            "AzureADMultipleOrgs", "AzureADMyOrg", "AzureADandPersonalMicrosoftAccount", "PersonalMicrosoftAccount",
        ),
        "requiredResourceAccess[].resourceAccess[].type": ("Role", "Scope"),
        "appRoles[].allowedMemberTypes[]": ("Application", "User"),
        "api.oauth2PermissionScopes[].type": ("Admin", "User"),
    },
    "Microsoft.Authorization/roleAssignments@2022-04-01": {
        "properties.principalType": (
            "AgentServicePrincipal", "AgentUser", "Device", "ForeignGroup", "Group",
            "ServicePrincipal", "User",
        ),
    },
    "Microsoft.Insights/components@2020-02-02": {
        "properties.Application_Type": ("other", "web"),
    },
    "Microsoft.Insights/scheduledQueryRules@2023-12-01": {
        "identity.type": ("None", "SystemAssigned", "UserAssigned"),
        "kind": ("LogAlert", "LogToMetric"),
        "properties.criteria.allOf[].dimensions[].operator": ("Exclude", "Include"),
        "properties.criteria.allOf[].operator": (
            "Equals", "GreaterThan", "GreaterThanOrEqual", "LessThan", "LessThanOrEqual",
        ),
        "properties.criteria.allOf[].timeAggregation": ("Average", "Count", "Maximum", "Minimum", "Total"),
    },
    "Microsoft.Insights/workbooks@2023-06-01": {
        "kind": ("shared",),
    },
    "Microsoft.OperationalInsights/workspaces@2023-09-01": {
        "properties.sku.name": (
            "CapacityReservation", "Free", "LACluster", "PerGB2018", "PerNode", "Premium",
            "Standalone", "Standard",
        ),
    },
    "Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01": {
        "properties.publicAccess": ("Blob", "Container", "None"),
    },
    "Microsoft.Storage/storageAccounts/blobServices@2023-05-01": {
        "name": ("default",),
    },
    "Microsoft.Storage/storageAccounts/queueServices@2023-05-01": {
        "name": ("default",),
    },
    "Microsoft.Storage/storageAccounts/tableServices@2023-05-01": {
        "name": ("default",),
    },
    "Microsoft.Storage/storageAccounts@2023-05-01": {
        "kind": ("BlobStorage", "BlockBlobStorage", "FileStorage", "Storage", "StorageV2"),
        "properties.accessTier": ("Cold", "Cool", "Hot", "Premium"),
        "properties.encryption.keySource": ("Microsoft.Keyvault", "Microsoft.Storage"),
        "properties.encryption.services.blob.keyType": ("Account", "Service"),
        "properties.encryption.services.file.keyType": ("Account", "Service"),
        "properties.encryption.services.queue.keyType": ("Account", "Service"),
        "properties.encryption.services.table.keyType": ("Account", "Service"),
        "properties.minimumTlsVersion": ("TLS1_0", "TLS1_1", "TLS1_2", "TLS1_3"),
        "properties.networkAcls.bypass": ("AzureServices", "Logging", "Metrics", "None"),
        "properties.networkAcls.defaultAction": ("Allow", "Deny"),
        "properties.publicNetworkAccess": ("Disabled", "Enabled", "SecuredByPerimeter"),
        "sku.name": (
            "Premium_LRS", "Premium_ZRS", "Standard_GRS", "Standard_GZRS", "Standard_LRS",
            "Standard_RAGRS", "Standard_RAGZRS", "Standard_ZRS",
        ),
    },
    "Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01": {
        "name": ("ftp", "scm"),
    },
    "Microsoft.Web/sites@2024-04-01": {
        "identity.type": ("None", "SystemAssigned", "SystemAssigned, UserAssigned", "UserAssigned"),
        "properties.clientCertMode": ("Optional", "OptionalInteractiveUser", "Required"),
        "properties.functionAppConfig.deployment.storage.authentication.type": (
            "StorageAccountConnectionString", "SystemAssignedIdentity", "UserAssignedIdentity",
        ),
        "properties.functionAppConfig.deployment.storage.type": ("blobContainer",),
        "properties.functionAppConfig.runtime.name": (
            "custom", "dotnet-isolated", "java", "node", "powershell", "python",
        ),
        "properties.siteConfig.minTlsVersion": ("1.0", "1.1", "1.2", "1.3"),
        "properties.siteConfig.scmMinTlsVersion": ("1.0", "1.1", "1.2", "1.3"),
    },
}

# Bicep keywords inside a resource body that are not properties of the resource type.
BICEP_RESOURCE_KEYWORDS = {"parent", "scope", "dependsOn"}
# pycep lists a nested child resource (declared inside its parent's body, as Microsoft documents
# for Microsoft.Graph/applications/federatedIdentityCredentials) as "<parent>__<child>", with its
# full type already carrying "@<api-version>" and an implicit depends_on on the parent.
PYCEP_NESTED_DEPENDS_ON = "depends_on"


def deployed_resources(template: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Resource symbol -> ("type@api-version", body) for every resource the file deploys."""
    found = {}
    for symbol, resource in template.get("resources", {}).items():
        if resource["existing"]:
            continue
        body = resource["config"]
        while isinstance(body, dict) and "config" in body and ("loop_type" in body or "condition" in body):
            body = body["config"]  # a resource loop or condition: its body
        kind = resource["type"] if "@" in resource["type"] else f"{resource['type']}@{resource['api_version']}"
        if "__" in symbol:  # a nested child: pycep's implicit dependency is no property of the type
            parent = symbol.rsplit("__", 1)[0]
            assert body.get(PYCEP_NESTED_DEPENDS_ON) == [parent], (symbol, body)
            body = {key: value for key, value in body.items() if key != PYCEP_NESTED_DEPENDS_ON}
        found[symbol] = (kind, body)
    return found


def site_of(template: dict[str, Any]) -> dict[str, Any]:
    [site] = [body for kind, body in deployed_resources(template).values() if kind.startswith("Microsoft.Web/sites@")]
    return site


def allowed_values(template: dict[str, Any], param: str) -> list[Any]:
    decorators = {d["type"]: d.get("argument") for d in template["parameters"][param]["decorators"]}
    return decorators.get("allowed") or []


def test_the_site_sets_no_property_flex_consumption_rejects():
    api = parse(INFRA / "app" / "api.bicep")
    plans = [body for kind, body in deployed_resources(api).values() if kind.startswith("Microsoft.Web/serverfarms@")]
    assert [plan["sku"]["tier"] for plan in plans] == ["FlexConsumption"]  # the list below applies
    site = site_of(api)["properties"]
    unsupported = {name.lower() for name in FLEX_CONSUMPTION_UNSUPPORTED_SITE_PROPERTIES}
    for level, properties in (("properties", site), ("properties.siteConfig", site["siteConfig"])):
        rejected = [name for name in properties if name.lower() in unsupported]
        assert not rejected, "Flex Consumption rejects " + ", ".join(f"{level}.{name}" for name in rejected)
    # The runtime and scale are where Flex Consumption takes them instead.
    assert set(site["functionAppConfig"]) >= {"runtime", "scaleAndConcurrency", "deployment"}


def test_the_app_sets_no_app_setting_flex_consumption_deprecates():
    sync_settings = parse(INFRA / "main.bicep")["variables"]["syncSettings"]["value"]
    api = parse(INFRA / "app" / "api.bicep")
    fixed = api["variables"]["allSettings"]["value"]["function"]["parameters"]["arg_2"]
    assert not (set(sync_settings) | set(fixed)) & FLEX_CONSUMPTION_UNSUPPORTED_APP_SETTINGS


def test_ftp_and_scm_publishing_credentials_are_off_since_ftps_state_cannot_be_set():
    api = parse(INFRA / "app" / "api.bicep")
    policies = {
        body["name"]: body
        for kind, body in deployed_resources(api).values()
        if kind.startswith("Microsoft.Web/sites/basicPublishingCredentialsPolicies@")
    }
    assert set(policies) == {"ftp", "scm"}
    for policy in policies.values():
        assert policy["parent"] == "functionApp" and policy["properties"] == {"allow": False}
    assert "CKV_AZURE_78" in (INFRA / "app" / "api.bicep").read_text()  # checkov's FTP check, skipped with a reason


def test_storage_redundancy_is_a_parameter_defaulting_to_lrs():
    main = parse(INFRA / "main.bicep")
    param = main["parameters"]["storageSku"]
    assert param["default"] == "Standard_LRS"  # deploys in every Flex Consumption region
    allowed = allowed_values(main, "storageSku")
    assert {"Standard_LRS", "Standard_ZRS"} <= set(allowed)
    storage_skus = BICEP_TYPE_VALUES["Microsoft.Storage/storageAccounts@2023-05-01"]["sku.name"]
    assert set(allowed) <= set(storage_skus) and not any(sku.startswith("Premium_") for sku in allowed)  # tables and queues
    description = next(d["argument"] for d in param["decorators"] if d["type"] == "description")
    assert "Standard_ZRS" in description and "availability zones" in description
    assert main["modules"]["storage"]["config"]["params"]["skuName"] == "storageSku"
    storage = parse(INFRA / "app" / "storage.bicep")
    assert deployed_resources(storage)["storage"][1]["sku"] == {"name": "skuName"}
    assert "default" not in storage["parameters"]["skuName"] or storage["parameters"]["skuName"]["default"] is None
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert azd["storageSku"]["value"] == "${STORAGE_SKU=Standard_LRS}"


def test_the_graph_grant_takes_the_principal_from_the_identity_output_and_runs_after_the_app():
    module = parse(INFRA / "main.bicep")["modules"]["graphPermission"]["config"]["config"]
    principal = module["params"]["principalId"]["operator"]["operands"]
    assert principal["operand_1"] == "identity"
    assert principal["operand_2"]["operator"]["operands"] == {"operand_1": "outputs", "operand_2": "principalId"}
    assert "api" in module["dependsOn"]
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text()
    assert "Not a valid reference update" in deploy_doc and "scripts/grant-graph-permission.sh" in deploy_doc


def _check_against_types(kind: str, value: Any, path: str, template: dict[str, Any], problems: list[str]) -> None:
    if isinstance(value, dict) and "loop_type" in value:  # [for ...: {...}]
        _check_against_types(kind, value["config"], f"{path}[]", template, problems)
    elif isinstance(value, list):
        for item in value:
            _check_against_types(kind, item, f"{path}[]", template, problems)
    elif isinstance(value, dict) and not ("function" in value or "operator" in value):
        keys = [key for key in value if key not in BICEP_RESOURCE_KEYWORDS or path]
        if keys and not all(key.startswith("'") for key in keys):  # quoted keys: a map (tags, identities)
            known = BICEP_TYPES[kind].get(path)
            if known is None:
                problems.append(f"{kind} {path or '<body>'}: not in BICEP_TYPES (add it from types.json)")
                return
            unknown = [key for key in keys if key not in known.split()]
            problems += [f"{kind}: {path + '.' if path else ''}{key} is not in Microsoft's type" for key in unknown]
        for key in keys:
            _check_against_types(kind, value[key], f"{path}.{key}" if path else key, template, problems)
    elif isinstance(value, str) and path in BICEP_TYPE_VALUES.get(kind, {}):
        listed = BICEP_TYPE_VALUES[kind][path]
        if value in template.get("parameters", {}):  # a parameter: its allowed values and default
            candidates = [*allowed_values(template, value), template["parameters"][value]["default"]]
            problems += [f"{kind} {path}: {v!r} (parameter {value})" for v in candidates if v not in (None, *listed)]
        elif value not in template.get("variables", {}) and "${" not in value and value not in listed:
            problems.append(f"{kind} {path}: {value!r} is not one of {listed}")


def test_every_property_and_sku_set_exists_in_microsofts_bicep_types_for_its_api_version():
    problems: list[str] = []
    checked = set()
    for path in BICEP_FILES:
        template = parse(path)
        for kind, body in deployed_resources(template).values():
            if kind not in BICEP_TYPES:
                problems.append(f"{path.name}: {kind} is not in BICEP_TYPES (add it from types.json)")
                continue
            checked.add(kind)
            _check_against_types(kind, body, "", template, problems)
    assert not problems, "\n".join(problems)
    assert {"Microsoft.Web/sites@2024-04-01", "Microsoft.Storage/storageAccounts@2023-05-01"} <= checked
    # The Microsoft Graph resources are checked too, against the msgraph-bicep-types definitions.
    assert {GRAPH_APPLICATION, GRAPH_FIC, GRAPH_SERVICE_PRINCIPAL, "Microsoft.Graph/appRoleAssignedTo@v1.0"} <= checked


def test_the_type_check_catches_a_property_microsoft_does_not_define():
    problems: list[str] = []
    site = {"properties": {"siteConfig": {"minTlsVersion": "1.2", "ftpsStat": "Disabled"}, "clientCertMode": "Sometimes"}}
    _check_against_types("Microsoft.Web/sites@2024-04-01", site, "", {"parameters": {}, "variables": {}}, problems)
    assert len(problems) == 2 and "ftpsStat" in problems[0] + problems[1] and "Sometimes" in problems[0] + problems[1]


def test_the_type_check_catches_a_wrong_sign_in_audience_and_a_graph_property_microsoft_does_not_define():
    problems: list[str] = []
    app = {"uniqueName": "x", "displayName": "x", "signInAudience": "AzureADMultipleOrg", "passwordCredential": []}
    _check_against_types(GRAPH_APPLICATION, app, "", {"parameters": {}, "variables": {}}, problems)
    assert len(problems) == 2 and "AzureADMultipleOrg'" in "".join(problems) and "passwordCredential " in "".join(problems)


# --- many tenants (issue 13): the multi-tenant app registration, trusted by the app's identity ---

GRAPH_APPLICATION = "Microsoft.Graph/applications@v1.0"
GRAPH_FIC = "Microsoft.Graph/applications/federatedIdentityCredentials@v1.0"
GRAPH_SERVICE_PRINCIPAL = "Microsoft.Graph/servicePrincipals@v1.0"
MICROSOFT_GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"


def accessor(expression: Any) -> list[Any]:
    """a.b.c (pycep's nested property accessors) -> ["a", "b", "c"]."""
    if isinstance(expression, dict) and expression.get("operator", {}).get("type") == "property_accessor":
        operands = expression["operator"]["operands"]
        return accessor(operands["operand_1"]) + accessor(operands["operand_2"])
    return [expression]


def multi_tenant_resources() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The module, its application and its federated identity credential (bodies)."""
    module = parse(INFRA / "app" / "multitenant.bicep")
    resources = deployed_resources(module)
    [app] = [body for kind, body in resources.values() if kind == GRAPH_APPLICATION]
    [fic] = [body for kind, body in resources.values() if kind == GRAPH_FIC]
    assert len(resources) == 2  # nothing else: no service principal, no grant, no credential of another kind
    return module, app, fic


def test_multi_tenant_defaults_off_and_then_multi_tenant_client_id_is_empty():
    main = parse(INFRA / "main.bicep")
    assert main["parameters"]["multiTenant"]["type"] == "bool"
    assert main["parameters"]["multiTenant"]["default"] is False
    setting = main["variables"]["syncSettings"]["value"]["MULTI_TENANT_CLIENT_ID"]
    conditional = setting["operator"]
    assert conditional["type"] == "conditional" and conditional["operands"]["condition"] == "multiTenant"
    assert accessor(conditional["operands"]["true_value"]) == ["multiTenantApp", "outputs", "appId"]
    assert conditional["operands"]["false_value"] == "multiTenantClientId"  # bring your own; '' by default
    assert param_default(main, setting) == "" == DEFAULTS["MULTI_TENANT_CLIENT_ID"]  # single tenant, as before
    # The app registration exists only with multiTenant=true, and the output says which client id the app has.
    module = main["modules"]["multiTenantApp"]
    assert module["detail"]["path"] == "app/multitenant.bicep" and module["config"]["condition"] == "multiTenant"
    assert main["outputs"]["MULTI_TENANT_CLIENT_ID"]["value"] == setting
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert azd["multiTenant"]["value"] == "${MULTI_TENANT=false}"
    # azd writes outputs back into its environment: the bring-your-own input has another name than
    # the MULTI_TENANT_CLIENT_ID output, so a created app's id never comes back in as "your own".
    assert "MULTI_TENANT_CLIENT_ID" not in json.dumps(azd)


def test_the_multi_tenant_app_is_multi_tenant_and_requires_the_roles_of_the_enabled_targets():
    main = parse(INFRA / "main.bicep")
    params = main["modules"]["multiTenantApp"]["config"]["config"]["params"]
    assert params["appRoles"] == "graphAppRoles"  # the same roles as the identity's own grant
    assert "resourceToken" in params["uniqueName"]  # one app registration per azd environment
    module, app, _ = multi_tenant_resources()
    assert app["signInAudience"] == "AzureADMultipleOrgs"
    assert app["uniqueName"] == "uniqueName" and app["displayName"] == "displayName"
    [graph] = app["requiredResourceAccess"]
    assert module["variables"][graph["resourceAppId"]]["value"] == MICROSOFT_GRAPH_APP_ID
    access = graph["resourceAccess"]
    assert access["loop_type"]["detail"] == {"item_name": "role", "array_name": "appRoles"}  # one per role
    assert access["config"]["type"] == "Role"  # application permissions, not delegated scopes
    # Each role id is looked up by name among the appRoles of the Microsoft Graph service principal.
    role_id = json.dumps(access["config"]["id"])
    assert '"filter"' in role_id and '"microsoftGraph"' in role_id and '"appRoles"' in role_id
    graph_sp = module["resources"]["microsoftGraph"]
    assert graph_sp["existing"] and graph_sp["type"] == "Microsoft.Graph/servicePrincipals"
    assert module["variables"][graph_sp["config"]["appId"]]["value"] == MICROSOFT_GRAPH_APP_ID
    assert module["parameters"]["appRoles"].get("default") is None
    assert accessor(module["outputs"]["appId"]["value"]) == ["multiTenantApp", "appId"]


def test_the_federated_credential_trusts_the_identitys_principal_id_for_the_exchange_audience():
    module, _, fic = multi_tenant_resources()
    assert fic["name"].startswith("${multiTenantApp.uniqueName}/")  # the extension's '<app>/<credential>'
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{2,119}", fic["name"].split("/", 1)[1])  # Entra's name rule
    # subject: the identity's principal (object) id, handed in from the identity module (not its client id)
    assert fic["subject"] == "identityPrincipalId" and module["parameters"]["identityPrincipalId"].get("default") is None
    params = parse(INFRA / "main.bicep")["modules"]["multiTenantApp"]["config"]["config"]["params"]
    assert accessor(params["identityPrincipalId"]) == ["identity", "outputs", "principalId"]
    # issuer: the Entra authority of this tenant, v2.0
    assert module["variables"][fic["issuer"]]["value"] == (
        "${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0"
    )
    # audience: api://AzureADTokenExchange in the public cloud; the clouds' own as the code knows them
    [audience] = fic["audiences"]
    audiences = module["variables"]["exchangeAudiences"]["value"]
    assert audiences["AzureCloud"] == EXCHANGE_AUDIENCE == "api://AzureADTokenExchange"
    assert set(audiences.values()) == {EXCHANGE_AUDIENCE, *EXCHANGE_AUDIENCES.values()}
    chosen = module["variables"][audience]["value"]["operator"]["operands"]
    assert chosen["condition"]["function"]["type"] == "contains"
    assert accessor(chosen["false_value"]) == ["exchangeAudiences", "AzureCloud"]


def test_no_secret_or_certificate_credential_anywhere_in_the_bicep():
    for path in BICEP_FILES:
        text = path.read_text()
        assert not re.search(r"passwordCredentials|keyCredentials|addPassword|addKey|clientSecret", text, re.I), path.name
        for kind, body in deployed_resources(parse(path)).values():
            if kind.startswith("Microsoft.Graph/applications@") or kind.startswith("Microsoft.Graph/servicePrincipals@"):
                assert not {"passwordCredentials", "keyCredentials"} & set(body), path.name
    module, _, _ = multi_tenant_resources()
    for name in module["outputs"]:
        assert not re.search(r"key|secret|password|certificate", name, re.I), name


# --- callers sign in with Entra ID (issue 22): the API's app registration, its roles, the settings ---



def caller_api_resources() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The module, its registration, the registration's second declaration (identifier URI) and its
    service principal (bodies)."""
    module = parse(INFRA / "app" / "callerapi.bicep")
    resources = deployed_resources(module)
    assert sorted(kind for kind, _ in resources.values()) == [GRAPH_APPLICATION, GRAPH_APPLICATION, GRAPH_SERVICE_PRINCIPAL]
    return module, resources["callerApi"][1], resources["callerApiUri"][1], resources["callerApiPrincipal"][1]


def test_caller_auth_defaults_to_key_and_then_api_client_id_is_empty():
    main = parse(INFRA / "main.bicep")
    assert main["parameters"]["callerAuth"]["default"] == "key" == DEFAULTS["CALLER_AUTH"]
    assert allowed_values(main, "callerAuth") == ["key", "entra"]
    settings = main["variables"]["syncSettings"]["value"]
    assert settings["CALLER_AUTH"] == "callerAuth"
    # API_CLIENT_ID: the created registration's client id with entra, '' (as the code's default) otherwise.
    conditional = settings["API_CLIENT_ID"]["operator"]
    assert conditional["type"] == "conditional" and conditional["operands"]["condition"] == "entraCallers"
    assert main["variables"]["entraCallers"]["value"]["operator"] == {
        "type": "equals", "operands": {"operand_1": "callerAuth", "operand_2": "entra"}}
    assert accessor(conditional["operands"]["true_value"]) == ["callerApi", "outputs", "appId"]
    assert conditional["operands"]["false_value"] == ""
    assert param_default(main, settings["API_CLIENT_ID"]) == "" == DEFAULTS["API_CLIENT_ID"]
    assert settings["CALLER_TENANTS"] == "callerTenants" and main["parameters"]["callerTenants"]["default"] == ""
    assert param_default(main, settings["CALLER_KEYS_REFRESH_SECONDS"]) == 60
    # The registration exists only with entra; the output says which client id the app has.
    module = main["modules"]["callerApi"]
    assert module["detail"]["path"] == "app/callerapi.bicep" and module["config"]["condition"] == "entraCallers"
    params = module["config"]["config"]["params"]
    assert "resourceToken" in params["uniqueName"] and params["callerTenants"] == "callerTenants"
    assert main["outputs"]["API_CLIENT_ID"]["value"] == settings["API_CLIENT_ID"]
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert azd["callerAuth"]["value"] == "${CALLER_AUTH=key}" and azd["callerTenants"]["value"] == "${CALLER_TENANTS=}"


def test_the_api_registration_has_exactly_the_roles_the_code_checks_for_users_and_apps():
    module, app, _, _ = caller_api_resources()
    assert len(CALLER_ROLES) == 5 and len(set(CALLER_ROLES)) == 5
    roles = module["variables"]["roles"]["value"]
    assert [role["value"] for role in roles] == list(CALLER_ROLES)  # the same names, in the same order
    for role in roles:
        assert role["displayName"] and len(role["description"]) >= 40, role["value"]
        assert len(role["value"]) <= 120 and " " not in role["value"]  # Entra's rule for a role's value
    app_roles = app["appRoles"]
    assert app_roles["loop_type"]["detail"] == {"item_name": "role", "array_name": "roles"}  # one per role
    body = app_roles["config"]
    assert body["allowedMemberTypes"] == ["User", "Application"] and body["isEnabled"] is True
    assert accessor(body["value"]) == ["role", "value"]
    # Stable ids: guid() of the registration's unique name and the role's value, so a rerun keeps them.
    assert body["id"]["function"]["type"] == "guid"
    assert body["id"]["function"]["parameters"] == {"base_string": "uniqueName", "extra_string_1": body["value"]}
    assert module["outputs"]["roles"]["value"]["loop_type"]["detail"]["array_name"] == "roles"


def test_the_api_registration_asks_for_v2_tokens_and_names_itself_api_app_id():
    _, app, uri, principal = caller_api_resources()
    for declaration in (app, uri):
        assert declaration["api"]["requestedAccessTokenVersion"] == 2  # issuer .../v2.0, audience the client id
        assert declaration["uniqueName"] == "uniqueName" and declaration["signInAudience"] == "signInAudience"
    # The identifier URI is api://<appId>: the second declaration reads the first's appId.
    assert uri["identifierUris"] == ["api://${callerApi.appId}"]
    assert accessor(uri["appRoles"]) == ["callerApi", "appRoles"]  # repeats the roles, removes none
    assert accessor(uri["api"]["oauth2PermissionScopes"]) == ["callerApi", "api", "oauth2PermissionScopes"]
    assert "identifierUris" not in app
    # The one delegated permission lets the connector ask for a token; it grants no role.
    [scope] = app["api"]["oauth2PermissionScopes"]
    assert scope["value"] == "user_impersonation" and scope["type"] == "User" and scope["isEnabled"] is True
    assert scope["id"]["function"]["type"] == "guid"
    assert accessor(principal["appId"]) == ["callerApiUri", "appId"] and principal["appRoleAssignmentRequired"] is True


def test_the_api_registration_is_single_tenant_unless_caller_tenants_are_listed():
    module, _, _, _ = caller_api_resources()
    audience = module["variables"]["signInAudience"]["value"]["operator"]
    assert audience["type"] == "conditional"
    assert json.dumps(audience["operands"]["condition"]).count("callerTenants") == 1
    assert audience["operands"]["condition"]["function"]["type"] == "empty"
    assert audience["operands"]["true_value"] == "AzureADMyOrg" and audience["operands"]["false_value"] == "AzureADMultipleOrgs"
    listed = BICEP_TYPE_VALUES[GRAPH_APPLICATION]["signInAudience"]
    assert {"AzureADMyOrg", "AzureADMultipleOrgs"} <= set(listed)
    assert module["parameters"]["callerTenants"]["default"] == ""


def test_the_api_registration_has_no_credential_and_outputs_no_secret():
    module, app, uri, principal = caller_api_resources()
    for body in (app, uri, principal):
        assert not {"passwordCredentials", "keyCredentials", "tokenEncryptionKeyId"} & set(body)
    assert not {"requiredResourceAccess", "web", "publicClient"} & set(app)  # it calls nothing, signs in no web app
    # One single-page app signs users in: the web console, served by the app itself (docs/console.md).
    assert app["spa"] == {"redirectUris": "redirectUris"} and accessor(uri["spa"]) == ["callerApi", "spa"]
    for name in module["outputs"]:
        assert not re.search(r"key|secret|password|certificate", name, re.I), name


def bicep_authority_host(login_endpoint: str) -> str:
    """What api.bicep's authorityHost evaluates to: endsWith(x, '/') ? substring(x, 0, length(x) - 1) : x
    (the shape is checked in the test below)."""
    return login_endpoint[:-1] if login_endpoint.endswith("/") else login_endpoint


def test_the_app_gets_its_home_tenant_and_authority_host_in_a_form_the_code_accepts():
    api = parse(INFRA / "app" / "api.bicep")
    variables = api["variables"]
    assert accessor(variables["loginEndpoint"]["value"]) == [
        {"function": {"type": "environment"}}, "authentication", "loginEndpoint"]
    chosen = variables["authorityHost"]["value"]["operator"]["operands"]
    assert chosen["condition"]["function"] == {
        "type": "ends_with", "parameters": {"string_to_search": "loginEndpoint", "string_to_find": "/"}}
    assert chosen["true_value"]["function"]["type"] == "substring" and chosen["false_value"] == "loginEndpoint"
    cut = chosen["true_value"]["function"]["parameters"]
    assert cut["string_to_parse"] == "loginEndpoint" and cut["start_index"] == 0
    assert cut["length"]["operator"]["operands"]["operand_2"] == 1
    # environment().authentication.loginEndpoint is https://login.microsoftonline.com/ in the public cloud.
    host = bicep_authority_host("https://login.microsoftonline.com/")
    assert host == "https://login.microsoftonline.com"
    env = DEFAULTS | {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "CALLER_AUTH": "entra",
        "API_CLIENT_ID": "0d6f3c4e-8a1b-4c2d-9e3f-5a6b7c8d9e01",
        "AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "AZURE_AUTHORITY_HOST": host,
    }
    settings = Settings.from_env(env)
    assert settings.caller_auth == "entra" and settings.authority_host == host
    # entra without the registration's id is refused, as /api/health reports it.
    with pytest.raises(ValueError, match="API_CLIENT_ID"):
        Settings.from_env(env | {"API_CLIENT_ID": ""})


def test_the_console_redirect_uris_are_the_default_hosts_and_those_azd_names():
    """The registration's SPA redirect URIs: https://<app host>/api/console, then each of
    CONSOLE_REDIRECT_URIS (a custom domain's), which a provision would otherwise wipe."""
    module, _, _, _ = caller_api_resources()
    listed = json.dumps(module["variables"]["redirectUris"])
    assert "consoleRedirectUri" in listed and listed.count("consoleRedirectUris") == 2  # empty() and split()
    assert module["parameters"]["consoleRedirectUris"]["default"] == ""
    main = parse(INFRA / "main.bicep")
    assert main["modules"]["callerApi"]["config"]["config"]["params"]["consoleRedirectUris"] == "consoleRedirectUris"
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert azd["consoleRedirectUris"]["value"] == "${CONSOLE_REDIRECT_URIS=}"
