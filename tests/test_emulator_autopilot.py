"""The Graph emulator's Autopilot device import: records that settle on the emulated clock, devices that appear
through an Autopilot sync, the serial-number filter the real endpoint accepts, and a write limit."""
import base64
import time
import uuid
from typing import Any

import pytest
import requests
from conftest import configure, graph_calls

from emulators.graph import AUTOPILOT, GraphEmulator
from emulators.tokens import ALL_ROLES, issue

IMPORTED = "/beta/deviceManagement/importedWindowsAutopilotDeviceIdentities"
DEVICES = "/beta/deviceManagement/windowsAutopilotDeviceIdentities"
HASH = base64.b64encode(bytes(range(256)) * 4).decode()


def call(graph: GraphEmulator, method: str, path: str, body: Any = None, **params: str) -> requests.Response:
    token, _ = issue(graph.base_url, list(ALL_ROLES), 3600, None)
    return requests.request(method, graph.base_url + path, json=body, params=params or None, timeout=5,
                            headers={"Authorization": f"Bearer {token}"})


def advance(graph: GraphEmulator, seconds: float) -> None:
    requests.post(f"{graph.base_url}/_emulator/clock", json={"advanceSeconds": seconds}, timeout=5).raise_for_status()


def device(serial: str, **extra: str) -> dict[str, Any]:
    return {"serialNumber": serial, "hardwareIdentifier": HASH, **extra}


def import_devices(graph: GraphEmulator, *devices: dict[str, Any], version: str = "beta") -> list[dict[str, Any]]:
    path = f"/{version}/deviceManagement/importedWindowsAutopilotDeviceIdentities/import"
    response = call(graph, "POST", path, {"importedWindowsAutopilotDeviceIdentities": list(devices)})
    assert response.status_code == 200, response.text
    return response.json()["value"]


def state(graph: GraphEmulator, record_id: str) -> dict[str, Any]:
    response = call(graph, "GET", f"{IMPORTED}/{record_id}")
    assert response.status_code == 200, response.text
    return response.json()["state"]


def sync(graph: GraphEmulator) -> None:
    assert call(graph, "POST", AUTOPILOT + "/sync").status_code == 204


def devices(graph: GraphEmulator, path: str = DEVICES, **params: str) -> list[dict[str, Any]]:
    response = call(graph, "GET", path, **params)
    assert response.status_code == 200, response.text
    return response.json()["value"]


def registered(graph: GraphEmulator, *imports: dict[str, Any]) -> list[dict[str, Any]]:
    """Import, let processing finish, sync and let the sync finish: the devices."""
    import_devices(graph, *imports)
    advance(graph, 60)
    sync(graph)
    advance(graph, 30)
    return devices(graph)


def test_import_answers_pending_records_in_request_order(graph):
    response = call(graph, "POST", IMPORTED + "/import", {"importedWindowsAutopilotDeviceIdentities": [
        device("SN-1", groupTag="Sales", importId="batch-1"), device("SN-2")]})
    assert response.status_code == 200
    body = response.json()
    assert body["@odata.context"] == ("https://graph.microsoft.com/beta/$metadata"
                                      "#Collection(microsoft.graph.importedWindowsAutopilotDeviceIdentity)")
    first, second = body["value"]
    assert [first["serialNumber"], second["serialNumber"]] == ["SN-1", "SN-2"]
    assert uuid.UUID(first["id"]) and first["id"] != second["id"]
    assert first["@odata.type"] == "#microsoft.graph.importedWindowsAutopilotDeviceIdentity"
    assert (first["groupTag"], first["importId"], first["hardwareIdentifier"]) == ("Sales", "batch-1", HASH)
    assert (second["groupTag"], second["productKey"], second["assignedUserPrincipalName"], second["importId"]) == (None,) * 4
    assert first["state"] == {"@odata.type": "microsoft.graph.importedWindowsAutopilotDeviceIdentityState",
                              "deviceImportStatus": "pending", "deviceRegistrationId": "", "deviceErrorCode": 0, "deviceErrorName": ""}


def test_import_completes_after_the_processing_time(graph):
    (record,) = import_devices(graph, device("SN-1"))
    advance(graph, 59)
    assert state(graph, record["id"])["deviceImportStatus"] == "pending"
    advance(graph, 1)
    settled = state(graph, record["id"])
    assert settled["deviceImportStatus"] == "complete"
    assert uuid.UUID(settled["deviceRegistrationId"]) and settled["deviceErrorCode"] == 0


def test_processing_time_is_configurable(graph):
    configure(graph, importProcessingSeconds=5)
    (record,) = import_devices(graph, device("SN-1"))
    advance(graph, 5)
    assert state(graph, record["id"])["deviceImportStatus"] == "complete"


def test_a_serial_in_import_errors_ends_in_808(graph):
    configure(graph, importErrors={"SN-OTHER": {"deviceErrorCode": 808, "deviceErrorName": "ZtdDeviceAssignedToOtherTenant"}})
    bad, good = import_devices(graph, device("sn-other"), device("SN-OK"))
    advance(graph, 60)
    assert state(graph, bad["id"]) == {"@odata.type": "microsoft.graph.importedWindowsAutopilotDeviceIdentityState",
                                       "deviceImportStatus": "error", "deviceRegistrationId": "",
                                       "deviceErrorCode": 808, "deviceErrorName": "ZtdDeviceAssignedToOtherTenant"}
    assert state(graph, good["id"])["deviceImportStatus"] == "complete"


def test_a_serial_already_registered_ends_in_806(graph):
    configure(graph, autopilotDevices=[{"serialNumber": "SN-1"}])
    (record,) = import_devices(graph, device("sn-1"))
    advance(graph, 60)
    assert (state(graph, record["id"])["deviceErrorCode"], state(graph, record["id"])["deviceErrorName"]) == (
        806, "ZtdDeviceAlreadyAssigned")


def test_the_same_serial_twice_in_a_batch_is_duplicated(graph):
    first, second = import_devices(graph, device("SN-1"), device("SN-1"))
    advance(graph, 60)
    assert state(graph, first["id"])["deviceImportStatus"] == "complete"
    assert state(graph, second["id"]) | {"@odata.type": ""} == {"@odata.type": "", "deviceImportStatus": "error",
                                                                "deviceRegistrationId": "", "deviceErrorCode": 0,
                                                                "deviceErrorName": "ZtdDeviceDuplicated"}


def test_a_completed_import_is_no_device_before_a_sync(graph):
    (record,) = import_devices(graph, device("SN-1"))
    advance(graph, 600)
    assert state(graph, record["id"])["deviceImportStatus"] == "complete"
    assert devices(graph) == []


def test_a_sync_after_completion_registers_the_device_when_it_finishes(graph):
    import_devices(graph, device("SN-1", groupTag="Sales", assignedUserPrincipalName="ann@contoso.com", productKey="PK"))
    advance(graph, 60)
    sync(graph)
    advance(graph, 29)
    assert devices(graph) == []
    advance(graph, 1)
    (found,) = devices(graph)
    assert uuid.UUID(found["id"])
    assert {k: found[k] for k in ("@odata.type", "serialNumber", "groupTag", "productKey", "manufacturer", "model",
                                  "enrollmentState", "userPrincipalName")} == {
        "@odata.type": "#microsoft.graph.windowsAutopilotDeviceIdentity", "serialNumber": "SN-1", "groupTag": "Sales",
        "productKey": "PK", "manufacturer": "Contoso", "model": "Laptop 7", "enrollmentState": "notContacted",
        "userPrincipalName": "ann@contoso.com"}
    assert call(graph, "GET", f"{DEVICES}/{found['id']}").json() == found


def test_a_sync_started_before_completion_does_not_register(graph):
    import_devices(graph, device("SN-1"))
    advance(graph, 30)
    sync(graph)  # starts before the import completes
    advance(graph, 60)
    assert devices(graph) == []
    advance(graph, 600)  # past the 10-minute cooldown
    sync(graph)
    advance(graph, 30)
    assert [d["serialNumber"] for d in devices(graph)] == ["SN-1"]


def test_a_completed_record_deleted_before_the_sync_still_registers(graph):
    (record,) = import_devices(graph, device("SN-1"))
    advance(graph, 60)
    assert call(graph, "DELETE", f"{IMPORTED}/{record['id']}").status_code == 204
    sync(graph)
    advance(graph, 30)
    assert [d["serialNumber"] for d in devices(graph)] == ["SN-1"]


def test_the_profile_is_assigned_after_the_delay(graph):
    (found,) = registered(graph, device("SN-1"))
    assert (found["deploymentProfileAssignmentStatus"], found["deploymentProfileAssignedDateTime"]) == (
        "notAssigned", "0001-01-01T00:00:00Z")
    advance(graph, 60)
    assert devices(graph)[0]["deploymentProfileAssignmentStatus"] == "pending"
    advance(graph, 60)
    (found,) = devices(graph)
    assert found["deploymentProfileAssignmentStatus"] == "assignedInSync"
    assert found["deploymentProfileAssignedDateTime"] != "0001-01-01T00:00:00Z"


def test_configured_devices_are_visible_and_assigned_at_once(graph):
    configure(graph, autopilotDevices=[{"serialNumber": "SN-1", "groupTag": "Kiosk"},
                                       {"serialNumber": "SN-2", "deploymentProfileAssignmentStatus": "notAssigned"}])
    first, second = devices(graph)
    assert (first["groupTag"], first["deploymentProfileAssignmentStatus"]) == ("Kiosk", "assignedInSync")
    assert second["deploymentProfileAssignmentStatus"] == "notAssigned"


def test_the_contains_filter_matches_a_substring_case_insensitively(graph):
    configure(graph, autopilotDevices=[{"serialNumber": "ABC-123"}, {"serialNumber": "xyz-123"}, {"serialNumber": "O'NEIL-1"}])
    assert [d["serialNumber"] for d in devices(graph, **{"$filter": "contains(serialNumber,'abc')"})] == ["ABC-123"]
    assert [d["serialNumber"] for d in devices(graph, **{"$filter": "contains(serialNumber,'123')"})] == ["ABC-123", "xyz-123"]
    assert [d["serialNumber"] for d in devices(graph, **{"$filter": "contains(serialNumber,'o''neil')"})] == ["O'NEIL-1"]
    assert len(devices(graph)) == 3


@pytest.mark.parametrize("clause", ["serialNumber eq 'ABC-123'", "startswith(serialNumber,'ABC')", "contains(groupTag,'A')"])
def test_any_other_filter_is_an_invalid_filter_clause(graph, clause):
    response = call(graph, "GET", DEVICES, **{"$filter": clause})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest"
    assert response.json()["error"]["message"] == "Invalid filter clause"


def test_more_than_100_devices_page_with_an_absolute_next_link(graph):
    configure(graph, autopilotDevices=[{"serialNumber": f"PC-{n:03}"} for n in range(150)])
    first = call(graph, "GET", DEVICES, **{"$filter": "contains(serialNumber,'PC-')"}).json()
    assert len(first["value"]) == 100
    assert first["@odata.nextLink"].startswith(graph.base_url + DEVICES + "?$skiptoken=100")
    token, _ = issue(graph.base_url, list(ALL_ROLES), 3600, None)
    second = requests.get(first["@odata.nextLink"], headers={"Authorization": f"Bearer {token}"}, timeout=5).json()
    assert [d["serialNumber"] for d in second["value"]] == [f"PC-{n:03}" for n in range(100, 150)]
    assert "@odata.nextLink" not in second


def test_an_unknown_device_is_404(graph):
    response = call(graph, "GET", f"{DEVICES}/{uuid.uuid4()}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "ResourceNotFound"


def test_imports_are_listed_with_their_settled_state(graph):
    import_devices(graph, device("SN-1"), device("SN-2"))
    advance(graph, 60)
    listed = devices(graph, IMPORTED)
    assert [(r["serialNumber"], r["state"]["deviceImportStatus"]) for r in listed] == [("SN-1", "complete"), ("SN-2", "complete")]


def test_deleting_an_import_record_answers_204_then_404(graph):
    (record,) = import_devices(graph, device("SN-1"))
    response = call(graph, "DELETE", f"{IMPORTED}/{record['id']}")
    assert response.status_code == 204 and response.content == b""
    assert call(graph, "DELETE", f"{IMPORTED}/{record['id']}").status_code == 404
    assert call(graph, "GET", f"{IMPORTED}/{record['id']}").status_code == 404
    assert graph.stats()["autopilotImports"]["deleted"] == [record["id"]]


def test_deleting_an_import_record_keeps_its_device(graph):
    (record,) = import_devices(graph, device("SN-1"))
    advance(graph, 60)
    sync(graph)
    advance(graph, 30)
    assert call(graph, "DELETE", f"{IMPORTED}/{record['id']}").status_code == 204
    assert [d["serialNumber"] for d in devices(graph)] == ["SN-1"]


def test_update_device_properties_changes_the_group_tag(graph):
    configure(graph, autopilotDevices=[{"serialNumber": "SN-1", "groupTag": "Old"}])
    (found,) = devices(graph)
    response = call(graph, "POST", f"{DEVICES}/{found['id']}/updateDeviceProperties", {"groupTag": "New", "displayName": "PC 1"})
    assert response.status_code == 204 and response.content == b""
    (found,) = devices(graph)
    assert (found["groupTag"], found["displayName"]) == ("New", "PC 1")


@pytest.mark.parametrize("body", [{"colour": "red"}, ["groupTag"], {"groupTag": 3}])
def test_update_device_properties_refuses_what_it_does_not_take(graph, body):
    configure(graph, autopilotDevices=[{"serialNumber": "SN-1"}])
    (found,) = devices(graph)
    assert call(graph, "POST", f"{DEVICES}/{found['id']}/updateDeviceProperties", body).status_code == 400


def test_update_device_properties_beta_fields_are_refused_on_v1(graph):
    configure(graph, autopilotDevices=[{"serialNumber": "SN-1"}])
    (found,) = devices(graph)
    path = f"/v1.0/deviceManagement/windowsAutopilotDeviceIdentities/{found['id']}/updateDeviceProperties"
    assert call(graph, "POST", path, {"deviceFriendlyName": "Hub"}).status_code == 400
    assert call(graph, "POST", path.replace("/v1.0/", "/beta/"), {"deviceFriendlyName": "Hub"}).status_code == 204


def test_update_device_properties_of_an_unknown_device_is_404(graph):
    path = f"{DEVICES}/{uuid.uuid4()}/updateDeviceProperties"
    assert call(graph, "POST", path, {"groupTag": "New"}).status_code == 404


def test_the_write_limit_answers_429_with_retry_after(graph):
    configure(graph, writeLimit={"limit": 2, "windowSeconds": 5})
    answers = [call(graph, "POST", IMPORTED + "/import", {"importedWindowsAutopilotDeviceIdentities": [device(f"SN-{n}")]})
               for n in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json()["error"]["code"] == "TooManyRequests"
    assert 1 <= int(answers[2].headers["Retry-After"]) <= 5
    assert call(graph, "GET", IMPORTED).status_code == 200  # reads are not limited
    assert graph.stats()["throttled"] == 1
    assert [c["status"] for c in graph_calls(graph, "POST")] == [200, 200, 429]


def test_the_write_limit_frees_a_slot_after_the_window(graph):
    configure(graph, writeLimit={"limit": 1, "windowSeconds": 0.3})
    assert call(graph, "DELETE", f"{IMPORTED}/{uuid.uuid4()}").status_code == 404
    assert call(graph, "DELETE", f"{IMPORTED}/{uuid.uuid4()}").status_code == 429
    time.sleep(0.35)
    assert call(graph, "DELETE", f"{IMPORTED}/{uuid.uuid4()}").status_code == 404


def test_a_v1_device_has_no_profile_assignment_properties(graph):
    (found,) = registered(graph, device("SN-1"))
    v1 = devices(graph, "/v1.0/deviceManagement/windowsAutopilotDeviceIdentities")
    assert [d["id"] for d in v1] == [found["id"]]
    assert "deploymentProfileAssignmentStatus" not in v1[0] and "deploymentProfileAssignedDateTime" not in v1[0]
    assert "deploymentProfileAssignmentStatus" in found


def test_import_works_on_v1(graph):
    (record,) = import_devices(graph, device("SN-1"), version="v1.0")
    assert record["state"]["deviceImportStatus"] == "pending"


@pytest.mark.parametrize("body", [
    ["not", "an", "object"],
    {},
    {"importedWindowsAutopilotDeviceIdentities": []},
    {"importedWindowsAutopilotDeviceIdentities": [{"hardwareIdentifier": HASH}]},
    {"importedWindowsAutopilotDeviceIdentities": [{"serialNumber": "SN-1"}]},
    {"importedWindowsAutopilotDeviceIdentities": [{"serialNumber": "SN-1", "hardwareIdentifier": "not base64!"}]},
    {"importedWindowsAutopilotDeviceIdentities": [{"serialNumber": "SN-1", "hardwareIdentifier": HASH, "colour": "red"}]},
    {"importedWindowsAutopilotDeviceIdentities": [device(f"SN-{n}") for n in range(501)]},
])
def test_a_bad_import_is_400_and_imports_nothing(graph, body):
    response = call(graph, "POST", IMPORTED + "/import", body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest"
    assert devices(graph, IMPORTED) == []


def test_500_devices_are_accepted(graph):
    assert len(import_devices(graph, *[device(f"SN-{n}") for n in range(500)])) == 500


def test_stats_show_records_devices_and_the_query_string(graph):
    configure(graph, autopilotDevices=[{"serialNumber": "SN-1"}])
    import_devices(graph, device("SN-2"))
    devices(graph, **{"$filter": "contains(serialNumber,'SN')"})
    stats = graph.stats()
    assert [r["serialNumber"] for r in stats["autopilotImports"]["records"]] == ["SN-2"]
    assert [d["serialNumber"] for d in stats["autopilotImports"]["devices"]] == ["SN-1"]
    assert stats["requests"][-1]["query"] == "%24filter=contains%28serialNumber%2C%27SN%27%29"
    assert stats["requests"][0]["query"] == ""


def test_reset_clears_imports_devices_and_the_write_limit(graph):
    configure(graph, autopilotDevices=[{"serialNumber": "SN-1"}], writeLimit={"limit": 0, "windowSeconds": 60})
    assert call(graph, "POST", IMPORTED + "/import", {"importedWindowsAutopilotDeviceIdentities": [device("SN-2")]}).status_code == 429
    graph.reset()
    assert devices(graph) == [] and devices(graph, IMPORTED) == []
    assert graph.stats()["throttled"] == 0
    assert len(import_devices(graph, device("SN-2"))) == 1
