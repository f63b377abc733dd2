"""Callers with Entra ID (CALLER_AUTH=entra, shared/api/callerauth.py), against the Entra emulator
over TLS signing real RS256 tokens (emulators/signing.py): every route but health and the
valet-token polls needs a valid token (401 naming what is wrong, no Graph call, no state written)
and its app role (403 naming it); the token's user is the caller in the history and telemetry; a
registered tenant's operator groups are enforced; the function key alone opens nothing; key mode
records the headers a key holder sets only as what it claimed."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import call, graph_calls, logged_events, sync_posts

from emulators.azurite import free_port
from emulators.signing import API_CLIENT_ID
from emulators.tokens import HOME_TENANT
from shared.api.callerauth import (
    DEVICES_IMPORT,
    DEVICES_SYNC,
    ROLES,
    STATUS_READ,
    SYNC_RUN,
    TENANTS_MANAGE,
    Caller,
    caller_from_claims,
    require_operator,
    require_role,
)
from shared.clients import SigningKeys
from shared.common import EntraUnavailable, Forbidden
from shared.engine import StateStore
from shared.runtime import process as runtime

OTHER_TENANT = "5c1e0a7d-9b3f-4e2a-8d6c-1f0e9a8b7c6d"
ALICE_OID = "a11ce000-0000-4000-8000-000000000001"

# One route of each role, with a body it accepts (what the route does with a valid token is
# tested elsewhere; here: who may reach it).
ROUTES = [
    ("POST", "sync/autopilot", None, SYNC_RUN),
    ("GET", "sync/status", None, STATUS_READ),
    ("POST", "autopilot/imports", {"devices": []}, DEVICES_IMPORT),
    ("POST", "devices/sync", {"serialNumbers": ["SN1"]}, DEVICES_SYNC),
    ("GET", "tenants", None, STATUS_READ),
    ("PUT", f"tenants/{OTHER_TENANT}", {"displayName": "Customer"}, TENANTS_MANAGE),
]


@pytest.fixture
def entra_env(app_env: dict[str, str], entra_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The app in entra mode: its API is API_CLIENT_ID, its home tenant the emulator's, keys over TLS."""
    entra_server.reset()
    settings = {"CALLER_AUTH": "entra", "API_CLIENT_ID": API_CLIENT_ID, "AZURE_TENANT_ID": HOME_TENANT,
                "SYNC_TARGETS": "autopilot,exchange,devices", "DEVICE_SYNC_QUEUE": "d" + app_env["SYNC_STATE_TABLE"][1:],
                **entra_server.env()}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    runtime.reload()
    yield {**app_env, **settings}
    runtime.reload()


def token(entra_server: Any, **options: Any) -> str:
    options.setdefault("tenant", HOME_TENANT)
    options.setdefault("object_id", ALICE_OID)
    return entra_server.signing.caller_token(entra_server.base_url, **options)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def _history(env: dict[str, str]) -> list[dict[str, Any]]:
    from shared.clients import make_credential, table_client
    from shared.common import Settings

    settings = Settings.from_env(env)
    return StateStore(table_client(settings.storage, settings.state_table, make_credential)).history("autopilot")


# --- the decisions, pure ------------------------------------------------------------------------------


def test_a_users_token_names_the_user_by_upn_and_object_id():
    caller = caller_from_claims({"oid": ALICE_OID, "preferred_username": "alice@contoso.com", "scp": "user_impersonation",
                                 "roles": [SYNC_RUN], "tid": HOME_TENANT})
    assert (caller.kind, caller.name, caller.object_id, caller.roles) == ("user", "alice@contoso.com", ALICE_OID, (SYNC_RUN,))
    assert require_role(caller, SYNC_RUN).label == f"user:alice@contoso.com (object {ALICE_OID}, role {SYNC_RUN})"


def test_an_app_only_token_names_the_app_by_its_id():
    caller = caller_from_claims({"oid": "o", "idtyp": "app", "azp": "flow-app-id", "roles": [STATUS_READ]})
    assert (caller.kind, caller.name) == ("app", "flow-app-id")


def test_a_missing_role_is_refused_naming_it():
    with pytest.raises(Forbidden) as refused:
        require_role(Caller("user", "bob", roles=(STATUS_READ,)), SYNC_RUN)
    assert refused.value.code == "MissingRole" and refused.value.details == {"role": SYNC_RUN}


def test_a_key_holder_has_every_role_and_no_operator_groups_apply():
    key = Caller("key", "key")
    assert require_role(key, TENANTS_MANAGE).role_used == TENANTS_MANAGE
    require_operator(key, OTHER_TENANT, ("g1",))  # no exception


@pytest.mark.parametrize(("groups", "overage", "code"), [(("g2",), False, "NotAnOperator"), (None, True, "GroupsOverage"),
                                                          (None, False, "NotAnOperator")])
def test_a_tenant_with_operator_groups_refuses_a_caller_in_none_of_them(groups, overage, code):
    with pytest.raises(Forbidden) as refused:
        require_operator(Caller("user", "bob", groups=groups, groups_overage=overage), OTHER_TENANT, ("g1",))
    assert refused.value.code == code


def test_the_roles_are_the_five_the_docs_name():
    assert ROLES == ("Sync.Run", "Devices.Import", "Devices.Sync", "Tenants.Manage", "Status.Read")


# --- the signing keys ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_unknown_key_fetches_the_keys_again_at_most_once_per_interval(entra_server, monkeypatch):
    entra_server.reset()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(entra_server.ca_file))
    clock = Clock()
    keys = SigningKeys(entra_server.base_url, refresh_seconds=60, clock=clock)
    published = entra_server.signing.current.kid
    assert keys.key(HOME_TENANT, published) is not None and keys.fetches == 1
    for _ in range(50):  # a flood of made-up key ids
        assert keys.key(HOME_TENANT, f"made-up-{uuid.uuid4()}") is None
    assert keys.fetches == 1  # the first fetch is less than the interval old
    clock.now += 61
    assert keys.key(HOME_TENANT, "made-up") is None and keys.fetches == 2


def test_a_rolled_over_key_is_fetched_when_a_token_first_uses_it(entra_server, monkeypatch):
    entra_server.reset()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(entra_server.ca_file))
    clock = Clock()
    keys = SigningKeys(entra_server.base_url, refresh_seconds=60, clock=clock)
    keys.key(HOME_TENANT, entra_server.signing.current.kid)
    clock.now += 61
    rolled = entra_server.signing.rotate(keep_old=False)
    assert keys.key(HOME_TENANT, rolled) is not None and keys.fetches == 2


def test_while_entra_fails_forged_tokens_cost_it_one_fetch_per_backoff_not_one_each(entra_server, monkeypatch):
    entra_server.reset()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(entra_server.ca_file))
    entra_server.configure({"keysFail": 503})
    keys = SigningKeys(entra_server.base_url, refresh_seconds=60, clock=Clock())
    for _ in range(50):
        with pytest.raises(EntraUnavailable):
            keys.key(HOME_TENANT, "any")
    assert keys.fetches == 1


def test_keys_fetched_before_stay_in_use_while_entra_fails_even_a_day_later(entra_server, monkeypatch):
    entra_server.reset()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(entra_server.ca_file))
    clock = Clock()
    keys = SigningKeys(entra_server.base_url, refresh_seconds=60, clock=clock)
    kid = entra_server.signing.current.kid
    assert keys.key(HOME_TENANT, kid) is not None
    entra_server.configure({"keysFail": 503})
    clock.now += 25 * 3600
    assert keys.key(HOME_TENANT, kid) is not None and keys.fetches == 2  # tried, failed, kept
    entra_server.configure({"keysFail": None})


def test_unreachable_entra_is_entra_unavailable_naming_the_tenant():
    keys = SigningKeys(f"https://127.0.0.1:{free_port()}", refresh_seconds=60)
    with pytest.raises(EntraUnavailable) as failed:
        keys.key(HOME_TENANT, "kid")
    assert HOME_TENANT in failed.value.message and failed.value.http_status == 503


# --- over HTTP, entra mode ----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "route", "body", "role"), ROUTES)
def test_each_route_answers_401_without_a_token_and_calls_nothing(entra_env, graph, method, route, body, role):
    code, headers, answer = call(method, route, body, {"x-functions-key": "a-valid-function-key"})
    assert (code, answer["error"]["code"]) == (401, "TokenMissing")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert graph_calls(graph) == []


@pytest.mark.parametrize(("method", "route", "body", "role"), ROUTES)
def test_each_route_answers_403_naming_its_role_when_the_token_lacks_it(entra_env, entra_server, graph, method, route,
                                                                        body, role):
    others = [r for r in ROLES if r != role]
    code, _, answer = call(method, route, body, bearer(token(entra_server, roles=others)))
    assert (code, answer["error"]["code"], answer["error"]["role"]) == (403, "MissingRole", role)
    assert role in answer["error"]["message"]
    assert graph_calls(graph) == []


def test_a_sync_with_its_role_starts_and_records_the_tokens_user(entra_env, entra_server, graph, caplog):
    caplog.set_level("INFO")
    headers = bearer(token(entra_server, roles=[SYNC_RUN], upn="alice@contoso.com"))
    code, _, answer = call("POST", "sync/autopilot", None, headers | {"x-ms-client-principal-name": "ceo@contoso.com"})
    assert code == 202, answer
    [row] = _history(entra_env)
    assert row["caller"] == f"user:alice@contoso.com (object {ALICE_OID}, role {SYNC_RUN})"
    assert "ceo@contoso.com" not in str(row)
    [record] = logged_events(caplog, "sync")
    assert record["caller"] == row["caller"] and "claimedCaller" not in record


def test_status_with_its_role_answers_200(entra_env, entra_server, graph):
    code, _, answer = call("GET", "sync/status", None, bearer(token(entra_server, roles=[STATUS_READ])))
    assert code == 200, answer


def test_an_app_only_token_for_a_flow_is_recorded_by_its_app_id(entra_env, entra_server, graph):
    code, _, _ = call("POST", "sync/autopilot", None, bearer(token(entra_server, roles=[SYNC_RUN], app_only=True)))
    assert code == 202
    [row] = _history(entra_env)
    assert row["caller"].startswith("app:") and ALICE_OID in row["caller"]


def test_the_api_uri_is_an_accepted_audience(entra_env, entra_server, graph):
    code, _, _ = call("POST", "sync/autopilot", None,
                      bearer(token(entra_server, roles=[SYNC_RUN], audience=f"api://{API_CLIENT_ID}")))
    assert code == 202


BAD_TOKENS = {
    "expired": ({"lifetime": -120}, "TokenExpired"),
    "not yet valid": ({"not_before_in": 600}, "TokenNotYetValid"),
    "another api": ({"audience": str(uuid.uuid4())}, "InvalidAudience"),
    "graph's audience": ({"audience": "https://graph.microsoft.com"}, "InvalidAudience"),
    "wrong issuer": ({"issuer": f"https://login.evil.example/{HOME_TENANT}/v2.0"}, "InvalidIssuer"),
    "tenant not allowed": ({"tenant": OTHER_TENANT}, "TenantNotAllowed"),
    "unknown key": ({"sign": "unknown"}, "UnknownSigningKey"),
    "alg none": ({"sign": "none"}, "InvalidAlgorithm"),
    "hs256 with the public key": ({"sign": "hs256-public"}, "InvalidAlgorithm"),
}


@pytest.mark.parametrize("case", BAD_TOKENS)
def test_a_bad_token_is_401_naming_what_is_wrong_and_nothing_happens(entra_env, entra_server, graph, case):
    options, expected = BAD_TOKENS[case]
    bad = token(entra_server, roles=list(ROLES), **options)
    code, headers, answer = call("POST", "sync/autopilot", None, bearer(bad))
    assert (code, answer["error"]["code"]) == (401, expected)
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert bad not in str(answer) and bad[-20:] not in str(headers)
    assert sync_posts(graph) == [] and _history(entra_env) == []


def test_a_token_with_a_forged_signature_is_401(entra_env, entra_server, graph):
    good = token(entra_server, roles=[SYNC_RUN])
    head, body, signature = good.split(".")
    other = token(entra_server, roles=list(ROLES)).split(".")[1]  # more roles, the first token's signature
    code, _, answer = call("POST", "sync/autopilot", None, bearer(f"{head}.{other}.{signature}"))
    assert (code, answer["error"]["code"]) == (401, "InvalidSignature")
    assert sync_posts(graph) == []


def test_a_refusal_names_what_the_token_said_in_printable_ascii_only(entra_env, entra_server, graph):
    forged = jwt_encode_none({"alg": "RS\u00e9256\r\nX-Evil: 1", "kid": "k"}, {"tid": HOME_TENANT})
    code, headers, answer = call("POST", "sync/autopilot", None, bearer(forged))
    assert (code, answer["error"]["code"]) == (401, "InvalidAlgorithm")
    assert headers["WWW-Authenticate"].isascii() and "\r" not in headers["WWW-Authenticate"]
    assert "\n" not in headers["WWW-Authenticate"]


def jwt_encode_none(header: dict[str, Any], body: dict[str, Any]) -> str:
    import base64
    import json

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(body)}.c2ln"


@pytest.mark.parametrize("value", ["Bearer", "Basic dXNlcjpwYXNz", "Bearer not-a-jwt", "Bearer " + "a" * 20_000])
def test_a_malformed_authorization_header_is_401(entra_env, graph, value):
    code, _, answer = call("POST", "sync/autopilot", None, {"Authorization": value})
    assert code == 401 and answer["error"]["code"] in ("TokenMissing", "InvalidToken")


def test_a_key_rolled_over_by_entra_is_accepted_once_the_interval_has_passed(entra_env, entra_server, graph, monkeypatch):
    monkeypatch.setenv("CALLER_KEYS_REFRESH_SECONDS", "1")
    runtime.reload()
    assert call("GET", "sync/status", None, bearer(token(entra_server, roles=[STATUS_READ])))[0] == 200
    entra_server.signing.rotate(keep_old=False)
    time.sleep(1.1)
    assert call("GET", "sync/status", None, bearer(token(entra_server, roles=[STATUS_READ])))[0] == 200


def test_a_tenant_named_in_caller_tenants_may_call(entra_env, entra_server, graph, monkeypatch):
    entra_server.configure({"tenants": {OTHER_TENANT: {}}})
    monkeypatch.setenv("CALLER_TENANTS", OTHER_TENANT)
    runtime.reload()
    code, _, _ = call("GET", "sync/status", None, bearer(token(entra_server, roles=[STATUS_READ], tenant=OTHER_TENANT)))
    assert code == 200


def test_entra_unreachable_is_503_naming_it_and_calls_nothing(entra_env, entra_server, graph, monkeypatch):
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", f"https://127.0.0.1:{free_port()}")
    runtime.reload()
    code, _, answer = call("POST", "sync/autopilot", None, bearer(token(entra_server, roles=[SYNC_RUN])))
    assert (code, answer["error"]["code"]) == (503, "EntraUnavailable")
    assert sync_posts(graph) == [] and _history(entra_env) == []


def test_health_and_the_valet_token_polls_need_no_token(entra_env, entra_server, graph):
    assert call("GET", "health")[0] == 200
    code, headers, _ = call("POST", "sync/autopilot?wait=true", None, bearer(token(entra_server, roles=[SYNC_RUN])))
    assert code == 202
    poll = headers["Location"].split("/api/", 1)[1]
    assert call("GET", poll)[0] in (200, 202)


def test_entra_without_its_api_or_tenant_is_reported_by_health(app_env, monkeypatch):
    monkeypatch.setenv("CALLER_AUTH", "entra")
    runtime.reload()
    code, _, answer = call("GET", "health")
    assert code == 503 and {"API_CLIENT_ID", "AZURE_TENANT_ID"} <= set(answer["problems"])
    assert call("POST", "sync/autopilot")[0] == 503  # refused, never opened


# --- the function key alone opens nothing (a real host) -----------------------------------------------


def test_in_entra_mode_the_function_key_alone_is_refused_and_a_token_is_enough(entra_env, entra_server, graph,
                                                                              start_app_hosts):
    [url] = start_app_hosts(1, entra_env, function_key="the-function-key")
    refused = requests.post(f"{url}/api/sync/autopilot", headers={"x-functions-key": "the-function-key"}, timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "TokenMissing"
    started = requests.post(f"{url}/api/sync/autopilot", headers=bearer(token(entra_server, roles=[SYNC_RUN])), timeout=30)
    assert started.status_code == 202, started.text


# --- key mode -----------------------------------------------------------------------------------------


def test_in_key_mode_a_callers_headers_are_only_what_it_claimed(app_env, graph, caplog):
    caplog.set_level("INFO")
    code, _, _ = call("POST", "sync/autopilot", None, {"x-ms-client-principal-name": "ceo@contoso.com"})
    assert code == 202
    [row] = _history(app_env)
    assert row["caller"] == "key" and row["claimedCaller"] == "user:ceo@contoso.com"
    [record] = logged_events(caplog, "sync")
    assert record["caller"] == "key" and record["claimedCaller"] == "user:ceo@contoso.com"


# --- operator groups ----------------------------------------------------------------------------------


@pytest.fixture
def operator_env(entra_env, entra_server, identity_server, graph, monkeypatch) -> Iterator[dict[str, str]]:
    """Many tenants, one customer registered (in key mode, by the MSP) with an operator group."""
    from emulators.entra import DEFAULT_CLIENT_ID

    mi_client = "3b8f0c2e-6d4a-4f1b-9e7c-2a5d8f1e0c93"
    entra_server.configure({"clientId": DEFAULT_CLIENT_ID, "federatedSubject": identity_server.principal_id(mi_client),
                            "tenants": {OTHER_TENANT: {"consented": True}}})
    settings = {"MULTI_TENANT_CLIENT_ID": DEFAULT_CLIENT_ID, "AZURE_CLIENT_ID": mi_client,
                "TENANT_QUEUE": "n" + entra_env["SYNC_STATE_TABLE"][1:]}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    runtime.reload()
    admin = bearer(token(entra_server, roles=[TENANTS_MANAGE]))
    code, _, body = call("PUT", f"tenants/{OTHER_TENANT}", {"displayName": "Customer", "operatorGroups": [GROUP]}, admin)
    assert code == 201 and body["operatorGroups"] == [GROUP], body
    yield {**entra_env, **settings}


GROUP = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def test_a_member_of_the_operator_group_may_sync_the_tenant(operator_env, entra_server, graph):
    code, _, answer = call("POST", f"tenants/{OTHER_TENANT}/sync/autopilot", None,
                           bearer(token(entra_server, roles=[SYNC_RUN], groups=[GROUP])))
    assert code == 202, answer


@pytest.mark.parametrize(("options", "expected"), [({"groups": [str(uuid.uuid4())]}, "NotAnOperator"),
                                                  ({"groups_overage": True}, "GroupsOverage")])
def test_a_caller_outside_the_operator_groups_is_403_and_nothing_is_synced(operator_env, entra_server, graph, options,
                                                                          expected):
    code, _, answer = call("POST", f"tenants/{OTHER_TENANT}/sync/autopilot", None,
                           bearer(token(entra_server, roles=list(ROLES), **options)))
    assert (code, answer["error"]["code"]) == (403, expected)
    assert sync_posts(graph) == []


def test_a_tenant_limited_to_its_operators_is_listed_only_to_them(operator_env, entra_server, graph):
    outsider = bearer(token(entra_server, roles=[STATUS_READ], groups=[]))
    insider = bearer(token(entra_server, roles=[STATUS_READ], groups=[GROUP]))
    assert [t["tenantId"] for t in call("GET", "tenants", None, outsider)[2]["tenants"]] == []
    assert [t["tenantId"] for t in call("GET", "tenants", None, insider)[2]["tenants"]] == [OTHER_TENANT]


def test_a_rename_without_operator_groups_keeps_them_and_an_empty_list_clears_them(operator_env, entra_server, graph):
    insider = bearer(token(entra_server, roles=[TENANTS_MANAGE], groups=[GROUP]))
    code, _, body = call("PUT", f"tenants/{OTHER_TENANT}", {"displayName": "Renamed"}, insider)
    assert code == 200 and body["operatorGroups"] == [GROUP]
    code, _, body = call("PUT", f"tenants/{OTHER_TENANT}", {"displayName": "Open", "operatorGroups": []}, insider)
    assert code == 200 and body["operatorGroups"] is None


def test_only_an_operator_may_change_or_delete_a_tenant_limited_to_its_operators(operator_env, entra_server, graph):
    outsider = bearer(token(entra_server, roles=[TENANTS_MANAGE], groups=[]))
    assert call("DELETE", f"tenants/{OTHER_TENANT}", None, outsider)[0] == 403
    assert call("PUT", f"tenants/{OTHER_TENANT}", {"displayName": "Mine now"}, outsider)[0] == 403
    insider = bearer(token(entra_server, roles=[TENANTS_MANAGE], groups=[GROUP]))
    assert call("DELETE", f"tenants/{OTHER_TENANT}", None, insider)[0] == 200


# --- every route --------------------------------------------------------------------------------------

OPEN_ROUTES = {"health", "operations/{operationId}", "autopilot/imports/{importId}", "devices/sync/{jobId}",
               "tenants/{tenantId}/devices/sync/{jobId}"}
# The web console's files and sign-in settings: anonymous by design and without data, they know no
# caller at all (shared/api/console.py; tested in tests/test_console_api.py).
CONSOLE_ROUTES = {"console", "console/config.json", "console/{*path}"}


def app_routes() -> list[str]:
    from conftest import APP_FUNCTIONS

    return sorted(str(t.route) for f in APP_FUNCTIONS if type(t := f.get_trigger()).__name__ == "HttpTrigger")


def test_the_open_routes_are_exactly_health_and_the_valet_token_polls():
    from shared.api import routes

    assert {name for name, role in ((a.__name__, r) for a, r in routes.ROLE_OF.items()) if role is None} == {
        "health", "operation", "import_status", "device_sync_status", "tenant_device_sync_status"}
    assert set(app_routes()) >= OPEN_ROUTES


@pytest.mark.parametrize("route", [r for r in app_routes() if r not in OPEN_ROUTES | CONSOLE_ROUTES])
def test_every_other_route_answers_401_to_every_method_without_a_token(entra_env, graph, route):
    path = (route.replace("{target}", "autopilot").replace("{tenantId}", OTHER_TENANT)
            .replace("{itemId}", ALICE_OID).replace("{jobId}", ALICE_OID).replace("{importId}", ALICE_OID))
    answers = {method: call(method, path, None, {"x-functions-key": "k"})[0] for method in ("GET", "POST", "PUT", "DELETE")}
    assert set(answers.values()) <= {401, 405} and 401 in answers.values(), answers
    assert graph_calls(graph) == []
