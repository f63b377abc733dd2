"""Run the whole app locally on embedded defaults: Azurite, the managed-identity and Graph
emulators, and the app's HTTP API on http://127.0.0.1:7071/api — then show a first sync.

    python -m emulators.local            # serve until Ctrl+C
    python -m emulators.local --once     # show the first sync and exit (used by the tests)

The app is configured exactly as in Azure: IDENTITY_ENDPOINT / IDENTITY_HEADER for the managed
identity, AzureWebJobsStorage for state, GRAPH_BASE_URL pointing at the emulator.
"""
from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="show the first sync, then stop")
    parser.add_argument("--random-ports", action="store_true", help="pick free ports instead of 7071/8090/8091/10002")
    args = parser.parse_args(argv)
    # A plain `kill` or a CI timeout should stop Azurite too, as Ctrl+C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    ports = {name: free_port() if args.random_ports else default
             for name, default in (("app", 7071), ("graph", 8090), ("identity", 8091), ("table", 10002), ("queue", 10001), ("blob", 10000))}
    azurite = Azurite(port=ports["table"], queue_port=ports["queue"], blob_port=ports["blob"],
                      location=None if args.once else str(ROOT / ".azurite")).start()
    identity = IdentityEmulator(port=ports["identity"]).start()
    graph = GraphEmulator(port=ports["graph"]).start()
    os.environ.update(
        {
            **identity.env(),
            "GRAPH_BASE_URL": graph.base_url,
            "AzureWebJobsStorage": azurite.connection_string,
            "SYNC_TARGETS": os.environ.get("SYNC_TARGETS", "autopilot,exchange"),
        }
    )
    sys.path.insert(0, str(ROOT))
    import function_app

    host = FunctionHost(function_app.app, port=ports["app"]).start()
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
        print(f"\nServing on {api} — try the curl commands above; Ctrl+C to stop.", flush=True)
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
