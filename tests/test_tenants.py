"""Many tenants from one deployment (issue #13), against Azurite, the Graph emulator (state per
token ``tid``), the managed-identity emulator and the Entra token emulator over TLS: the app's
own identity is a federated credential of the multi-tenant app; no secret anywhere."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from conftest import call, drain, faults, sync_posts

from emulators.entra import DEFAULT_CLIENT_ID
from emulators.tokens import HOME_TENANT
from shared.engine.deferred import PendingFire
from shared.runtime import handlers
from shared.runtime import process as runtime
from shared.tenancy.customers import TenantMessage

MI_CLIENT_ID = "3b8f0c2e-6d4a-4f1b-9e7c-2a5d8f1e0c93"  # the app's user-assigned identity
ROLE = "DeviceManagementServiceConfig.ReadWrite.All"
TENANTS = [str(uuid.UUID(int=0x7E000000_0000_4000_8000_000000000000 + n)) for n in range(50)]
NOT_CONSENTED, NO_ROLE, BROKEN = TENANTS[:3]


@pytest.fixture
def mt_env(app_env, entra_server, identity_server, graph, monkeypatch) -> Iterator[dict[str, str]]:
    """Multi-tenant mode: every tenant consented with the role, except three that fail in their own way."""
    entra_server.reset()
    consented = {t: {"consented": True, "roles": [ROLE]} for t in TENANTS}
    consented[NOT_CONSENTED] = {"consented": False}
    consented[NO_ROLE] = {"consented": True, "roles": []}
    entra_server.configure({"clientId": DEFAULT_CLIENT_ID, "federatedSubject": identity_server.principal_id(MI_CLIENT_ID),
                            "tenants": consented})
    settings = {"MULTI_TENANT_CLIENT_ID": DEFAULT_CLIENT_ID, "AZURE_CLIENT_ID": MI_CLIENT_ID,
                "TENANT_QUEUE": "n" + app_env["SYNC_STATE_TABLE"][1:], "SYNC_TARGETS": "autopilot", **entra_server.env()}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    runtime.reload()
    yield {**app_env, **settings}
    runtime.reload()


def register(*tenants: str, **fields) -> None:
    for tenant in tenants:
        code, _, body = call("PUT", f"tenants/{tenant}", {"displayName": f"Customer {tenant[-4:]}", **fields})
        assert code in (200, 201), body


def tick(env) -> None:
    """One timer tick, and every fan-out message it leads to, delivered."""
    handlers.run_timer(past_due=False)
    drain(env, "TENANT_QUEUE", handlers.run_tenant)


def tenant_pending_fires(env) -> list[str]:
    """The registered tenants that have a deferred sync waiting (from their own state rows)."""
    registry = runtime.tenancy()
    return [t.id for t in registry.registry.page()[0] if registry.service(t).store.read("autopilot").pending_id]


def posts_by_tenant(graph) -> dict[str, int]:
    """Sync POSTs per customer tenant (the app's own tenant, synced by the timer as before, left out)."""
    found: dict[str, int] = {}
    for post in sync_posts(graph):
        if post["tenant"] != HOME_TENANT:
            found[post["tenant"]] = found.get(post["tenant"], 0) + 1
    return found


def test_one_tick_syncs_each_registered_tenant_once_with_its_own_token_and_a_second_tick_none(mt_env, graph, entra_server):
    good = TENANTS[3:]
    register(*good)
    tick(mt_env)
    assert posts_by_tenant(graph) == {t: 1 for t in good}
    issued = entra_server.stats()["tenants"]
    assert all(issued[t]["tokenRequests"] == 1 for t in good)  # one token per tenant
    tick(mt_env)
    assert posts_by_tenant(graph) == {t: 1 for t in good}
    assert tenant_pending_fires(mt_env) == []  # nothing deferred for a later window either (the home timer's own may be)


def test_a_registry_of_several_pages_is_synced_once_per_tenant(mt_env, graph):
    runtime.tenancy().page_size = 7  # 3 pages for 20 tenants (500 in production)
    register(*TENANTS[3:23])
    tick(mt_env)
    assert posts_by_tenant(graph) == {t: 1 for t in TENANTS[3:23]}
    first = call("GET", "tenants")[2]
    assert len(first["tenants"]) == 20 and first["continuation"] is None
    assert call("GET", "tenants?continuation=not%20ours")[0] == 400


def test_the_apps_own_tenant_cannot_be_registered(mt_env):
    code, _, body = call("PUT", f"tenants/{HOME_TENANT}", {"displayName": "us"})
    assert (code, body["error"]["code"]) == (409, "HomeTenant")


def test_a_tenant_without_consent_one_without_the_role_and_one_graph_fails_each_get_their_own_reason(mt_env, graph):
    faults(graph, {"tenant": BROKEN, "pathContains": "windowsAutopilotSettings/sync", "status": 503, "times": 100})
    register(*TENANTS)
    tick(mt_env)
    states = {t["tenantId"]: (t["state"], t["reason"]) for t in call("GET", "tenants")[2]["tenants"]}
    assert states[NOT_CONSENTED][0] == "notConsented" and "AADSTS700016" in states[NOT_CONSENTED][1]
    assert states[NO_ROLE][0] == "missingRole" and ROLE in states[NO_ROLE][1]
    assert states[BROKEN][0] == "unavailable" and "503" in states[BROKEN][1]
    assert [t for t, (state, _) in states.items() if state == "synced"] == sorted(TENANTS[3:])
    assert set(posts_by_tenant(graph)) == set(TENANTS[1:])  # without consent no token, so no call; the others were tried


def test_a_tenants_cooldown_never_touches_another(mt_env, graph):
    a, b = TENANTS[3], TENANTS[4]
    register(a, b)
    assert call("POST", f"tenants/{a}/sync/autopilot")[0] == 202
    assert call("POST", f"tenants/{a}/sync/autopilot")[0] == 429
    assert call("POST", f"tenants/{b}/sync/autopilot")[0] == 202
    status = call("GET", f"tenants/{b}/sync/status")[2]
    assert status["tenantId"] == b and posts_by_tenant(graph) == {a: 1, b: 1}
    assert call("POST", "sync/autopilot")[0] == 202  # the home tenant has its own window too
    assert [p["tenant"] for p in sync_posts(graph)].count(HOME_TENANT) == 1


def test_a_deferred_sync_of_a_tenant_fires_in_that_tenant(mt_env, graph):
    a = TENANTS[5]
    register(a)
    assert call("POST", f"tenants/{a}/sync/autopilot")[0] == 202
    code, _, body = call("POST", f"tenants/{a}/sync/autopilot?defer=true")
    assert (code, body["outcome"]) == (202, "scheduled")
    status = call("GET", f"tenants/{a}/sync/status")[2]
    assert status["tenantId"] == a and "autopilot" in str(status)


def test_sync_and_wait_for_a_tenant_is_polled_through_the_one_operations_route(mt_env, graph):
    a = TENANTS[6]
    register(a)
    code, headers, _ = call("POST", f"tenants/{a}/sync/autopilot?wait=true")
    assert code == 202 and "/api/operations/" in headers["Location"]
    route = headers["Location"].split("/api/", 1)[1]
    code, _, body = call("GET", route)
    assert code in (200, 202) and body["tenantId"] == a


def test_registering_checks_its_input_and_answers_the_consent_url(mt_env):
    tenant = TENANTS[7]
    code, _, body = call("PUT", f"tenants/{tenant}", {"displayName": "Contoso", "targets": ["autopilot"]})
    assert code == 201 and body["consentUrl"].endswith(f"/{tenant}/adminconsent?client_id={DEFAULT_CLIENT_ID}")
    assert call("PUT", f"tenants/{tenant}", {"displayName": "Contoso Ltd"})[0] == 200
    assert call("PUT", "tenants/not-a-guid", {"displayName": "x"})[2]["error"]["code"] == "InvalidTenantId"
    assert call("PUT", f"tenants/{tenant}", {"displayName": "x", "secret": 1})[0] == 400
    assert call("PUT", f"tenants/{tenant}", {"displayName": "x", "targets": ["exchange"]})[0] == 400  # not enabled
    assert call("PUT", f"tenants/{tenant}", {"displayName": ""})[0] == 400


@pytest.mark.parametrize("tenant,state", [(TENANTS[8], "consented"), (NOT_CONSENTED, "notConsented"), (NO_ROLE, "missingRole")])
def test_checking_a_tenant_gets_a_token_and_reads_graph_for_real(mt_env, tenant, state):
    register(tenant)
    code, _, body = call("GET", f"tenants/{tenant}")
    assert (code, body["state"]) == (200, state)


def test_an_unknown_tenant_is_reported_as_such(mt_env, entra_server):
    stranger = str(uuid.uuid4())
    register(stranger)
    assert call("GET", f"tenants/{stranger}")[2]["state"] == "unknownTenant"


def test_a_removed_tenant_is_no_longer_synced(mt_env, graph):
    a = TENANTS[9]
    register(a)
    assert call("DELETE", f"tenants/{a}")[0] == 200
    assert call("DELETE", f"tenants/{a}")[0] == 404
    tick(mt_env)
    assert a not in posts_by_tenant(graph)


def test_a_disabled_tenant_is_refused_and_not_synced(mt_env, graph):
    a = TENANTS[10]
    register(a, enabled=False)
    assert call("POST", f"tenants/{a}/sync/autopilot")[2]["error"]["code"] == "TenantDisabled"
    tick(mt_env)
    assert a not in posts_by_tenant(graph)


def test_without_multi_tenant_mode_the_tenant_routes_say_so(app_env):
    code, _, body = call("GET", "tenants")
    assert (code, body["error"]["code"]) == (404, "MultiTenantOff")


def test_no_secret_is_in_the_settings_the_code_or_the_bicep():
    from pathlib import Path

    from shared.common.settings import DEFAULTS

    root = Path(__file__).resolve().parent.parent
    words = ("client_secret", "ClientSecretCredential", "CertificateCredential", "passwordCredentials", "secretText",
             "keyCredentials")
    files = [*root.glob("shared/**/*.py"), root / "function_app.py", *root.glob("infra/**/*.bicep"), root / "infra/main.parameters.json",
             root / "local.settings.example.json"]
    assert [(f.name, w) for f in files for w in words if w in f.read_text()] == []
    assert len(files) > 40  # every module of the app is read
    assert not [name for name in DEFAULTS if "SECRET" in name or "PASSWORD" in name]


def test_each_token_was_asked_for_with_the_identitys_assertion(mt_env, entra_server, identity_server):
    register(TENANTS[11])
    call("GET", f"tenants/{TENANTS[11]}")
    [request] = [r for r in entra_server.stats()["requests"] if r["tenant"] == TENANTS[11]]
    assert (request["subject"], request["outcome"]) == (identity_server.principal_id(MI_CLIENT_ID), "issued")


def test_a_tenant_without_consent_is_answered_502_not_an_outage_and_told_where_to_consent(mt_env):
    register(NOT_CONSENTED)
    code, _, body = call("POST", f"tenants/{NOT_CONSENTED}/sync/autopilot")
    assert (code, body["errorCode"]) == (502, "TokenUnavailable") and "AADSTS700016" in body["message"]
    checked = call("GET", f"tenants/{NOT_CONSENTED}")[2]
    assert checked["lastCheckedAt"] and "adminconsent" in checked["reason"]


def test_a_duplicated_fan_out_message_does_nothing_twice(mt_env, graph):
    a = TENANTS[12]
    register(a)
    message = TenantMessage("tenant", datetime.now(UTC), tenant_id=a).to_json()
    assert handlers.run_tenant(message) == "synced"
    assert handlers.run_tenant(message) == "synced"  # in its window: refused from the row, no Graph call
    assert posts_by_tenant(graph) == {a: 1} and tenant_pending_fires(mt_env) == []  # and nothing deferred


def test_a_tenants_failure_is_notified_with_its_tenant_and_its_starts_are_not(mt_env, graph, sink, monkeypatch):
    monkeypatch.setenv("NOTIFY_URL", sink.url)
    runtime.reload()
    register(TENANTS[13], BROKEN)
    faults(graph, {"tenant": BROKEN, "pathContains": "windowsAutopilotSettings/sync", "status": 503, "times": 100})
    tick(mt_env)
    runtime.service().notifier.flush(timeout=10)
    tenants_told = [(n["event"], n.get("tenantId")) for n in sink.received if n.get("tenantId")]
    assert tenants_told == [("syncFailed", BROKEN)]


def test_a_pending_sync_of_a_tenant_disabled_meanwhile_does_not_fire(mt_env, graph):
    a = TENANTS[14]
    register(a)
    call("POST", f"tenants/{a}/sync/autopilot")
    call("POST", f"tenants/{a}/sync/autopilot?defer=true")
    register(a, enabled=False)
    fired = drain(mt_env, "SYNC_QUEUE", handlers.run_deferred)  # whatever is visible now; the pending one is later
    state = runtime.tenancy().service(runtime.tenancy().registry.get(a)).store.read("autopilot")
    message = PendingFire("autopilot", "autopilot", None, state.pending_id, state.pending_at, 0, a).to_json()
    assert handlers.run_deferred(message) is None and fired == 0
    assert posts_by_tenant(graph) == {a: 1}


def test_a_tenants_table_is_swept_at_its_first_tick_and_then_once_a_day(mt_env, graph):
    a = TENANTS[15]
    register(a)
    tick(mt_env)
    first = runtime.tenancy().registry.get(a).last_swept_at
    tick(mt_env)
    assert first is not None and runtime.tenancy().registry.get(a).last_swept_at == first


def test_each_tenants_outcome_and_its_syncs_are_logged_with_the_tenant(mt_env, graph, caplog):
    import logging

    from conftest import logged_events

    register(NOT_CONSENTED, TENANTS[3])
    with caplog.at_level(logging.INFO, logger="intune_sync.events"):
        tick(mt_env)
    outcomes = {r["tenant"]: (r["outcome"], r["_level"]) for r in logged_events(caplog, "tenant")}
    assert outcomes == {NOT_CONSENTED: ("notConsented", "WARNING"), TENANTS[3]: ("synced", "INFO")}
    synced = [r for r in logged_events(caplog, "sync") if r.get("tenant") == TENANTS[3]]
    assert [(r["unit"], r["outcome"], r["attempted"]) for r in synced] == [("autopilot", "started", True)]


def test_a_disabled_tenants_message_is_logged_as_skipped(mt_env, graph, caplog):
    import logging

    from conftest import logged_events

    register(TENANTS[10], enabled=False)
    with caplog.at_level(logging.INFO, logger="intune_sync.events"):
        handlers.run_tenant(TenantMessage("tenant", datetime.now(UTC), tenant_id=TENANTS[10]).to_json())
    assert [(r["tenant"], r["outcome"]) for r in logged_events(caplog, "tenant")] == [(TENANTS[10], "skipped")]


# --- the app's own tenant is never a customer (issue #19, item 3) ------------------------------


def home_tenant_posts(graph) -> int:
    return [p["tenant"] for p in sync_posts(graph)].count(HOME_TENANT)


def test_registering_while_the_apps_own_tenant_cannot_be_told_is_refused_503_and_writes_nothing(mt_env, identity_server):
    identity_server.configure(failing=True)  # the managed identity's token briefly unavailable
    code, _, body = call("PUT", f"tenants/{HOME_TENANT}", {"displayName": "us"})
    assert (code, body["error"]["code"]) == (503, "TokenUnavailable") and "own tenant" in body["error"]["message"]
    assert runtime.tenancy().registry.get(HOME_TENANT) is None
    identity_server.configure(failing=False)
    runtime.reload()  # another instance (azure-identity holds a failed answer for a while in the first)
    assert call("PUT", f"tenants/{HOME_TENANT}", {"displayName": "us"})[0] == 409


def test_a_registry_entry_for_the_apps_own_tenant_is_not_synced_a_second_time_in_the_fan_out(mt_env, graph, caplog):
    import logging

    from conftest import logged_events

    from shared.tenancy.registry import Tenant

    registry = runtime.tenancy()
    registry.registry.put(Tenant(HOME_TENANT, "us"), datetime.now(UTC))  # written before the guard, say
    register(TENANTS[16])
    with caplog.at_level(logging.INFO, logger="intune_sync.events"):
        tick(mt_env)
    assert home_tenant_posts(graph) == 1 and posts_by_tenant(graph) == {TENANTS[16]: 1}  # once, as itself
    entry = registry.registry.get(HOME_TENANT)
    assert entry.last_state == "homeTenant" and f"DELETE /api/tenants/{HOME_TENANT}" in entry.last_reason
    assert [r["outcome"] for r in logged_events(caplog, "tenant") if r.get("tenant") == HOME_TENANT] == ["homeTenant"]


def test_the_tenant_routes_refuse_a_registry_entry_for_the_apps_own_tenant(mt_env, graph):
    from shared.tenancy.registry import Tenant

    runtime.tenancy().registry.put(Tenant(HOME_TENANT, "us"), datetime.now(UTC))
    assert call("POST", "sync/autopilot")[0] == 202
    code, _, body = call("POST", f"tenants/{HOME_TENANT}/sync/autopilot")
    assert (code, body["error"]["code"]) == (409, "HomeTenant") and home_tenant_posts(graph) == 1
    assert call("DELETE", f"tenants/{HOME_TENANT}")[0] == 200  # what the answer says to do


def test_a_tenant_message_while_the_apps_own_tenant_cannot_be_told_records_why_and_calls_no_graph(mt_env, graph, identity_server):
    a = TENANTS[17]
    register(a)
    runtime.reload()  # a fresh instance: it has not read its own tenant yet
    identity_server.configure(failing=True)
    assert handlers.run_tenant(TenantMessage("tenant", datetime.now(UTC), tenant_id=a).to_json()) == "unavailable"
    entry = runtime.tenancy().registry.get(a)
    assert entry.last_state == "unavailable" and "own tenant" in entry.last_reason and sync_posts(graph) == []


def test_a_pending_sync_left_in_a_registry_entry_for_the_apps_own_tenant_is_dropped_not_fired(mt_env, graph):
    from dataclasses import replace
    from datetime import timedelta

    from shared.clients.identity import make_credential
    from shared.clients.storage import table_client
    from shared.engine.state import StateStore
    from shared.tenancy.customers import table_name_of
    from shared.tenancy.registry import Tenant

    runtime.tenancy().registry.put(Tenant(HOME_TENANT, "us"), datetime.now(UTC))  # both written before the guard
    settings, now = runtime.settings(), datetime.now(UTC)
    store = StateStore(table_client(settings.storage, table_name_of(settings.state_table, HOME_TENANT), make_credential))
    store.read("autopilot")  # creates the table
    pending = store.update(replace(store.read("autopilot"), target="autopilot", pending_id="a" * 32, pending_at=now,
                                   pending_since=now, pending_asked_by="http:us", pending_deadline=now + timedelta(hours=1)))
    assert pending is not None
    fire = PendingFire("autopilot", "autopilot", None, "a" * 32, now, 0, HOME_TENANT)
    assert handlers.run_deferred(fire.to_json()) is None and home_tenant_posts(graph) == 0
