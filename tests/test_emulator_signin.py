"""The Entra emulator's browser sign-in for a single-page app (emulators/signin.py), over its real
HTTPS: the sign-in page of a test user with the API's app roles, the authorization code flow with
PKCE as MSAL for the browser runs it (page, form, redirect, token request from the app's origin),
whose access token the app's own validation (shared/api/callerauth.py) accepts with the roles
ticked; and each refusal as Entra words it (verifier, reused or expired code, redirect URIs,
tenant, origin), CORS, refresh tokens, sign-out and instance discovery."""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests

from emulators.entra import EntraEmulator
from emulators.signing import API_CLIENT_ID, API_ROLES
from emulators.tokens import HOME_TENANT
from shared.api.callerauth import ROLES, STATUS_READ, SYNC_RUN, Caller, validate
from shared.clients import SigningKeys
from shared.common.settings import Settings, StorageSettings

SPA_CLIENT = "c4a8e2d6-1f3b-4c5d-9e7f-a1b2c3d4e5f6"  # the console's app registration (SPA platform)
ORIGIN = "http://localhost:7071"
REDIRECT = f"{ORIGIN}/api/console"
API_SCOPE = f"api://{API_CLIENT_ID}/user_impersonation"
OTHER_TENANT = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"


@pytest.fixture
def entra(entra_server: EntraEmulator) -> Iterator[EntraEmulator]:
    entra_server.reset()
    yield entra_server
    entra_server.reset()


class Page(HTMLParser):
    """What a browser (and a test) sees of a page: its form's inputs, labels, buttons and scripts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.inputs: list[dict[str, str]] = []
        self.labels: dict[str, str] = {}
        self.buttons: dict[str, str] = {}
        self.scripts = 0
        self._label: str | None = None
        self._button: str | None = None
        self.form_action = ""
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "input":
            self.inputs.append(found)
        elif tag == "label":
            self._label = found.get("for")
        elif tag == "button":
            self._button = found.get("id")
        elif tag == "form":
            self.form_action = found.get("action", "")
        elif tag in ("script", "link", "img", "iframe"):
            self.scripts += 1

    def handle_data(self, data: str) -> None:
        if self._label is not None:
            self.labels[self._label] = self.labels.get(self._label, "") + data
        if self._button is not None:
            self.buttons[self._button] = self.buttons.get(self._button, "") + data

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label = None
        elif tag == "button":
            self._button = None

    def checkboxes(self) -> dict[str, dict[str, str]]:
        return {i["value"]: i for i in self.inputs if i.get("type") == "checkbox"}

    def fields(self, username: str, roles: list[str]) -> list[tuple[str, str]]:
        """The form as a browser submits it, with the user name typed and only ``roles`` ticked."""
        hidden = [(i["name"], i.get("value", "")) for i in self.inputs if i.get("type") == "hidden"]
        return hidden + [("username", username)] + [("role", r) for r in roles]


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(32)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def authorize_params(challenge: str, **overrides: str) -> dict[str, str]:
    return {"client_id": SPA_CLIENT, "redirect_uri": REDIRECT, "response_type": "code",
            "scope": f"{API_SCOPE} openid profile offline_access", "state": "state-123", "nonce": "nonce-456",
            "code_challenge": challenge, "code_challenge_method": "S256", "response_mode": "fragment",
            "login_hint": "alice@contoso.com", **overrides}


def ca(entra: EntraEmulator) -> str:
    assert entra.ca_file is not None
    return str(entra.ca_file)


def authorize(entra: EntraEmulator, params: dict[str, str], tenant: str = HOME_TENANT,
              session: requests.Session | None = None) -> requests.Response:
    return (session or requests).get(f"{entra.base_url}/{tenant}/oauth2/v2.0/authorize", params=params,
                                     verify=ca(entra), allow_redirects=False, timeout=10)


def sign_in(entra: EntraEmulator, params: dict[str, str], username: str = "alice@contoso.com",
            roles: list[str] | None = None, session: requests.Session | None = None) -> requests.Response:
    """The page, then its form submitted as a browser would: the emulator's 302 back to the app."""
    page = authorize(entra, params, session=session)
    assert page.status_code == 200, page.text
    form = Page(page.text)
    return (session or requests).post(entra.base_url + form.form_action,
                                      data=form.fields(username, list(API_ROLES) if roles is None else roles),
                                      verify=ca(entra), allow_redirects=False, timeout=10)


def answer_of(redirect: requests.Response, mode: str = "fragment") -> dict[str, str]:
    assert redirect.status_code == 302, redirect.text
    where = urlsplit(redirect.headers["Location"])
    assert f"{where.scheme}://{where.netloc}{where.path}" == REDIRECT
    return {k: v[-1] for k, v in parse_qs(where.fragment if mode == "fragment" else where.query).items()}


def post_token(entra: EntraEmulator, form: dict[str, str], origin: str | None = ORIGIN,
               tenant: str = HOME_TENANT) -> requests.Response:
    headers = {"Origin": origin} if origin else {}
    return requests.post(f"{entra.base_url}/{tenant}/oauth2/v2.0/token", data=form, headers=headers,
                         verify=ca(entra), timeout=10)


def redeem(entra: EntraEmulator, code: str, verifier: str, **overrides: str) -> requests.Response:
    return post_token(entra, {"grant_type": "authorization_code", "client_id": SPA_CLIENT, "code": code,
                              "code_verifier": verifier, "redirect_uri": REDIRECT,
                              "scope": f"{API_SCOPE} openid profile offline_access", "client_info": "1", **overrides})


def code_for(entra: EntraEmulator, roles: list[str] | None = None, username: str = "alice@contoso.com") -> tuple[str, str]:
    """A fresh code and its verifier."""
    verifier, challenge = pkce()
    return answer_of(sign_in(entra, authorize_params(challenge), username, roles))["code"], verifier


def tokens(entra: EntraEmulator, roles: list[str] | None = None, username: str = "alice@contoso.com") -> dict[str, Any]:
    code, verifier = code_for(entra, roles, username)
    answer = redeem(entra, code, verifier)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def app_validates(entra: EntraEmulator, token: str, monkeypatch: pytest.MonkeyPatch) -> Caller:
    """The app's own check of a caller's token (CALLER_AUTH=entra, its API API_CLIENT_ID) against the emulator."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca(entra))
    settings = Settings("https://graph.example", StorageSettings(), caller_auth="entra", api_client_id=API_CLIENT_ID,
                        tenant_id=HOME_TENANT, authority_host=entra.base_url)
    return validate(token, SigningKeys(entra.base_url, refresh_seconds=60), settings)


def refused(answer: requests.Response, status: int, error: str, code: int) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert (body["error"], body["error_codes"]) == (error, [code]), body
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    return str(body["error_description"])


# --- the page ----------------------------------------------------------------------------------------


def test_the_roles_offered_are_the_apis_five() -> None:
    assert API_ROLES == ROLES


def test_the_sign_in_page_offers_every_role_as_a_labelled_ticked_checkbox(entra: EntraEmulator) -> None:
    page = authorize(entra, authorize_params(pkce()[1]))
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    form = Page(page.text)
    boxes = form.checkboxes()
    assert list(boxes) == list(ROLES)
    for role, box in boxes.items():
        assert "checked" in box and form.labels[box["id"]].strip() == role
    assert form.buttons["signin"].strip() == "Sign in"
    assert form.scripts == 0  # no script, no external resource


def test_the_sign_in_page_asks_the_user_name_prefilled_from_the_login_hint(entra: EntraEmulator) -> None:
    form = Page(authorize(entra, authorize_params(pkce()[1], login_hint="bob@contoso.com")).text)
    [username] = [i for i in form.inputs if i.get("name") == "username"]
    assert username["value"] == "bob@contoso.com" and form.labels[username["id"]].strip() == "User name"
    no_hint = authorize_params(pkce()[1])
    del no_hint["login_hint"]
    assert [i["value"] for i in Page(authorize(entra, no_hint).text).inputs if i.get("name") == "username"] == \
        ["alice@contoso.com"]


def test_the_sign_in_page_carries_the_request_in_hidden_fields(entra: EntraEmulator) -> None:
    params = authorize_params(pkce()[1])
    hidden = {i["name"]: i["value"] for i in Page(authorize(entra, params).text).inputs if i.get("type") == "hidden"}
    assert {k: hidden[k] for k in params} == params


def test_an_authorize_request_posted_as_a_form_shows_the_page(entra: EntraEmulator) -> None:
    """MSAL's ``httpMethod: "POST"`` sends the authorize request as a form: the same page."""
    answer = requests.post(f"{entra.base_url}/{HOME_TENANT}/oauth2/v2.0/authorize", data=authorize_params(pkce()[1]),
                           verify=ca(entra), allow_redirects=False, timeout=10)
    assert answer.status_code == 200 and list(Page(answer.text).checkboxes()) == list(ROLES)


# --- the flow ----------------------------------------------------------------------------------------


def test_a_pkce_sign_in_gives_an_access_token_the_app_accepts_with_the_roles_ticked(
        entra: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    verifier, challenge = pkce()
    answer = answer_of(sign_in(entra, authorize_params(challenge), "bob@contoso.com", [SYNC_RUN, STATUS_READ]))
    assert answer["state"] == "state-123" and answer["session_state"]
    client_info = json.loads(base64.urlsafe_b64decode(answer["client_info"] + "=" * (-len(answer["client_info"]) % 4)))
    token = redeem(entra, answer["code"], verifier)
    assert token.status_code == 200, token.text
    body = token.json()
    assert {"token_type", "scope", "expires_in", "ext_expires_in", "access_token", "refresh_token", "id_token",
            "client_info"} <= set(body)
    assert body["token_type"] == "Bearer" and body["scope"] == API_SCOPE and body["client_info"] == answer["client_info"]
    caller = app_validates(entra, body["access_token"], monkeypatch)
    assert (caller.kind, caller.name, caller.roles) == ("user", "bob@contoso.com", (SYNC_RUN, STATUS_READ))
    assert (caller.object_id, caller.tenant) == (client_info["uid"], client_info["utid"]) and caller.tenant == HOME_TENANT
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert (claims["aud"], claims["scp"], claims["azp"]) == (API_CLIENT_ID, "user_impersonation", SPA_CLIENT)


def test_the_id_token_is_signed_for_the_client_with_the_nonce(entra: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    body = tokens(entra, username="bob@contoso.com")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca(entra))
    keys = SigningKeys(entra.base_url, refresh_seconds=60)
    key = keys.key(HOME_TENANT, jwt.get_unverified_header(body["id_token"])["kid"])
    assert key is not None
    claims = jwt.decode(body["id_token"], key, algorithms=["RS256"], audience=SPA_CLIENT, issuer=keys.issuer(HOME_TENANT))
    assert claims["nonce"] == "nonce-456" and claims["tid"] == HOME_TENANT
    assert claims["preferred_username"] == "bob@contoso.com" and claims["name"] == "Bob"
    assert claims["oid"] == jwt.decode(body["access_token"], options={"verify_signature": False})["oid"]
    assert claims["sub"] and claims["exp"] > time.time()


def test_the_roles_left_unticked_are_not_in_the_token(entra: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    assert app_validates(entra, tokens(entra, roles=[])["access_token"], monkeypatch).roles == ()


def test_the_answer_goes_in_the_query_with_response_mode_query(entra: EntraEmulator) -> None:
    verifier, challenge = pkce()
    answer = answer_of(sign_in(entra, authorize_params(challenge, response_mode="query")), mode="query")
    assert answer["state"] == "state-123"
    assert redeem(entra, answer["code"], verifier).status_code == 200


def test_a_default_scope_gives_a_token_for_the_api(entra: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    code, verifier = code_for(entra, roles=[SYNC_RUN])
    body = redeem(entra, code, verifier, scope=f"{API_CLIENT_ID}/.default openid profile offline_access").json()
    assert app_validates(entra, body["access_token"], monkeypatch).roles == (SYNC_RUN,)


# --- refusals at the token endpoint ------------------------------------------------------------------


def test_a_wrong_code_verifier_is_aadsts501481(entra: EntraEmulator) -> None:
    code, _ = code_for(entra)
    refused(redeem(entra, code, pkce()[0]), 400, "invalid_grant", 501481)


def test_a_code_redeemed_twice_is_aadsts54005(entra: EntraEmulator) -> None:
    code, verifier = code_for(entra)
    assert redeem(entra, code, verifier).status_code == 200
    refused(redeem(entra, code, verifier), 400, "invalid_grant", 54005)


def test_a_code_older_than_five_minutes_is_aadsts70008(entra: EntraEmulator) -> None:
    code, verifier = code_for(entra)
    entra.signin.clock = lambda: time.time() + 301
    refused(redeem(entra, code, verifier), 400, "invalid_grant", 70008)


def test_a_code_redeemed_with_another_redirect_uri_is_aadsts500112(entra: EntraEmulator) -> None:
    code, verifier = code_for(entra)
    message = refused(redeem(entra, code, verifier, redirect_uri="http://localhost:9999/other"), 400, "invalid_client", 500112)
    assert f"does not match the reply address '{REDIRECT}'" in message


def test_a_code_redeemed_by_another_client_is_refused(entra: EntraEmulator) -> None:
    code, verifier = code_for(entra)
    refused(redeem(entra, code, verifier, client_id="00000000-0000-4000-8000-000000000000"), 400, "invalid_grant", 70000)


def test_an_unknown_code_is_aadsts9002313(entra: EntraEmulator) -> None:
    refused(redeem(entra, "0.Amade-up", pkce()[0]), 400, "invalid_grant", 9002313)


def test_a_code_redeemed_without_an_origin_is_aadsts9002327(entra: EntraEmulator) -> None:
    """An SPA's code may only be redeemed cross-origin, from the browser."""
    code, verifier = code_for(entra)
    refused(post_token(entra, {"grant_type": "authorization_code", "client_id": SPA_CLIENT, "code": code,
                               "code_verifier": verifier, "redirect_uri": REDIRECT, "scope": API_SCOPE}, origin=None),
            400, "invalid_request", 9002327)
    assert redeem(entra, code, verifier).status_code == 200  # the refusal did not use the code up


def test_scopes_of_two_resources_are_aadsts28000(entra: EntraEmulator) -> None:
    code, verifier = code_for(entra)
    refused(redeem(entra, code, verifier, scope=f"{API_SCOPE} https://graph.microsoft.com/User.Read"), 400, "invalid_scope", 28000)


# --- refusals at the authorize endpoint --------------------------------------------------------------


@pytest.mark.parametrize("redirect_uri", ["https://evil.example/api/console", "http://localhost.evil.example/cb",
                                          "http://127.0.0.1@evil.example/cb", "http://192.168.1.10:7071/api/console"])
def test_a_foreign_redirect_uri_is_an_error_page_aadsts50011_and_no_redirect(entra: EntraEmulator, redirect_uri: str) -> None:
    answer = authorize(entra, authorize_params(pkce()[1], redirect_uri=redirect_uri))
    assert answer.status_code == 400 and "Location" not in answer.headers
    assert "AADSTS50011: The redirect URI" in answer.text


def test_an_https_redirect_uri_is_accepted_once_configured(entra: EntraEmulator) -> None:
    uri = "https://intune-sync.example/api/console"
    assert authorize(entra, authorize_params(pkce()[1], redirect_uri=uri)).status_code == 400
    assert entra.configure({"spaRedirectUris": [uri]})["spaRedirectUris"] == [uri]
    assert authorize(entra, authorize_params(pkce()[1], redirect_uri=uri)).status_code == 200


def test_an_unknown_tenant_is_an_error_page_aadsts90002(entra: EntraEmulator) -> None:
    answer = authorize(entra, authorize_params(pkce()[1]), tenant=OTHER_TENANT)
    assert answer.status_code == 400 and "Location" not in answer.headers
    assert f"AADSTS90002: Tenant &#x27;{OTHER_TENANT}&#x27; not found." in answer.text


@pytest.mark.parametrize(("change", "error", "code"), [
    ({"code_challenge": ""}, "invalid_request", 9002325),
    ({"code_challenge_method": "plain"}, "invalid_request", 9002325),
    ({"response_type": ""}, "invalid_request", 900144),
    ({"response_type": "token"}, "unsupported_response_type", 700054),
])
def test_a_bad_request_goes_back_to_the_app_with_the_error_in_the_fragment(entra: EntraEmulator, change: dict[str, str],
                                                                           error: str, code: int) -> None:
    answer = answer_of(authorize(entra, authorize_params(pkce()[1], **change)))
    assert (answer["error"], answer["state"]) == (error, "state-123")
    assert answer["error_description"].startswith(f"AADSTS{code}: ") and "code" not in answer


def test_prompt_none_without_a_session_is_login_required(entra: EntraEmulator) -> None:
    answer = answer_of(authorize(entra, authorize_params(pkce()[1], prompt="none")))
    assert answer["error"] == "login_required" and answer["error_description"].startswith("AADSTS50058: ")


def test_prompt_none_in_a_signed_in_browser_gives_a_code_for_the_same_user_and_roles(
        entra: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    browser = requests.Session()
    answer_of(sign_in(entra, authorize_params(pkce()[1]), "bob@contoso.com", [STATUS_READ], session=browser))
    verifier, challenge = pkce()
    silent = answer_of(authorize(entra, authorize_params(challenge, prompt="none"), session=browser))
    caller = app_validates(entra, redeem(entra, silent["code"], verifier).json()["access_token"], monkeypatch)
    assert (caller.name, caller.roles) == ("bob@contoso.com", (STATUS_READ,))


# --- refresh tokens ----------------------------------------------------------------------------------


def test_a_refresh_token_gives_new_tokens_again_and_again(entra: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    refresh = tokens(entra, roles=[SYNC_RUN])["refresh_token"]
    for _ in range(2):
        answer = post_token(entra, {"grant_type": "refresh_token", "client_id": SPA_CLIENT, "refresh_token": refresh,
                                    "scope": f"{API_SCOPE} openid profile offline_access"})
        assert answer.status_code == 200, answer.text
        assert app_validates(entra, answer.json()["access_token"], monkeypatch).roles == (SYNC_RUN,)
        assert answer.json()["refresh_token"] != refresh and 0 < answer.json()["refresh_token_expires_in"] <= 24 * 3600


def test_a_refresh_token_for_another_client_is_refused(entra: EntraEmulator) -> None:
    refresh = tokens(entra)["refresh_token"]
    refused(post_token(entra, {"grant_type": "refresh_token", "client_id": "00000000-0000-4000-8000-000000000000",
                               "refresh_token": refresh, "scope": API_SCOPE}), 400, "invalid_grant", 70000)


def test_a_refresh_token_a_day_old_is_aadsts700084(entra: EntraEmulator) -> None:
    refresh = tokens(entra)["refresh_token"]
    entra.signin.clock = lambda: time.time() + 24 * 3600 + 1
    refused(post_token(entra, {"grant_type": "refresh_token", "client_id": SPA_CLIENT, "refresh_token": refresh,
                               "scope": API_SCOPE}), 400, "invalid_grant", 700084)


# --- CORS, metadata, sign-out, discovery, stats ------------------------------------------------------


@pytest.mark.parametrize("path", ["v2.0/.well-known/openid-configuration", "discovery/v2.0/keys", "oauth2/v2.0/token"])
def test_the_endpoints_an_spa_calls_allow_its_origin(entra: EntraEmulator, path: str) -> None:
    url = f"{entra.base_url}/{HOME_TENANT}/{path}"
    call = requests.post if path.endswith("token") else requests.get
    answer = call(url, headers={"Origin": ORIGIN}, verify=ca(entra), timeout=10)
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Access-Control-Allow-Origin" not in call(url, verify=ca(entra), timeout=10).headers


def test_a_preflight_is_answered_with_the_methods_and_headers_asked(entra: EntraEmulator) -> None:
    answer = requests.options(f"{entra.base_url}/{HOME_TENANT}/oauth2/v2.0/token", verify=ca(entra), timeout=10,
                              headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                       "Access-Control-Request-Headers": "content-type,x-anchormailbox"})
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert answer.headers["Access-Control-Allow-Headers"] == "content-type,x-anchormailbox"


def test_the_openid_configuration_names_what_msal_browser_reads(entra: EntraEmulator) -> None:
    base = f"{entra.base_url}/{HOME_TENANT}"
    metadata = requests.get(f"{base}/v2.0/.well-known/openid-configuration", verify=ca(entra), timeout=10).json()
    assert metadata["authorization_endpoint"] == f"{base}/oauth2/v2.0/authorize"
    assert metadata["token_endpoint"] == f"{base}/oauth2/v2.0/token"
    assert metadata["end_session_endpoint"] == f"{base}/oauth2/v2.0/logout"
    assert metadata["issuer"] == f"{base}/v2.0" and metadata["jwks_uri"] == f"{base}/discovery/v2.0/keys"
    assert {"query", "fragment"} <= set(metadata["response_modes_supported"])


def test_sign_out_goes_back_only_to_an_allowed_uri(entra: EntraEmulator) -> None:
    logout = f"{entra.base_url}/{HOME_TENANT}/oauth2/v2.0/logout"
    back = requests.get(logout, params={"post_logout_redirect_uri": REDIRECT, "state": "s1"}, verify=ca(entra),
                        allow_redirects=False, timeout=10)
    assert back.status_code == 302 and back.headers["Location"] == f"{REDIRECT}?state=s1"
    away = requests.get(logout, params={"post_logout_redirect_uri": "https://evil.example/"}, verify=ca(entra),
                        allow_redirects=False, timeout=10)
    assert away.status_code == 200 and "Location" not in away.headers and "signed out" in away.text


def test_sign_out_ends_the_browser_session(entra: EntraEmulator) -> None:
    browser = requests.Session()
    answer_of(sign_in(entra, authorize_params(pkce()[1]), session=browser))
    browser.get(f"{entra.base_url}/{HOME_TENANT}/oauth2/v2.0/logout", verify=ca(entra), timeout=10)
    assert answer_of(authorize(entra, authorize_params(pkce()[1], prompt="none"), session=browser))["error"] == "login_required"


def test_instance_discovery_answers_the_emulators_host_as_its_own_cloud(entra: EntraEmulator) -> None:
    host = urlsplit(entra.base_url).netloc
    answer = requests.get(f"{entra.base_url}/common/discovery/instance", verify=ca(entra), timeout=10,
                          params={"api-version": "1.1",
                                  "authorization_endpoint": f"{entra.base_url}/{HOME_TENANT}/oauth2/v2.0/authorize"},
                          headers={"Origin": ORIGIN})
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert answer.json() == {
        "tenant_discovery_endpoint": f"https://{host}/{HOME_TENANT}/v2.0/.well-known/openid-configuration",
        "api-version": "1.1", "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}]}


def test_stats_count_sign_ins_and_grants(entra: EntraEmulator) -> None:
    assert "signIn" not in requests.get(f"{entra.base_url}/_emulator/stats", verify=ca(entra), timeout=10).json()
    refresh = tokens(entra)["refresh_token"]
    post_token(entra, {"grant_type": "refresh_token", "client_id": SPA_CLIENT, "refresh_token": refresh, "scope": API_SCOPE})
    stats = requests.get(f"{entra.base_url}/_emulator/stats", verify=ca(entra), timeout=10).json()
    assert stats["signIn"] == {"signInPages": 1, "signIns": 1, "authorizationCodeGrants": 1, "refreshTokenGrants": 1,
                               "signOuts": 0}
    assert stats["tokenRequests"] == 2 and stats["outcomes"] == {"issued": 2}
