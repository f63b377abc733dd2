"""Settings: defaults, national clouds, storage forms, and errors that name the setting."""
import pytest

from shared.common.settings import AZURITE_CONNECTION_STRING, Settings, SettingsError

STORAGE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}


def problems(env: dict[str, str]) -> dict[str, str]:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    return caught.value.problems


def test_defaults_need_only_storage():
    s = Settings.from_env(STORAGE)
    assert s.graph_base_url == "https://graph.microsoft.com"
    assert s.graph_scope == "https://graph.microsoft.com/.default"
    assert s.sync_targets == ("autopilot",)
    assert s.sync_schedule == "0 0 * * * *"
    assert s.exchange_sync_type == "deltaSync"
    assert s.cooldown_seconds("autopilot") == 600 and s.cooldown_seconds("appleAde") == 900
    assert s.state_table == "intunesync"


@pytest.mark.parametrize(
    "base",
    ["https://graph.microsoft.us", "https://dod-graph.microsoft.us", "https://microsoftgraph.chinacloudapi.cn"],
)
def test_national_cloud_changes_base_url_and_token_scope_only(base):
    s = Settings.from_env({**STORAGE, "GRAPH_BASE_URL": base + "/"})
    assert s.graph_base_url == base
    assert s.graph_scope == f"{base}/.default"


def test_use_development_storage_means_azurite():
    assert Settings.from_env(STORAGE).storage.connection_string == AZURITE_CONNECTION_STRING


def test_identity_based_storage_from_account_name():
    s = Settings.from_env(
        {
            "AzureWebJobsStorage__accountName": "stintunesync",
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": "11111111-2222-3333-4444-555555555555",
        }
    )
    assert s.storage.table_service_uri == "https://stintunesync.table.core.windows.net"
    assert s.storage.use_managed_identity and s.storage.client_id == "11111111-2222-3333-4444-555555555555"


def test_table_service_uri_wins_for_sovereign_clouds():
    s = Settings.from_env({"AzureWebJobsStorage__tableServiceUri": "https://st.table.core.usgovcloudapi.net/"})
    assert s.storage.table_service_uri == "https://st.table.core.usgovcloudapi.net"


def test_missing_storage_is_named():
    assert "AzureWebJobsStorage" in problems({})


def test_cooldown_below_graph_window_is_refused():
    assert "must be at least 600" in problems({**STORAGE, "AUTOPILOT_COOLDOWN_SECONDS": "300"})["AUTOPILOT_COOLDOWN_SECONDS"]


def test_non_numeric_cooldown_is_named():
    assert "AUTOPILOT_COOLDOWN_SECONDS" in problems({**STORAGE, "AUTOPILOT_COOLDOWN_SECONDS": "ten"})


def test_unknown_target_is_named():
    assert "intune" in problems({**STORAGE, "SYNC_TARGETS": "autopilot,intune"})["SYNC_TARGETS"]


def test_unknown_exchange_sync_type_is_named():
    assert "EXCHANGE_SYNC_TYPE" in problems({**STORAGE, "EXCHANGE_SYNC_TYPE": "quickSync"})


def test_schedule_must_have_six_fields():
    assert "SYNC_SCHEDULE" in problems({**STORAGE, "SYNC_SCHEDULE": "0 * * * *"})


def test_plain_http_graph_is_allowed_only_on_loopback():
    assert "https" in problems({**STORAGE, "GRAPH_BASE_URL": "http://graph.microsoft.com"})["GRAPH_BASE_URL"]
    assert Settings.from_env({**STORAGE, "GRAPH_BASE_URL": "http://127.0.0.1:8090"}).graph_base_url


def test_graph_base_url_with_version_path_is_refused():
    assert "GRAPH_BASE_URL" in problems({**STORAGE, "GRAPH_BASE_URL": "https://graph.microsoft.com/v1.0"})


def test_client_id_must_be_a_guid():
    assert "AZURE_CLIENT_ID" in problems({**STORAGE, "AZURE_CLIENT_ID": "my-identity"})


def test_every_problem_is_reported_at_once():
    found = problems({"SYNC_TARGETS": "x", "EXCHANGE_SYNC_TYPE": "y", "SYNC_STATE_TABLE": "a-b"})
    assert {"SYNC_TARGETS", "EXCHANGE_SYNC_TYPE", "SYNC_STATE_TABLE", "AzureWebJobsStorage"} <= set(found)


def test_a_lease_shorter_than_the_slowest_graph_call_is_refused():
    found = problems({**STORAGE, "GRAPH_TIMEOUT_SECONDS": "60", "SYNC_LEASE_SECONDS": "180"})
    assert "GRAPH_TIMEOUT_SECONDS=60" in found["SYNC_LEASE_SECONDS"]


# --- upper bounds (issue #10, item 11): every numeric setting has a documented maximum ---------

from shared.common.settings import DEFAULTS, NUMERIC_SETTINGS


def too_big(name: str) -> str:
    bounds = NUMERIC_SETTINGS[name]
    return str(int(bounds.maximum) + 1) if bounds.whole else str(bounds.maximum + 0.5)


def setting_env(name: str, value: str) -> dict[str, str]:
    """``value`` for ``name``, shaped as that setting takes it (HEALTH_THRESHOLDS is per target)."""
    if name == "HEALTH_THRESHOLDS":
        return {name: f"vpp=1:{value}"}
    if name == "HEALTH_WARNING_HOURS":  # must stay below the unhealthy hours
        return {name: value, "HEALTH_UNHEALTHY_HOURS": "8760"}
    if name == "IMPORT_STEP_HEARTBEAT_SECONDS":  # at most half the claim
        return {name: value, "IMPORT_STEP_CLAIM_SECONDS": "300"}
    return {name: value}


# Settings read through NUMERIC_SETTINGS by number(); the others (read by _bounded) take int()'s syntax.
STRICT_SYNTAX = set(NUMERIC_SETTINGS) - {"STATUS_DEADLINE_SECONDS", "HISTORY_RETENTION_DAYS"}
BAD_NUMBERS = [
    (name, value)
    for name in NUMERIC_SETTINGS
    for value in (too_big(name), "1000000000000", "1e12", "inf", "-inf", "nan", "1e400", "1_000")
    if value != "1_000" or name in STRICT_SYNTAX
]


@pytest.mark.parametrize("name,value", BAD_NUMBERS, ids=[f"{n}={v}" for n, v in BAD_NUMBERS])
def test_a_huge_or_non_finite_number_is_refused_by_its_setting_name(name, value):
    found = problems({**STORAGE, **setting_env(name, value)})
    assert name in found and value in found[name], found
    assert set(found) == {name}  # and only it: no follow-on complaint about another setting


@pytest.mark.parametrize("name", list(NUMERIC_SETTINGS))
def test_the_maximum_itself_is_accepted(name):
    bounds = NUMERIC_SETTINGS[name]
    top = str(int(bounds.maximum)) if bounds.whole else f"{bounds.maximum:g}"
    env = {**STORAGE, **setting_env(name, top)}
    if name == "HEALTH_UNHEALTHY_HOURS":
        env["HEALTH_WARNING_HOURS"] = "24"
    if name == "HEALTH_WARNING_HOURS":  # below the unhealthy hours, which are at their maximum
        env[name] = f"{bounds.maximum - 0.5:g}"
    if name == "GRAPH_TIMEOUT_SECONDS":
        env["SYNC_LEASE_SECONDS"] = "3600"  # a longer Graph timeout needs a longer lease
    Settings.from_env(env)


def test_the_bounds_are_the_documented_ones():
    assert {n: b.maximum for n, b in NUMERIC_SETTINGS.items() if n.endswith("_COOLDOWN_SECONDS")} == {
        n: 604800 for n in NUMERIC_SETTINGS if n.endswith("_COOLDOWN_SECONDS")
    }
    assert len([n for n in NUMERIC_SETTINGS if n.endswith("_COOLDOWN_SECONDS")]) == 6
    assert NUMERIC_SETTINGS["SYNC_LEASE_SECONDS"].maximum == 3600
    assert NUMERIC_SETTINGS["SYNC_WAIT_TIMEOUT_SECONDS"].maximum == 86400
    assert NUMERIC_SETTINGS["GRAPH_TIMEOUT_SECONDS"].maximum == 120
    assert NUMERIC_SETTINGS["HEALTH_WARNING_HOURS"].maximum == NUMERIC_SETTINGS["HEALTH_UNHEALTHY_HOURS"].maximum == 8760
    assert NUMERIC_SETTINGS["TOKEN_EXPIRY_WARNING_DAYS"].maximum == 365


def test_every_numeric_setting_has_bounds_and_its_default_is_inside_them():
    numeric = {name for name, default in DEFAULTS.items() if default.replace(".", "", 1).isdigit()}
    assert numeric <= set(NUMERIC_SETTINGS)
    for name, bounds in NUMERIC_SETTINGS.items():
        if name in DEFAULTS and DEFAULTS[name]:
            assert bounds.minimum <= float(DEFAULTS[name]) <= bounds.maximum, name


def test_a_whole_number_setting_takes_plain_digits_only():
    for value in ("600.0", "6e2", "٦٠٠", " 0x258"):
        assert "AUTOPILOT_COOLDOWN_SECONDS" in problems({**STORAGE, "AUTOPILOT_COOLDOWN_SECONDS": value}), value


@pytest.mark.parametrize(
    "name,value",
    [
        ("AUTOPILOT_COOLDOWN_SECONDS", "1000000000000"),
        ("EXCHANGE_COOLDOWN_SECONDS", "604801"),
        ("SYNC_LEASE_SECONDS", "1000000000000"),
        ("SYNC_WAIT_TIMEOUT_SECONDS", "86401"),
        ("HEALTH_WARNING_HOURS", "nan"),
        ("HEALTH_UNHEALTHY_HOURS", "inf"),
        ("HEALTH_THRESHOLDS", "vpp=1:inf"),
        ("TOKEN_EXPIRY_WARNING_DAYS", "366"),
        ("GRAPH_TIMEOUT_SECONDS", "nan"),
    ],
)
def test_health_answers_503_naming_an_out_of_bounds_setting(app_env, monkeypatch, name, value):
    from conftest import call

    monkeypatch.setenv(name, value)
    status, _, body = call("GET", "health")
    assert status == 503 and body["status"] == "unhealthy" and name in body["problems"], body


@pytest.mark.parametrize(
    "queues,clashing",
    [
        ({"IMPORT_QUEUE": "intunesync-deferred"}, {"SYNC_QUEUE", "IMPORT_QUEUE"}),  # the default SYNC_QUEUE
        ({"SYNC_QUEUE": "jobs", "TENANT_QUEUE": "jobs"}, {"SYNC_QUEUE", "TENANT_QUEUE"}),
        ({"SYNC_QUEUE": "one", "IMPORT_QUEUE": "one", "TENANT_QUEUE": "one"}, {"SYNC_QUEUE", "IMPORT_QUEUE", "TENANT_QUEUE"}),
        ({"SYNC_QUEUE": "jobs", "IMPORT_QUEUE": "jobs-poison"}, {"SYNC_QUEUE", "IMPORT_QUEUE"}),  # where failed ones go
        ({"TENANT_QUEUE": "intunesync-imports-poison"}, {"IMPORT_QUEUE", "TENANT_QUEUE"}),
    ],
)
def test_queue_settings_naming_one_queue_are_refused_naming_both(queues, clashing):
    found = problems({**STORAGE, **queues})
    assert {name for name, why in found.items() if "different queue" in why} == clashing, found


def test_equal_queue_names_are_compared_as_azure_does_without_case():
    from shared.common.settings import queue_clashes

    assert [(a, b) for a, b, _ in queue_clashes({"SYNC_QUEUE": "Jobs", "IMPORT_QUEUE": "jobs"})] == [("SYNC_QUEUE", "IMPORT_QUEUE")]
    assert queue_clashes({"SYNC_QUEUE": "jobs", "IMPORT_QUEUE": "jobs-2", "TENANT_QUEUE": "poison"}) == []


def test_health_answers_503_naming_both_queue_settings_that_share_a_queue(app_env, monkeypatch):
    from conftest import call

    monkeypatch.setenv("TENANT_QUEUE", app_env["SYNC_QUEUE"])
    status, _, body = call("GET", "health")
    assert status == 503 and {"SYNC_QUEUE", "TENANT_QUEUE"} <= set(body["problems"]), body
    assert app_env["SYNC_QUEUE"] in body["problems"]["TENANT_QUEUE"]


@pytest.mark.parametrize("claim,beat", [("60", "31"), ("4", "3")])
def test_an_import_step_heartbeat_slower_than_half_its_claim_is_refused(claim, beat):
    found = problems({**STORAGE, "IMPORT_STEP_CLAIM_SECONDS": claim, "IMPORT_STEP_HEARTBEAT_SECONDS": beat})
    assert set(found) == {"IMPORT_STEP_HEARTBEAT_SECONDS"} and "half" in found["IMPORT_STEP_HEARTBEAT_SECONDS"]
