"""Settings: defaults, national clouds, storage forms, and errors that name the setting."""
import pytest

from shared.settings import AZURITE_CONNECTION_STRING, Settings, SettingsError

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
