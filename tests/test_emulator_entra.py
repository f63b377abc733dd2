"""The Entra emulator: azure-identity's real ClientAssertionCredential (and MSAL) get app-only tokens
for a customer tenant over HTTPS, asserting with the managed-identity emulator's token, and every
documented refusal (unknown tenant, no consent, wrong app, wrong FIC issuer/audience/subject,
missing/expired/malformed assertion, bad scope) arrives as Entra words it."""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msal
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientAssertionCredential, ManagedIdentityCredential

from emulators.entra import DEFAULT_CLIENT_ID, JWT_BEARER, EntraEmulator
from emulators.graph import AUTOPILOT, GraphEmulator
from emulators.identity import IdentityEmulator
from emulators.tokens import EXCHANGE_AUDIENCE, HOME_TENANT, decode, issue, issuer, principal_id

MI_CLIENT_ID = "3b8f0c2e-6d4a-4f1b-9e7c-2a5d8f1e0c93"  # the app's user-assigned managed identity
TENANT = "0c7a4e2b-9f3d-4a6e-8b1c-5d2f7e9a3b41"  # a customer tenant that consented
OTHER = "e4d3c2b1-a0f9-4e8d-9c7b-6a5f4e3d2c10"
ROLES = ["DeviceManagementServiceConfig.ReadWrite.All"]
EXCHANGE_SCOPE = EXCHANGE_AUDIENCE + "/.default"


@pytest.fixture
def entra(entra_server: EntraEmulator, identity_server: IdentityEmulator,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[EntraEmulator]:
    """A fresh Entra trusting the managed identity MI_CLIENT_ID, TENANT consented, and the
    environment pointing azure-identity at it."""
    entra_server.reset()
    entra_server.configure({"federatedSubject": identity_server.principal_id(MI_CLIENT_ID),
                            "tenants": {TENANT: {"consented": True, "roles": ROLES}}})
    for name, value in entra_server.env().items():
        monkeypatch.setenv(name, value)
    yield entra_server
    identity_server.configure(tenantId=HOME_TENANT, principalId=None)


def mi_assertion(scope: str = EXCHANGE_SCOPE) -> Callable[[], str]:
    """What the app passes as ``func``: the managed identity's token for the exchange audience."""
    identity = ManagedIdentityCredential(client_id=MI_CLIENT_ID)
    return lambda: identity.get_token(scope).token


def credential(entra: EntraEmulator, tenant: str = TENANT, func: Callable[[], str] | None = None,
               client_id: str = DEFAULT_CLIENT_ID, **kwargs: Any) -> ClientAssertionCredential:
    return ClientAssertionCredential(tenant, client_id, func or mi_assertion(), authority=entra.base_url,
                                     disable_instance_discovery=True, **kwargs)


def refusal(entra: EntraEmulator, graph_url: str, **kwargs: Any) -> ClientAuthenticationError:
    with pytest.raises(ClientAuthenticationError) as caught:
        credential(entra, **kwargs).get_token(graph_url + "/.default")
    return caught.value


def post_token(entra: EntraEmulator, tenant: str = TENANT, **form: str) -> requests.Response:
    assert entra.ca_file is not None
    return requests.post(f"{entra.base_url}/{tenant}/oauth2/v2.0/token", data=form, verify=str(entra.ca_file),
                         headers={"client-request-id": "c0ffee00-0000-4000-8000-000000000001"}, timeout=10)


def valid_form(graph_url: str = "https://graph.example", **overrides: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": DEFAULT_CLIENT_ID, "scope": graph_url + "/.default",
            "client_assertion_type": JWT_BEARER, "client_assertion": mi_assertion()(), **overrides}


def test_client_assertion_credential_gets_a_token_for_a_consented_tenant(entra: EntraEmulator, graph: GraphEmulator) -> None:
    cred = credential(entra)
    token = cred.get_token(graph.base_url + "/.default")
    claims = decode(token.token)
    assert claims is not None
    assert claims["tid"] == TENANT and claims["aud"] == graph.base_url and claims["appid"] == DEFAULT_CLIENT_ID
    assert claims["roles"] == ROLES and claims["idtyp"] == "app"
    assert cred.get_token(graph.base_url + "/.default").token == token.token  # azure-identity's cache
    stats = entra.stats()
    assert stats["tokenRequests"] == 1 and stats["discoveryRequests"] == 0  # no discovery: one POST
    assert stats["tenants"][TENANT] == {"tokenRequests": 1, "issued": 1, "outcomes": {"issued": 1}}
    assert stats["requests"][0]["subject"] == principal_id(MI_CLIENT_ID)
    # The token acts on that tenant in the Graph emulator.
    answer = requests.get(graph.base_url + AUTOPILOT, headers={"Authorization": f"Bearer {token.token}"}, timeout=5)
    assert answer.status_code == 200
    assert graph.stats()["requests"][-1]["tenant"] == TENANT


def test_the_authority_can_come_from_the_environment_alone(entra: EntraEmulator, graph: GraphEmulator) -> None:
    cred = ClientAssertionCredential(TENANT, DEFAULT_CLIENT_ID, mi_assertion())  # AZURE_AUTHORITY_HOST
    claims = decode(cred.get_token(graph.base_url + "/.default").token)
    assert claims is not None and claims["tid"] == TENANT


def test_msal_discovers_the_tenant_then_gets_a_token(entra: EntraEmulator, graph: GraphEmulator) -> None:
    app = msal.ConfidentialClientApplication(DEFAULT_CLIENT_ID, client_credential={"client_assertion": mi_assertion()},
                                             authority=f"{entra.base_url}/{TENANT}", instance_discovery=False)
    result = app.acquire_token_for_client([graph.base_url + "/.default"])
    assert "access_token" in result, result
    claims = decode(result["access_token"])
    assert claims is not None and claims["tid"] == TENANT
    assert entra.stats()["discoveryRequests"] == 1


def test_discovery_answers_metadata_and_unknown_tenants_as_entra(entra: EntraEmulator) -> None:
    metadata = requests.get(f"{entra.base_url}/{TENANT}/v2.0/.well-known/openid-configuration",
                            verify=str(entra.ca_file), timeout=10).json()
    assert metadata["token_endpoint"] == f"{entra.base_url}/{TENANT}/oauth2/v2.0/token"
    assert metadata["issuer"] == f"{entra.base_url}/{TENANT}/v2.0"
    assert metadata["authorization_endpoint"] == f"{entra.base_url}/{TENANT}/oauth2/v2.0/authorize"
    unknown = requests.get(f"{entra.base_url}/{OTHER}/v2.0/.well-known/openid-configuration",
                           verify=str(entra.ca_file), timeout=10)
    assert unknown.status_code == 400
    body = unknown.json()
    assert body["error"] == "invalid_tenant" and body["error_codes"] == [90002]
    assert body["error_description"].startswith(f"AADSTS90002: Tenant '{OTHER}' not found.")
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        msal.ConfidentialClientApplication(DEFAULT_CLIENT_ID, client_credential={"client_assertion": mi_assertion()},
                                           authority=f"{entra.base_url}/{OTHER}", instance_discovery=False)


def test_an_unknown_tenant_is_aadsts90002(entra: EntraEmulator, graph: GraphEmulator) -> None:
    error = refusal(entra, graph.base_url, tenant=OTHER)
    assert "(invalid_request) AADSTS90002: Tenant" in error.message
    assert error.response is not None and error.response.status_code == 400
    assert entra.stats()["tenants"][OTHER]["outcomes"] == {"AADSTS90002": 1}


def test_a_tenant_that_has_not_consented_is_aadsts700016(entra: EntraEmulator, graph: GraphEmulator) -> None:
    entra.configure({"tenants": {OTHER: {"consented": False}}})
    error = refusal(entra, graph.base_url, tenant=OTHER)
    assert (f"(unauthorized_client) AADSTS700016: Application with identifier '{DEFAULT_CLIENT_ID}' was not found "
            f"in the directory '{OTHER}'") in error.message
    assert error.response is not None and error.response.status_code == 400


def test_another_app_is_aadsts700016(entra: EntraEmulator, graph: GraphEmulator) -> None:
    stranger = str(uuid.uuid4())
    error = refusal(entra, graph.base_url, client_id=stranger)
    assert f"AADSTS700016: Application with identifier '{stranger}' was not found" in error.message


def test_the_wrong_audience_is_aadsts700212(entra: EntraEmulator, graph: GraphEmulator) -> None:
    error = refusal(entra, graph.base_url, func=mi_assertion("api://SomethingElse/.default"))
    assert "(invalid_client) AADSTS700212: No matching federated identity record found for presented assertion " \
           "audience 'api://SomethingElse'" in error.message
    assert error.response is not None and error.response.status_code == 400


def test_the_wrong_subject_is_aadsts700213(entra: EntraEmulator, graph: GraphEmulator) -> None:
    entra.configure({"federatedSubject": str(uuid.uuid4())})  # the FIC names another identity
    error = refusal(entra, graph.base_url)
    assert ("(invalid_client) AADSTS700213: No matching federated identity record found for presented assertion "
            f"subject '{principal_id(MI_CLIENT_ID)}'") in error.message


def test_the_wrong_issuer_is_aadsts700211(entra: EntraEmulator, graph: GraphEmulator, identity_server: IdentityEmulator) -> None:
    identity_server.configure(tenantId=OTHER)  # the identity lives in another tenant than the app
    error = refusal(entra, graph.base_url)
    assert f"AADSTS700211: No matching federated identity record found for presented assertion issuer '{issuer(OTHER)}'" \
        in error.message


def test_no_federated_credential_is_aadsts70021(entra: EntraEmulator, graph: GraphEmulator) -> None:
    entra.configure({"federatedSubject": None})
    assert "(invalid_client) AADSTS70021: No matching federated identity record found" in \
        refusal(entra, graph.base_url).message


def test_a_missing_assertion_is_aadsts7000218(entra: EntraEmulator, graph: GraphEmulator) -> None:
    error = refusal(entra, graph.base_url, func=lambda: "")
    assert "(invalid_client) AADSTS7000218: The request body must contain the following parameter: " \
           "'client_assertion' or 'client_secret'." in error.message
    form = valid_form()
    del form["client_assertion"], form["client_assertion_type"]
    answer = post_token(entra, **form)
    assert answer.status_code == 400 and answer.json()["error_codes"] == [7000218]


def test_a_malformed_or_expired_assertion_is_refused(entra: EntraEmulator, graph: GraphEmulator) -> None:
    assert "(invalid_client) AADSTS50027: JWT token is invalid or malformed." in \
        refusal(entra, graph.base_url, func=lambda: "not-a-token").message
    subject = principal_id(MI_CLIENT_ID)
    expired, _ = issue(EXCHANGE_AUDIENCE, [], -60, MI_CLIENT_ID, sub=subject, oid=subject, iss=issuer(HOME_TENANT))
    assert "(invalid_client) AADSTS700024: Client assertion is not within its valid time range." in \
        refusal(entra, graph.base_url, func=lambda: expired).message


def test_error_bodies_carry_what_entra_sends(entra: EntraEmulator) -> None:
    answer = post_token(entra, **valid_form(scope="https://graph.example/DeviceManagementServiceConfig.ReadWrite.All"))
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"] == "invalid_scope" and body["error_codes"] == [70011]
    assert body["error_description"].startswith("AADSTS70011: ")
    assert body["correlation_id"] == "c0ffee00-0000-4000-8000-000000000001"
    assert f"Trace ID: {body['trace_id']} Correlation ID: {body['correlation_id']} Timestamp: {body['timestamp']}" \
        in body["error_description"]
    assert answer.headers["client-request-id"] == body["correlation_id"]
    assert post_token(entra, **valid_form(grant_type="password")).json()["error"] == "unsupported_grant_type"
    assert post_token(entra, **valid_form(client_assertion_type="x")).json()["error_codes"] == [900144]


def test_invalid_client_status_is_configurable(entra: EntraEmulator, graph: GraphEmulator) -> None:
    entra.configure({"invalidClientStatus": 401, "federatedSubject": str(uuid.uuid4())})
    error = refusal(entra, graph.base_url)
    assert error.response is not None and error.response.status_code == 401


def test_a_failing_tenant_answers_5xx_and_azure_identity_retries(entra: EntraEmulator, graph: GraphEmulator) -> None:
    entra.configure({"tenants": {TENANT: {"fail": 503, "failTimes": 1, "retryAfter": 0}}})
    token = credential(entra, retry_backoff_factor=0.01).get_token(graph.base_url + "/.default")
    assert decode(token.token) is not None
    assert entra.stats()["tenants"][TENANT]["outcomes"] == {"http503": 1, "issued": 1}
    entra.configure({"tenants": {TENANT: {"fail": 500}}})  # until told otherwise
    for _ in range(2):
        answer = post_token(entra, **valid_form())
        assert answer.status_code == 500 and answer.json()["error"] == "server_error"
    entra.configure({"tenants": {TENANT: {"fail": None}}})
    assert post_token(entra, **valid_form()).status_code == 200


def test_config_merges_tenants_removes_with_null_and_can_replace(entra: EntraEmulator) -> None:
    ca = str(entra.ca_file)
    config = requests.post(f"{entra.base_url}/_emulator/config", json={"tenants": {OTHER: {"consented": False}}},
                           verify=ca, timeout=10).json()
    assert set(config["tenants"]) == {HOME_TENANT, TENANT, OTHER}
    assert config["tenants"][OTHER]["consented"] is False and config["tenants"][TENANT]["roles"] == ROLES
    config = entra.configure({"tenants": {OTHER: {"roles": []}, TENANT.upper(): None}})
    assert set(config["tenants"]) == {HOME_TENANT, OTHER} and config["tenants"][OTHER]["consented"] is False
    config = entra.configure({"replaceTenants": True, "tenants": {TENANT: {}}})
    assert set(config["tenants"]) == {TENANT} and config["tenants"][TENANT]["consented"] is True
    requests.post(f"{entra.base_url}/_emulator/reset", verify=ca, timeout=10).raise_for_status()
    stats = requests.get(f"{entra.base_url}/_emulator/stats", verify=ca, timeout=10).json()
    assert stats == {"tokenRequests": 0, "discoveryRequests": 0, "outcomes": {}, "tenantsAsked": 0,
                     "tenantsByTokenRequests": {}}
    detail = requests.get(f"{entra.base_url}/_emulator/stats", params={"detail": 1}, verify=ca, timeout=10).json()
    assert detail == {"tokenRequests": 0, "discoveryRequests": 0, "tenants": {}, "requests": []}
    assert set(entra.configure({})["tenants"]) == {HOME_TENANT}


class _Untouchable(list[Any]):
    """The records, refusing to be read: what ``GET stats`` answers must come from counters."""

    def __iter__(self) -> Iterator[Any]:
        raise AssertionError("the stats answer read the records")

    def __len__(self) -> int:
        raise AssertionError("the stats answer read the records")


def test_the_stats_answer_stays_the_same_size_however_many_tokens_were_issued(entra: EntraEmulator) -> None:
    """The 10,000-tenant bench read these figures after the window; the answer listed every request
    (3.5 MB). Now it is counters: its size does not grow with the tokens issued, and it does not
    read the records (tenants' own figures: ``?tenant=``; everything: ``?detail=1``)."""
    ca = str(entra.ca_file)
    tenants = [str(uuid.uuid4()) for _ in range(1000)]
    entra.configure({"tenants": {t: {} for t in tenants}})

    def issue_tokens(count: int, start: int) -> None:  # straight to the endpoint's logic: a thousand HTTPS posts is slow
        for tenant in tenants[start:start + count]:
            entra.token(tenant, {"grant_type": "client_credentials"}, str(uuid.uuid4()))

    def answer(**params: Any) -> bytes:
        got = requests.get(f"{entra.base_url}/_emulator/stats", params=params, verify=ca, timeout=10)
        got.raise_for_status()
        return got.content

    issue_tokens(10, 0)
    small, small_detail = answer(), answer(detail=1)
    issue_tokens(990, 10)
    entra.token(tenants[0], {"grant_type": "client_credentials"}, "again")  # one tenant asks twice
    large, large_detail = answer(), answer(detail=1)
    assert len(large_detail) > 50 * len(small_detail)  # the records grew a hundredfold...
    assert len(large) - len(small) <= 40  # ...the counters by a few digits and one key
    stats = requests.get(f"{entra.base_url}/_emulator/stats", verify=ca, timeout=10).json()
    assert stats["tokenRequests"] == 1001 and stats["tenantsAsked"] == 1000
    assert stats["tenantsByTokenRequests"] == {"1": 999, "2": 1}
    assert stats["outcomes"] == {"AADSTS900144": 1001}  # no client_id: refused, but counted
    one = requests.get(f"{entra.base_url}/_emulator/stats", params={"tenant": tenants[0].upper()}, verify=ca,
                       timeout=10).json()
    assert one["tokenRequests"] == 2 and [r["correlationId"] for r in one["requests"]][1] == "again"

    with entra.lock:  # the records become unreadable: the answer must not need them
        saved = entra.requests, entra.per_tenant, entra.tenant_requests
        entra.requests = _Untouchable(entra.requests)
        entra.per_tenant = _UntouchableMap(entra.per_tenant)  # type: ignore[assignment]
        entra.tenant_requests = _UntouchableMap(entra.tenant_requests)  # type: ignore[assignment]
    try:
        assert answer() == large
    finally:
        with entra.lock:
            entra.requests, entra.per_tenant, entra.tenant_requests = saved


class _UntouchableMap(dict[str, Any]):
    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the stats answer read the records")

    def items(self) -> Any:
        raise AssertionError("the stats answer read the records")

    def values(self) -> Any:
        raise AssertionError("the stats answer read the records")


def test_an_idle_connection_is_closed_so_its_thread_ends(entra: EntraEmulator) -> None:
    """Each tenant's credential keeps its own connection: held open for ever, the bench's 10,000
    tenants left 10,000 server threads, whose ending together starved the emulator for minutes."""
    import socket
    import ssl
    import time

    context = ssl.create_default_context(cafile=str(entra.ca_file))
    host, port = entra.server_address[:2]
    saved = entra.idle_seconds
    entra.idle_seconds = 0.5
    try:
        with socket.create_connection((str(host), int(port)), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=str(host)) as tls:
            tls.sendall(b"GET /_emulator/stats HTTP/1.1\r\nHost: entra\r\n\r\n")
            received = b""
            while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
                received += tls.recv(65536)
            assert received.startswith(b"HTTP/1.1 200")  # kept alive: no "Connection: close"
            started = time.monotonic()
            assert tls.recv(65536) == b""  # the server closed it after 0.5 s idle
            assert 0.3 < time.monotonic() - started < 5
    finally:
        entra.idle_seconds = saved


def test_the_entra_emulator_speaks_https_only(entra: EntraEmulator) -> None:
    assert entra.base_url.startswith("https://")
    assert Path(entra.env()["REQUESTS_CA_BUNDLE"]).is_file()
    session = requests.Session()
    session.trust_env = False  # certifi's CAs only, not REQUESTS_CA_BUNDLE
    with pytest.raises(requests.exceptions.SSLError):
        session.get(f"{entra.base_url}/_emulator/stats", timeout=10)


def test_managed_identity_tokens_carry_the_principal_id(identity_server: IdentityEmulator) -> None:
    token = ManagedIdentityCredential(client_id=MI_CLIENT_ID).get_token(EXCHANGE_SCOPE).token
    claims = decode(token)
    assert claims is not None
    assert claims["aud"] == EXCHANGE_AUDIENCE
    assert claims["sub"] == claims["oid"] == principal_id(MI_CLIENT_ID) == identity_server.principal_id(MI_CLIENT_ID)
    assert claims["iss"] == f"https://login.microsoftonline.com/{HOME_TENANT}/v2.0" and claims["tid"] == HOME_TENANT
    assert principal_id(MI_CLIENT_ID) != principal_id("another-identity")
    assert uuid.UUID(principal_id(MI_CLIENT_ID)).version == 5  # a GUID, stable across runs
    chosen = str(uuid.uuid4())
    identity_server.configure(principalId=chosen)
    try:
        claims = decode(ManagedIdentityCredential(client_id=MI_CLIENT_ID).get_token(EXCHANGE_SCOPE).token)
        assert claims is not None and claims["sub"] == claims["oid"] == chosen
    finally:
        identity_server.configure(principalId=None)
