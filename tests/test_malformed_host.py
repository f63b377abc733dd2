"""A request whose Host cannot be parsed gets a JSON 400, never a dropped connection (issue #19,
item 9). Sent over a raw socket to the local Functions host, so the real request path builds the
request URL from the Host header exactly as a caller's bytes give it."""
from __future__ import annotations

import json
import socket
import uuid
from urllib.parse import urlsplit

import pytest
from conftest import HARDWARE_HASH, graph_calls

GUID = str(uuid.uuid4())
DEVICES = json.dumps({"devices": [{"serialNumber": "PF3HOST1", "hardwareIdentifier": HARDWARE_HASH}]}).encode()
CSV = f"Device Serial Number,Windows Product ID,Hardware Hash\r\nPF3HOST2,,{HARDWARE_HASH}\r\n".encode()
# Every route that builds an absolute URL (a Location or a poll URL) from the request's host.
URL_ROUTES = [
    ("POST", "/api/sync/autopilot?wait=true", b"", None),
    ("POST", "/api/sync/autopilot/" + GUID + "?wait=true", b"", None),
    ("POST", "/api/autopilot/devices", DEVICES, "application/json"),
    ("POST", "/api/autopilot/devices", CSV, "text/csv"),
    ("POST", "/api/autopilot/imports", DEVICES, "application/json"),
]
# Routes whose answer may carry a Location once a token matches, and the others: a host that
# cannot be parsed is refused on them too, before anything else is looked at.
OTHER_ROUTES = [
    ("POST", "/api/sync/exchange?wait=true", b"", None),  # "name one item" quotes the request's path
    ("GET", f"/api/operations/{GUID}?token=x", b"", None),
    ("GET", f"/api/autopilot/imports/{GUID}?token=x", b"", None),
    ("POST", f"/api/tenants/{GUID}/sync/autopilot?wait=true", b"", None),
    ("GET", "/api/sync/status", b"", None),
    ("GET", "/api/health", b"", None),
]
UNPARSEABLE = ["[", "[::1", "]", "a]b", "[::1]:x", "::1", "a:b:c", "host:99999", "[::1]:99999", "localhost:abc", "127.0.0.1:-1"]
# Hosts urlsplit reads without complaint from the URL built with them, whose rest lands in that
# URL's path, query, fragment or user-info (Host: host/path gave Location: https://host/path/api/...),
# and hosts that are no host name: a Host header may only be host[:port].
NOT_HOST_PORT = ["host/path", "127.0.0.1/evil", "[::1]/x", "host:80/x", "host?x", "host#x", "user@host", "user:pw@host",
                 "host\\x", "ho st", "host\tx", "host:", ":80", "host:0", "host:+80", "host:80:80", "h\u00f4st", "-host",
                 "host..x", "HOST.", "a" * 300, "[]", "[::1]]", "host%2Fx", "host;x", "host,x",
                 "127.0.0.1:08080", "0x7f.1", "0x7f", "host.123"]  # a port with a leading 0; numbers inet_aton reads


@pytest.fixture
def app(start_app_hosts, env):
    return urlsplit(start_app_hosts(1, env)[0])


def send(app, method: str, path: str, host: str, body: bytes = b"", content_type: str | None = None) -> tuple[int, bytes, bytes]:
    """The status, headers and body of one answer to the raw bytes of a request."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    head += f"Content-Type: {content_type}\r\n" if content_type else ""
    with socket.create_connection((app.hostname, app.port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer, f"{method} {path} with Host {host!r}: the connection was closed with no answer"
    headers, _, payload = answer.partition(b"\r\n\r\n")
    return int(headers.split()[1]), headers, payload


def assert_invalid_host(app, host: str, routes: list[tuple[str, str, bytes, str | None]]) -> None:
    for method, path, body, content_type in routes:
        status, headers, payload = send(app, method, path, host, body, content_type)
        assert status == 400 and b"application/json" in headers.lower(), (method, path, host, status, payload)
        assert json.loads(payload)["error"]["code"] == "InvalidHost", (method, path, host, payload)


@pytest.mark.parametrize("host", UNPARSEABLE)
def test_an_unparseable_host_gets_a_json_400_on_every_route_and_no_graph_call(app, graph, host):
    assert_invalid_host(app, host, URL_ROUTES + OTHER_ROUTES)
    assert graph_calls(graph) == []


def test_an_empty_host_gets_a_json_400_where_an_absolute_url_is_built(app, graph):
    assert_invalid_host(app, "", URL_ROUTES)
    assert graph_calls(graph) == []


@pytest.mark.parametrize("host", NOT_HOST_PORT)
def test_a_host_header_that_is_not_host_port_gets_a_json_400_on_every_route_and_no_graph_call(app, graph, host):
    assert_invalid_host(app, host, URL_ROUTES + OTHER_ROUTES)
    assert graph_calls(graph) == []
