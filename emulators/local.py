"""Run the whole app locally on embedded defaults: Azurite, the managed-identity and Graph
emulators, and the app's HTTP API on http://127.0.0.1:7071/api — then show a first sync.

    python -m emulators.local            # serve until Ctrl+C
    python -m emulators.local --once     # show the first sync and exit (used by the tests)

The app is configured exactly as in Azure: IDENTITY_ENDPOINT / IDENTITY_HEADER for the managed
identity, AzureWebJobsStorage for state, GRAPH_BASE_URL pointing at the emulator. While it serves,
it prints a line per invocation (HTTP call, timer tick, queue message) and per telemetry event
(emulators/console.py); the timers run on their schedules, the sync timer every 5 minutes unless
SYNC_SCHEDULE says otherwise. ``POST /admin/reset`` (local only) forgets every cooldown.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import requests

from .azurite import Azurite, free_port
from .funchost import FunctionHost
from .graph import GraphEmulator
from .identity import IdentityEmulator

ROOT = Path(__file__).resolve().parent.parent


def show(title: str, response: requests.Response) -> None:
    print(f"\n$ {title}\nHTTP {response.status_code}")
    if response.headers.get("Retry-After"):
        print(f"Retry-After: {response.headers['Retry-After']}")
    print(json.dumps(response.json(), indent=2))


LOCAL_SYNC_SCHEDULE = "0 */5 * * * *"  # so that a local run shows a timer tick (and its deferred sync) soon


def reset(graph: GraphEmulator) -> dict[str, object]:
    """Local only: forget every cooldown, lease, pending sync and import job, and Graph's own
    windows, so that the next sync is granted (the README's curl examples)."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.data.tables import TableClient
    from azure.storage.queue import QueueClient

    from shared import runtime
    from shared.settings import Settings

    settings = Settings.from_env(dict(os.environ))
    connection = os.environ["AzureWebJobsStorage"]
    table = TableClient.from_connection_string(connection, settings.state_table)
    rows = 0
    try:
        for entity in table.list_entities(select=["PartitionKey", "RowKey"]):
            table.delete_entity(entity["PartitionKey"], entity["RowKey"])
            rows += 1
    except ResourceNotFoundError:
        pass
    for name in (settings.queue_name, settings.import_queue, settings.tenant_queue):
        try:
            QueueClient.from_connection_string(connection, name).clear_messages()
        except ResourceNotFoundError:
            pass
    requests.post(f"{graph.base_url}/_emulator/reset", timeout=5).raise_for_status()
    runtime.reload()  # the service remembers refusals in memory: a new one forgets them
    return {"reset": True, "rowsDeleted": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="show the first sync, then stop")
    parser.add_argument("--random-ports", action="store_true", help="pick free ports instead of 7071, 8090, 8091 and 10000-10002")
    parser.add_argument("--state", default=str(ROOT / ".azurite"), help="where Azurite keeps its data (default .azurite/)")
    args = parser.parse_args(argv)
    # A plain `kill` or a CI timeout should stop Azurite too, as Ctrl+C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    ports = {name: free_port() if args.random_ports else default
             for name, default in (("app", 7071), ("graph", 8090), ("identity", 8091), ("table", 10002), ("queue", 10001), ("blob", 10000))}
    azurite = Azurite(port=ports["table"], queue_port=ports["queue"], blob_port=ports["blob"],
                      location=None if args.once else args.state).start()
    identity = IdentityEmulator(port=ports["identity"]).start()
    graph = GraphEmulator(port=ports["graph"]).start()
    os.environ.update(
        {
            **identity.env(),
            "GRAPH_BASE_URL": graph.base_url,
            "AzureWebJobsStorage": azurite.connection_string,
            "SYNC_TARGETS": os.environ.get("SYNC_TARGETS", "autopilot,exchange"),
            "SYNC_SCHEDULE": os.environ.get("SYNC_SCHEDULE", LOCAL_SYNC_SCHEDULE),
        }
    )
    sys.path.insert(0, str(ROOT))
    from shared.telemetry import LOGGER

    from .console import EventPrinter

    events = logging.getLogger(LOGGER)
    events.setLevel(logging.INFO)
    events.addHandler(EventPrinter())
    events.propagate = False  # printed once, by EventPrinter
    import function_app

    host = FunctionHost(function_app.app, port=ports["app"], run_timers=not args.once, console=True,
                        admin={"reset": lambda: reset(graph)}).start()
    api = f"{host.base_url}/api"
    print(f"Azurite tables   {azurite.table_endpoint}")
    print(f"Identity emulator {identity.endpoint}")
    print(f"Graph emulator   {graph.base_url}")
    print(f"App API          {api}")
    try:
        show(f"curl -X POST {api}/sync/autopilot", requests.post(f"{api}/sync/autopilot", timeout=30))
        show(f"curl -X POST {api}/sync/autopilot   # again, inside the cooldown",
             requests.post(f"{api}/sync/autopilot", timeout=30))
        show(f"curl {api}/sync/status", requests.get(f"{api}/sync/status", timeout=30))
        if args.once:
            return 0
        print(f"\n$ curl -X POST {host.base_url}/admin/reset && curl -X POST {api}/sync/autopilot"
              "   # local only: forget every cooldown; the next sync is granted (202)")
        print(f"\nServing on {api}, the sync timer at {os.environ['SYNC_SCHEDULE']!r}, the watcher at "
              f"{os.environ.get('SYNC_WATCH_SCHEDULE', '0 */2 * * * *')!r}; one line per invocation below. "
              "Ctrl+C to stop.\n", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        host.stop()
        graph.stop()
        identity.stop()
        azurite.close() if args.once else azurite.stop()


if __name__ == "__main__":
    raise SystemExit(main())
