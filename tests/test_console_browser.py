"""The web console (console/, issue 24) in a real headless browser: Debian's Chromium driven by
Playwright, against the app on the local Functions host with Azurite, the Graph emulator and the
Entra emulator's sign-in page (authorization code with PKCE, through Microsoft's MSAL for the
browser). A failing test leaves a screenshot in test-artifacts/ (tests/conftest.py)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import configure, graph_calls, sync_posts
from test_devices import realistic_csv

from emulators.signing import API_CLIENT_ID
from emulators.tokens import HOME_TENANT
from shared.api.callerauth import ROLES

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Debian's Chromium (scripts/setup.sh installs it): nothing downloads a browser of its own.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def entra_app(start_app_hosts: Any, env: dict[str, str], entra_server: Any, graph: Any) -> str:
    """The app in entra mode on the local host, its Entra the emulator (HTTPS, its own CA)."""
    entra_server.reset()
    configure(graph, importProcessingSeconds=1, syncDurationSeconds=1, profileAssignmentSeconds=2)
    settings = {**env, "CALLER_AUTH": "entra", "API_CLIENT_ID": API_CLIENT_ID, "AZURE_TENANT_ID": HOME_TENANT,
                "IMPORT_POLL_SECONDS": "1", "IMPORT_SYNC_DELAY_SECONDS": "0", **entra_server.env()}
    return str(start_app_hosts(1, settings)[0])


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(ignore_https_errors=True)  # the Entra emulator's throwaway CA
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    tab.requested = []  # every URL the page or its popups asked for
    tab.tokens = []  # every token Entra's token endpoint gave
    tab.messages = []  # what the page wrote to its console (CSP violations land here)
    context.on("request", lambda r: tab.requested.append(r.url))
    context.on("response", lambda r: "/oauth2/v2.0/token" in r.url and tab.tokens.extend(tokens_in(r)))
    tab.on("console", lambda m: tab.messages.append(m.text))
    request.node.console_page = tab  # for the screenshot of a failing test (conftest.py)
    yield tab
    context.close()


def tokens_in(response: Any) -> list[str]:
    try:
        body = response.json()
    except Exception:  # a preflight or an error page
        return []
    return [body[name] for name in ("access_token", "refresh_token", "id_token") if isinstance(body.get(name), str)]


def sign_in(page: Any, app: str, roles: tuple[str, ...] = ROLES, user: str = "alice@contoso.com") -> None:
    """Open the console and sign in on the Entra emulator's page (a popup) with ``roles``."""
    page.goto(f"{app}/api/console")
    with page.expect_popup() as opened:  # MSAL signs in in a popup: the tokens stay in the page's memory
        page.get_by_role("button", name="Sign in with Microsoft").click()
    popup = opened.value
    popup.get_by_label("User name").fill(user)
    for role in ROLES:
        box = popup.get_by_label(role, exact=True)
        box.check() if role in roles else box.uncheck()
    popup.locator("#signin").click()
    page.get_by_text(f"Signed in: user:{user}").wait_for()


def unit_row(page: Any, unit: str) -> Any:
    return page.locator(f'tr[data-unit="{unit}"]')


def test_signing_in_shows_the_status_of_every_unit(page, entra_app):
    sign_in(page, entra_app)
    unit_row(page, "autopilot").wait_for()
    assert page.locator("tr[data-unit^='exchange']").count() >= 1
    assert page.get_by_role("heading", name="Status").is_visible()


def test_sync_now_makes_exactly_one_graph_post_and_shows_the_countdown(page, entra_app, graph):
    sign_in(page, entra_app)
    unit_row(page, "autopilot").get_by_role("button", name="Sync now: autopilot").click()
    unit_row(page, "autopilot").get_by_text("Started.").wait_for()
    unit_row(page, "autopilot").locator(".countdown").wait_for()
    assert len(sync_posts(graph)) == 1


def test_a_second_press_offers_schedule_and_makes_no_graph_call(page, entra_app, graph):
    sign_in(page, entra_app)
    unit_row(page, "autopilot").get_by_role("button", name="Sync now: autopilot").click()
    schedule = unit_row(page, "autopilot").get_by_role("button", name="Schedule: autopilot")
    schedule.click()
    unit_row(page, "autopilot").get_by_text("Scheduled for").wait_for()
    assert len(sync_posts(graph)) == 1


def test_a_caller_without_sync_run_sees_the_button_disabled_with_the_role_named(page, entra_app, graph):
    sign_in(page, entra_app, roles=("Status.Read",))
    button = unit_row(page, "autopilot").get_by_role("button", name="Sync now: autopilot")
    assert button.is_disabled()
    assert unit_row(page, "autopilot").get_by_text("needs the Sync.Run role").is_visible()
    assert sync_posts(graph) == []


def test_a_csv_with_one_bad_row_shows_that_row_and_sends_nothing(page, entra_app, graph, tmp_path):
    lines = realistic_csv(3).splitlines()
    serial, product, hardware_hash = lines[2].split(",")
    lines[2] = ",".join((serial, product, hardware_hash[:100]))  # the second device's hash, cut short
    csv = tmp_path / "AutopilotHWID.csv"
    csv.write_text("\r\n".join(lines) + "\r\n")
    sign_in(page, entra_app)
    page.get_by_role("link", name="Onboard").click()
    page.locator("#csv").set_input_files(str(csv))
    rows = page.get_by_role("table", name="Rows to fix")
    rows.wait_for()
    assert rows.locator("tbody tr").count() == 1 and "PF3000001" in rows.inner_text()
    assert graph_calls(graph, "POST") == []


def test_a_good_csvs_devices_reach_their_profile_on_screen(page, entra_app, graph, tmp_path):
    csv = tmp_path / "AutopilotHWID.csv"
    csv.write_bytes(b"\xff\xfe" + realistic_csv(2).encode("utf-16-le"))  # as Windows PowerShell 5.1 writes it
    sign_in(page, entra_app)
    page.get_by_role("link", name="Onboard").click()
    page.locator("#csv").set_input_files(str(csv))
    page.get_by_text("2 devices are valid.").wait_for()
    page.get_by_label("Group tag (optional: sets every device's tag)").fill("Console")
    page.get_by_role("button", name="Import 2 devices").click()
    page.locator('tr[data-state="profileAssigned"]').nth(1).wait_for(timeout=90_000)
    assert page.locator('tr[data-state="profileAssigned"]').count() == 2


def test_the_page_loads_nothing_from_outside_the_app_and_the_authority(page, entra_app, entra_server):
    sign_in(page, entra_app)
    for view in ("Onboard", "Devices", "Tenants", "Activity", "Status"):
        page.get_by_role("link", name=view).click()
        page.wait_for_load_state("networkidle")
    allowed = {urlsplit(entra_app).netloc, urlsplit(entra_server.base_url).netloc}
    assert {urlsplit(u).netloc for u in page.requested if not u.startswith("data:")} <= allowed


def test_the_console_is_sent_with_a_strict_content_security_policy(page, entra_app):
    answer = page.goto(f"{entra_app}/api/console")
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy


def test_no_token_ever_appears_in_a_url_or_in_browser_storage(page, entra_app):
    sign_in(page, entra_app)
    page.get_by_role("link", name="Activity").click()
    page.wait_for_load_state("networkidle")
    assert page.tokens, "the sign-in got no token: nothing to look for"
    assert [u for u in page.requested if any(t in u for t in page.tokens)] == []
    stored = page.evaluate("JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])")
    assert [t for t in page.tokens if t in stored] == []
    assert [m for m in page.messages if "Content Security Policy" in m] == []


FUNCTION_KEY = "console-test-key-0123456789"


@pytest.fixture
def key_app(start_app_hosts: Any, env: dict[str, str]) -> str:
    """The app in key mode on the local host, which checks the function key like Azure's host."""
    return str(start_app_hosts(1, env, function_key=FUNCTION_KEY)[0])


def test_in_key_mode_the_page_asks_for_the_key_once_per_session_and_never_puts_it_in_a_url(page, key_app):
    page.goto(f"{key_app}/api/console")
    page.get_by_label("Key").fill(FUNCTION_KEY)
    page.get_by_role("button", name="Continue").click()
    unit_row(page, "autopilot").wait_for()
    page.reload()  # the same browser session: no second ask
    unit_row(page, "autopilot").wait_for()
    assert page.get_by_label("Key").count() == 0
    assert [u for u in page.requested if FUNCTION_KEY in u] == []


def test_in_key_mode_a_wrong_key_is_refused_and_not_kept(page, key_app):
    page.goto(f"{key_app}/api/console")
    page.get_by_label("Key").fill("not-the-key")
    page.get_by_role("button", name="Continue").click()
    page.get_by_text("That key was refused.").wait_for()
    assert page.evaluate("sessionStorage.length") == 0


def test_activity_lists_a_sync_with_the_signed_in_caller_and_graphs_request_id(page, entra_app, graph):
    sign_in(page, entra_app)
    unit_row(page, "autopilot").get_by_role("button", name="Sync now: autopilot").click()
    unit_row(page, "autopilot").get_by_text("Started.").wait_for()
    page.get_by_role("link", name="Activity").click()
    row = page.get_by_role("table", name="Latest syncs, newest first (1)").locator("tbody tr")
    request_id = sync_posts(graph)[0]["requestId"]
    assert "user:alice@contoso.com" in row.inner_text() and request_id in row.inner_text()


def test_a_device_sync_from_a_csv_shows_its_counts_until_every_device_is_queued(page, start_app_hosts, env, entra_server,
                                                                             graph, tmp_path):
    entra_server.reset()
    configure(graph, managedDevices={"count": 3})
    settings = {**env, "CALLER_AUTH": "entra", "API_CLIENT_ID": API_CLIENT_ID, "AZURE_TENANT_ID": HOME_TENANT,
                "SYNC_TARGETS": "autopilot,devices", "DEVICE_SYNC_QUEUE": "d" + env["SYNC_STATE_TABLE"][1:],
                "DEVICE_SYNC_SKIP_MINUTES": "0", **entra_server.env()}
    app = str(start_app_hosts(1, settings)[0])
    csv = tmp_path / "devices.csv"
    csv.write_text("Serial Number\r\nSN000001\r\nSN000002\r\nSN000003\r\n")
    sign_in(page, app)
    page.get_by_role("link", name="Devices").click()
    page.locator("#device-kind").select_option("csv")
    page.locator("#device-csv").set_input_files(str(csv))
    page.get_by_role("button", name="Start the sync").click()
    page.get_by_text("completed").wait_for(timeout=60_000)
    assert page.locator('td[data-state="queued"]').inner_text() == "3"
    assert graph.stats()["managedDevices"]["deviceSyncs"] == 3
