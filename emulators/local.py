"""Run the whole app locally on embedded defaults: Azurite, the managed-identity and Graph
emulators, and the app's HTTP API on http://127.0.0.1:7071/api — then show a first sync.

    python -m emulators.local                  # serve until Ctrl+C
    python -m emulators.local --once           # show the first sync and exit (used by the tests)
    python -m emulators.local --multi-tenant   # also the Entra token emulator: the MSP guide's tenant routes
    python -m emulators.local --entra          # callers sign in with Entra ID (CALLER_AUTH=entra, docs/security.md)

The app is configured exactly as in Azure: IDENTITY_ENDPOINT / IDENTITY_HEADER for the managed
identity, AzureWebJobsStorage for state, GRAPH_BASE_URL pointing at the emulator. While it serves,
it prints a line per invocation (HTTP call, timer tick, queue message) and per telemetry event
(emulators/console.py); the timers run on their schedules, the sync timer every 5 minutes unless
SYNC_SCHEDULE says otherwise. ``POST /admin/reset`` (local only) forgets every cooldown.

The run holds a lock on its state folder (``--state``, ``.lock`` with its pid) for as long as it
lives, so that two runs never share one Azurite's data; anything it started is stopped when it
ends, however it ends (a port taken, a failed start, Ctrl+C, SIGTERM).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

import requests

from .azurite import Azurite, PortInUse
from .entra import DEFAULT_CLIENT_ID, EntraEmulator, start_entra
from .funchost import FunctionHost
from .graph import DEFAULT_CONNECTORS, GraphEmulator, default_items, default_managed_google_play
from .identity import IdentityEmulator
from .signing import API_CLIENT_ID, API_ROLES
from .tokens import HOME_TENANT

ROOT = Path(__file__).resolve().parent.parent


def show(title: str, response: requests.Response) -> None:
    print(f"\n$ {title}\nHTTP {response.status_code}")
    if response.headers.get("Retry-After"):
        print(f"Retry-After: {response.headers['Retry-After']}")
    print(json.dumps(response.json(), indent=2))


LOCAL_SYNC_SCHEDULE = "0 */5 * * * *"  # so that a local run shows a timer tick (and its deferred sync) soon
# Import jobs on short intervals, so that a CSV imported locally ends in about a minute instead of
# the five or more Azure's defaults take (each can be set in the environment before the run).
LOCAL_IMPORT_SETTINGS = {"IMPORT_POLL_SECONDS": "5", "IMPORT_SYNC_DELAY_SECONDS": "10"}
# The Graph emulator's Intune timings for the local run (its defaults are what the tests assume).
LOCAL_GRAPH_TIMINGS = {"importProcessingSeconds": 5, "syncDurationSeconds": 10, "profileAssignmentSeconds": 10}
# Where each service listens unless --random-ports or --port NAME=PORT says otherwise.
DEFAULT_PORTS = {"app": 7071, "graph": 8090, "identity": 8091, "entra": 8092, "table": 10002, "queue": 10001, "blob": 10000}
PORT_ROLES = {"app": "the app's API", "graph": "the Graph emulator", "identity": "the managed-identity emulator",
              "entra": "the Entra token emulator", "table": "Azurite's table service", "queue": "Azurite's queue service",
              "blob": "Azurite's blob service"}
# --multi-tenant: the customer tenants the Entra emulator knows (the first is docs/msp.md's example),
# and the client id of the app's user-assigned identity, which the multi-tenant app trusts.
CUSTOMER_TENANTS = {"11111111-2222-3333-4444-555555555555": {"consented": True},
                    "22222222-3333-4444-5555-666666666666": {"consented": False}}
LOCAL_IDENTITY_CLIENT_ID = "3b8f0c2e-6d4a-4f1b-9e7c-2a5d8f1e0c93"

Started = TypeVar("Started")


class LocalRunError(Exception):
    """Why the local run cannot start, in words a user can act on (printed without a traceback)."""


def port_taken(name: str, port: int) -> LocalRunError:
    who = "is the app already serving there, from another local run?" if name == "app" else "by another local run or another program."
    return LocalRunError(
        f"port {port} ({PORT_ROLES[name]}) is already in use: {who} "
        f"Stop that (Ctrl+C in its terminal), or start this run on free ports: --random-ports "
        f"(or move only this one: --port {name}=<free port>)."
    )


def listening(name: str, port: int, start: Callable[[int], Started]) -> Started:
    """``start(port)``, a port already taken reported by name."""
    try:
        return start(port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise port_taken(name, port) from None
        raise


@contextlib.contextmanager
def state_lock(folder: Path) -> Iterator[IO[str]]:
    """Hold ``folder/.lock`` (with this process's pid) while the run lives. The kernel releases an
    flock when its process dies, however it dies, so a crashed run never locks out the next."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read())
            except ValueError:
                holder = {}
            serving = f"serving {holder['api']}" if holder.get("api") else "starting"
            raise LocalRunError(
                f"another local run (pid {holder.get('pid', '?')}) is already {serving} with the state folder {folder}. "
                f"Stop it (Ctrl+C in its terminal, or kill {holder.get('pid', '<pid>')}), or give this run its own "
                f"state and ports: --random-ports --state DIR."
            ) from None
        note_lock(handle, {"pid": os.getpid()})
        yield handle


def note_lock(handle: IO[str], holder: dict[str, Any]) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(holder))
    handle.flush()


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lived_in_tenant(now: datetime) -> dict[str, Any]:
    """The local run's Intune: every unit synced an hour ago, connected, with tokens far from expiry,
    so that the first screen's status is not unhealthy because of test fixtures (the emulator's
    defaults keep their expired token and disconnected connector: the tests rate those)."""
    hour_ago, later = _iso(now - timedelta(hours=1)), _iso(now + timedelta(days=200))
    items = {key: list(values.values()) for key, values in default_items(now).items()}
    return {
        **LOCAL_GRAPH_TIMINGS,  # before the sync below, whose end uses syncDurationSeconds
        "lastManualSyncTriggerDateTime": hour_ago,
        "connectors": [dict(c, status="connected", lastSyncDateTime=hour_ago) for c in DEFAULT_CONNECTORS],
        "depOnboardingSettings": [dict(t, tokenExpirationDateTime=later, lastSuccessfulSyncDateTime=hour_ago,
                                       lastSyncTriggeredDateTime=hour_ago) for t in items["depOnboardingSettings"][:1]],
        "vppTokens": [dict(t, expirationDateTime=later, lastSyncDateTime=hour_ago) for t in items["vppTokens"][:1]],
        "windowsDriverUpdateProfiles": [
            dict(p, inventorySyncStatus={"driverInventorySyncState": "success", "lastSuccessfulSyncDateTime": hour_ago})
            for p in items["windowsDriverUpdateProfiles"]],
        "managedGooglePlay": dict(default_managed_google_play(now), lastAppSyncDateTime=hour_ago),
    }


def furnish(graph: GraphEmulator, tenants: list[str | None]) -> None:
    """Give each tenant (None: the home tenant) the local run's Intune."""
    for tenant in tenants:
        graph.configure({**lived_in_tenant(graph.now()), **({"tenant": tenant} if tenant else {})})


def reset(graph: GraphEmulator, tenants: list[str | None]) -> dict[str, object]:
    """Local only: forget every cooldown, lease, pending sync and import job, and Graph's own
    windows, so that the next sync is granted (the README's curl examples)."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.data.tables import TableClient
    from azure.storage.queue import QueueClient

    from shared.common.settings import Settings
    from shared.runtime import process as runtime

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
    furnish(graph, tenants)  # back to the local run's tenants, not the emulator's test defaults
    runtime.reload()  # the service remembers refusals in memory: a new one forgets them
    return {"reset": True, "rowsDeleted": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="show the first sync, then stop")
    parser.add_argument("--random-ports", action="store_true", help="pick free ports instead of 7071, 8090, 8091 (8092) and 10000-10002")
    parser.add_argument("--port", action="append", default=[], metavar="NAME=PORT",
                        help=f"listen on PORT for NAME, one of {', '.join(DEFAULT_PORTS)} (repeatable)")
    parser.add_argument("--state", default=str(ROOT / ".azurite"), help="where Azurite keeps its data (default .azurite/); one run per folder")
    parser.add_argument("--multi-tenant", action="store_true",
                        help="many tenants (docs/msp.md) against the Entra token emulator: MULTI_TENANT_CLIENT_ID and its customer tenants")
    parser.add_argument("--entra", action="store_true",
                        help="callers bring Entra ID tokens (CALLER_AUTH=entra, docs/security.md), which the Entra emulator signs")
    args = parser.parse_args(argv)
    # 0: the server binds a free port itself (Azurite picks its own and picks again if one was taken
    # meanwhile), so parallel runs cannot race for a port picked here and bound later.
    ports = {name: 0 if args.random_ports else default for name, default in DEFAULT_PORTS.items()}
    for given in args.port:
        name, _, port = given.partition("=")
        if name not in DEFAULT_PORTS or not port.isdigit():
            parser.error(f"--port {given}: expected NAME=PORT with NAME one of {', '.join(DEFAULT_PORTS)}")
        ports[name] = int(port)
    # A plain `kill`, a closed terminal or a CI timeout stops everything, as Ctrl+C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with contextlib.ExitStack() as stack:  # whatever was started is stopped on the way out, however it goes
            return serve(args, ports, stack)
    except LocalRunError as exc:
        print(f"run-local: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0


# --entra: the roles the printed token command asks for (every role; drop some to see a 403).
LOCAL_ROLES = list(API_ROLES)


def token_command(entra: EntraEmulator) -> str:
    """The shell command that gets a signed token for the local API from the Entra emulator."""
    body = json.dumps({"roles": LOCAL_ROLES, "upn": "alice@contoso.com"})
    return (f"\nCallers sign in with Entra ID (CALLER_AUTH=entra, API_CLIENT_ID={API_CLIENT_ID}, home tenant "
            f"{HOME_TENANT}). A token for user alice@contoso.com with every role (edit \"roles\" to try fewer):\n"
            f"$ TOKEN=$(curl -s --cacert {entra.ca_file} -X POST {entra.base_url}/_emulator/callerToken "
            f"-H 'content-type: application/json' -d '{body}' | python3 -c 'import json,sys; "
            f"print(json.load(sys.stdin)[\"access_token\"])')")


def serve(args: argparse.Namespace, ports: dict[str, int], stack: contextlib.ExitStack) -> int:
    lock = None if args.once else stack.enter_context(state_lock(Path(args.state)))
    # The usual cause: another run already serving the app. Said before anything is started.
    with socket.socket() as probe:
        if ports["app"] and probe.connect_ex(("127.0.0.1", ports["app"])) == 0:
            raise port_taken("app", ports["app"])
    azurite = Azurite(port=ports["table"] or None, queue_port=ports["queue"] or None, blob_port=ports["blob"] or None,
                      location=None if args.once else args.state)
    stack.callback(azurite.close if args.once else azurite.stop)
    try:
        azurite.start()
    except PortInUse as exc:
        raise port_taken(next((n for n in ("table", "queue", "blob") if ports[n] == exc.port), "table"), exc.port) from None
    identity = listening("identity", ports["identity"], lambda port: IdentityEmulator(port=port))
    identity.start()
    stack.callback(identity.stop)
    graph = listening("graph", ports["graph"], lambda port: GraphEmulator(port=port))
    graph.start()
    stack.callback(graph.stop)
    tenants: list[str | None] = [None]
    settings = {name: os.environ.get(name, value) for name, value in LOCAL_IMPORT_SETTINGS.items()}
    os.environ.update(
        {
            **identity.env(),
            **settings,
            "GRAPH_BASE_URL": graph.base_url,
            "AzureWebJobsStorage": azurite.connection_string,
            "SYNC_TARGETS": os.environ.get("SYNC_TARGETS", "autopilot,exchange"),
            "SYNC_SCHEDULE": os.environ.get("SYNC_SCHEDULE", LOCAL_SYNC_SCHEDULE),
        }
    )
    entra: EntraEmulator | None = None
    if args.multi_tenant or args.entra:
        ca_folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="entra-ca-"))
        entra = listening("entra", ports["entra"], lambda port: start_entra(ca_folder, port=port))
        stack.callback(entra.stop)
        os.environ.update(entra.env())
    if entra is not None and args.entra:
        os.environ.update({"CALLER_AUTH": "entra", "API_CLIENT_ID": API_CLIENT_ID, "AZURE_TENANT_ID": HOME_TENANT})
    if entra is not None and args.multi_tenant:
        # The multi-tenant app trusts the identity (its federated credential); tenants per CUSTOMER_TENANTS.
        entra.configure({"clientId": DEFAULT_CLIENT_ID, "federatedSubject": identity.principal_id(LOCAL_IDENTITY_CLIENT_ID),
                         "tenants": CUSTOMER_TENANTS})
        tenants += list(CUSTOMER_TENANTS)
        os.environ.update({**entra.env(), "MULTI_TENANT_CLIENT_ID": DEFAULT_CLIENT_ID, "AZURE_CLIENT_ID": LOCAL_IDENTITY_CLIENT_ID})
    furnish(graph, tenants)
    sys.path.insert(0, str(ROOT))
    from shared.common.telemetry import LOGGER

    from .console import EventPrinter

    events = logging.getLogger(LOGGER)
    events.setLevel(logging.INFO)
    events.addHandler(EventPrinter())
    events.propagate = False  # printed once, by EventPrinter
    import function_app

    host = listening("app", ports["app"], lambda port: FunctionHost(
        function_app.app, port=port, run_timers=not args.once, console=True,
        admin={"reset": lambda: reset(graph, tenants)}))
    host.start()
    stack.callback(host.stop)
    api = f"{host.base_url}/api"
    if lock is not None:
        note_lock(lock, {"pid": os.getpid(), "api": api})
    print(f"Azurite tables   {azurite.table_endpoint}")
    print(f"Identity emulator {identity.endpoint}")
    print(f"Graph emulator   {graph.base_url}")
    if entra is not None:
        print(f"Entra emulator   {entra.base_url} (TLS; CA {entra.ca_file})")
    print(f"App API          {api}")
    print(f"Web console      {api}/console" + (
        f" (sign in on the Entra emulator's page as a test user with the roles you tick; your browser must trust "
        f"its CA {entra.ca_file}, or accept its certificate once at {entra.base_url})" if entra is not None and args.entra
        else " (no key needed locally)"))
    timings = ", ".join(f"{name}={value}" for name, value in settings.items())
    print(f"\nShort local timings: {timings}; the Graph emulator settles an import in "
          f"{LOCAL_GRAPH_TIMINGS['importProcessingSeconds']} s, runs an Autopilot sync for "
          f"{LOCAL_GRAPH_TIMINGS['syncDurationSeconds']} s and assigns a profile "
          f"{LOCAL_GRAPH_TIMINGS['profileAssignmentSeconds']} s after a device appears. Autopilot's sync window "
          f"stays 10 minutes, as in Graph: an import right after a sync waits for it (POST /admin/reset forgets it).")
    auth, with_token = {}, ""
    if entra is not None and args.entra:
        print(token_command(entra))
        auth = {"Authorization": "Bearer " + entra.signing.caller_token(entra.base_url, tenant=HOME_TENANT, roles=LOCAL_ROLES)}
        with_token = ' -H "Authorization: Bearer $TOKEN"'
    show(f"curl -X POST {api}/sync/autopilot{with_token}", requests.post(f"{api}/sync/autopilot", headers=auth, timeout=30))
    show(f"curl -X POST {api}/sync/autopilot{with_token}   # again, inside the cooldown",
         requests.post(f"{api}/sync/autopilot", headers=auth, timeout=30))
    show(f"curl {api}/sync/status{with_token}", requests.get(f"{api}/sync/status", headers=auth, timeout=30))
    if args.once:
        return 0
    print(f"\n$ curl -X POST {host.base_url}/admin/reset && curl -X POST {api}/sync/autopilot"
          "   # local only: forget every cooldown; the next sync is granted (202)")
    if entra is not None:
        consented, refused = CUSTOMER_TENANTS
        print(f"\nMany tenants (docs/msp.md): MULTI_TENANT_CLIENT_ID={DEFAULT_CLIENT_ID}; the Entra emulator knows tenant "
              f"{consented} (consented) and {refused} (not consented).\n"
              f"$ curl -X PUT {api}/tenants/{consented} -H 'content-type: application/json' -d '{{\"displayName\": \"Contoso\"}}'\n"
              f"$ curl {api}/tenants/{consented}   # the consent check: a token from the Entra emulator, then a Graph read")
    print(f"\nServing on {api}, the sync timer at {os.environ['SYNC_SCHEDULE']!r}, the watcher at "
          f"{os.environ.get('SYNC_WATCH_SCHEDULE', '0 */2 * * * *')!r}; one line per invocation below. "
          "Ctrl+C to stop.\n", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    raise SystemExit(main())
