"""The standard TLS environment (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, SSL_CERT_FILE) is honoured by
every outbound client, against real HTTPS servers signed by a throwaway CA (emulators/tls.py)."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from conftest import FAST_RETRY, call

from emulators.azurite import ACCOUNT, KEY
from emulators.graph import AUTOPILOT, GraphEmulator
from emulators.server import JsonHandler, Server
from emulators.tls import CertificateAuthority, ServerCertificate, serve_tls
from shared.clients import transport
from shared.clients.graph import GraphClient
from shared.clients.identity import make_credential
from shared.clients.notify import Notification, Notifier
from shared.clients.storage import queue_client, table_client
from shared.common import cabundle
from shared.common.errors import GraphUnavailable
from shared.common.settings import Settings, SettingsError

CA_VARIABLES = cabundle.CA_BUNDLE_VARIABLES


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def server_cert(ca: CertificateAuthority) -> ServerCertificate:
    return ca.issue(("127.0.0.1", "localhost"))


@pytest.fixture
def no_ca_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the CA variables set (this machine may set them all): certifi's bundle only."""
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def trust(no_ca_env: None, ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch):
    """trust(variable): point that one variable at the test CA."""

    def set_(variable: str = "REQUESTS_CA_BUNDLE") -> None:
        monkeypatch.setenv(variable, str(ca.cert_file))

    return set_


@pytest.fixture
def tls_graph(graph: GraphEmulator, server_cert: ServerCertificate) -> Iterator[tuple[GraphEmulator, str]]:
    """A second Graph emulator, speaking HTTPS only; yields it and its https URL."""
    server = GraphEmulator()
    url = serve_tls(server, server_cert)
    server.start()
    yield server, url
    server.stop()


def graph_client(tls_graph: tuple[GraphEmulator, str]) -> GraphClient:
    server, url = tls_graph
    # The emulator checks the token's audience against its own (http) base URL.
    return GraphClient(url, make_credential(None), f"{server.base_url}/.default", timeout=2, retry=FAST_RETRY)


class Recorder(JsonHandler):
    """Answers 202 to anything and remembers the bodies; 404 like a storage service for GETs."""

    received: list[Any]

    def dispatch(self) -> None:
        if self.command == "POST" and self.path_only == "/notify":
            type(self).received.append(self.read_json())
            self.send_json(202)
            return
        self.read_body()
        body = {"odata.error": {"code": "ResourceNotFound", "message": {"lang": "en-US", "value": "not here"}}}
        self.send_json(404, body, {"x-ms-error-code": "ResourceNotFound"})


@pytest.fixture
def tls_server(server_cert: ServerCertificate) -> Iterator[tuple[type[Recorder], str]]:
    handler = type("Handler", (Recorder,), {"received": []})
    server = Server(handler)
    url = serve_tls(server, server_cert)
    server.start()
    yield handler, url
    server.stop()


def storage_connection_string(url: str) -> str:
    return (f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={KEY};"
            f"TableEndpoint={url}/{ACCOUNT};QueueEndpoint={url}/{ACCOUNT};")


def inner_transport(client_pipeline_transport: Any) -> Any:
    transport_ = client_pipeline_transport
    while not hasattr(transport_, "connection_config"):  # tables wrap the shared transport
        transport_ = transport_._transport
    return transport_


def caused_by_untrusted_certificate(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# --- where the bundle comes from ---------------------------------------------------------------


def test_the_first_set_variable_names_the_bundle(tmp_path):
    a, b = tmp_path / "a.pem", tmp_path / "b.pem"
    a.write_text(""), b.write_text("")
    assert transport.verify({}) is True
    assert transport.verify({"SSL_CERT_FILE": str(b)}) == str(b)
    assert transport.verify({"CURL_CA_BUNDLE": str(a), "SSL_CERT_FILE": str(b)}) == str(a)
    assert transport.verify({"REQUESTS_CA_BUNDLE": str(b), "CURL_CA_BUNDLE": str(a)}) == str(b)
    assert transport.verify({"REQUESTS_CA_BUNDLE": " ", "SSL_CERT_FILE": str(b)}) == str(b)


@pytest.mark.parametrize("variable", CA_VARIABLES)
def test_a_bundle_that_does_not_exist_is_a_settings_problem_by_name(variable, tmp_path):
    env = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", variable: str(tmp_path / "missing.pem")}
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert "does not exist" in caught.value.problems[variable]
    with pytest.raises(transport.CaBundleMissing, match=variable):
        transport.verify(env)


def test_health_names_a_missing_bundle_with_503(app_env, monkeypatch, tmp_path):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    status, _, body = call("GET", "health")
    assert status == 503 and "REQUESTS_CA_BUNDLE" in body["problems"]


# --- Graph ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variable", CA_VARIABLES)
def test_graph_over_https_succeeds_when_the_bundle_holds_its_ca(tls_graph, trust, variable):
    trust(variable)
    client = graph_client(tls_graph)
    response = client.get(AUTOPILOT)
    assert response.status == 200 and response.body["syncStatus"]
    assert client._session.verify == transport.verify() and client._session.trust_env is False


def test_graph_over_https_fails_clearly_without_the_ca(tls_graph, no_ca_env):
    with pytest.raises(GraphUnavailable) as caught:
        graph_client(tls_graph).get(AUTOPILOT)
    assert "SSLError" in str(caught.value)
    assert caused_by_untrusted_certificate(caught.value)
    assert tls_graph[0].stats()["requests"] == []  # nothing got past the handshake


# --- notifications ----------------------------------------------------------------------------


def notification() -> Notification:
    from datetime import datetime

    return Notification("syncStarted", "autopilot", "started", datetime.now(UTC), "sync started")


def test_a_notification_over_https_arrives_when_the_bundle_holds_its_ca(tls_server, trust):
    trust("SSL_CERT_FILE")
    handler, url = tls_server
    notifier = Notifier((url + "/notify?sig=secret",), retries=0)
    assert [f.result(timeout=10) for f in notifier.send(notification())] == [True]
    assert handler.received[0]["event"] == "syncStarted"


def test_a_notification_to_an_untrusted_certificate_fails_with_a_clear_log(tls_server, no_ca_env, caplog):
    handler, url = tls_server
    notifier = Notifier((url + "/notify?sig=secret",), retries=2)
    with caplog.at_level(logging.WARNING, logger="shared.clients.notify"):
        assert [f.result(timeout=10) for f in notifier.send(notification())] == [False]
    assert handler.received == []
    assert "SSLError" in caplog.text and "REQUESTS_CA_BUNDLE" in caplog.text
    assert "secret" not in caplog.text  # the URL's signature never reaches the log


# --- Table and Queue Storage ------------------------------------------------------------------


def test_the_table_client_carries_the_bundle_and_reaches_an_https_endpoint(tls_server, trust, ca):
    trust()
    _, url = tls_server
    storage = Settings.from_env({"AzureWebJobsStorage": storage_connection_string(url)}).storage
    table = table_client(storage, "intunesync", make_credential)
    inner = inner_transport(table._client._client._pipeline._transport)
    assert inner.connection_config.verify == str(ca.cert_file) and inner._use_env_settings is False
    with pytest.raises(HttpResponseError) as caught:  # an HTTP answer: TLS was accepted
        table.get_entity("p", "r")
    assert caught.value.status_code == 404


def test_the_table_client_refuses_an_untrusted_certificate(tls_server, no_ca_env):
    _, url = tls_server
    storage = Settings.from_env({"AzureWebJobsStorage": storage_connection_string(url)}).storage
    table = table_client(storage, "intunesync", make_credential)
    with pytest.raises(ServiceRequestError) as caught:
        table.get_entity("p", "r")
    assert caused_by_untrusted_certificate(caught.value)


def test_the_queue_client_carries_the_bundle_and_reaches_an_https_endpoint(tls_server, trust, ca):
    trust("CURL_CA_BUNDLE")
    _, url = tls_server
    storage = Settings.from_env({"AzureWebJobsStorage": storage_connection_string(url)}).storage
    queue = queue_client(storage, "intunesync-deferred", make_credential)
    inner = inner_transport(queue._pipeline._transport)
    assert inner.connection_config.verify == str(ca.cert_file) and inner._use_env_settings is False
    with pytest.raises(HttpResponseError) as caught:
        queue.send_message("x")
    assert caught.value.status_code == 404


def test_without_a_bundle_clients_use_the_default_verification(no_ca_env):
    storage = Settings.from_env({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}).storage
    table = table_client(storage, "intunesync", make_credential)
    assert inner_transport(table._client._client._pipeline._transport).connection_config.verify is True
    queue = queue_client(storage, "intunesync-deferred", make_credential)
    assert inner_transport(queue._pipeline._transport).connection_config.verify is True


def test_the_tls_helpers_issue_a_certificate_for_the_hosts_asked(ca):
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(ca.issue(("127.0.0.1", "token.test"), name="other").cert_file).read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["token.test"]
    assert cert.issuer == ca.cert.subject
