"""Shared fixtures: a real Azurite, the Graph and managed-identity emulators, and services wired
to them exactly as in Azure (IDENTITY_ENDPOINT / IDENTITY_HEADER, a storage connection string).

Nothing here is mocked: if Azurite cannot start, the suite fails rather than skips.
"""
from __future__ import annotations

import base64
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulators.azurite import Azurite
from emulators.funchost import load_routes
from emulators.graph import GraphEmulator
from emulators.identity import IdentityEmulator
from emulators.tokens import ALL_ROLES
from shared.assembly.service import SyncService
from shared.clients.graph import GraphClient, RetryPolicy
from shared.clients.identity import make_credential
from shared.clients.notify import Notifier
from shared.clients.queue import PendingQueue
from shared.clients.storage import queue_client, table_client
from shared.common.settings import DEFAULTS, Settings
from shared.engine.operations import OperationStore
from shared.engine.state import StateStore
from shared.onboarding.imports import ImportStore

FAST_RETRY = RetryPolicy(retries=3, backoff_factor=0.01, backoff_max=0.2)
# A started Autopilot sync closes its unit for Graph's 10 minutes plus the margin kept for clocks
# that differ (CLOCK_SKEW_MARGIN_SECONDS); a second later it is open again.
SKEW_MARGIN_SECONDS = int(DEFAULTS["CLOCK_SKEW_MARGIN_SECONDS"])
AUTOPILOT_CLOSED_SECONDS = 600 + SKEW_MARGIN_SECONDS
PAST_WINDOW = AUTOPILOT_CLOSED_SECONDS + 1


class FakeClock:
    """The service's clock, moved by tests together with the Graph emulator's."""

    def __init__(self, start: datetime | None = None):
        self.now = start or datetime.now(UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += timedelta(seconds=seconds)


@dataclass
class TableCounter:
    """Counts HTTP round trips to Table Storage (every attempt, retries included)."""

    count: int = 0
    methods: list[str] = field(default_factory=list)

    def __call__(self, request: Any) -> None:
        self.count += 1
        self.methods.append(request.http_request.method)

    def reset(self) -> None:
        self.count = 0
        self.methods.clear()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    with Azurite() as server:
        yield server


@pytest.fixture(scope="session")
def graph_server() -> Iterator[GraphEmulator]:
    server = GraphEmulator().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def identity_server() -> Iterator[IdentityEmulator]:
    server = IdentityEmulator().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def managed_identity_env(identity_server: IdentityEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs as an app with a managed identity, the way Azure sets it up."""
    for name, value in identity_server.env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def graph(graph_server: GraphEmulator, identity_server: IdentityEmulator) -> GraphEmulator:
    graph_server.reset()
    identity_server.configure(roles=list(ALL_ROLES), failing=False, lifetimeSeconds=3600, hangSeconds=0, resetStats=True)
    return graph_server


@pytest.fixture
def table_name() -> str:
    return "t" + uuid.uuid4().hex[:16]


@pytest.fixture
def env(azurite: Azurite, graph: GraphEmulator, table_name: str) -> dict[str, str]:
    """App settings pointing at the emulators and a fresh table."""
    return {
        "GRAPH_BASE_URL": graph.base_url,
        "AzureWebJobsStorage": azurite.connection_string,
        "SYNC_TARGETS": "autopilot,exchange",
        "SYNC_STATE_TABLE": table_name,
        "SYNC_QUEUE": "q" + table_name[1:],
        "IMPORT_QUEUE": "i" + table_name[1:],
        "GRAPH_TIMEOUT_SECONDS": "2",
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def table_counter() -> TableCounter:
    return TableCounter()


@pytest.fixture
def make_service(env: dict[str, str], clock: FakeClock, table_counter: TableCounter) -> Callable[..., SyncService]:
    """A service wired like build_service, with a test clock (``instance_clock``: another
    instance's own), fast retries and counters."""

    def make(instance_clock: FakeClock | None = None, **overrides: str) -> SyncService:
        settings = Settings.from_env({**env, **overrides})
        graph_client = GraphClient(
            settings.graph_base_url,
            make_credential(settings.azure_client_id),
            settings.graph_scope,
            timeout=settings.graph_timeout_seconds,
            retry=FAST_RETRY,
        )
        table = table_client(settings.storage, settings.state_table, make_credential, raw_request_hook=table_counter)
        notifier = Notifier(settings.notify_urls, settings.notify_format, retries=2)
        queue = PendingQueue(lambda: queue_client(settings.storage, settings.queue_name, make_credential))
        import_queue = PendingQueue(lambda: queue_client(settings.storage, settings.import_queue, make_credential))
        return SyncService(settings, graph_client, StateStore(table), instance_clock or clock, OperationStore(table), notifier,
                           queue, ImportStore(table), import_queue)

    return make


@pytest.fixture
def service(make_service: Callable[..., SyncService]) -> SyncService:
    return make_service()


class NotificationSink:
    """A real HTTP endpoint that records what it is sent; can fail its first N requests."""

    def __init__(self) -> None:
        from emulators.server import JsonHandler, Server

        sink = self

        class Handler(JsonHandler):
            def dispatch(self) -> None:
                body = self.read_json()
                with sink.lock:
                    sink.attempts += 1
                    failing = sink.fail_first > 0
                    sink.fail_first -= 1
                    if not failing:
                        sink.received.append(body)
                self.send_json(503 if failing else 202)

        self.lock = threading.Lock()
        self.received: list[Any] = []
        self.attempts = 0
        self.fail_first = 0
        self.server = Server(Handler).start()
        self.url = self.server.base_url + "/notify?sig=secret-signature"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Any]:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        return list(self.received)


@pytest.fixture
def sink() -> Iterator[NotificationSink]:
    s = NotificationSink()
    yield s
    s.server.stop()


def unreachable_storage() -> str:
    """A connection string for a table endpoint where nothing listens."""
    from emulators.azurite import ACCOUNT, KEY, free_port

    return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"TableEndpoint=http://127.0.0.1:{free_port()}/{ACCOUNT};")


@pytest.fixture
def start_app_hosts(identity_server: IdentityEmulator) -> Iterator[Callable[..., list[str]]]:
    """Start app processes (the local Functions host serving function_app) with given settings."""
    import os
    import subprocess
    import tempfile
    import time

    from emulators.azurite import free_port

    processes: list[subprocess.Popen[bytes]] = []
    logs: list[str] = []

    def start(count: int, settings: dict[str, str], function_key: str | None = None) -> list[str]:
        ports = [free_port() for _ in range(count)]
        child_env = {**os.environ, **settings, **identity_server.env()}
        key = ["--function-key", function_key] if function_key else []
        started = []
        for p in ports:
            log_file = tempfile.NamedTemporaryFile(prefix="funchost-", suffix=".log", delete=False)
            logs.append(log_file.name)
            started.append(subprocess.Popen([sys.executable, "-m", "emulators.funchost", "--port", str(p), *key], cwd=ROOT,
                                            env=child_env, stdout=subprocess.DEVNULL, stderr=log_file))
        processes.extend(started)
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        deadline = time.monotonic() + 60
        for url, proc, log_name in zip(urls, started, logs[-count:], strict=True):
            while True:
                assert proc.poll() is None, open(log_name).read()
                try:
                    requests.get(f"{url}/api/health", timeout=1)
                    break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "app host did not start"
                time.sleep(0.1)
        return urls

    def stop_all() -> None:
        for proc in processes:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)

    start.stop_all = stop_all  # type: ignore[attr-defined]
    yield start
    stop_all()
    for name in logs:  # shown by pytest when the test failed
        text = open(name).read()
        if "Traceback" in text:
            print(f"--- {name}\n{text[-4000:]}")
        os.unlink(name)


def graph_calls(graph: GraphEmulator, method: str | None = None, contains: str = "") -> list[dict[str, Any]]:
    return [
        r for r in graph.stats()["requests"] if (method is None or r["method"] == method) and contains in r["path"]
    ]


def sync_posts(graph: GraphEmulator) -> list[dict[str, Any]]:
    return [r for r in graph_calls(graph, "POST") if r["path"].endswith("/sync")]


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "the condition") -> Any:
    """Wait for ``condition()`` to be true (instead of sleeping a fixed time); its value, or an
    AssertionError after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)
    return value


def advance(clock: FakeClock, graph: GraphEmulator, seconds: float) -> None:
    """Move the app's and Graph's clocks together."""
    clock.advance(seconds)
    requests.post(f"{graph.base_url}/_emulator/clock", json={"advanceSeconds": seconds}, timeout=5).raise_for_status()


def one(results: list[Any]) -> Any:
    """The only result of a call that syncs one unit."""
    assert len(results) == 1, results
    return results[0]


def configure(graph: GraphEmulator, **config: Any) -> None:
    """Change the Graph emulator's tenant and behaviour (``/_emulator/config``)."""
    requests.post(f"{graph.base_url}/_emulator/config", json=config, timeout=5).raise_for_status()


def faults(graph: GraphEmulator, *specs: dict[str, Any]) -> None:
    """Switch on faults in the Graph emulator (``/_emulator/faults``)."""
    requests.post(f"{graph.base_url}/_emulator/faults", json=list(specs), timeout=5).raise_for_status()


def queue_length(env: dict[str, str]) -> int:
    """Messages in the deferred-sync queue, visible or not (0 if it was never created)."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient

    queue = QueueClient.from_connection_string(env["AzureWebJobsStorage"], env["SYNC_QUEUE"])
    try:
        return queue.get_queue_properties().approximate_message_count
    except ResourceNotFoundError:
        return 0


# --- calling the function app in-process, as the host does -----------------------------------

import function_app
from shared.runtime import process as runtime

# app.get_functions() once per process, as documented for testing v2 functions.
APP_FUNCTIONS = function_app.app.get_functions()
FUNCTIONS: dict[str, Callable[..., Any]] = {fn.get_function_name(): fn.get_user_function() for fn in APP_FUNCTIONS}
HTTP_ROUTES = load_routes(function_app.app, APP_FUNCTIONS)[0]


@pytest.fixture
def app_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Settings in the environment, and a fresh service built from them (as a new process would)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    runtime.reload()
    yield env
    runtime.reload()


def call(method: str, route: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """Route a request like the host does (route values decoded) and call the matching function."""
    import json
    from urllib.parse import parse_qsl, unquote

    import azure.functions as func

    path, _, query = route.partition("?")
    # The app's own routes, matched as the local host matches them (most specific first).
    match = next(((r.name, m) for r in HTTP_ROUTES if (m := r.pattern.match(path.strip("/")))), None)
    assert match is not None, f"no route {route}"
    name, params = match[0], {key: unquote(value) for key, value in match[1].groupdict().items()}
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    data = body.encode() if isinstance(body, str) else (body or b"")
    request = func.HttpRequest(method, f"http://localhost/api/{route}", headers=headers,
                               params=dict(parse_qsl(query)), route_params=params, body=data)
    response = FUNCTIONS[name](request)
    assert response.mimetype == "application/json"
    payload = json.loads(response.get_body()) if response.get_body() else None
    return response.status_code, dict(response.headers), payload


# --- Autopilot import jobs --------------------------------------------------------------------

HARDWARE_HASH = base64.b64encode(bytes(range(256)) * 16).decode()  # 4 KB, the size of a real 4K hash


def autopilot_devices(count: int, prefix: str = "SN", **fields: Any) -> list[dict[str, Any]]:
    """``count`` valid devices for POST /api/autopilot/devices, serials ``<prefix>0001``…"""
    return [{"serialNumber": f"{prefix}{i:04d}", "hardwareIdentifier": HARDWARE_HASH, **fields} for i in range(1, count + 1)]


def start_import(svc: SyncService, devices: list[dict[str, Any]], update_existing: bool = False, caller: str = "test") -> str:
    """Start an import job in-process, as POST /api/autopilot/devices does; its id."""
    import json

    from shared.onboarding.devices import parse_import

    request = parse_import(json.dumps({"devices": devices, "updateExisting": update_existing}).encode(), "application/json")
    return svc.start_import(request, caller)[0].id


def fire_due_sync(svc: SyncService) -> Any:
    """What the deferred-sync queue trigger does when the pending Autopilot sync is due."""
    from shared.engine.deferred import PendingFire

    state = svc.store.read("autopilot")
    if state.pending_id and state.pending_at and state.pending_at <= svc.clock():
        return svc.fire(PendingFire("autopilot", "autopilot", None, state.pending_id, state.pending_at,
                                    state.pending_reschedules or 0))
    return None


def run_imports(svc: SyncService, clock: FakeClock, graph: GraphEmulator, *import_ids: str, steps: int = 200,
                between: Callable[[], Any] | None = None) -> list[Any]:
    """Drive import jobs in-process as the queues would, time moving on to each next due step:
    the jobs' steps in turn, and the pending Autopilot sync when it is due. The finished jobs."""
    from shared.onboarding.importjob import ImportStep

    assert svc.imports is not None
    for _ in range(steps):
        jobs = [svc.imports.job(i) for i in import_ids]
        running = [j for j in jobs if j is not None and not j.done]
        if not running:
            return jobs
        due = min(j.step_at for j in running)
        if due > clock():
            advance(clock, graph, (due - clock()).total_seconds())
        for job in running:
            if job.step_at <= clock():
                svc.run_import_step(ImportStep(job.id, job.step, job.step_at).to_json())
        fire_due_sync(svc)
        if between is not None:
            between()
    raise AssertionError(f"import jobs still running after {steps} steps")


def import_stats(graph: GraphEmulator) -> dict[str, Any]:
    """The emulator's import records, registered devices and deleted record ids."""
    stats: dict[str, Any] = graph.stats()["autopilotImports"]
    return stats


# --- many tenants: the Entra token emulator over TLS ----------------------------------------------


@pytest.fixture(scope="session")
def entra_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The Entra token endpoint emulator, over HTTPS with a throwaway CA (emulators/entra.py)."""
    from emulators.entra import start_entra

    server = start_entra(tmp_path_factory.mktemp("entra"))
    yield server
    server.stop()


def drain(env: dict[str, str], setting: str, run: Callable[[str], Any], limit: int = 10_000) -> int:
    """Deliver every visible message of a queue to ``run``, as the host's queue trigger does; how many."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    queue = QueueClient.from_connection_string(env["AzureWebJobsStorage"], env[setting],
                                               message_decode_policy=TextBase64DecodePolicy())
    done = 0
    while done < limit:
        try:
            batch = list(queue.receive_messages(messages_per_page=32, visibility_timeout=60, max_messages=32))
        except ResourceNotFoundError:
            return done
        if not batch:
            return done
        for message in batch:
            run(message.content)
            queue.delete_message(message)
            done += 1
    return done


# --- telemetry --------------------------------------------------------------------------------


def logged_events(caplog: pytest.LogCaptureFixture, event: str | None = None) -> list[dict[str, Any]]:
    """The telemetry records logged so far (shared/common/telemetry.py), read back from each record's
    message exactly as KQL does (``parse_json(substring(message, 11))``)."""
    import json

    from shared.common.telemetry import LOGGER, PREFIX

    found = []
    for record in caplog.records:
        if record.name != LOGGER:
            continue
        text = record.getMessage()
        assert text.startswith(PREFIX), text
        fields = json.loads(text[len(PREFIX):])
        fields["_level"] = record.levelname
        if event is None or fields["event"] == event:
            found.append(fields)
    return found


# --- the console in a browser (tests/test_console_browser.py) -----------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing browser test leaves a screenshot of its page in test-artifacts/ (named for the test)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    page = getattr(item, "console_page", None)
    if page is None or report.when != "call" or not report.failed:
        return
    folder = ROOT / "test-artifacts"
    folder.mkdir(exist_ok=True)
    path = folder / f"{item.name.replace('/', '_')}.png"
    try:
        page.screenshot(path=str(path), full_page=True)
        report.sections.append(("screenshot", str(path)))
    except Exception as exc:  # the page may be gone: say so, the failure itself stands
        report.sections.append(("screenshot", f"none: {exc}"))
