"""Graph client: tokens, request ids, retries for faults only, and errors that name the cause."""
import time
import uuid

import pytest
import requests
from conftest import FAST_RETRY, faults, graph_calls, wait_until

from emulators.azurite import free_port
from emulators.graph import AUTOPILOT
from shared.clients.budget import INTUNE, Limits, LocalBudget
from shared.clients.graph import PERMISSION, GraphClient, RetryPolicy
from shared.clients.identity import make_credential
from shared.common.errors import GraphAccessDenied, GraphUnavailable, TokenUnavailable

SYNC = AUTOPILOT + "/sync"


class CountingCredential:
    """The app's credential, counting how many times the client asks it for a token."""

    def __init__(self):
        self.credential, self.token_requests = make_credential(None), 0

    def get_token(self, *scopes, **kwargs):
        self.token_requests += 1
        return self.credential.get_token(*scopes, **kwargs)


@pytest.fixture
def client(graph):
    return GraphClient(graph.base_url, make_credential(None), f"{graph.base_url}/.default", timeout=1, retry=FAST_RETRY)


def test_token_is_fetched_once_for_many_calls(graph, identity_server):
    credential = CountingCredential()
    client = GraphClient(graph.base_url, credential, f"{graph.base_url}/.default", timeout=1, retry=FAST_RETRY)
    for _ in range(5):
        assert client.get(AUTOPILOT).status == 200
    assert identity_server.token_requests == 1
    assert credential.token_requests == 1


def test_every_request_carries_a_new_client_request_id(client, graph):
    responses = [client.get(AUTOPILOT) for _ in range(3)]
    ids = [r.client_request_id for r in responses]
    assert len(set(ids)) == 3 and all(uuid.UUID(i) for i in ids)
    assert [c["clientRequestId"] for c in graph_calls(graph)] == ids


def test_graph_request_id_is_captured(client):
    response = client.get(AUTOPILOT)
    assert uuid.UUID(response.request_id)


def test_503_then_204_succeeds_after_one_retry(client, graph):
    faults(graph, {"method": "POST", "pathContains": "/sync", "status": 503, "times": 1})
    response = client.post(SYNC)
    assert response.status == 204
    assert [c["status"] for c in graph_calls(graph, "POST")] == [503, 204]


def test_sync_post_is_never_retried_on_429(client, graph):
    assert client.post(SYNC).status == 204
    requests.post(f"{graph.base_url}/_emulator/clock", json={"advanceSeconds": 60}, timeout=5)  # sync done
    response = client.post(SYNC)
    assert response.status == 429
    assert [c["status"] for c in graph_calls(graph, "POST")] == [204, 429]


def test_sync_post_is_never_retried_on_409(client, graph):
    faults(graph, {"method": "POST", "pathContains": "/sync", "status": 409, "times": 5})
    assert client.post(SYNC).status == 409
    assert len(graph_calls(graph, "POST")) == 1


def test_a_429_on_a_read_is_retried_honouring_retry_after(graph):
    patient = GraphClient(graph.base_url, make_credential(None), f"{graph.base_url}/.default",
                          retry=RetryPolicy(retries=3, backoff_factor=0.01, backoff_max=5))
    faults(graph, {"method": "GET", "pathContains": "windowsAutopilotSettings", "status": 429, "times": 1, "retryAfter": 1})
    started = time.monotonic()
    assert patient.get(AUTOPILOT).status == 200
    assert time.monotonic() - started >= 1.0
    assert [c["status"] for c in graph_calls(graph, "GET")] == [429, 200]


def test_a_long_retry_after_on_a_read_is_capped(client, graph):
    faults(graph, {"method": "GET", "pathContains": "windowsAutopilotSettings", "status": 429, "times": 1, "retryAfter": 600})
    started = time.monotonic()
    assert client.get(AUTOPILOT).status == 200
    assert time.monotonic() - started < FAST_RETRY.backoff_max + 2


def test_persistent_5xx_gives_up_after_bounded_retries(client, graph):
    faults(graph, {"pathContains": "/sync", "status": 502, "times": 10})
    response = client.post(SYNC)
    assert response.status == 502
    assert len(graph_calls(graph, "POST")) == 1 + FAST_RETRY.retries
    with pytest.raises(GraphUnavailable):
        response.raise_for_status("the sync")


def test_read_timeouts_are_retried_then_reported_as_graph_unavailable(client, graph):
    faults(graph, {"method": "GET", "pathContains": "windowsAutopilotSettings", "delaySeconds": 1.5, "times": 10})
    with pytest.raises(GraphUnavailable, match="timed out"):
        client.get(AUTOPILOT)
    # the emulator records a slow answer when it has sent it; nothing more is sent after the error
    wait_until(lambda: len(graph_calls(graph, "GET")) >= 1 + FAST_RETRY.retries, what="the slow answers")
    assert len(graph_calls(graph, "GET")) == 1 + FAST_RETRY.retries


def test_a_sync_post_that_times_out_is_not_sent_again(client, graph):
    # Graph may have started the sync before the answer was lost; a second POST could start another.
    faults(graph, {"method": "POST", "pathContains": "/sync", "delaySeconds": 1.5, "times": 10})
    with pytest.raises(GraphUnavailable, match="timed out"):
        client.post(SYNC)
    time.sleep(1.6)
    assert len(graph_calls(graph, "POST")) == 1


def test_a_sync_post_that_timed_out_is_reported_as_maybe_sent(client, graph):
    faults(graph, {"method": "POST", "pathContains": "/sync", "delaySeconds": 1.5, "times": 1})
    with pytest.raises(GraphUnavailable) as raised:
        client.post(SYNC)
    assert raised.value.maybe_sent is True


def test_a_sync_post_to_a_host_that_refuses_connections_is_provably_not_sent(graph, identity_server):
    dead = GraphClient(f"http://127.0.0.1:{free_port()}", make_credential(None), f"{graph.base_url}/.default", retry=FAST_RETRY)
    with pytest.raises(GraphUnavailable) as raised:
        dead.post(SYNC)
    assert raised.value.maybe_sent is False


def test_under_a_deadline_no_retry_starts_that_could_not_end_before_it(client, graph):
    faults(graph, {"method": "POST", "pathContains": "/sync", "status": 503, "delaySeconds": 0.8, "times": 10})
    started = time.monotonic()
    response = client.post(SYNC, deadline=started + 2.5)  # an attempt may take 2 s (1 s connect + 1 s read)
    assert response.status == 503 and time.monotonic() - started < 2.5
    assert len(graph_calls(graph, "POST")) == 1  # a second attempt could have ended past the deadline


def test_without_a_deadline_the_same_faults_are_retried(client, graph):
    faults(graph, {"method": "POST", "pathContains": "/sync", "status": 503, "delaySeconds": 0.1, "times": 10})
    assert client.post(SYNC).status == 503
    assert len(graph_calls(graph, "POST")) == 1 + FAST_RETRY.retries


def test_a_401_with_no_time_left_for_a_new_token_and_a_resend_stands(client, graph, identity_server):
    from shared.clients.graph import TOKEN_WORST_CASE_SECONDS

    assert client.get(AUTOPILOT).status == 200
    requests.post(f"{graph.base_url}/_emulator/config", json={"revokeTokens": True}, timeout=5)
    response = client.post(SYNC, deadline=time.monotonic() + TOKEN_WORST_CASE_SECONDS)
    assert response.status == 401 and identity_server.token_requests == 1
    assert [c["status"] for c in graph_calls(graph, "POST")] == [401]  # provably nothing started


def test_a_401_with_time_left_gets_a_new_token_and_is_resent(client, graph, identity_server):
    from shared.clients.graph import TOKEN_WORST_CASE_SECONDS

    assert client.get(AUTOPILOT).status == 200
    requests.post(f"{graph.base_url}/_emulator/config", json={"revokeTokens": True}, timeout=5)
    assert client.post(SYNC, deadline=time.monotonic() + TOKEN_WORST_CASE_SECONDS + 10).status == 204
    assert [c["status"] for c in graph_calls(graph, "POST")] == [401, 204]


def test_a_token_request_to_a_hanging_identity_endpoint_ends_in_bounded_time(graph, identity_server):
    from shared.clients.graph import TOKEN_WORST_CASE_SECONDS

    identity_server.configure(hangSeconds=12, hangTimes=2)  # longer than the 10 s read timeout, twice
    fresh = GraphClient(graph.base_url, make_credential(None), f"{graph.base_url}/.default", retry=FAST_RETRY)
    started = time.monotonic()
    with pytest.raises(TokenUnavailable):
        fresh.ensure_token()
    assert time.monotonic() - started <= TOKEN_WORST_CASE_SECONDS


def test_a_sync_post_is_retried_when_the_connection_fails(graph, identity_server):
    dead = GraphClient(f"http://127.0.0.1:{free_port()}", make_credential(None), f"{graph.base_url}/.default", retry=FAST_RETRY)
    with pytest.raises(GraphUnavailable, match="could not be reached"):
        dead.post(SYNC)


def test_a_revoked_token_is_refreshed_once_and_the_call_succeeds(client, graph, identity_server):
    assert client.get(AUTOPILOT).status == 200
    requests.post(f"{graph.base_url}/_emulator/config", json={"revokeTokens": True}, timeout=5)
    assert client.get(AUTOPILOT).status == 200
    assert identity_server.token_requests == 2


def test_a_401_that_persists_refreshes_only_once(graph, identity_server):
    # A token for another audience is refused however often it is refreshed.
    credential = CountingCredential()
    wrong = GraphClient(graph.base_url, credential, "https://graph.microsoft.com/.default", retry=FAST_RETRY)
    response = wrong.get(AUTOPILOT)
    assert response.status == 401
    assert [c["status"] for c in graph_calls(graph)] == [401, 401]
    assert credential.token_requests == 2
    with pytest.raises(GraphAccessDenied):
        response.raise_for_status("reading settings")


def test_403_names_the_permission_and_the_intune_licence(client, graph, identity_server):
    identity_server.configure(roles=[])
    with pytest.raises(GraphAccessDenied) as caught:
        client.post(SYNC).raise_for_status("the autopilot sync")
    assert PERMISSION in caught.value.message and "Intune licence" in caught.value.message
    assert caught.value.graph_code == "Forbidden" and caught.value.request_id


def test_token_endpoint_failure_is_token_unavailable(client, identity_server):
    identity_server.configure(failing=True)
    with pytest.raises(TokenUnavailable, match="identity endpoint"):
        client.get(AUTOPILOT)


def test_a_path_with_caller_pieces_is_refused_before_any_call(client, graph):
    for path in ("/v1.0/deviceManagement/exchangeConnectors/../../users", "/v1.0/users?$top=1", "/beta/x%2fy"):
        with pytest.raises(ValueError):
            client.post(path)
    assert graph_calls(graph) == []


def test_the_write_budget_holds_writes_to_the_window():
    budget = LocalBudget(Limits(intune=4, window=0.5))  # 3 granted per window: the margin keeps one back
    started = time.monotonic()
    for _ in range(7):
        budget.acquire(INTUNE)
    assert 0.95 <= time.monotonic() - started < 1.5  # 3 now, 3 after 0.5 s, 1 after 1 s


def test_reads_do_not_count_against_the_write_limit(graph):
    limited = GraphClient(graph.base_url, make_credential(None), f"{graph.base_url}/.default", retry=FAST_RETRY,
                          budget=LocalBudget(Limits(intune=1, window=60)))
    started = time.monotonic()
    for _ in range(5):
        limited.get(AUTOPILOT)
    limited.post(SYNC)
    assert time.monotonic() - started < 5
