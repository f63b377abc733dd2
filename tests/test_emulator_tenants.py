"""The Graph emulator keeps each tenant's Intune apart, by the token's ``tid``: Autopilot sync windows,
configuration, faults, imports and write limits of one tenant never touch another's; a token
without ``tid`` (or with the home tenant's) acts on the home tenant as before."""
from __future__ import annotations

import base64
from typing import Any

import requests
from conftest import configure, faults

from emulators.graph import AUTOPILOT, CONFIGURATION, MANAGED_GOOGLE_PLAY, SERVICE_CONFIG, GraphEmulator
from emulators.tokens import ALL_ROLES, HOME_TENANT, issue

A = "1a2b3c4d-0000-4000-8000-00000000000a"
B = "1a2b3c4d-0000-4000-8000-00000000000b"
CONNECTORS = "/beta/deviceManagement/exchangeConnectors"
IMPORT = "/beta/deviceManagement/importedWindowsAutopilotDeviceIdentities/import"
IMPORTED = "/beta/deviceManagement/importedWindowsAutopilotDeviceIdentities"
HASH = base64.b64encode(bytes(range(64))).decode()


def call(graph: GraphEmulator, method: str, path: str, tenant: str | None, body: Any = None,
         roles: list[str] | None = None) -> requests.Response:
    claims = {"tid": tenant} if tenant else {}
    token, _ = issue(graph.base_url, list(ALL_ROLES) if roles is None else roles, 3600, None, **claims)
    return requests.request(method, graph.base_url + path, json=body, timeout=5,
                            headers={"Authorization": f"Bearer {token}"})


def sync(graph: GraphEmulator, tenant: str | None) -> int:
    return call(graph, "POST", AUTOPILOT + "/sync", tenant).status_code


def advance(graph: GraphEmulator, seconds: float) -> None:
    requests.post(f"{graph.base_url}/_emulator/clock", json={"advanceSeconds": seconds}, timeout=5).raise_for_status()


def test_autopilot_windows_are_independent_per_tenant(graph: GraphEmulator) -> None:
    assert sync(graph, A) == 204
    assert sync(graph, B) == 204
    advance(graph, 60)  # both syncs finished; both windows still open
    assert sync(graph, A) == 429
    assert sync(graph, B) == 429
    assert sync(graph, None) == 204  # the home tenant has its own window
    settings = {t: call(graph, "GET", AUTOPILOT, t).json() for t in (A, B)}
    assert settings[A]["syncStatus"] == settings[B]["syncStatus"] == "completed"
    advance(graph, 600)
    assert sync(graph, A) == 204 and sync(graph, B) == 204


def test_a_sync_running_in_one_tenant_does_not_conflict_with_another(graph: GraphEmulator) -> None:
    assert sync(graph, A) == 204
    assert call(graph, "GET", AUTOPILOT, A).json()["syncStatus"] == "inProgress"
    assert sync(graph, A) == 409
    assert call(graph, "GET", AUTOPILOT, B).json()["syncStatus"] == "unknown"
    assert sync(graph, B) == 204


def test_the_home_tenant_is_the_same_with_or_without_its_tid(graph: GraphEmulator) -> None:
    assert sync(graph, None) == 204
    assert sync(graph, HOME_TENANT) == 409
    assert sync(graph, A) == 204


def test_configure_acts_on_the_named_tenant_only(graph: GraphEmulator) -> None:
    mine = {"id": "c0000000-0000-4000-8000-00000000000a", "status": "connected", "serverName": "exch.tenant-a.local"}
    configure(graph, tenant=A, connectors=[mine], lastManualSyncTriggerDateTime=graph.stats()["now"])
    assert [c["id"] for c in call(graph, "GET", CONNECTORS, A).json()["value"]] == [mine["id"]]
    default_ids = [c["id"] for c in call(graph, "GET", CONNECTORS, None).json()["value"]]
    assert len(default_ids) == 2 and mine["id"] not in default_ids
    assert [c["id"] for c in call(graph, "GET", CONNECTORS, B).json()["value"]] == default_ids
    assert sync(graph, A) == 409  # the portal sync set for A runs in A only
    assert sync(graph, B) == 204 and sync(graph, None) == 204
    configure(graph, syncOutcome="failed")  # no tenant: the home tenant
    advance(graph, 60)
    assert call(graph, "GET", AUTOPILOT, None).json()["syncStatus"] == "failed"
    assert call(graph, "GET", AUTOPILOT, B).json()["syncStatus"] == "completed"


def test_faults_can_target_one_tenant(graph: GraphEmulator) -> None:
    faults(graph, {"pathContains": "windowsAutopilotSettings", "status": 503, "times": 2, "tenant": A})
    assert call(graph, "GET", AUTOPILOT, B).status_code == 200
    assert call(graph, "GET", AUTOPILOT, None).status_code == 200
    assert call(graph, "GET", AUTOPILOT, A).status_code == 503
    assert sync(graph, A) == 503
    assert sync(graph, A) == 204  # used up
    faults(graph, {"pathContains": "windowsAutopilotSettings", "status": 500, "tenant": HOME_TENANT})
    assert call(graph, "GET", AUTOPILOT, A).status_code == 200
    assert call(graph, "GET", AUTOPILOT, None).status_code == 500  # home's id matches tokens without tid
    faults(graph, {"pathContains": "windowsAutopilotSettings", "status": 502})  # no tenant: any
    assert call(graph, "GET", AUTOPILOT, B).status_code == 502


def test_requests_are_logged_with_their_tenant_and_counted_per_tenant(graph: GraphEmulator) -> None:
    call(graph, "GET", AUTOPILOT, A)
    call(graph, "GET", AUTOPILOT, A)
    sync(graph, B)
    call(graph, "GET", AUTOPILOT, None)
    stats = graph.stats()
    assert [r["tenant"] for r in stats["requests"]] == [A, A, B, None]
    assert stats["counts"] == {f"GET {AUTOPILOT}": 3, f"POST {AUTOPILOT}/sync": 1}
    assert stats["tenants"][A]["counts"] == {f"GET {AUTOPILOT}": 2}
    assert stats["tenants"][B]["counts"] == {f"POST {AUTOPILOT}/sync": 1}
    assert stats["tenants"][HOME_TENANT]["counts"] == {f"GET {AUTOPILOT}": 1}
    assert stats["tenants"][B]["autopilot"]["syncStatus"] == "inProgress"


def test_roles_come_from_each_tenants_token(graph: GraphEmulator) -> None:
    answer = call(graph, "GET", MANAGED_GOOGLE_PLAY, A, roles=[SERVICE_CONFIG])
    assert answer.status_code == 403 and CONFIGURATION in answer.json()["error"]["message"]
    assert call(graph, "GET", MANAGED_GOOGLE_PLAY, B, roles=[CONFIGURATION]).status_code == 200


def test_imports_and_devices_belong_to_their_tenant(graph: GraphEmulator) -> None:
    body = {"importedWindowsAutopilotDeviceIdentities": [{"serialNumber": "SN-A1", "hardwareIdentifier": HASH}]}
    assert call(graph, "POST", IMPORT, A, body).status_code == 200
    assert len(call(graph, "GET", IMPORTED, A).json()["value"]) == 1
    assert call(graph, "GET", IMPORTED, B).json()["value"] == []
    assert graph.stats()["autopilotImports"]["records"] == []  # the home tenant's
    a_stats = requests.get(f"{graph.base_url}/_emulator/stats", params={"tenant": A}, timeout=5).json()
    assert [r["serialNumber"] for r in a_stats["autopilotImports"]["records"]] == ["SN-A1"]


def test_write_limits_are_per_tenant(graph: GraphEmulator) -> None:
    configure(graph, tenant=A, writeLimit={"limit": 1, "windowSeconds": 60})
    assert sync(graph, A) == 204
    assert sync(graph, A) == 429  # throttled before the window check: the write limit
    assert sync(graph, B) == 204
    stats = graph.stats()
    assert stats["throttled"] == 1 and stats["tenants"][A]["throttled"] == 1 and stats["tenants"][B]["throttled"] == 0
    assert "Retry-After" in call(graph, "POST", AUTOPILOT + "/sync", A).headers


def test_reset_forgets_every_tenant(graph: GraphEmulator) -> None:
    assert sync(graph, A) == 204
    configure(graph, tenant=B, connectors=[])
    graph.reset()
    assert sync(graph, A) == 204
    assert len(call(graph, "GET", CONNECTORS, B).json()["value"]) == 2
