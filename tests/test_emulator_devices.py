"""The Graph emulator's managed devices (list, get, syncDevice), group device members, JSON batching and the
per-area write limits (managed devices apart from the rest of Intune)."""
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from conftest import configure, faults, graph_calls

from emulators.devices import GROUP_MEMBER_ROLE, PRIVILEGED_ROLE, READ_ROLE, azure_ad_device_id, managed_device_id
from emulators.graph import GraphEmulator
from emulators.tokens import ALL_ROLES, issue

DEVICES = "/v1.0/deviceManagement/managedDevices"
ROLES = [*ALL_ROLES, READ_ROLE, PRIVILEGED_ROLE, GROUP_MEMBER_ROLE]
GROUP = "0e5b8f2a-4c1d-4b7e-9a3f-6d2c1b0a9e11"


def call(graph: GraphEmulator, method: str, path: str, body: Any = None, roles: list[str] = ROLES,
         **params: str) -> requests.Response:
    token, _ = issue(graph.base_url, roles, 3600, None)
    return requests.request(method, path if path.startswith("http") else graph.base_url + path, json=body,
                            params=params or None, timeout=10, headers={"Authorization": f"Bearer {token}"})


def batch(graph: GraphEmulator, *inner: dict[str, Any], version: str = "v1.0") -> requests.Response:
    return call(graph, "POST", f"/{version}/$batch", {"requests": list(inner)})


def sync_request(request_id: str, device_id: str) -> dict[str, Any]:
    return {"id": request_id, "method": "POST", "url": f"/deviceManagement/managedDevices/{device_id}/syncDevice"}


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def emulator_now(graph: GraphEmulator) -> datetime:
    return parse(graph.stats()["now"])


def test_generated_devices_are_deterministic_and_documented_shape(graph):
    configure(graph, managedDevices={"count": 3, "prefix": "SN", "operatingSystem": "Windows", "lastSyncMinutesAgo": 180})
    first = call(graph, "GET", DEVICES).json()["value"][0]
    assert first == {"id": managed_device_id("SN000001"), "deviceName": "PC-SN000001", "serialNumber": "SN000001",
                     "azureADDeviceId": azure_ad_device_id("SN000001"), "operatingSystem": "Windows",
                     "lastSyncDateTime": first["lastSyncDateTime"], "managementAgent": "mdm"}
    assert uuid.UUID(first["id"]) and uuid.UUID(first["azureADDeviceId"])
    age = emulator_now(graph) - parse(first["lastSyncDateTime"])
    assert timedelta(minutes=179) < age < timedelta(minutes=181)
    assert first["lastSyncDateTime"].endswith("Z")


def test_generating_twenty_thousand_devices_is_fast(graph):
    started = time.monotonic()
    configure(graph, managedDevices={"count": 20_000})
    assert time.monotonic() - started < 3
    assert graph.stats()["managedDevices"]["count"] == 20_000


def test_paging_through_next_links_returns_every_device_once(graph):
    configure(graph, managedDevices={"count": 2_500})
    serials: list[str] = []
    url, pages = DEVICES + "?$top=1000&$select=serialNumber", 0
    while url:
        page = call(graph, "GET", url).json()
        serials += [d["serialNumber"] for d in page["value"]]
        url, pages = page.get("@odata.nextLink"), pages + 1
        if url:
            assert url.startswith(graph.base_url + DEVICES + "?$skiptoken=")
    assert pages == 3
    assert serials == [f"SN{i:06d}" for i in range(1, 2_501)]


def test_the_default_page_is_one_hundred_devices(graph):
    configure(graph, managedDevices={"count": 150})
    page = call(graph, "GET", DEVICES).json()
    assert len(page["value"]) == 100 and "$skiptoken=100" in page["@odata.nextLink"]
    rest = call(graph, "GET", page["@odata.nextLink"]).json()
    assert len(rest["value"]) == 50 and "@odata.nextLink" not in rest


def test_top_above_one_thousand_is_refused(graph):
    configure(graph, managedDevices={"count": 10})
    response = call(graph, "GET", DEVICES, **{"$top": "1001"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "BadRequest"


def test_select_answers_only_the_named_properties_and_id(graph):
    configure(graph, managedDevices={"count": 2})
    value = call(graph, "GET", DEVICES, **{"$select": "serialNumber,lastSyncDateTime"}).json()["value"]
    assert [sorted(d) for d in value] == [["id", "lastSyncDateTime", "serialNumber"]] * 2


def test_select_of_an_unknown_property_is_refused(graph):
    configure(graph, managedDevices={"count": 2})
    assert call(graph, "GET", DEVICES, **{"$select": "serialNumber,shoeSize"}).status_code == 400


def test_filter_by_serial_number_finds_that_device(graph):
    configure(graph, managedDevices={"count": 2_500})
    value = call(graph, "GET", DEVICES, **{"$filter": "serialNumber eq 'SN001234'"}).json()["value"]
    assert [d["id"] for d in value] == [managed_device_id("SN001234")]


def test_filter_clauses_joined_by_and_must_all_hold(graph):
    configure(graph, managedDevices={"devices": [
        {"serialNumber": "A1", "operatingSystem": "Windows"}, {"serialNumber": "A2", "operatingSystem": "iOS"},
        {"serialNumber": "A3", "operatingSystem": "Windows", "deviceName": "KIOSK-1"}]})
    windows = call(graph, "GET", DEVICES, **{"$filter": "operatingSystem eq 'Windows'", "$select": "serialNumber"})
    assert [d["serialNumber"] for d in windows.json()["value"]] == ["A1", "A3"]
    both = call(graph, "GET", DEVICES, **{"$filter": "operatingSystem eq 'Windows' and deviceName eq 'KIOSK-1'"})
    assert [d["serialNumber"] for d in both.json()["value"]] == ["A3"]
    by_entra = call(graph, "GET", DEVICES, **{"$filter": f"azureADDeviceId eq '{azure_ad_device_id('A2')}'"})
    assert [d["serialNumber"] for d in by_entra.json()["value"]] == ["A2"]


@pytest.mark.parametrize("clause", ["startswith(deviceName,'PC')", "model eq 'x'", "operatingSystem ne 'Windows'",
                                    "serialNumber eq 'A' or serialNumber eq 'B'"])
def test_an_unsupported_filter_is_a_bad_request(graph, clause):
    configure(graph, managedDevices={"count": 2})
    response = call(graph, "GET", DEVICES, **{"$filter": clause})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest" and response.json()["error"]["message"]


def test_a_filtered_listing_pages_with_the_filter_kept(graph):
    configure(graph, managedDevices={"count": 250, "operatingSystem": "Windows"})
    page = call(graph, "GET", DEVICES, **{"$filter": "operatingSystem eq 'Windows'", "$top": "200"}).json()
    assert len(page["value"]) == 200 and "&$filter=operatingSystem%20eq%20%27Windows%27" in page["@odata.nextLink"]
    rest = call(graph, "GET", page["@odata.nextLink"]).json()
    assert len(rest["value"]) == 50 and rest["value"][-1]["serialNumber"] == "SN000250"


def test_get_by_id_answers_the_device(graph):
    configure(graph, managedDevices={"count": 5})
    device = call(graph, "GET", f"{DEVICES}/{managed_device_id('SN000004')}").json()
    assert device["serialNumber"] == "SN000004" and device["deviceName"] == "PC-SN000004"


def test_get_of_an_unknown_id_is_404_resource_not_found(graph):
    configure(graph, managedDevices={"count": 5})
    response = call(graph, "GET", f"{DEVICES}/{uuid.uuid4()}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "ResourceNotFound"


def test_sync_device_sets_last_sync_to_the_emulated_now_and_counts(graph):
    configure(graph, managedDevices={"count": 3, "lastSyncMinutesAgo": 600})
    requests.post(f"{graph.base_url}/_emulator/clock", json={"advanceSeconds": 3600}, timeout=5).raise_for_status()
    device_id = managed_device_id("SN000002")
    assert call(graph, "POST", f"{DEVICES}/{device_id}/syncDevice").status_code == 204
    assert call(graph, "POST", f"{DEVICES}/{device_id}/syncDevice").status_code == 204
    assert call(graph, "POST", f"{DEVICES}/{managed_device_id('SN000003')}/syncDevice").status_code == 204
    synced = parse(call(graph, "GET", f"{DEVICES}/{device_id}").json()["lastSyncDateTime"])
    assert abs(synced - emulator_now(graph)) < timedelta(seconds=5)  # the advanced clock, an hour past real time
    assert synced - datetime.now(UTC) > timedelta(minutes=59)
    stats = graph.stats()
    assert stats["managedDevices"]["syncs"] == {device_id: 2, managed_device_id("SN000003"): 1}
    assert (stats["managedDevices"]["deviceSyncs"], stats["managedDevices"]["deviceSyncsPerDeviceMax"],
            stats["managedDevices"]["devicesSyncedMoreThanOnce"], stats["deviceSyncs"]) == (3, 2, 1, 3)


def test_sync_of_an_unknown_device_is_404(graph):
    configure(graph, managedDevices={"count": 1})
    response = call(graph, "POST", f"{DEVICES}/{uuid.uuid4()}/syncDevice")
    assert response.status_code == 404 and graph.stats()["deviceSyncs"] == 0


def test_sync_of_an_unsupported_device_is_a_bad_request(graph):
    configure(graph, managedDevices={"devices": [{"serialNumber": "OLD-1", "unsupported": True}]})
    response = call(graph, "POST", f"{DEVICES}/{managed_device_id('OLD-1')}/syncDevice")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "BadRequest" and "does not support" in error["message"]
    assert graph.stats()["deviceSyncs"] == 0


def test_each_path_needs_its_documented_role(graph):
    configure(graph, managedDevices={"count": 1}, groups={GROUP: []})
    device_id = managed_device_id("SN000001")
    listing = call(graph, "GET", DEVICES, roles=[PRIVILEGED_ROLE])
    assert listing.status_code == 403 and READ_ROLE in listing.json()["error"]["message"]
    sync = call(graph, "POST", f"{DEVICES}/{device_id}/syncDevice", roles=[READ_ROLE])
    assert sync.status_code == 403 and PRIVILEGED_ROLE in sync.json()["error"]["message"]
    members = call(graph, "GET", f"/v1.0/groups/{GROUP}/transitiveMembers/microsoft.graph.device", roles=[READ_ROLE])
    assert members.status_code == 403 and GROUP_MEMBER_ROLE in members.json()["error"]["message"]


def test_group_transitive_device_members_are_entra_devices(graph):
    configure(graph, managedDevices={"count": 3})
    members = [azure_ad_device_id("SN000001"), azure_ad_device_id("SN000003")]
    configure(graph, groups={GROUP: members})
    value = call(graph, "GET", f"/v1.0/groups/{GROUP}/transitiveMembers/microsoft.graph.device").json()["value"]
    assert [(d["deviceId"], d["displayName"]) for d in value] == [(members[0], "PC-SN000001"), (members[1], "PC-SN000003")]
    assert all(uuid.UUID(d["id"]) and d["id"] != d["deviceId"] for d in value)


def test_group_members_page_and_select(graph):
    configure(graph, groups={GROUP: [str(uuid.UUID(int=i)) for i in range(1, 6)]})
    path = f"/v1.0/groups/{GROUP}/transitiveMembers/microsoft.graph.device"
    page = call(graph, "GET", path, **{"$top": "3", "$select": "deviceId"}).json()
    assert [sorted(k for k in d if not k.startswith("@")) for d in page["value"]] == [["deviceId", "id"]] * 3
    rest = call(graph, "GET", page["@odata.nextLink"]).json()
    assert [d["deviceId"] for d in rest["value"]] == [str(uuid.UUID(int=4)), str(uuid.UUID(int=5))]


def test_an_unknown_group_is_404(graph):
    response = call(graph, "GET", f"/v1.0/groups/{uuid.uuid4()}/transitiveMembers/microsoft.graph.device")
    assert response.status_code == 404


def test_batch_answers_each_inner_request_on_its_own(graph):
    configure(graph, managedDevices={"devices": [{"serialNumber": "B1"}, {"serialNumber": "B2", "unsupported": True}]})
    unknown = str(uuid.uuid4())
    response = batch(graph, sync_request("1", managed_device_id("B1")), sync_request("2", managed_device_id("B2")),
                     sync_request("3", unknown),
                     {"id": "4", "method": "GET", "url": "/deviceManagement/managedDevices?$filter=serialNumber eq 'B1'"
                                                         "&$select=deviceName"})
    assert response.status_code == 200
    answers = {r["id"]: r for r in response.json()["responses"]}
    assert [answers[i]["status"] for i in "1234"] == [204, 400, 404, 200]
    assert "body" not in answers["1"] and answers["2"]["body"]["error"]["code"] == "BadRequest"
    assert answers["4"]["body"]["value"] == [{"id": managed_device_id("B1"), "deviceName": "PC-B1"}]
    assert graph.stats()["managedDevices"]["syncs"] == {managed_device_id("B1"): 1}
    assert len(graph_calls(graph, "POST", "/syncDevice")) == 3  # each inner request is logged as its own


def test_batch_inner_requests_are_checked_for_their_role(graph):
    configure(graph, managedDevices={"count": 1})
    token, _ = issue(graph.base_url, [READ_ROLE], 3600, None)
    response = requests.post(graph.base_url + "/v1.0/$batch", timeout=10, headers={"Authorization": f"Bearer {token}"},
                             json={"requests": [sync_request("1", managed_device_id("SN000001")),
                                                {"id": "2", "method": "GET", "url": "/deviceManagement/managedDevices"}]})
    assert [r["status"] for r in response.json()["responses"]] == [403, 200]


def test_batch_of_more_than_twenty_requests_is_refused(graph):
    configure(graph, managedDevices={"count": 21})
    response = batch(graph, *(sync_request(str(i), managed_device_id(f"SN{i:06d}")) for i in range(1, 22)))
    assert response.status_code == 400 and response.json()["error"]["code"] == "BadRequest"
    assert graph.stats()["deviceSyncs"] == 0


def test_batch_without_a_token_is_401(graph):
    response = requests.post(graph.base_url + "/v1.0/$batch", json={"requests": [sync_request("1", "x")]}, timeout=10)
    assert response.status_code == 401


def test_batch_inner_requests_meet_injected_faults(graph):
    configure(graph, managedDevices={"count": 2})
    faults(graph, {"method": "POST", "pathContains": managed_device_id("SN000002"), "status": 503, "retryAfter": 7})
    response = batch(graph, sync_request("1", managed_device_id("SN000001")), sync_request("2", managed_device_id("SN000002")))
    answers = {r["id"]: r for r in response.json()["responses"]}
    assert (answers["1"]["status"], answers["2"]["status"], answers["2"]["headers"]["Retry-After"]) == (204, 503, "7")


def test_device_writes_over_the_limit_get_429_with_retry_after(graph):
    configure(graph, managedDevices={"count": 5}, deviceWriteLimit={"limit": 3, "windowSeconds": 30})
    statuses = [call(graph, "POST", f"{DEVICES}/{managed_device_id(f'SN{i:06d}')}/syncDevice") for i in range(1, 6)]
    assert [r.status_code for r in statuses] == [204, 204, 204, 429, 429]
    throttled = statuses[3]
    assert throttled.json()["error"]["code"] == "TooManyRequests"
    assert 25 <= int(throttled.headers["Retry-After"]) <= 30
    devices = graph.stats()["writeLimits"]["devices"]
    assert (devices["throttled"], devices["accepted"], devices["maxWritesInAnyWindow"]) == (2, 3, 3)
    assert graph.stats()["deviceSyncs"] == 3


def test_accepted_device_writes_never_exceed_the_limit_in_any_window(graph):
    configure(graph, managedDevices={"count": 40}, deviceWriteLimit={"limit": 5, "windowSeconds": 0.5})
    deadline = time.monotonic() + 1.6
    i = 0
    while time.monotonic() < deadline:
        call(graph, "POST", f"{DEVICES}/{managed_device_id(f'SN{i % 40 + 1:06d}')}/syncDevice")
        i += 1
    devices = graph.stats()["writeLimits"]["devices"]
    assert devices["throttled"] > 0 and devices["accepted"] > 5  # the window slid and let more through
    assert devices["maxWritesInAnyWindow"] == 5


def test_the_intune_area_is_counted_apart_from_devices(graph):
    configure(graph, managedDevices={"count": 3}, writeLimit={"limit": 1, "windowSeconds": 60},
              deviceWriteLimit={"limit": 2, "windowSeconds": 60})
    exchange = "/v1.0/deviceManagement/exchangeConnectors/6a1c2f8e-2b1d-4d7e-9a55-3c1f0e6b9d01/sync"
    assert call(graph, "POST", exchange, {"syncType": "deltaSync"}).status_code == 204
    assert call(graph, "POST", exchange, {"syncType": "deltaSync"}).status_code == 429
    syncs = [call(graph, "POST", f"{DEVICES}/{managed_device_id(f'SN{i:06d}')}/syncDevice").status_code for i in (1, 2, 3)]
    assert syncs == [204, 204, 429]
    limits = graph.stats()["writeLimits"]
    assert (limits["intune"]["accepted"], limits["intune"]["throttled"]) == (1, 1)
    assert (limits["devices"]["accepted"], limits["devices"]["throttled"]) == (2, 1)
    assert graph.stats()["throttled"] == 2


def test_an_inner_batch_write_is_throttled_on_its_own(graph):
    configure(graph, managedDevices={"count": 4}, deviceWriteLimit={"limit": 2, "windowSeconds": 30})
    response = batch(graph, *(sync_request(str(i), managed_device_id(f"SN{i:06d}")) for i in range(1, 5)),
                     {"id": "read", "method": "GET", "url": "/deviceManagement/managedDevices?$top=1"})
    assert response.status_code == 200
    answers = {r["id"]: r for r in response.json()["responses"]}
    assert [answers[i]["status"] for i in ("1", "2", "3", "4", "read")] == [204, 204, 429, 429, 200]
    assert answers["3"]["body"]["error"]["code"] == "TooManyRequests"
    assert 25 <= int(answers["3"]["headers"]["Retry-After"]) <= 30
    devices = graph.stats()["writeLimits"]["devices"]
    assert (devices["throttled"], devices["maxWritesInAnyWindow"]) == (2, 2)


def test_writes_are_recorded_even_without_a_limit(graph):
    configure(graph, managedDevices={"count": 3})
    for i in (1, 2, 3):
        call(graph, "POST", f"{DEVICES}/{managed_device_id(f'SN{i:06d}')}/syncDevice")
    devices = graph.stats()["writeLimits"]["devices"]
    assert (devices["limit"], devices["windowSeconds"], devices["accepted"], devices["maxWritesInAnyWindow"]) == (None, 20.0, 3, 3)


def test_devices_belong_to_the_tenant_configured(graph):
    other = "2d1c0b9a-8e7f-4a6b-9c5d-4e3f2a1b0c9d"
    configure(graph, tenant=other, managedDevices={"count": 4})
    configure(graph, managedDevices={"count": 1})
    token, _ = issue(graph.base_url, ROLES, 3600, None, tid=other)
    response = requests.get(graph.base_url + DEVICES, timeout=10, headers={"Authorization": f"Bearer {token}"})
    assert len(response.json()["value"]) == 4
    assert len(call(graph, "GET", DEVICES).json()["value"]) == 1
    assert graph.stats()["tenants"][other]["managedDevices"]["count"] == 4


def test_reset_clears_devices_syncs_and_device_limits(graph):
    configure(graph, managedDevices={"count": 2}, deviceWriteLimit={"limit": 0, "windowSeconds": 60})
    assert call(graph, "POST", f"{DEVICES}/{managed_device_id('SN000001')}/syncDevice").status_code == 429
    graph.reset()
    stats = graph.stats()
    assert (stats["managedDevices"]["count"], stats["deviceSyncs"], stats["throttled"]) == (0, 0, 0)
