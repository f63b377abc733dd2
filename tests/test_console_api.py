"""The web console's side of the app (issue 24, docs/console.md), against Azurite and the emulators:
its files (only from console/, with the Content-Security-Policy and an ETag), its sign-in settings,
who the caller is (GET /api/me), the history (GET /api/sync/history) and the CSV check before an
import (POST /api/autopilot/devices/validate), and the groupTag every device of an import gets."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
import pytest
from conftest import FUNCTIONS, HARDWARE_HASH, HTTP_ROUTES, ROOT, call, graph_calls, unreachable_storage
from test_callers import bearer, entra_env, token  # noqa: F401  (entra_env: a fixture, used by name)
from test_tenants import TENANTS, mt_env, register  # noqa: F401  (mt_env: a fixture, used by name)

from emulators.signing import API_CLIENT_ID
from emulators.tokens import HOME_TENANT
from shared.api import console
from shared.api.callerauth import DEVICES_IMPORT, ROLES, STATUS_READ, SYNC_RUN
from shared.runtime import process as runtime

CONNECTOR = "6a1c2f8e-2b1d-4d7e-9a55-3c1f0e6b9d01"  # a connected Exchange connector of the Graph emulator
OTHER_TENANT = "5c1e0a7d-9b3f-4e2a-8d6c-1f0e9a8b7c6d"
SECURITY = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
KEY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
              "frame-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def fetch(route: str, method: str = "GET", headers: dict[str, str] | None = None) -> func.HttpResponse:
    """A console route called as the host calls it (route values decoded), whatever it answers."""
    path, _, query = route.partition("?")
    name, match = next((r.name, m) for r in HTTP_ROUTES if (m := r.pattern.match(path.strip("/"))))
    request = func.HttpRequest(method, f"http://localhost/api/{route}", headers=headers or {}, params=dict(parse_qsl(query)),
                               route_params={key: unquote(value) for key, value in match.groupdict().items()}, body=b"")
    return FUNCTIONS[name](request)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A console folder of the test's own (the real one is the page's), served instead of console/."""
    root = tmp_path / "console"
    (root / "vendor").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>test</title>")
    (root / "app.js").write_text("export const x = 1;\n")
    (root / "vendor" / "lib.min.js").write_text("var lib;\n")
    (root / ".secret.js").write_text("a dot-file\n")
    (root / "notes.md").write_text("not an allowed extension\n")
    (tmp_path / "outside.js").write_text("outside the folder\n")
    (root / "linked.js").symlink_to(tmp_path / "outside.js")
    monkeypatch.setattr(console, "FILES", console.Files(root))
    yield root


def csv(*rows: tuple[str, str | None]) -> str:
    """A Get-WindowsAutopilotInfo CSV with a Group Tag column: (serial, tag) per device."""
    lines = ["Device Serial Number,Windows Product ID,Hardware Hash,Group Tag"]
    lines += [f"{serial},,{HARDWARE_HASH},{tag or ''}" for serial, tag in rows]
    return "\r\n".join(lines) + "\r\n"


def stored_entities(env: dict[str, str]) -> list[dict[str, Any]]:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.data.tables import TableClient

    table = TableClient.from_connection_string(env["AzureWebJobsStorage"], env["SYNC_STATE_TABLE"])
    try:
        return list(table.list_entities())
    except ResourceNotFoundError:
        return []


# --- the files --------------------------------------------------------------------------------------


def test_the_index_is_served_with_the_content_security_policy_and_the_security_headers(app_env):
    for route in ("console", "console/"):
        answer = fetch(route)
        assert answer.status_code == 200 and answer.get_body() == (ROOT / "console" / "index.html").read_bytes()
        assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
        assert answer.headers["Content-Security-Policy"] == KEY_POLICY
        assert {name: answer.headers[name] for name in SECURITY} == SECURITY and answer.headers["ETag"]


def test_a_script_is_served_as_javascript_from_a_sub_folder(app_env, folder):
    answer = fetch("console/vendor/lib.min.js")
    assert answer.status_code == 200 and answer.get_body() == b"var lib;\n"
    assert answer.headers["Content-Type"] == "text/javascript; charset=utf-8"


@pytest.mark.parametrize("path", ["nosuch.js", "../function_app.py", "%2e%2e/function_app.py", "..%2ffunction_app.py",
                                  "%2e%2e%5cfunction_app.py", "..%5c..%5cfunction_app.py", "%252e%252e/function_app.py",
                                  "vendor/../../function_app.py", "/etc/passwd", "%2fetc%2fpasswd", "C:%5cWindows%5cwin.ini",
                                  # outside.js exists beside the folder, with an allowed extension: only the path check stops it
                                  "../outside.js", "%2e%2e/outside.js", "vendor/../../outside.js", "..%5coutside.js",
                                  "vendor/..%2f..%2foutside.js", "%252e%252e%252foutside.js"])
def test_an_unknown_file_or_a_path_out_of_the_folder_is_404_in_json(app_env, folder, path):
    answer = fetch(f"console/{path}")
    assert b"outside the folder" not in answer.get_body()
    assert answer.status_code == 404 and answer.mimetype == "application/json"
    assert json.loads(answer.get_body())["error"]["code"] == "NotFound"
    assert answer.headers["Content-Security-Policy"] == KEY_POLICY


def test_a_dot_file_is_404(app_env, folder):
    assert fetch("console/.secret.js").status_code == 404


def test_a_file_of_an_extension_not_allowed_is_404(app_env, folder):
    assert fetch("console/notes.md").status_code == 404


def test_a_link_to_a_file_outside_the_folder_is_404(app_env, folder):
    assert fetch("console/linked.js").status_code == 404 and fetch("console/app.js").status_code == 200


def test_the_files_are_read_once_per_process(app_env, folder):
    assert fetch("console/app.js").get_body() == b"export const x = 1;\n"
    (folder / "app.js").write_text("changed on disk\n")
    assert fetch("console/app.js").get_body() == b"export const x = 1;\n"


def test_a_known_etag_is_answered_304_without_a_body(app_env, folder):
    etag = fetch("console/app.js").headers["ETag"]
    for given in (etag, f"W/{etag}", f'"other", {etag}'):
        answer = fetch("console/app.js", headers={"If-None-Match": given})
        assert answer.status_code == 304 and answer.get_body() == b"" and answer.headers["ETag"] == etag
        assert answer.headers["Content-Security-Policy"] == KEY_POLICY
    assert fetch("console/app.js", headers={"If-None-Match": '"other"'}).status_code == 200


def test_head_answers_the_headers_without_the_body(app_env, folder):
    answer = fetch("console/app.js", "HEAD")
    assert answer.status_code == 200 and answer.get_body() == b"" and answer.headers["ETag"] == fetch("console/app.js").headers["ETag"]


def test_another_method_is_405_in_json_with_the_security_headers(app_env, folder):
    answer = fetch("console/app.js", "POST")
    assert answer.status_code == 405 and answer.headers["Allow"] == "GET, HEAD"
    assert answer.headers["Content-Security-Policy"] == KEY_POLICY


def test_the_console_routes_read_no_state_and_call_no_graph(app_env, graph, folder):
    for route in ("console", "console/app.js", "console/nosuch.js", "console/config.json"):
        fetch(route)
    assert graph_calls(graph) == [] and stored_entities(app_env) == []


# --- signing in -------------------------------------------------------------------------------------


@pytest.fixture
def entra_settings(app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    settings = {"CALLER_AUTH": "entra", "API_CLIENT_ID": API_CLIENT_ID, "AZURE_TENANT_ID": HOME_TENANT,
                "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com"}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    runtime.reload()
    yield {**app_env, **settings}
    runtime.reload()


def test_in_key_mode_the_config_names_the_mode_and_the_roles_only(app_env):
    code, headers, body = call("GET", "console/config.json")
    assert code == 200 and body == {"mode": "key", "roles": list(ROLES)}
    assert headers["Content-Security-Policy"] == KEY_POLICY and headers["ETag"]


def test_in_entra_mode_the_config_is_what_msal_needs(entra_settings):
    code, _, body = call("GET", "console/config.json")
    assert code == 200 and body == {
        "mode": "entra", "clientId": API_CLIENT_ID, "tenantId": HOME_TENANT,
        "authority": f"https://login.microsoftonline.com/{HOME_TENANT}", "knownAuthorities": ["login.microsoftonline.com"],
        "scopes": [f"api://{API_CLIENT_ID}/user_impersonation"], "roles": list(ROLES)}


def test_with_other_caller_tenants_the_authority_is_organizations(entra_settings, monkeypatch):
    monkeypatch.setenv("CALLER_TENANTS", OTHER_TENANT)
    runtime.reload()
    assert call("GET", "console/config.json")[2]["authority"] == "https://login.microsoftonline.com/organizations"


def test_in_entra_mode_the_policy_lets_the_page_reach_the_authority_and_nothing_else(entra_settings):
    policy = fetch("console").headers["Content-Security-Policy"]
    assert "connect-src 'self' https://login.microsoftonline.com;" in policy
    assert "frame-src 'none';" in policy
    assert policy.replace(" https://login.microsoftonline.com", "") == KEY_POLICY


# --- who is calling ---------------------------------------------------------------------------------


def test_in_key_mode_me_is_the_key_with_every_role(app_env):
    code, _, body = call("GET", "me")
    assert code == 200 and body == {"caller": "key", "kind": "key", "roles": list(ROLES)}


@pytest.mark.usefixtures("entra_env")
def test_in_entra_mode_me_is_the_tokens_user_with_the_tokens_roles(entra_server):
    code, _, body = call("GET", "me", None, bearer(token(entra_server, roles=[STATUS_READ, SYNC_RUN])))
    assert code == 200 and body["kind"] == "user" and body["roles"] == [STATUS_READ, SYNC_RUN]
    assert body["caller"].startswith("user:alice@contoso.com (object ")


@pytest.mark.usefixtures("entra_env")
def test_me_needs_no_role_but_a_token(entra_server):
    assert call("GET", "me", None, bearer(token(entra_server, roles=[])))[2]["roles"] == []
    code, _, body = call("GET", "me")
    assert code == 401 and body["error"]["code"] == "TokenMissing"


# --- the history ------------------------------------------------------------------------------------


def two_syncs() -> tuple[dict[str, Any], dict[str, Any]]:
    """An Autopilot sync, then an Exchange connector's, each by a key holder saying who it is."""
    first = call("POST", "sync/autopilot", None, {"x-ms-client-principal-name": "ann@contoso.com"})
    second = call("POST", f"sync/exchange/{CONNECTOR}", None, {"x-ms-client-principal-name": "bob@contoso.com"})
    assert (first[0], second[0]) == (202, 202), (first, second)
    return first[2], second[2]


def test_the_history_is_newest_first_with_the_caller_and_graphs_request_id(app_env, graph):
    autopilot, exchange = two_syncs()
    code, _, body = call("GET", "sync/history")
    assert code == 200 and body["top"] == 50
    rows = body["history"]
    assert [(r["target"], r["itemId"], r["unit"]) for r in rows] == [
        ("exchange", CONNECTOR, f"exchange/{CONNECTOR}"), ("autopilot", None, "autopilot")]
    assert [r["graphRequestId"] for r in rows] == [exchange["graphRequestId"], autopilot["graphRequestId"]]
    assert all(r["graphRequestId"] for r in rows)
    assert [(r["caller"], r["claimedCaller"]) for r in rows] == [("key", "user:bob@contoso.com"), ("key", "user:ann@contoso.com")]
    newest = rows[0]
    assert (newest["outcome"], newest["trigger"], newest["httpStatus"], newest["message"]) == ("started", "http", 204, None)
    assert newest["attemptAt"].endswith("Z") and newest["finishedAt"].endswith("Z") and newest["nextAllowedAt"].endswith("Z")


def test_top_limits_the_history_to_the_newest_rows(app_env, graph):
    two_syncs()
    assert [r["target"] for r in call("GET", "sync/history?top=1")[2]["history"]] == ["exchange"]
    assert len(call("GET", "sync/history?top=200")[2]["history"]) == 2


@pytest.mark.parametrize("top", ["0", "201", "-1", "1.5", "abc", "1e2", "\u0661"])
def test_a_bad_top_is_400(app_env, graph, top):
    code, _, body = call("GET", f"sync/history?top={top}")
    assert code == 400 and body["error"]["code"] == "InvalidQuery" and "1 to 200" in body["error"]["message"]


def test_an_empty_table_has_an_empty_history(app_env):
    assert call("GET", "sync/history")[:3:2] == (200, {"top": 50, "history": []})


def test_the_history_with_table_storage_down_is_503(app_env, monkeypatch):
    monkeypatch.setenv("AzureWebJobsStorage", unreachable_storage())
    runtime.reload()
    code, _, body = call("GET", "sync/history")
    assert code == 503 and body["error"]["code"] == "StateStoreUnavailable"


@pytest.mark.usefixtures("entra_env")
def test_in_entra_mode_the_history_needs_status_read(entra_server, graph):
    code, _, body = call("GET", "sync/history", None, bearer(token(entra_server, roles=[SYNC_RUN])))
    assert code == 403 and body["error"]["code"] == "MissingRole" and STATUS_READ in body["error"]["message"]
    assert call("GET", "sync/history", None, bearer(token(entra_server, roles=[STATUS_READ])))[0] == 200


@pytest.mark.usefixtures("mt_env")
def test_a_registered_tenants_history_is_its_own(graph):
    tenant = TENANTS[5]
    register(tenant)
    assert call("POST", f"tenants/{tenant}/sync/autopilot")[0] == 202
    code, _, body = call("GET", f"tenants/{tenant}/sync/history?top=10")
    assert code == 200 and body["tenantId"] == tenant and body["top"] == 10
    assert [(r["target"], r["outcome"]) for r in body["history"]] == [("autopilot", "started")]
    assert call("GET", "sync/history")[2]["history"] == []  # not the home tenant's


# --- checking a CSV before an import ----------------------------------------------------------------


def post_csv(route: str, text: str) -> tuple[int, dict[str, str], Any]:
    return call("POST", route, text, {"Content-Type": "text/csv"})


def test_a_good_csv_is_answered_with_its_rows_and_nothing_is_stored_or_sent(app_env, graph):
    code, _, body = post_csv("autopilot/devices/validate", csv(("SN0001", "Sales"), ("SN0002", None)))
    assert code == 200 and body == {"count": 2, "devices": [{"row": 1, "serialNumber": "SN0001", "groupTag": "Sales"},
                                                              {"row": 2, "serialNumber": "SN0002", "groupTag": None}]}
    assert graph_calls(graph) == [] and stored_entities(app_env) == []


def test_a_bad_row_is_the_imports_own_400_naming_it_and_nothing_is_sent(app_env, graph):
    text = csv(("SN0001", "Sales"), ("SN 0002!", "no spaces"))
    checked = post_csv("autopilot/devices/validate", text)
    imported = post_csv("autopilot/devices", text)
    assert checked[0] == imported[0] == 400 and checked[2] == imported[2]
    assert [(r["row"], r["field"]) for r in checked[2]["error"]["rows"]] == [(2, "serialNumber"), (2, "groupTag")]
    assert graph_calls(graph) == [] and stored_entities(app_env) == []


@pytest.mark.usefixtures("entra_env")
def test_the_check_needs_devices_import_in_entra_mode(entra_server, graph):
    text = csv(("SN0001", None))
    refused = call("POST", "autopilot/devices/validate", text, {"Content-Type": "text/csv"} | bearer(token(entra_server, roles=[STATUS_READ])))
    allowed = call("POST", "autopilot/devices/validate", text, {"Content-Type": "text/csv"} | bearer(token(entra_server, roles=[DEVICES_IMPORT])))
    assert (refused[0], allowed[0]) == (403, 200)


def test_group_tag_gives_every_device_of_the_check_that_tag(app_env, graph):
    code, _, body = post_csv("autopilot/devices/validate?groupTag=Kiosk", csv(("SN0001", "Sales"), ("SN0002", "bad tag!")))
    assert code == 200 and [d["groupTag"] for d in body["devices"]] == ["Kiosk", "Kiosk"]


def test_group_tag_is_applied_to_the_started_import(app_env, graph):
    code, _, started = post_csv("autopilot/imports?groupTag=Kiosk", csv(("SN0001", "Sales"), ("SN0002", None)))
    assert code == 201, started
    status_url = urlsplit(started["statusUrl"])
    polled = call("GET", f"{status_url.path.removeprefix('/api/')}?{status_url.query}")[2]
    assert [d["groupTag"] for d in polled["devices"]] == ["Kiosk", "Kiosk"]


@pytest.mark.parametrize("route", ["autopilot/devices", "autopilot/imports", "autopilot/devices/validate"])
def test_a_bad_group_tag_is_400_naming_it_and_nothing_starts(app_env, graph, route):
    code, _, body = post_csv(f"{route}?groupTag=no%20spaces", csv(("SN0001", None)))
    assert code == 400 and body["error"]["code"] == "InvalidQuery" and "'no spaces'" in body["error"]["message"]
    assert graph_calls(graph) == [] and stored_entities(app_env) == []


# --- the console's sign-in in the API's app registration ---------------------------------------------


def test_the_api_registration_takes_the_consoles_redirect_uri_from_the_app_host_name():
    from pycep import BicepParser

    module = BicepParser().parse(file_path=ROOT / "infra" / "app" / "callerapi.bicep")
    assert module["variables"]["consoleRedirectUri"]["value"] == "https://${appHostName}/api/console"
    assert module["resources"]["callerApi"]["config"]["spa"] == {"redirectUris": "redirectUris"}
    assert "consoleRedirectUri" in json.dumps(module["variables"]["redirectUris"])  # first, then CONSOLE_REDIRECT_URIS
    main = BicepParser().parse(file_path=ROOT / "infra" / "main.bicep")
    assert main["modules"]["callerApi"]["config"]["config"]["params"]["appHostName"] == "functionAppHostName"
    assert main["variables"]["functionAppHostName"]["value"] == "${functionAppName}.azurewebsites.net"
