"""The monitoring deployed with the app (issue 14): an Azure Monitor workbook and log search alerts
over the app's own telemetry. Every query reads the `IntuneSync {json}` traces exactly as
shared/common/telemetry.py writes them and names only its fields and events; the workbook is on unless
switched off; the alerts exist only with an e-mail address to send to, and they query as a managed
identity of their own, through RBAC, never with a key."""
from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from test_infra import INFRA, accessor, deployed_resources, parse

from shared.common import telemetry
from shared.common.settings import DEFAULTS

WORKBOOK_JSON = INFRA / "app" / "workbook.json"
WORKBOOK_BICEP = INFRA / "app" / "workbook.bicep"
ALERTS_BICEP = INFRA / "app" / "alerts.bicep"
COMPONENTS = "microsoft.insights/components"
RULES = "Microsoft.Insights/scheduledQueryRules@"
ACTION_GROUPS = "Microsoft.Insights/actionGroups@"
# Every query starts from these lines: the app's traces, parsed as one JSON object aliased `e`.
PREAMBLE = (
    "traces",
    '| where message startswith "IntuneSync "',
    f"| extend e = parse_json(substring(message, {len(telemetry.PREFIX)}))",
)
# Built-in Azure roles (read-only): Reader, Log Analytics Reader.
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
LOG_ANALYTICS_READER = "73c42c96-874c-492b-b04d-ab87d138a893"

_FIELD = re.compile(r"""\be\s*(?:\.\s*(\w+)|\[\s*["'](\w+)["']\s*\])""")
_EVENT = r"""\be\s*(?:\.\s*event|\[\s*["']event["']\s*\])"""
_EVENT_IS = re.compile(_EVENT + r"""\s*==\s*["']([^"']*)["']""")
_EVENT_IN = re.compile(_EVENT + r"\s+in\s*\(([^)]*)\)")


def query_problems(query: str) -> list[str]:
    """What is wrong with a query over the app's telemetry: it does not start from the preamble,
    parses the message again under another name, names no event, or names a field or an event
    telemetry.FIELDS / telemetry.EVENTS do not have."""
    problems = []
    lines = tuple(line.strip() for line in query.strip().splitlines())
    if lines[:3] != PREAMBLE:
        problems.append(f"does not start with the preamble: {lines[:3]}")
    if query.count("parse_json(") + query.count("todynamic(") != 1:
        problems.append("parses the message other than as `e`")
    fields = {dotted or indexed for dotted, indexed in _FIELD.findall(query)}
    problems += [f"unknown field e.{name}" for name in sorted(fields - set(telemetry.FIELDS))]
    events = set(_EVENT_IS.findall(query))
    events |= {name.strip().strip("\"'") for names in _EVENT_IN.findall(query) for name in names.split(",")}
    if not events:
        problems.append("names no event: it would read every trace")
    problems += [f"unknown event {name!r}" for name in sorted(events - set(telemetry.EVENTS))]
    return problems


def fields_named(query: str) -> set[str]:
    return {dotted or indexed for dotted, indexed in _FIELD.findall(query)}


def workbook() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(WORKBOOK_JSON.read_text())
    return document


def with_queries(node: Any) -> dict[str, dict[str, Any]]:
    """Every object in the workbook that runs a query, at any depth, by name: a query item's content
    (named by its item) or a parameter."""
    found: dict[str, dict[str, Any]] = {}
    if isinstance(node, list):
        for item in node:
            found |= with_queries(item)
    elif isinstance(node, dict):
        if "query" in node:
            found[node["name"]] = node
        elif "query" in node.get("content", {}):
            found[node["name"]] = node["content"]
        else:
            for value in node.values():
                found |= with_queries(value)
    return found


def workbook_queries() -> dict[str, str]:
    return {name: item["query"] for name, item in with_queries(workbook()).items()}


def item_named(node: Any, name: str) -> dict[str, Any]:
    if isinstance(node, list):
        found = [item for entry in node if (item := item_named(entry, name))]
        return found[0] if found else {}
    if isinstance(node, dict):
        if node.get("name") == name:
            return node
        return item_named(list(node.values()), name)
    return {}


def alerts() -> dict[str, Any]:
    return parse(ALERTS_BICEP)


def rules() -> dict[str, dict[str, Any]]:
    return {symbol: body for symbol, (kind, body) in deployed_resources(alerts()).items() if kind.startswith(RULES)}


def alert_queries() -> dict[str, str]:
    """Each rule's query, the KQL text of the variable its condition names."""
    variables = alerts()["variables"]
    queries = {}
    for symbol, rule in rules().items():
        for condition in rule["properties"]["criteria"]["allOf"]:
            queries[symbol] = variables[condition["query"]]["value"]
    return queries


def duration(iso: str) -> timedelta:
    match = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?", iso)
    assert match and iso not in ("P", "PT"), iso
    days, hours, minutes = (int(part or 0) for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes)


# --- the queries ---------------------------------------------------------------------------------


def test_the_workbook_is_a_workbook_document():
    document = workbook()
    assert document["version"] == "Notebook/1.0"
    assert isinstance(document["items"], list) and document["items"]
    assert all(isinstance(item["type"], int) and item["name"] for item in document["items"])
    names = [item["name"] for item in document["items"]]
    assert len(names) == len(set(names)) and len(with_queries(document)) >= 10


def test_every_workbook_query_runs_against_application_insights():
    for name, item in with_queries(workbook()).items():
        assert item["resourceType"] == COMPONENTS, name
        assert item["queryType"] == 0, name  # a logs (KQL) query


@pytest.mark.parametrize("name", sorted(workbook_queries()))
def test_every_workbook_query_reads_the_telemetry_and_names_only_its_fields_and_events(name):
    assert query_problems(workbook_queries()[name]) == []


@pytest.mark.parametrize("rule", sorted(alert_queries()))
def test_every_alert_query_reads_the_telemetry_and_names_only_its_fields_and_events(rule):
    assert query_problems(alert_queries()[rule]) == []


DOC_QUERIES = [q for q in re.findall(r"```(?:kql|kusto)\n(.*?)```", (INFRA.parent / "docs" / "monitoring.md").read_text(), flags=re.S)
               if q.lstrip().startswith("traces") and "IntuneSync" in q]


def test_the_monitoring_guide_has_its_queries_for_the_common_questions():
    assert len(DOC_QUERIES) >= 10


@pytest.mark.parametrize("index", range(len(DOC_QUERIES)))
def test_every_query_in_the_monitoring_guide_names_only_fields_and_events_the_app_logs(index):
    assert query_problems(DOC_QUERIES[index]) == []


def test_the_query_check_catches_an_unknown_field_an_unknown_event_and_a_missing_preamble():
    preamble = "\n".join(PREAMBLE)
    good = preamble + '\n| where e.event in ("sync", "watch") and e["outcome"] == "failed"\n| project tostring(e.unit)'
    assert query_problems(good) == []
    assert query_problems(good + "\n| extend t = tostring(e.accessToken)") == ["unknown field e.accessToken"]
    assert query_problems(good + '\n| extend t = e["secret"]') == ["unknown field e.secret"]
    assert query_problems(preamble + '\n| where e.event == "debug"') == ["unknown event 'debug'"]
    assert query_problems(preamble + '\n| where e.event in ("sync", "debug")') == ["unknown event 'debug'"]
    assert query_problems(preamble + "\n| take 10") == ["names no event: it would read every trace"]
    assert query_problems(good.replace("traces\n", "union traces, requests\n"))[0].startswith("does not start")
    twice = good + "\n| extend x = parse_json(tostring(e.message))"
    assert query_problems(twice) == ["parses the message other than as `e`"]


def test_the_workbook_shows_syncs_failures_health_deferred_syncs_imports_and_tenants():
    queries = workbook_queries()
    events = {name for query in queries.values() for name in _EVENT_IS.findall(query)}
    assert {"sync", "watch", "health", "deferred", "import", "tenant"} <= events
    assert any("bin(timestamp" in q and "e.outcome" in q for q in queries.values())  # over time, by outcome
    assert any("bin(timestamp" in q and "e.target" in q for q in queries.values())  # over time, by target
    failures = queries["failures"]
    assert '"failed"' in failures and '"syncFailed"' in failures  # refused by Graph, or reported failed by it
    assert {"graphRequestId", "clientRequestId", "errorCode", "message", "httpStatus"} <= fields_named(failures)
    assert {"health", "lastSyncAt", "message", "unit"} <= fields_named(queries["health"])
    assert "arg_max(timestamp" in queries["health"]  # each unit's latest rating
    assert '"scheduled"' in queries["deferred"] and '"deferred"' in queries["deferred"]
    assert {"importId", "devices", "step", "counts"} <= fields_named(queries["imports"])


def test_the_tenants_section_shows_only_when_there_are_tenants():
    document = workbook()
    parameter = item_named(document, "TenantCount")
    assert _EVENT_IS.findall(parameter["query"]) == ["tenant"] and "dcount(" in parameter["query"]
    group = item_named(document, "tenants-group")
    assert group["conditionalVisibility"] == {"parameterName": "TenantCount", "comparison": "isNotEqualTo", "value": "0"}
    assert set(with_queries(group)) == {"tenants", "tenant-syncs"}


def test_the_workbook_shows_every_tenants_next_expiring_apple_credential():
    document = workbook()
    names = [item["name"] for item in document["items"]]
    # At the top level, shown with or without registered tenants (the app's own tenant is checked too).
    assert names.index("credentials-header") + 1 == names.index("credentials-next-expiry")
    item = item_named(document, "credentials-next-expiry")["content"]
    query = item["query"]
    assert _EVENT_IS.findall(query) == ["expiry"]
    assert "isnotempty(tostring(e.credentialId))" in query  # credentials, not notConfigured / unavailable reads
    lines = [line.strip() for line in query.strip().splitlines()]
    # Each credential's latest check, then per tenant the one with the fewest days left.
    latest = lines.index("| summarize arg_max(timestamp, e) by Tenant, Kind, CredentialId")
    nearest = lines.index("| summarize arg_min(DaysLeft, *) by Tenant")
    assert latest < nearest and "Tenant = tostring(e.tenant)" in query  # empty: the app's own tenant
    assert {"target", "name", "appleId", "expiresAt", "daysLeft", "outcome", "health"} <= fields_named(query)
    project = next(line for line in lines if line.startswith("| project "))
    for column in ("Tenant", "Kind", "Name", "AppleId", "ExpiresAt", "DaysLeft", "State"):
        assert re.search(rf"\b{column}\b", project), column
    # The last two days of the daily check, whatever the workbook's time range: every credential has a record.
    assert "timestamp > ago(2d)" in query
    assert item["timeContext"] == {"durationMs": 2 * 86400000} and "timeContextFromParameter" not in item
    assert item["visualization"] == "table"


# --- the workbook --------------------------------------------------------------------------------


def test_the_workbook_is_deployed_unless_deploy_workbook_is_false():
    main = parse(INFRA / "main.bicep")
    assert main["parameters"]["deployWorkbook"]["type"] == "bool"
    assert main["parameters"]["deployWorkbook"]["default"] is True
    module = main["modules"]["workbook"]
    assert module["detail"]["path"] == "app/workbook.bicep" and module["config"]["condition"] == "deployWorkbook"
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert azd["deployWorkbook"]["value"] == "${DEPLOY_WORKBOOK=true}"
    output = main["outputs"]["AZURE_WORKBOOK_ID"]["value"]["operator"]["operands"]
    assert output["condition"] == "deployWorkbook" and accessor(output["true_value"]) == ["workbook", "outputs", "id"]


def test_the_workbook_is_a_shared_workbook_on_the_application_insights_component():
    template = parse(WORKBOOK_BICEP)
    [(kind, body)] = deployed_resources(template).values()
    assert kind == "Microsoft.Insights/workbooks@2023-06-01"
    assert body["kind"] == "shared" and body["properties"]["category"] == "workbook"
    assert body["name"]["function"]["type"] == "guid"  # a workbook's name must be a GUID
    # Its source is the app's Application Insights component...
    component = template["resources"]["applicationInsights"]
    assert component["existing"] and component["type"] == "Microsoft.Insights/components"
    assert component["config"]["name"] == "applicationInsightsName"
    assert accessor(body["properties"]["sourceId"]) == ["applicationInsights", "id"]
    params = parse(INFRA / "main.bicep")["modules"]["workbook"]["config"]["config"]["params"]
    assert accessor(params["applicationInsightsName"]) == ["monitoring", "outputs", "applicationInsightsName"]
    # ...and its content is workbook.json, with the component as the resource to query from the gallery.
    assert template["variables"]["definition"]["value"]["function"] == {
        "type": "load_json_content", "parameters": {"file_path": "workbook.json", "json_path": None, "encoding": None},
    }
    serialized = body["properties"]["serializedData"]["function"]
    assert serialized["type"] == "string"
    union = serialized["parameters"]["value_to_convert"]["function"]
    assert union["type"] == "union" and union["parameters"]["arg_1"] == "definition"
    assert [accessor(i) for i in union["parameters"]["arg_2"]["fallbackResourceIds"]] == [["applicationInsights", "id"]]
    assert accessor(body["properties"]["version"]) == ["definition", "version"]


# --- the alerts ----------------------------------------------------------------------------------


def test_no_alert_resource_is_deployed_without_an_alert_email():
    main = parse(INFRA / "main.bicep")
    assert main["parameters"]["alertEmail"]["type"] == "string" and main["parameters"]["alertEmail"]["default"] == ""
    module = main["modules"]["alerts"]
    assert module["detail"]["path"] == "app/alerts.bicep"
    condition = module["config"]["condition"]["operator"]
    assert condition["type"] == "not"
    assert condition["operands"]["bool_value"]["function"] == {"type": "empty", "parameters": {"item_to_test": "alertEmail"}}
    assert module["config"]["config"]["params"]["alertEmail"] == "alertEmail"
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert azd["alertEmail"]["value"] == "${ALERT_EMAIL=}"
    # Everything of the alerts is in that module: no rule or action group anywhere else.
    for path in sorted(INFRA.rglob("*.bicep")):
        if path != ALERTS_BICEP:
            elsewhere = [kind for kind, _ in deployed_resources(parse(path)).values()]
            assert not [kind for kind in elsewhere if kind.startswith((RULES, ACTION_GROUPS))], path.name
    in_module = {kind.split("@")[0] for kind, _ in deployed_resources(alerts()).values()}
    assert in_module == {
        "Microsoft.ManagedIdentity/userAssignedIdentities", "Microsoft.Authorization/roleAssignments",
        "Microsoft.Insights/actionGroups", "Microsoft.Insights/scheduledQueryRules",
    }


def test_the_outputs_say_whether_alerts_are_on_and_which_rules_exist():
    outputs = parse(INFRA / "main.bicep")["outputs"]
    no_email = {"function": {"type": "empty", "parameters": {"item_to_test": "alertEmail"}}}
    enabled = outputs["ALERTS_ENABLED"]
    assert enabled["type"] == "bool" and enabled["value"]["operator"] == {"type": "not", "operands": {"bool_value": no_email}}
    rule_ids = outputs["ALERT_RULE_IDS"]["value"]["operator"]["operands"]
    assert rule_ids["condition"] == no_email and rule_ids["true_value"] == []
    assert accessor(rule_ids["false_value"]) == ["alerts", "outputs", "ruleIds"]
    assert "ALERT_EMAIL" not in outputs  # azd would write it back into the environment
    for name in outputs:
        assert not re.search(r"key|secret|password|connection", name, re.I), name


def test_the_action_group_emails_alert_email_with_the_common_alert_schema():
    [group] = [body for kind, body in deployed_resources(alerts()).values() if kind.startswith(ACTION_GROUPS)]
    assert group["location"] == "global"  # action groups are global resources
    properties = group["properties"]
    assert properties["enabled"] is True
    assert 1 <= len(properties["groupShortName"]) <= 12  # ARM's limit
    assert properties["emailReceivers"] == [{"name": "operator", "emailAddress": "alertEmail", "useCommonAlertSchema": True}]
    assert alerts()["parameters"]["alertEmail"].get("default") is None  # required: the module exists only with one


def test_there_are_rules_for_failed_syncs_unhealthy_units_and_expiring_credentials_and_all_alert_the_action_group():
    queries = alert_queries()
    assert set(queries) == {"failedSyncs", "unhealthyUnits", "expiringCredentials"}
    failed, unhealthy = queries["failedSyncs"], queries["unhealthyUnits"]
    assert 'e.event == "sync" and e.outcome == "failed"' in failed
    assert 'e.event == "watch" and e.outcome == "syncFailed"' in failed  # Graph reports the sync failed
    assert 'e.event == "health"' in unhealthy and '"unhealthy"' in unhealthy
    assert "arg_max(timestamp, e) by Unit" in unhealthy  # each unit's latest rating, not any in the window
    for rule in rules().values():
        assert rule["kind"] == "LogAlert" and rule["properties"]["enabled"] is True
        assert [accessor(g) for g in rule["properties"]["actions"]["actionGroups"]] == [["actionGroup", "id"]]


# Each rule's dimensions: one alert per unit (or credential) and tenant.
DIMENSIONS = {"failedSyncs": ["Unit", "Tenant"], "unhealthyUnits": ["Unit", "Tenant"], "expiringCredentials": ["Credential", "Tenant"]}


def test_each_rule_splits_by_columns_its_query_returns():
    queries = alert_queries()
    assert set(rules()) == set(DIMENSIONS)
    for symbol, rule in rules().items():
        [condition] = rule["properties"]["criteria"]["allOf"]
        names = [dimension["name"] for dimension in condition["dimensions"]]
        assert names == DIMENSIONS[symbol], symbol
        for name in names + ([condition["metricMeasureColumn"]] if "metricMeasureColumn" in condition else []):
            assert re.search(rf"\b{name} =", queries[symbol]), (symbol, name)


def test_the_rules_schedules_are_ones_azure_monitor_accepts():
    # Microsoft's "Create or edit a log search alert rule": the frequency is one minute to one day,
    # the query's time range at most two days, a stateful (autoMitigate) rule runs at most every 12
    # hours; the types' description: severity 0 (critical) to 4.
    for symbol, rule in rules().items():
        properties = rule["properties"]
        frequency, window = duration(properties["evaluationFrequency"]), duration(properties["windowSize"])
        assert timedelta(minutes=1) <= frequency <= timedelta(days=1), symbol
        assert frequency <= window <= timedelta(days=2), symbol
        assert not properties["autoMitigate"] or frequency <= timedelta(hours=12), symbol
        assert properties["severity"] in range(5), symbol
        [condition] = properties["criteria"]["allOf"]
        assert condition["operator"] == "GreaterThan" and condition["threshold"] == 0, symbol


def test_the_unhealthy_rule_looks_further_back_than_the_timer_interval():
    assert DEFAULTS["SYNC_SCHEDULE"] == "0 0 * * * *"  # hourly: a health event per unit every hour
    window = duration(rules()["unhealthyUnits"]["properties"]["windowSize"])
    assert window >= timedelta(hours=2)


def test_the_expiring_credentials_rule_counts_each_credentials_latest_check_unless_healthy():
    query = alert_queries()["expiringCredentials"]
    assert 'e.event == "expiry"' in query
    assert "isnotempty(tostring(e.credentialId))" in query  # a credential, not a notConfigured / unavailable read
    # Each credential (kind and id) of each tenant ("own": the app's own), its latest record only:
    # a renewed credential's healthy record resolves the alert.
    assert 'Credential = strcat(tostring(e.target), "/", tostring(e.credentialId))' in query
    assert 'Tenant = iff(isempty(tostring(e.tenant)), "own", tostring(e.tenant))' in query
    lines = [line.strip() for line in query.strip().splitlines()]
    latest = lines.index("| summarize arg_max(timestamp, e) by Credential, Tenant")
    assert lines[latest + 1] == '| where tostring(e.health) in ("warning", "unhealthy")'  # rated after taking the latest
    # What the e-mail's results show: what to renew, with which Apple ID, by when.
    assert {"target", "name", "appleId", "expiresAt", "daysLeft", "outcome", "health"} <= fields_named(query)
    # The check runs daily: the query keeps a day and some (the run, ingestion latency), not two
    # checks' worth; the rule's window holds it, in one bin.
    assert DEFAULTS["CREDENTIAL_CHECK_SCHEDULE"] == "0 0 6 * * *"  # daily
    [hours] = re.findall(r"timestamp > ago\((\d+)h\)", query)
    assert 24 < int(hours) < 48
    properties = rules()["expiringCredentials"]["properties"]
    assert duration(properties["windowSize"]) >= timedelta(hours=int(hours))
    assert duration(properties["evaluationFrequency"]) <= timedelta(hours=1)  # within the hour after a check
    assert properties["autoMitigate"] is True


def test_every_rule_queries_the_application_insights_component_as_a_user_assigned_identity():
    template = alerts()
    component = template["resources"]["applicationInsights"]
    assert component["existing"] and component["config"]["name"] == "applicationInsightsName"
    identity = template["resources"]["alertIdentity"]
    assert identity["type"] == "Microsoft.ManagedIdentity/userAssignedIdentities" and not identity["existing"]
    for symbol, rule in rules().items():
        assert [accessor(scope) for scope in rule["properties"]["scopes"]] == [["applicationInsights", "id"]], symbol
        assert rule["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {"'${alertIdentity.id}'": {}}}
    # No key, anywhere: the component and workspace accept none (monitoring.bicep), and nothing asks for one.
    text = ALERTS_BICEP.read_text()
    assert not re.search(r"listKeys|apiKey|InstrumentationKey|ConnectionString|sharedKeys", text, re.I)
    monitoring = {kind: body for kind, body in deployed_resources(parse(INFRA / "app" / "monitoring.bicep")).values()}
    assert monitoring["Microsoft.Insights/components@2020-02-02"]["properties"]["DisableLocalAuth"] is True
    workspace = monitoring["Microsoft.OperationalInsights/workspaces@2023-09-01"]
    assert workspace["properties"]["features"]["disableLocalAuth"] is True


def test_the_rules_identity_can_read_what_it_queries_before_the_rules_exist():
    template = alerts()
    variables = template["variables"]
    assignments = {
        symbol: body for symbol, (kind, body) in deployed_resources(template).items()
        if kind.startswith("Microsoft.Authorization/roleAssignments@")
    }
    granted = {}
    for symbol, body in assignments.items():
        properties = body["properties"]
        assert accessor(properties["principalId"]) == ["alertIdentity", "properties", "principalId"], symbol
        assert properties["principalType"] == "ServicePrincipal", symbol
        role = properties["roleDefinitionId"]["function"]
        assert role["type"] == "subscription_resource_id"
        granted[body["scope"]] = variables[role["parameters"]["resource_name_1"]]["value"]
    # Read-only roles on exactly the component the rules are scoped to and the workspace holding its data.
    assert granted == {"applicationInsights": READER, "logAnalytics": LOG_ANALYTICS_READER}
    workspace = template["resources"]["logAnalytics"]
    assert workspace["existing"] and workspace["config"]["name"] == "logAnalyticsName"
    params = parse(INFRA / "main.bicep")["modules"]["alerts"]["config"]["config"]["params"]
    assert accessor(params["logAnalyticsName"]) == ["monitoring", "outputs", "logAnalyticsName"]
    assert accessor(params["applicationInsightsName"]) == ["monitoring", "outputs", "applicationInsightsName"]
    # The assignments exist before a rule is created (and ARM validates its query as the identity).
    for symbol, rule in rules().items():
        assert set(rule["dependsOn"]) == set(assignments), symbol
