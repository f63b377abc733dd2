"""The Intune sync targets beyond Autopilot and Exchange: Apple ADE tokens, VPP licences,
Managed Google Play apps and Windows driver inventory — each through the same service."""
from __future__ import annotations

import inspect

import pytest
import requests
from conftest import configure, graph_calls, one

import function_app
from emulators.graph import CONFIGURATION, SERVICE_CONFIG
from shared.common.model import Outcome, SyncRequest
from shared.engine.targets import TARGETS, ItemNotFound, parse_guid

ALL = "autopilot,exchange,appleAde,vpp,managedGooglePlay,driverInventory"
ADE_GOOD, ADE_EXPIRED = "2f0a8b6e-6c3d-4f5e-9a1b-7c2d3e4f5a01", "2f0a8b6e-6c3d-4f5e-9a1b-7c2d3e4f5a02"
VPP_VALID, VPP_EXPIRED = "7b1c9d2e-3f4a-4b5c-8d6e-9f0a1b2c3d01", "7b1c9d2e-3f4a-4b5c-8d6e-9f0a1b2c3d02"
DRIVERS = "c4d5e6f7-0a1b-4c2d-9e3f-4a5b6c7d8e01"

# target, one item (None for a tenant-wide target), the Graph action path, its role
CASES = [
    ("appleAde", ADE_GOOD, f"/beta/deviceManagement/depOnboardingSettings/{ADE_GOOD}/syncWithAppleDeviceEnrollmentProgram", SERVICE_CONFIG),
    ("vpp", VPP_VALID, f"/v1.0/deviceAppManagement/vppTokens/{VPP_VALID}/syncLicenses", SERVICE_CONFIG),
    ("managedGooglePlay", None, "/beta/deviceManagement/androidManagedStoreAccountEnterpriseSettings/syncApps", CONFIGURATION),
    ("driverInventory", DRIVERS, f"/beta/deviceManagement/windowsDriverUpdateProfiles/{DRIVERS}/syncInventory", CONFIGURATION),
]
IDS = [c[0] for c in CASES]


@pytest.fixture
def service(make_service):
    return make_service(SYNC_TARGETS=ALL)


@pytest.mark.parametrize("target,item,path,role", CASES, ids=IDS)
def test_a_sync_starts_with_one_post_of_the_targets_action(service, graph, target, item, path, role):
    result = one(service.sync(SyncRequest(target, item_id=item)))
    assert result.outcome is Outcome.STARTED, result.message
    assert [c["path"] for c in graph_calls(graph, "POST")] == [path]


@pytest.mark.parametrize("target,item,path,role", CASES, ids=IDS)
def test_a_second_sync_inside_the_cooldown_makes_no_graph_call(service, graph, target, item, path, role):
    service.sync(SyncRequest(target, item_id=item))
    result = one(service.sync(SyncRequest(target, item_id=item)))
    assert result.outcome is Outcome.COOLDOWN
    assert len(graph_calls(graph, "POST")) == 1


@pytest.mark.parametrize("target,item,path,role", CASES, ids=IDS)
def test_graph_409_is_in_progress(service, graph, target, item, path, role):
    requests.post(f"{graph.base_url}/_emulator/faults", json=[{"method": "POST", "pathContains": path, "status": 409}], timeout=5)
    assert one(service.sync(SyncRequest(target, item_id=item))).outcome is Outcome.IN_PROGRESS


@pytest.mark.parametrize("target,item,path,role", CASES, ids=IDS)
def test_a_403_names_the_role_the_target_needs(service, graph, identity_server, target, item, path, role):
    other = SERVICE_CONFIG if role == CONFIGURATION else CONFIGURATION
    identity_server.configure(roles=[other])
    result = one(service.sync(SyncRequest(target, item_id=item)))
    assert result.outcome is Outcome.FAILED and result.failure_status == 502
    assert role in result.message and other not in result.message


def test_the_apple_sync_cooldown_is_apples_fifteen_minutes(service):
    assert service.target("appleAde").cooldown.total_seconds() == 900


def test_an_expired_apple_token_is_skipped(service, graph):
    results = {r.target: r for r in service.sync(SyncRequest("appleAde"))}
    assert results[f"appleAde/{ADE_GOOD}"].outcome is Outcome.STARTED
    assert results[f"appleAde/{ADE_EXPIRED}"].outcome is Outcome.SKIPPED
    assert "expired" in results[f"appleAde/{ADE_EXPIRED}"].message


def test_apple_refuses_a_second_sync_within_fifteen_minutes(service, graph):
    configure(graph, depOnboardingSettings=[{"id": ADE_GOOD, "tokenExpirationDateTime": "2099-01-01T00:00:00Z",
                                             "lastSyncTriggeredDateTime": requests.get(f"{graph.base_url}/_emulator/stats", timeout=5).json()["now"]}])
    result = one(service.sync(SyncRequest("appleAde", item_id=ADE_GOOD)))
    assert result.outcome is Outcome.COOLDOWN and result.graph_status == 429


def test_only_valid_vpp_tokens_are_synced(service, graph):
    results = {r.target: r for r in service.sync(SyncRequest("vpp"))}
    assert results[f"vpp/{VPP_VALID}"].outcome is Outcome.STARTED
    assert results[f"vpp/{VPP_EXPIRED}"].outcome is Outcome.SKIPPED and "'expired'" in results[f"vpp/{VPP_EXPIRED}"].message


def test_the_vpp_action_answers_200_with_the_token_and_counts_as_started(service, graph):
    result = one(service.sync(SyncRequest("vpp", item_id=VPP_VALID)))
    assert result.outcome is Outcome.STARTED and result.graph_status == 200


def test_managed_google_play_is_skipped_when_not_bound(service, graph):
    configure(graph, managedGooglePlay={"id": "x", "bindStatus": "notBound"})
    result = one(service.sync(SyncRequest("managedGooglePlay")))
    assert result.outcome is Outcome.SKIPPED and "notBound" in result.message
    assert graph_calls(graph, "POST") == []


def test_every_driver_update_profile_is_synced(service, graph):
    second = "c4d5e6f7-0a1b-4c2d-9e3f-4a5b6c7d8e02"
    configure(graph, windowsDriverUpdateProfiles=[{"id": DRIVERS, "displayName": "a"}, {"id": second, "displayName": "b"}])
    assert {r.outcome for r in service.sync(SyncRequest("driverInventory"))} == {Outcome.STARTED}
    assert len(graph_calls(graph, "POST")) == 2


def test_an_unknown_item_is_not_found(service, graph):
    with pytest.raises(ItemNotFound):
        service.sync(SyncRequest("vpp", item_id="11111111-2222-3333-4444-555555555555"))


def test_a_disabled_target_is_unknown(make_service):
    from shared.common import UnknownTarget

    with pytest.raises(UnknownTarget):
        make_service().sync(SyncRequest("vpp"))


STATUS_FIELDS = {
    "appleAde": {"lastSuccessfulSyncDateTime", "lastSyncTriggeredDateTime", "lastSyncErrorCode", "tokenExpirationDateTime"},
    "vpp": {"lastSyncDateTime", "lastSyncStatus"},
    "managedGooglePlay": {"lastAppSyncDateTime", "lastAppSyncStatus", "bindStatus"},
    "driverInventory": {"driverInventorySyncState", "lastSuccessfulSyncDateTime"},
}


@pytest.mark.parametrize("target", STATUS_FIELDS)
def test_status_shows_each_targets_graph_side_fields_and_a_rating(service, graph, target):
    entry = next(t for t in service.status()["targets"] if t["target"] == target)
    assert entry["graph"] and all(STATUS_FIELDS[target] <= set(g) for g in entry["graph"])
    assert all(g["health"]["rating"] in ("healthy", "warning", "unhealthy") for g in entry["graph"])


def test_status_rates_the_emulated_tenant_as_expected(service, graph):
    status = service.status()
    ratings = {g["target"]: g["health"]["rating"] for t in status["targets"] for g in t["graph"]}
    assert ratings[f"appleAde/{ADE_GOOD}"] == "healthy"
    assert ratings[f"appleAde/{ADE_EXPIRED}"] == "unhealthy"
    assert ratings[f"vpp/{VPP_VALID}"] == "warning"  # its token expires within 30 days
    assert ratings["managedGooglePlay"] == "warning"  # last app sync 30 h ago
    assert ratings[f"driverInventory/{DRIVERS}"] == "unhealthy"  # four days old
    assert status["health"] == "unhealthy"
    assert {c["connectorName"] for c in status["connectorStatus"]} >= {"vppTokenExpirationDateTime"}


def test_per_target_thresholds_change_the_rating(make_service, graph):
    service = make_service(SYNC_TARGETS="driverInventory", HEALTH_THRESHOLDS="driverInventory=120:168")
    [entry] = service.status()["targets"]
    assert entry["graph"][0]["health"]["rating"] == "healthy"


def test_a_sync_moves_a_stale_unit_to_healthy(service, graph):
    service.sync(SyncRequest("driverInventory", item_id=DRIVERS))
    entry = next(t for t in service.status()["targets"] if t["target"] == "driverInventory")
    assert entry["health"] == "healthy"


def test_adding_targets_touched_no_trigger_code():
    # Autopilot onboarding's routes and queue step are a feature of their own, not a sync target.
    source = inspect.getsource(function_app).replace("autopilot/", "").replace("autopilot_import", "")
    assert not [name for name in TARGETS if name in source]
    assert parse_guid(DRIVERS) == DRIVERS


# --- nonsense from Graph is "nothing known", never a crash -----------------------------------


def test_a_timestamp_at_the_end_of_the_calendar_neither_fails_the_fan_out_nor_status(service, graph):
    edge = "9999-12-31T23:59:59-12:00"
    configure(graph, depOnboardingSettings=[
        {"id": ADE_GOOD, "tokenExpirationDateTime": edge, "lastSuccessfulSyncDateTime": edge},
        {"id": ADE_EXPIRED, "tokenExpirationDateTime": "2099-01-01T00:00:00Z"},
    ])
    results = service.sync(SyncRequest("appleAde"))
    assert {r.outcome for r in results} == {Outcome.STARTED}
    apple = next(t for t in service.status()["targets"] if t["target"] == "appleAde")
    assert len(apple["graph"]) == 2


def test_an_object_that_is_not_an_object_reads_as_nothing_known(service, graph):
    configure(graph, windowsDriverUpdateProfiles=[{"id": DRIVERS, "displayName": "odd", "inventorySyncStatus": "weird"}])
    drivers = next(t for t in service.status()["targets"] if t["target"] == "driverInventory")
    assert drivers["graph"][0]["driverInventorySyncState"] is None
    assert one(service.sync(SyncRequest("driverInventory", item_id=DRIVERS))).outcome is Outcome.STARTED
