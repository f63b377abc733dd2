"""Raw requests through a real HTTP server hosting the app, as a caller would send them:
paths no client library would normalise, and a declared oversize body."""
import http.client
from urllib.parse import urlsplit

import pytest
from conftest import graph_calls


@pytest.fixture
def host(start_app_hosts, env):
    return urlsplit(start_app_hosts(1, env)[0])


def raw(host, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.getheader("Content-Type"), response.read()


@pytest.mark.parametrize(
    "path,status",
    [
        ("/api/sync/exchange/../../users", 404),  # dot segments are resolved, as the Functions host does
        ("/api/sync/exchange/%2e%2e%2f", 400),
        ("/api/sync/exchange/..%2F..%2Fusers", 400),
        ("/api/sync/exchange/%2e%2e%2f%2e%2e%2fusers", 400),
    ],
)
def test_path_like_connector_ids_get_a_json_4xx_and_no_graph_call(host, graph, path, status):
    got, content_type, body = raw(host, "POST", path)
    assert got == status and content_type == "application/json" and b'"error"' in body
    assert graph_calls(graph) == []


def test_a_declared_oversize_body_gets_413_and_no_graph_call(host, graph):
    body = b'{"syncType": "' + b"x" * 10_000 + b'"}'
    got, content_type, payload = raw(host, "POST", "/api/sync/exchange", body, {"Content-Type": "application/json"})
    assert got == 413 and b"PayloadTooLarge" in payload
    assert graph_calls(graph) == []


def test_an_unknown_route_gets_a_json_404(host, graph):
    got, content_type, _ = raw(host, "GET", "/api/users")
    assert got == 404 and content_type == "application/json"


@pytest.mark.parametrize("body", [b"[" * 1100, b'{"":[' * 600], ids=["arrays", "objects"])
def test_deeply_nested_json_gets_400_not_500(host, graph, body):
    assert len(body) < 4096  # under the size limit: the nesting alone must be refused
    got, content_type, payload = raw(host, "POST", "/api/sync/exchange", body, {"Content-Type": "application/json"})
    assert got == 400 and content_type == "application/json" and b"InvalidJson" in payload
    assert graph_calls(graph) == []
