"""Apple credentials' expiry (shared/engine/credentials.py, expirywatch.py): the APNs certificate
and the ADE and VPP tokens rated in the status document, and told once per threshold (30, 14, 7,
1 days, expiry) by the daily check, across app processes and restarts; against Azurite, the Graph
emulator's credentials and a real notification endpoint."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import ROOT, call, configure, graph_calls, logged_events

from shared.engine.credentials import (
    ADE,
    APNS,
    VPP,
    Credential,
    CredentialsRead,
    CredentialsReport,
    assess,
    threshold_reached,
)
from shared.runtime import handlers
from shared.runtime import process as runtime

NOW = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
WORKER = ROOT / "tests" / "credentialworker.py"


def cert(days: float | None, kind: str = APNS) -> Credential:
    return Credential(kind, "c1", "com.apple.mgmt.External.x", "mdm@contoso.com",
                      None if days is None else NOW + timedelta(days=days))


# --- the decisions, pure ------------------------------------------------------------------------------


@pytest.mark.parametrize(("days", "state", "rating"), [
    (60, "valid", "healthy"), (10, "expiring", "warning"), (5, "expiringSoon", "unhealthy"), (7, "expiringSoon", "unhealthy"),
    (-3, "inGracePeriod", "unhealthy"), (-31, "expired", "unhealthy")])
def test_an_apns_certificate_is_rated_by_its_days_left(days, state, rating):
    assessed = assess(cert(days), NOW, warning_days=30)
    assert (assessed.state, assessed.rating) == (state, rating)


def test_an_expired_token_has_no_grace_period():
    assert assess(cert(-3, VPP), NOW, 30).state == "expired"


def test_a_certificate_in_its_grace_period_says_how_many_days_are_left_to_renew():
    assert "within 27 day(s)" in assess(cert(-3), NOW, 30).reason


def test_a_credential_without_an_expiry_date_is_a_warning():
    assert assess(cert(None), NOW, 30).rating == "warning"


@pytest.mark.parametrize(("left", "told", "tell"), [
    (40, None, None), (29.5, None, 30), (10, None, 14), (10, 14, None), (13.9, 30, 14), (6.9, 14, 7), (0.5, 7, 1),
    (-1, 1, 0), (-2, 0, None), (20, 7, None)])
def test_the_threshold_told_is_the_lowest_reached_and_only_once(left, told, tell):
    assert threshold_reached(left, told) == tell


def test_a_tenant_without_apple_management_is_not_configured_not_an_error():
    report = CredentialsReport.of(CredentialsRead((), (APNS, ADE, VPP)), NOW, 30)
    assert report.state == "notConfigured" and report.to_json()["nextExpiry"] is None


# --- the status document ------------------------------------------------------------------------------


def apns_rating(status: dict) -> tuple[str, str]:
    [apns] = [c for c in status["credentials"]["credentials"] if c["kind"] == APNS]
    return apns["state"], apns["rating"]


@pytest.mark.parametrize(("days", "expected"), [(10, ("expiring", "warning")), (5, ("expiringSoon", "unhealthy")),
                                                (-2, ("inGracePeriod", "unhealthy"))])
def test_status_rates_the_apns_certificate(app_env, graph, days, expected):
    configure(graph, applePushCertificate={"expiresInDays": days})
    code, _, status = call("GET", "sync/status")
    assert code == 200 and apns_rating(status) == expected
    if expected[1] == "unhealthy":
        assert status["health"] == "unhealthy"


def test_status_says_not_configured_for_a_tenant_without_apple_management(app_env, graph):
    configure(graph, applePushCertificate=None, depOnboardingSettings=[], vppTokens=[])
    code, _, status = call("GET", "sync/status")
    assert code == 200
    assert status["credentials"] == {"state": "notConfigured", "credentials": [], "notConfigured": [APNS, ADE, VPP],
                                     "unavailable": [], "nextExpiry": None}


def test_a_credentials_read_graph_refuses_is_unavailable_and_the_others_are_read(app_env, graph):
    from conftest import faults

    faults(graph, {"method": "GET", "pathContains": "applePushNotificationCertificate", "status": 403, "times": 10})
    code, _, status = call("GET", "sync/status")
    assert code == 200
    credentials = status["credentials"]
    assert [u["kind"] for u in credentials["unavailable"]] == [APNS]
    assert {c["kind"] for c in credentials["credentials"]} == {ADE, VPP}


# --- the daily check: told once per threshold ---------------------------------------------------------


def run_workers(env: dict[str, str], days: float, count: int) -> list[dict]:
    """``count`` app processes checking at the same moment, their clocks ``days`` ahead."""
    start = time.time() + 4
    procs = [subprocess.Popen([sys.executable, str(WORKER), "--days", str(days), "--start", str(start)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(count)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def graph_clock(graph, days: float) -> None:
    """Graph's clock (its Date header) ``days`` after the emulator's start."""
    import requests

    requests.post(f"{graph.base_url}/_emulator/clock", json={"advanceSeconds": days * 86400 - graph.offset},
                  timeout=5).raise_for_status()


def told(sink) -> list[tuple[str, int]]:
    with sink.lock:
        return [(n["event"], n["credential"]["threshold"]) for n in sink.received]


def test_crossing_14_and_7_days_tells_once_each_across_two_processes_and_a_restart(env, graph, sink):
    import os

    configure(graph, applePushCertificate={"expiresInDays": 20}, depOnboardingSettings=[], vppTokens=[])
    worker_env = {**os.environ, **env, "NOTIFY_URL": sink.url}

    def days_pass(days: float, count: int) -> None:  # the app's clocks and Graph's, moved together
        graph_clock(graph, days)
        run_workers(worker_env, days=days, count=count)

    days_pass(0, 1)  # 20 days left: 30 is reached
    assert told(sink) == [("credentialExpiring", 30)]
    days_pass(6.5, 2)  # 13.5 days left, two instances at once
    assert told(sink)[1:] == [("credentialExpiring", 14)]
    days_pass(7, 1)  # a restart, half a day later: nothing crossed
    assert told(sink)[2:] == []
    days_pass(13.5, 2)  # 6.5 days left
    assert told(sink)[2:] == [("credentialExpiring", 7)]
    [notice] = sink.received[2:]
    assert notice["credential"]["appleId"] == "mdm-admin@contoso.com" and "identity.apple.com" in notice["message"]


def test_days_left_are_counted_on_graphs_clock_when_the_apps_is_days_off(env, graph, sink):
    import os

    configure(graph, applePushCertificate={"expiresInDays": 20}, depOnboardingSettings=[], vppTokens=[])
    run_workers({**os.environ, **env, "NOTIFY_URL": sink.url}, days=25, count=1)  # our clock 25 days ahead
    assert told(sink) == [("credentialExpiring", 30)]  # not "expired": Graph's Date says 20 days are left


def test_a_renewed_credential_is_told_afresh(app_env, graph, sink, monkeypatch):
    monkeypatch.setenv("NOTIFY_URL", sink.url)
    runtime.reload()
    configure(graph, applePushCertificate={"expiresInDays": 5}, depOnboardingSettings=[], vppTokens=[])
    handlers.run_credential_check()
    handlers.run_credential_check()
    configure(graph, applePushCertificate={"expiresInDays": 365})  # renewed: a year again, nothing to tell
    handlers.run_credential_check()
    configure(graph, applePushCertificate={"expiresInDays": 3})  # the new one, close to its end
    handlers.run_credential_check()
    assert told(sink) == [("credentialExpiring", 7), ("credentialExpiring", 7)]


def test_a_daily_check_records_each_credential_and_each_kind_not_set_up(app_env, graph, caplog):
    caplog.set_level("INFO")
    configure(graph, applePushCertificate=None)
    handlers.run_credential_check()
    records = logged_events(caplog, "expiry")
    assert {(r["target"], r["outcome"]) for r in records} >= {(APNS, "notConfigured"), (ADE, "valid"), (ADE, "expired"),
                                                               (VPP, "expiring"), (VPP, "expired")}
    assert all(isinstance(r["daysLeft"], float) for r in records if r["outcome"] != "notConfigured")
    assert len(graph_calls(graph, "GET")) == 3


def test_an_expired_credential_is_told_as_expired(app_env, graph, sink, monkeypatch):
    monkeypatch.setenv("NOTIFY_URL", sink.url)
    runtime.reload()
    configure(graph, applePushCertificate={"expiresInDays": -1}, depOnboardingSettings=[], vppTokens=[])
    handlers.run_credential_check()
    assert told(sink) == [("credentialExpired", 0)]
    assert sink.received[0]["outcome"] == "inGracePeriod"


# --- every tenant, once a day -------------------------------------------------------------------------

MI_CLIENT_ID = "3b8f0c2e-6d4a-4f1b-9e7c-2a5d8f1e0c93"


def drain_concurrently(env: dict[str, str], workers: int = 8) -> int:
    """The tenant queue delivered as the host does, several messages at once, until it is empty."""
    from concurrent.futures import ThreadPoolExecutor

    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    queue = QueueClient.from_connection_string(env["AzureWebJobsStorage"], env["TENANT_QUEUE"],
                                               message_decode_policy=TextBase64DecodePolicy())
    done = 0

    def deliver(message) -> None:
        handlers.run_tenant(message.content)
        queue.delete_message(message)

    with ThreadPoolExecutor(workers) as pool:
        while True:
            batch = list(queue.receive_messages(messages_per_page=32, visibility_timeout=300, max_messages=32))
            if not batch:
                return done
            list(pool.map(deliver, batch))
            done += len(batch)


def test_a_thousand_tenants_are_checked_in_one_days_run_with_three_reads_each_and_no_429(
        app_env, graph, entra_server, identity_server, monkeypatch):
    import uuid

    from emulators.entra import DEFAULT_CLIENT_ID
    from shared.tenancy import Tenant

    tenants = [str(uuid.UUID(int=0x5A000000_0000_4000_8000_000000000000 + n)) for n in range(1000)]
    entra_server.reset()
    entra_server.configure({"clientId": DEFAULT_CLIENT_ID, "federatedSubject": identity_server.principal_id(MI_CLIENT_ID),
                            "tenants": {t: {"consented": True} for t in tenants}})
    settings = {"MULTI_TENANT_CLIENT_ID": DEFAULT_CLIENT_ID, "AZURE_CLIENT_ID": MI_CLIENT_ID,
                "TENANT_QUEUE": "n" + app_env["SYNC_STATE_TABLE"][1:], **entra_server.env()}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    runtime.reload()
    customers = runtime.tenancy()
    now = datetime.now(UTC)
    for tenant in tenants:
        customers.registry.put(Tenant(tenant, f"Customer {tenant[-4:]}"), now)
    configure(graph, tenant=tenants[7], applePushCertificate={"expiresInDays": 3})
    configure(graph, appRequestLimit={"limit": 2000, "windowSeconds": 1})  # Graph's per-app limit, all tenants
    handlers.run_credential_check()
    assert drain_concurrently({**app_env, **settings}) == 1000 + 2  # a message per tenant, two pages of 500
    stats = graph.stats()
    assert stats["throttled"] == 0 and stats["appRequestLimit"]["accepted"] >= 3000
    reads: dict[str, int] = {}
    for request in graph_calls(graph, "GET"):
        reads[request["tenant"]] = reads.get(request["tenant"], 0) + 1
    assert {reads.get(t) for t in tenants} == {3}
    checked = [customers.registry.get(t) for t in tenants]
    assert all(t is not None and t.credentials_checked_at is not None for t in checked)
    assert checked[7].credentials_state == "unhealthy" and checked[7].next_expiry_kind == APNS
    runtime.reload()


# --- the emulator's certificate -----------------------------------------------------------------------


def test_the_emulator_serves_the_certificate_to_the_read_role_and_refuses_it_a_write(graph):
    import requests

    from emulators.tokens import issue

    token, _ = issue(graph.base_url, ["DeviceManagementServiceConfig.Read.All"], 600, None)
    headers = {"Authorization": f"Bearer {token}"}
    cert = requests.get(f"{graph.base_url}/v1.0/deviceManagement/applePushNotificationCertificate", headers=headers, timeout=10)
    assert cert.status_code == 200 and cert.json()["appleIdentifier"] and cert.json()["expirationDateTime"]
    assert requests.post(f"{graph.base_url}/beta/deviceManagement/windowsAutopilotSettings/sync", headers=headers,
                         timeout=10).status_code == 403
    configure(graph, applePushCertificate=None)
    gone = requests.get(f"{graph.base_url}/v1.0/deviceManagement/applePushNotificationCertificate", headers=headers, timeout=10)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "ResourceNotFound"


def test_the_adaptive_card_names_the_credential_its_apple_id_date_and_where_to_renew():
    from shared.engine.expirywatch import notification

    card = notification(assess(cert(6), NOW, 30), 7, NOW, "8f3c2a1e-5b7d-4e6f-9a0b-1c2d3e4f5a6b").to_adaptive_card("app")
    content = card["attachments"][0]["content"]
    facts = {f["title"]: f["value"] for f in content["body"][2]["facts"]}
    assert content["body"][0]["text"] == "Apple credential expiring" and content["body"][0]["color"] == "Attention"
    assert facts["Apple ID"] == "mdm@contoso.com" and facts["Expires"] == "2026-12-13T06:00:00Z"
    assert "identity.apple.com" in facts["Renew at"] and facts["Days left"] == "6.0"


def test_a_credential_notification_fits_the_flow_trigger_schema_the_docs_give():
    import re

    import jsonschema

    from shared.engine.expirywatch import notification

    text = (ROOT / "docs" / "power-automate.md").read_text()
    schema = json.loads(re.search(r"\*Request Body JSON Schema\*, paste:\s*```json\n(.*?)```", text, re.S).group(1))
    body = notification(assess(cert(6), NOW, 30), 7, NOW, None).to_json("intune-sync")
    jsonschema.validate(body, schema)
    assert body["credential"]["threshold"] == 7


# --- faults -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["lose", "busy"])  # the write landed: its answer lost, or a 503 the client retries
def test_a_claim_whose_answer_was_lost_still_tells_exactly_once(env, azurite, graph, sink, monkeypatch, fault):
    from emulators.faultproxy import FaultProxy, ProxyFault

    proxy = FaultProxy(azurite.table_endpoint).start()
    try:
        account, key = "devstoreaccount1", "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
        storage = (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
                   f"TableEndpoint={proxy.base_url}/{account};QueueEndpoint=http://127.0.0.1:{azurite.queue_port}/{account};")
        for name, value in {**env, "AzureWebJobsStorage": storage, "NOTIFY_URL": sink.url}.items():
            monkeypatch.setenv(name, value)
        runtime.reload()
        configure(graph, applePushCertificate={"expiresInDays": 5}, depOnboardingSettings=[], vppTokens=[])
        runtime.service().store.states()  # the table exists: the claim is the first write of the row
        proxy.faults.append(ProxyFault(fault, method="POST", path_contains=env["SYNC_STATE_TABLE"], times=1))
        handlers.run_credential_check()
        handlers.run_credential_check()
        assert told(sink) == [("credentialExpiring", 7)]
    finally:
        proxy.stop()
        runtime.reload()


def test_a_notification_that_was_not_delivered_is_sent_again_by_a_later_check(make_service, clock, graph, sink):
    from conftest import advance

    svc = make_service(NOTIFY_URL=sink.url)
    configure(graph, applePushCertificate={"expiresInDays": 5}, depOnboardingSettings=[], vppTokens=[])
    sink.fail_first = 100  # every attempt of the first check (and its retries) refused
    svc.check_credentials()
    assert sink.received == []
    sink.fail_first = 0
    svc.check_credentials()  # within the hour: the first check may still be sending
    assert sink.received == []
    advance(clock, graph, 2 * 3600)
    svc.check_credentials()
    svc.flush()
    assert told(sink) == [("credentialExpiring", 7)]
    svc.check_credentials()  # delivered now: never again
    svc.flush()
    assert len(sink.received) == 1


def test_one_read_that_failed_makes_the_tenant_unavailable_not_healthy():
    from shared.engine.credentials import Credential as C

    read = CredentialsRead((C(ADE, "t", "n", None, NOW + timedelta(days=200)),), (), ((APNS, "GraphUnavailable: timed out"),))
    assert CredentialsReport.of(read, NOW, 30).state == "unavailable"


@pytest.mark.parametrize("body", [{"value": "x"}, {"value": [{"tokenName": "no id"}]}, {"value": ["x"]}, {}])
def test_a_token_list_of_the_wrong_shape_is_unreadable(body):
    from shared.engine.credentials import Unreadable, _page_items

    with pytest.raises(Unreadable):
        _page_items(body)


def test_graphs_placeholder_date_is_no_date_and_an_empty_certificate_is_not_configured():
    from shared.engine.credentials import _apns, _date

    assert _date("0001-01-01T00:00:00Z") is None
    assert _apns({"expirationDateTime": "0001-01-01T00:00:00Z", "appleIdentifier": None}) is None


def test_an_expiry_date_given_with_other_precision_is_the_same_credential(make_service, clock, graph, sink):
    svc = make_service(NOTIFY_URL=sink.url)
    configure(graph, applePushCertificate={"expiresInDays": 5}, depOnboardingSettings=[], vppTokens=[])
    svc.check_credentials()
    configure(graph, applePushCertificate={"expiresInDays": 5 + 30 / 86400})  # 30 s later: the same certificate
    svc.check_credentials()
    svc.flush()
    assert told(sink) == [("credentialExpiring", 7)]
