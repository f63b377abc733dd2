"""No credential of a URL in a log record, a history row or an HTTP answer (shared/common/redact.py).

A URL's user-info (``https://user:password@host``) and its query (a signature) are credentials.
Through the real servers: a notification sink that fails, Table Storage where nothing listens,
and the health and sync routes; the redaction itself is tested as the pure function it is.
"""
from __future__ import annotations

import json
import logging
import sys

import pytest
from conftest import NotificationSink, call, one

from emulators.azurite import ACCOUNT, KEY, free_port
from shared.common import telemetry
from shared.common.errors import StateStoreUnavailable
from shared.common.model import Outcome, SyncRequest
from shared.common.redact import redact_text, redact_url
from shared.common.settings import Settings, SettingsError

AUTOPILOT = SyncRequest("autopilot", caller="test")
PASSWORD, SIGNATURE = "hunter2-pass", "secret-signature"


def with_credentials(url: str, user: str = "alice", password: str = PASSWORD) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest}"


# --- through the real servers -------------------------------------------------------------------


def test_a_failing_notification_url_leaves_no_signature_in_log_or_history(make_service, sink: NotificationSink, caplog):
    caplog.set_level(logging.INFO)
    sink.fail_first = 100  # every attempt answered 503
    service = make_service(NOTIFY_URL=sink.url)  # http://127.0.0.1:<port>/notify?sig=secret-signature (a password is refused)
    assert one(service.sync(AUTOPILOT)).outcome is Outcome.STARTED
    service.notifier.flush(timeout=30)
    assert sink.attempts >= 1
    failed = [r.getMessage() for r in caplog.records if "notification to" in r.getMessage()]
    assert failed and f"{sink.server.base_url}/notify failed" in failed[0]  # still says which endpoint
    history = json.dumps(service.store.history("autopilot"), default=str)
    for text in (caplog.text, history):
        assert PASSWORD not in text and SIGNATURE not in text


def test_storage_unreachable_at_a_url_with_credentials_answers_and_logs_without_them(app_env, graph, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    endpoint = f"http://tables:{PASSWORD}@127.0.0.1:{free_port()}/{ACCOUNT}"
    monkeypatch.setenv("AzureWebJobsStorage", f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                                              f"TableEndpoint={endpoint};")
    status, _, body = call("POST", "sync/autopilot")
    assert status == 503 and body["errorCode"] == "StateStoreUnavailable"
    assert "127.0.0.1" in body["message"] and PASSWORD not in json.dumps(body)
    assert PASSWORD not in caplog.text


def test_health_names_the_state_store_without_its_credentials(app_env, monkeypatch):
    endpoint = f"http://tables:{PASSWORD}@127.0.0.1:{free_port()}/{ACCOUNT}"
    monkeypatch.setenv("AzureWebJobsStorage", f"AccountName={ACCOUNT};AccountKey={KEY};TableEndpoint={endpoint};")
    status, _, body = call("GET", "health")
    assert status == 200 and body["stateStore"] == redact_url(endpoint) and PASSWORD not in json.dumps(body)


@pytest.mark.parametrize("url", [f"https://bob:{PASSWORD}@graph.example.com/v1.0?sig={SIGNATURE}",
                                 f"ftp://bob:{PASSWORD}@graph.example.com?sig={SIGNATURE}"])
def test_a_bad_graph_base_url_is_named_without_its_credentials(app_env, monkeypatch, url):
    monkeypatch.setenv("GRAPH_BASE_URL", url)
    status, _, body = call("GET", "health")
    assert status == 503 and "graph.example.com" in body["problems"]["GRAPH_BASE_URL"]
    assert PASSWORD not in json.dumps(body) and SIGNATURE not in json.dumps(body)


def test_a_graph_base_url_with_a_password_is_refused_rather_than_shown(app_env, monkeypatch):
    monkeypatch.setenv("GRAPH_BASE_URL", f"https://bob:{PASSWORD}@graph.microsoft.com")
    status, _, body = call("GET", "health")
    assert status == 503 and "user name or password" in body["problems"]["GRAPH_BASE_URL"]
    assert PASSWORD not in json.dumps(body)


def test_a_bad_notify_url_is_named_without_its_password_or_signature(app_env, monkeypatch):
    monkeypatch.setenv("NOTIFY_URL", f"https://ok.example.com/hook,http://carol:{PASSWORD}@example.com/hook?sig={SIGNATURE}")
    status, _, body = call("GET", "health")
    assert status == 503 and "http://example.com/hook" in body["problems"]["NOTIFY_URL"]
    assert PASSWORD not in json.dumps(body) and SIGNATURE not in json.dumps(body)


# Passwords that no URL parser reads as user-info (a "/", "?" or "#" ends the authority), and URLs
# that are not scheme://host[:port]: every one refused, and named without its secret.
SPLIT_PASSWORDS = ["hunter/2-pass", "hunter#2-pass", "hunter?2-pass", "hunter/2?x#y@2-pass", "hunter 2-pass"]
SECRET_PARTS = ("hunter", "2-pass")
BAD_URLS = [
    *[f"{scheme}://admin:{password}@hooks.example.com/x?sig={SIGNATURE}"
      for scheme in ("https", "http") for password in SPLIT_PASSWORDS],
    f"https://admin:{PASSWORD}@hooks.example.com/x",
    f"https://{PASSWORD}@hooks.example.com/x",  # a user name alone is user-info too
    "https://hooks.example.com:44x3/x", "https://hooks.example.com:/x", "https://hooks.example.com:99999/x",
]


def _no_secret(text: str) -> bool:
    return all(part not in text for part in (*SECRET_PARTS, SIGNATURE))


@pytest.mark.parametrize("setting", ["NOTIFY_URL", "GRAPH_BASE_URL"])
@pytest.mark.parametrize("url", BAD_URLS)
def test_a_url_setting_with_user_info_or_a_port_not_in_digits_is_refused_and_named_without_its_secret(
        app_env, graph, monkeypatch, caplog, setting, url):
    from shared.runtime import process as runtime

    caplog.set_level(logging.INFO)
    monkeypatch.setenv(setting, url.removesuffix(f"/x?sig={SIGNATURE}").removesuffix("/x") if setting == "GRAPH_BASE_URL" else url)
    runtime.reload()  # a new process: its settings problems are logged at start
    status, _, health = call("GET", "health")
    assert status == 503 and setting in health["problems"]
    status, _, answer = call("POST", "sync/autopilot")
    assert status == 503 and answer["error"]["code"] == "SettingsInvalid"
    for text in (json.dumps(health), json.dumps(answer), caplog.text):
        assert _no_secret(text), text


@pytest.mark.parametrize("password", [p for p in SPLIT_PASSWORDS if " " not in p] + ["hunter@2-pass"])
@pytest.mark.parametrize("template", ["{url}", "POST {url} failed", 'sent to "{url}"', "({url})", "a {url}, b"])
def test_user_info_in_text_is_dropped_even_where_the_password_holds_what_ends_an_authority(password, template):
    url = f"https://admin:{password}@hooks.example.com:8443/x;sig={SIGNATURE}?sig={SIGNATURE}#{SIGNATURE}"
    shown = redact_text(template.format(url=url))
    assert _no_secret(shown) and "hooks.example.com:8443/x" in shown, shown


@pytest.mark.parametrize("password", [*SPLIT_PASSWORDS, "hunter@2-pass", "hunter'2-pass", 'hunter"2-pass', "hunter\\2-pass"])
def test_one_urls_user_info_runs_to_its_last_at_whatever_the_password_holds(password):
    shown = redact_url(f"https://admin:{password}@hooks.example.com:8443/x;sig={SIGNATURE}?sig={SIGNATURE}#{SIGNATURE}")
    assert _no_secret(shown) and shown.endswith("hooks.example.com:8443/x") and redact_text(shown) == shown, shown


def test_an_at_after_the_host_drops_the_text_before_it_and_marks_that():
    assert redact_url("https://host.example/users/a@b.example/x?sig=1") == "https://***@b.example/x"
    assert redact_url("https://host.example/p?mail=a@b.example") == "https://***@b.example"


def test_a_path_parameter_is_dropped_with_the_rest_of_the_path():
    assert redact_url(f"https://h.example/hook;sig={SIGNATURE}/more") == "https://h.example/hook"
    assert redact_text(f"TableEndpoint=https://a.example/;AccountKey=ab/{SIGNATURE}==;") == "TableEndpoint=https://a.example/"


def test_sync_routes_answer_a_settings_problem_without_a_urls_credentials(app_env, graph, monkeypatch, caplog):
    from shared.runtime import process as runtime

    monkeypatch.setenv("GRAPH_BASE_URL", f"https://bob:{PASSWORD}@graph.example.com/v1.0?sig={SIGNATURE}")
    runtime.reload()  # a new process: its settings problems are logged at start
    status, _, body = call("POST", "sync/autopilot")
    assert status == 503 and body["error"]["code"] == "SettingsInvalid"
    for text in (json.dumps(body), caplog.text):
        assert PASSWORD not in text and SIGNATURE not in text


# --- the one function, and where it is applied ----------------------------------------------------


@pytest.mark.parametrize("url, shown", [
    (f"https://user:{PASSWORD}@host.example:8443/a/b?sig={SIGNATURE}#frag", "https://host.example:8443/a/b"),
    (f"http://{PASSWORD}@127.0.0.1/notify", "http://127.0.0.1/notify"),
    ("https://graph.microsoft.com", "https://graph.microsoft.com"),
    (f"/api/operations/1?token={SIGNATURE}", "/api/operations/1"),
])
def test_a_url_keeps_scheme_host_port_and_path_only(url, shown):
    assert redact_url(url) == shown


def test_every_url_in_free_text_loses_user_info_and_query():
    text = (f"POST https://u:{PASSWORD}@a.example/x?sig={SIGNATURE} failed; HTTPSConnectionPool(host='a.example', "
            f"port=443): Max retries exceeded with url: /x?sig={SIGNATURE} (Caused by ...)")
    assert redact_text(text) == ("POST https://a.example/x failed; HTTPSConnectionPool(host='a.example', "
                                 "port=443): Max retries exceeded with url: /x (Caused by ...)")


def test_a_url_inside_json_text_keeps_the_json_valid():
    text = json.dumps({"message": f'sent to "https://u:{PASSWORD}@a.example/x?sig={SIGNATURE}"'})
    assert json.loads(redact_text(text)) == {"message": 'sent to "https://a.example/x"'}


def test_the_telemetry_scrubber_strips_the_user_info_of_a_url_in_free_text():
    record = telemetry.fields_of("sync", message=f"posting to https://flow:{PASSWORD}@prod.logic.example/hook")
    assert PASSWORD not in json.dumps(record) and "prod.logic.example/hook" in record["message"]


def test_an_app_error_never_carries_a_urls_credentials():
    error = StateStoreUnavailable(f"unavailable: https://u:{PASSWORD}@t.example/acct?sv=1&sig={SIGNATURE}")
    assert PASSWORD not in error.message + str(error) and SIGNATURE not in error.message + str(error)


def test_a_settings_problem_naming_a_storage_uri_shows_it_without_credentials():
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"AzureWebJobsStorage__tableServiceUri": f"http://u:{PASSWORD}@t.example/?sig={SIGNATURE}"})
    problem = raised.value.problems["AzureWebJobsStorage__tableServiceUri"]
    assert "http://t.example/" in problem and PASSWORD not in str(raised.value) and SIGNATURE not in problem


@pytest.mark.parametrize("logger", ["shared.anything", "urllib3.connectionpool", "azure.core.pipeline"])
def test_a_plain_log_record_of_the_app_or_its_http_libraries_is_redacted(caplog, logger):
    caplog.set_level(logging.INFO)
    logging.getLogger(logger).warning("calling %s", f"https://u:{PASSWORD}@h.example/p?sig={SIGNATURE}")
    assert caplog.records[-1].getMessage() == "calling https://h.example/p"


def test_a_logged_exception_is_redacted_in_its_traceback_too(caplog):
    caplog.set_level(logging.INFO)
    try:
        raise ValueError(f"bad https://u:{PASSWORD}@h.example/p?sig={SIGNATURE}")
    except ValueError:
        logging.getLogger("shared.engine.pipeline").exception("failed")
    assert "Traceback" in caplog.text and "https://h.example/p" in caplog.text
    assert PASSWORD not in caplog.text and SIGNATURE not in caplog.text
    assert sys.exc_info()[0] is None
