"""The "sync and wait" Location carries its operation's token: its host must be ours, never one a
caller chose with X-Forwarded-Host (issue #10, item 8)."""
from __future__ import annotations

import json
from urllib.parse import urlsplit

import azure.functions as func
import pytest
from conftest import FUNCTIONS, call, sync_posts

from shared.common.hosts import valid_host
from shared.common.settings import Settings, SettingsError

EVIL = {"X-Forwarded-Host": "127.0.0.1:80@evil.example", "X-Forwarded-Proto": "http"}


def location(headers: dict[str, str] | None = None) -> str:
    status, answer, body = call("POST", "sync/autopilot?wait=true", headers=headers)
    assert status == 202, body
    return answer["Location"]


def origin(url: str) -> str:
    parts = urlsplit(url)
    assert parts.path.startswith("/api/operations/") and parts.query.startswith("token=")
    return f"{parts.scheme}://{parts.netloc}"


def test_an_untrusted_forwarded_host_is_ignored(app_env, graph):
    url = location(EVIL)
    assert origin(url) == "http://localhost" and "evil" not in url  # the request's own (loopback) host


def test_an_untrusted_but_well_formed_forwarded_host_is_ignored_too(app_env, graph, monkeypatch):
    monkeypatch.setenv("WEBSITE_HOSTNAME", "func-abc.azurewebsites.net")
    url = location({"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"})
    assert origin(url) == "https://func-abc.azurewebsites.net"


def test_website_hostname_wins_over_the_evil_header(app_env, graph, monkeypatch):
    monkeypatch.setenv("WEBSITE_HOSTNAME", "func-abc.azurewebsites.net")
    assert origin(location(EVIL)) == "https://func-abc.azurewebsites.net"


def test_a_trusted_forwarded_host_is_used_with_https(app_env, graph, monkeypatch):
    monkeypatch.setenv("WEBSITE_HOSTNAME", "func-abc.azurewebsites.net")
    monkeypatch.setenv("TRUSTED_FORWARDED_HOSTS", "api.contoso.com, Sync.Contoso.com")
    # Front Door says http (its hop to the app); outside loopback the URL is https regardless.
    url = location({"X-Forwarded-Host": "sync.contoso.com", "X-Forwarded-Proto": "http"})
    assert origin(url) == "https://sync.contoso.com"


def test_a_trusted_host_with_a_port_keeps_it(app_env, graph, monkeypatch):
    monkeypatch.setenv("TRUSTED_FORWARDED_HOSTS", "sync.contoso.com")
    assert origin(location({"X-Forwarded-Host": "sync.contoso.com:8443"})) == "https://sync.contoso.com:8443"


def test_the_trusted_list_lets_in_only_its_hosts(app_env, graph, monkeypatch):
    monkeypatch.setenv("WEBSITE_HOSTNAME", "func-abc.azurewebsites.net")
    monkeypatch.setenv("TRUSTED_FORWARDED_HOSTS", "sync.contoso.com")
    url = location({"X-Forwarded-Host": "sync.contoso.com.evil.example, sync.contoso.com"})
    assert origin(url) == "https://func-abc.azurewebsites.net"


@pytest.mark.parametrize(
    "forwarded",
    [
        "user@sync.contoso.com",  # user-info
        "sync.contoso.com@evil.example",
        "user:pass@sync.contoso.com",
        "sync.contoso.com/evil",  # a path
        "sync.contoso.com\\@evil.example",
        "sync.contoso.com?x=1",
        "sync.contoso.com#frag",
        "sync.contoso.com:99999",  # port out of range
        "sync.contoso.com:80:81",
        "sync .contoso.com",
        "sync.contoso.com%2F",
        "-sync.contoso.com",
        "sync.contoso.com.",
    ],
)
def test_a_forwarded_host_with_user_info_a_path_or_odd_characters_is_refused(app_env, graph, monkeypatch, forwarded):
    monkeypatch.setenv("WEBSITE_HOSTNAME", "func-abc.azurewebsites.net")
    monkeypatch.setenv("TRUSTED_FORWARDED_HOSTS", "sync.contoso.com")
    url = location({"X-Forwarded-Host": forwarded, "X-Forwarded-Proto": "https"})
    assert origin(url) == "https://func-abc.azurewebsites.net"


def test_an_invalid_website_hostname_falls_back_to_the_requests_own_host(app_env, graph, monkeypatch):
    monkeypatch.setenv("WEBSITE_HOSTNAME", "func-abc.azurewebsites.net@evil.example")
    assert origin(location()) == "http://localhost"


def test_no_valid_host_at_all_is_refused_before_the_sync_starts(app_env, graph):
    request = func.HttpRequest("POST", "http://user@evil.example/api/sync/autopilot?wait=true", headers={},
                               params={"wait": "true"}, route_params={"target": "autopilot"}, body=b"")
    response = FUNCTIONS["sync_target"](request)
    assert response.status_code == 400 and response.mimetype == "application/json"
    assert json.loads(response.get_body())["error"]["code"] == "InvalidHost"
    assert sync_posts(graph) == []


@pytest.mark.parametrize(
    "forwarded,expected",
    [("127.0.0.1:7071", "http://127.0.0.1:7071"), ("localhost:7071", "http://localhost:7071"), ("[::1]:7071", "http://[::1]:7071")],
)
def test_loopback_keeps_http(app_env, graph, monkeypatch, forwarded, expected):
    monkeypatch.setenv("TRUSTED_FORWARDED_HOSTS", forwarded)
    assert origin(location({"X-Forwarded-Host": forwarded, "X-Forwarded-Proto": "http"})) == expected


def test_loopback_website_hostname_keeps_http(app_env, graph, monkeypatch):
    monkeypatch.setenv("WEBSITE_HOSTNAME", "localhost:7071")  # what Core Tools sets
    assert origin(location(EVIL)) == "http://localhost:7071"


def test_the_poll_answer_builds_its_location_the_same_way(app_env, graph, monkeypatch):
    monkeypatch.setenv("WEBSITE_HOSTNAME", "func-abc.azurewebsites.net")
    first = location()
    path = urlsplit(first).path.removeprefix("/api/") + "?" + urlsplit(first).query
    status, headers, _ = call("GET", path, headers=EVIL)
    assert status == 202 and headers["Location"] == first


@pytest.mark.parametrize(
    "value,ok",
    [
        ("sync.contoso.com", True), ("sync.contoso.com:443", True), ("127.0.0.1:7071", True), ("[::1]:7071", True),
        ("[2001:db8::1]", True), ("localhost", True),
        ("999.1.1.1", False), ("[not:an:ip::x]", False), ("a..b", False), ("", False), ("a" * 64 + ".com", False),
        ("sync.contoso.com:0", False), ("évil.example", False), ("sync.contoso.com\n", False),
        ("127.0.0.1:08080", False), ("0x7f.1", False), ("0X7F", False), ("sync.contoso.123", False), ("0x7f.example", True),
    ],
)
def test_the_host_check_is_strict(value, ok):
    assert valid_host(value) is ok


def test_an_invalid_trusted_forwarded_hosts_setting_is_named():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"AzureWebJobsStorage": "UseDevelopmentStorage=true",
                           "TRUSTED_FORWARDED_HOSTS": "sync.contoso.com, https://evil.example/"})
    assert "https://evil.example/" in caught.value.problems["TRUSTED_FORWARDED_HOSTS"]
