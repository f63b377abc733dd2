"""Many callers, many processes, one cooldown window: exactly one Graph sync.

Four real app processes (the local Functions host serving function_app) share one Azurite
table and one Graph emulator; 25 concurrent callers hit each of them at once.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import requests
from conftest import sync_posts

from shared.clients.identity import make_credential
from shared.clients.storage import table_client
from shared.common.settings import Settings
from shared.engine.state import Attempt, StateStore

PROCESSES = 4
CALLERS_PER_PROCESS = 25


@pytest.fixture
def app_hosts(start_app_hosts, env):
    return start_app_hosts(PROCESSES, env)


@pytest.mark.parametrize("history", ["first sync ever", "after an earlier window"])
def test_concurrent_callers_across_processes_cause_exactly_one_graph_sync(app_hosts, graph, env, history):
    settings = Settings.from_env(env)
    store = StateStore(table_client(settings.storage, settings.state_table, make_credential))
    if history == "after an earlier window":  # the row exists, so claims race on its ETag
        past = datetime.now(UTC) - timedelta(hours=1)
        lease = store.claim(store.read("autopilot"), past, 60, target="autopilot")
        store.commit(lease, replace(lease.state, lease_owner=None, lease_expires_at=None, next_allowed_at=past),
                     Attempt(past, past, "timer", "earlier", "started", http_status=204))
    # A slow Graph widens the window in which callers overlap the one sync in flight.
    requests.post(f"{graph.base_url}/_emulator/config", json={"latencySeconds": 0.2}, timeout=5)
    barrier = threading.Barrier(PROCESSES * CALLERS_PER_PROCESS)

    def caller(index: int) -> int:
        url = app_hosts[index % PROCESSES]
        barrier.wait()
        return requests.post(f"{url}/api/sync/autopilot", timeout=60).status_code

    with ThreadPoolExecutor(max_workers=PROCESSES * CALLERS_PER_PROCESS) as pool:
        statuses = list(pool.map(caller, range(PROCESSES * CALLERS_PER_PROCESS)))

    assert statuses.count(202) == 1, statuses
    assert set(statuses) <= {202, 409, 429}, statuses
    assert len(sync_posts(graph)) == 1
    attempts = [row for row in store.history("autopilot") if row["caller"] != "earlier"]
    assert len(attempts) == len(sync_posts(graph)) == 1
