"""Many callers, many processes, one cooldown window: exactly one Graph sync.

Four real app processes (the local Functions host serving function_app) share one Azurite
table and one Graph emulator; 25 concurrent callers hit each of them at once.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
import requests

from conftest import ROOT, sync_posts
from emulators.azurite import free_port
from shared.settings import Settings
from shared.state import Attempt, StateStore, table_client
from shared.identity import make_credential

PROCESSES = 4
CALLERS_PER_PROCESS = 25


@pytest.fixture
def app_hosts(env, identity_server):
    ports = [free_port() for _ in range(PROCESSES)]
    child_env = {**os.environ, **env, **identity_server.env()}
    hosts = [
        subprocess.Popen([sys.executable, "-m", "emulators.funchost", "--port", str(p)], cwd=ROOT, env=child_env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for p in ports
    ]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    deadline = time.monotonic() + 60
    for url, proc in zip(urls, hosts):
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if requests.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "app host did not start"
            time.sleep(0.1)
    yield urls
    for proc in hosts:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("history", ["first sync ever", "after an earlier window"])
def test_concurrent_callers_across_processes_cause_exactly_one_graph_sync(app_hosts, graph, env, history):
    settings = Settings.from_env(env)
    store = StateStore(table_client(settings.storage, settings.state_table, make_credential))
    if history == "after an earlier window":  # the row exists, so claims race on its ETag
        past = datetime.now(timezone.utc) - timedelta(hours=1)
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
