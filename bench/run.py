"""Benchmarks: footprint, cold start, cost of a refusal, round trips, contention and fan-out,
each measured side by side with its baseline in the same run, on this machine.

    python -m bench.run            # full run; prints a table and writes bench/RESULTS.md
    python -m bench.run --smoke    # tiny sizes, no SDK install: keeps the bench from rotting (CI)
    python -m bench.run tenants    # many tenants in one window (bench/tenants.py; its own section of RESULTS.md)
    python -m bench.run cold-start [--compare LABEL=DIR]   # cold start only, against the SDK (its own section)
    python -m bench.telemetry      # the telemetry SDK's cold-start and per-record cost (bench/telemetry.py; its own section)

Everything runs against real servers on 127.0.0.1: Azurite, the Graph and identity emulators,
and the app behind the local Functions host. Medians over repeated runs; ratios are computed
from figures taken in this same run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from azure.data.tables import TableServiceClient

from bench import results
from emulators.azurite import Azurite, free_port
from emulators.graph import GraphEmulator
from emulators.identity import IdentityEmulator
from shared.assembly.service import SyncService
from shared.clients.graph import GraphClient, RetryPolicy
from shared.clients.identity import make_credential
from shared.clients.storage import table_client
from shared.common.model import SyncRequest
from shared.common.settings import Settings
from shared.engine.state import StateStore
from shared.engine.targets import EXCHANGE_CONNECTORS

WORK = ROOT / "bench" / ".work"
SDK_PACKAGES = ["msgraph-beta-sdk", "azure-identity==1.27.0", "azure-data-tables==12.7.0", "azure-functions==1.26.0"]


@dataclass
class Row:
    name: str
    ours: str
    baseline: str
    ratio: str
    target: str
    met: str
    note: str = ""


@dataclass
class Bench:
    smoke: bool
    rows: list[Row] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, ours: float | str, baseline: float | str, unit: str, target: str,
            met: bool | None, note: str = "", ratio: float | None = None) -> None:
        def show(v: float | str) -> str:
            return v if isinstance(v, str) else f"{v:.{3 if v < 10 else 1}f} {unit}".strip()

        if ratio is None and isinstance(ours, (int, float)) and isinstance(baseline, (int, float)) and baseline:
            ratio = ours / baseline
        self.rows.append(Row(name, show(ours), show(baseline), "—" if ratio is None else f"{ratio:.2f}×",
                             target, {True: "yes", False: "NO", None: "—"}[met], note))
        print(f"  {name}: ours {show(ours)} | baseline {show(baseline)} | "
              f"{'—' if ratio is None else f'{ratio:.2f}×'} | target {target}", flush=True)


# --- environment -------------------------------------------------------------------------------


class HttpsGraph(GraphEmulator):
    """The Graph emulator over HTTPS: its base URL (the tokens' audience it checks) is the https one."""

    https_url = ""

    @property
    def base_url(self) -> str:
        return self.https_url or super().base_url


class Stack:
    """Azurite, the emulators, and settings pointing at them. With ``tls``, Graph and Table Storage
    speak HTTPS only, as in Azure, with a certificate from a throwaway CA; the children trust
    certifi's bundle plus that CA (REQUESTS_CA_BUNDLE for requests and the app, SSL_CERT_FILE for
    httpx), so each loads a bundle as large as the default one. The managed-identity endpoint stays
    plain HTTP on 127.0.0.1, as the Functions host serves it (IDENTITY_ENDPOINT)."""

    def __init__(self, tls: bool = False) -> None:
        self.ca_bundle: str | None = None
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None
        certificate = None
        if tls:
            import certifi

            from emulators.tls import CertificateAuthority

            self._tls_dir = tempfile.TemporaryDirectory(prefix="bench-tls-")
            ca = CertificateAuthority.create(self._tls_dir.name, name="bench CA")
            certificate = ca.issue(("127.0.0.1", "localhost"), name="bench")
            bundle = Path(self._tls_dir.name) / "bundle.pem"
            bundle.write_text(Path(certifi.where()).read_text() + ca.cert_file.read_text())
            self.ca_bundle = str(bundle)
        self.azurite = Azurite(tls=(str(certificate.cert_file), str(certificate.key_file)) if certificate else None).start()
        self.graph = HttpsGraph()
        if certificate:
            from emulators.tls import serve_tls

            self.graph.https_url = serve_tls(self.graph, certificate)
        self.graph.start()
        self.identity = IdentityEmulator()
        self.identity.start()
        self._saved_env = {name: os.environ.get(name) for name in self.identity.env()}
        os.environ.update(self.identity.env())  # for the services built in this process

    def env(self, table: str, **extra: str) -> dict[str, str]:
        trust = {"REQUESTS_CA_BUNDLE": self.ca_bundle, "SSL_CERT_FILE": self.ca_bundle} if self.ca_bundle else {}
        return {
            **self.identity.env(),
            "GRAPH_BASE_URL": self.graph.base_url,
            "AzureWebJobsStorage": self.azurite.connection_string,
            "SYNC_TARGETS": "autopilot,exchange",
            "SYNC_STATE_TABLE": table,
            **trust,
            **extra,
        }

    def new_table(self) -> str:
        name = "b" + uuid.uuid4().hex[:16]
        options = {"connection_verify": self.ca_bundle} if self.ca_bundle else {}
        TableServiceClient.from_connection_string(self.azurite.connection_string, **options).create_table(name)
        return name

    def service(self, table: str, counter: Callable[[Any], None] | None = None, **extra: str) -> SyncService:
        settings = Settings.from_env(self.env(table, **extra))
        graph = GraphClient(settings.graph_base_url, make_credential(None), settings.graph_scope,
                            timeout=settings.graph_timeout_seconds, retry=RetryPolicy(backoff_factor=0.05))
        kwargs = {"raw_request_hook": counter} if counter else {}
        return SyncService(settings, graph, StateStore(table_client(settings.storage, table, make_credential, **kwargs)))

    def graph_counts(self) -> dict[str, int]:
        counts: dict[str, int] = self.graph.stats()["counts"]
        return counts

    def close(self) -> None:
        self.graph.stop()
        self.identity.stop()
        self.azurite.close()
        if self._tls_dir is not None:
            self._tls_dir.cleanup()
        for name, value in self._saved_env.items():  # another stack's identity endpoint, if it was set
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# --- 1. footprint -----------------------------------------------------------------------------


def venv(name: str, packages: list[str]) -> Path:
    """A throwaway virtual environment under bench/.work (reused between runs)."""
    path = WORK / name
    python = path / "bin" / "python"
    marker = path / ".installed"
    wanted = "\n".join(packages) + "\n" + "".join(Path(p).read_text() for p in packages if p.endswith(".txt"))
    if not (marker.exists() and marker.read_text() == wanted):
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages], check=True)
        marker.write_text(wanted)
    return python


def site_packages_mb(python: Path) -> float:
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    total = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
    # pip and setuptools come with every venv; they are not the app's.
    tooling = sum(f.stat().st_size for pattern in ("pip*", "setuptools*", "_distutils_hack", "distutils-precedence.pth")
                  for top in site.glob(pattern) for f in ([top] if top.is_file() else top.rglob("*")) if f.is_file())
    return (total - tooling) / 1e6


def footprint(bench: Bench, app_python: Path, sdk_python: Path | None) -> None:
    ours = site_packages_mb(app_python)
    if sdk_python is None:
        bench.add("Installed dependencies", ours, "skipped (smoke)", "MB", "≤ 0.10×", None)
        return
    sdk = site_packages_mb(sdk_python)
    bench.add("Installed dependencies", ours, sdk, "MB", "≤ 0.10×", ours / sdk <= 0.10)


# --- 2. cold start ----------------------------------------------------------------------------


def first_call(python: Path, script: str, env: dict[str, str], bytecode: bool, app_root: Path = ROOT) -> dict[str, Any]:
    """One fresh process running ``bench/<script>`` (the app's from ``app_root``: this checkout or
    another, e.g. a worktree of an older commit); its figures."""
    child = {**os.environ, **env, "BENCH_APP_ROOT": str(app_root)}
    child.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory() as cache:
        if not bytecode:
            child["PYTHONPYCACHEPREFIX"] = cache  # an empty cache: every module is compiled afresh
        run = subprocess.run([str(python), str(ROOT / "bench" / script)], env=child, capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise RuntimeError(f"{script} failed: {run.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return figures


@dataclass
class Contender:
    who: str
    python: Path
    script: str
    app_root: Path = ROOT


def first_calls(stack: Stack, contenders: list[Contender], app_python: Path, cases: tuple[str, ...],
                runs: int) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every contender's first call, ``runs`` times per case, the contenders taking turns (so that
    a slow spell of this shared machine hits them alike); each answered by a fresh table. The
    bytecode is compiled once beforehand, as a deployed app's is."""
    figures: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in contenders:  # compile (and warm the page cache), not counted
        stack.graph.reset()
        first_call(c.python, c.script, stack.env(stack.new_table()), bytecode=True, app_root=c.app_root)
    for case in cases:
        for _ in range(runs):
            for c in contenders:
                stack.graph.reset()
                env = stack.env(stack.new_table())
                if case == "refused":  # another instance synced a moment ago
                    first_call(app_python, "app_first_call.py", env, bytecode=True)
                figure = first_call(c.python, c.script, env, bytecode="no bytecode" not in case, app_root=c.app_root)
                if case != "refused" and figure.get("outcome", figure.get("status")) not in ("started", 202, 204):
                    raise RuntimeError(f"{c.who}: the first call was not granted: {figure}")
                figures.setdefault((c.who, case), []).append(figure)
    return figures


def cold_start(bench: Bench, stack: Stack, app_python: Path, sdk_python: Path | None, runs: int) -> None:
    contenders = [Contender("ours", app_python, "app_first_call.py")]
    if sdk_python:
        contenders.append(Contender("sdk", sdk_python, "sdk_app.py"))
    figures = first_calls(stack, contenders, app_python,
                          ("granted, bytecode cached", "granted, no bytecode cache", "refused"), runs)
    for case in ("granted, bytecode cached", "granted, no bytecode cache", "refused"):
        ours = statistics.median(f["seconds"] for f in figures[("ours", case)]) * 1000
        if sdk_python:
            sdk = statistics.median(f["seconds"] for f in figures[("sdk", case)]) * 1000
            bench.add(f"Cold start to first answer ({case})", ours, sdk, "ms", "≤ 0.70×", ours / sdk <= 0.70)
        else:
            bench.add(f"Cold start to first answer ({case})", ours, "skipped (smoke)", "ms", "≤ 0.70×", None)
    def rss(who: str, above_worker: bool) -> float:
        cases = [f for k, v in figures.items() if k[0] == who and "no bytecode" not in k[1] for f in v]
        return float(statistics.median(f["maxrss_kb"] - (f["worker_kb"] if above_worker else 0) for f in cases)) / 1024

    for label, above in (("Peak RSS of that process", False), ("Peak RSS above the worker's own (azure.functions loaded)", True)):
        if sdk_python:
            ours_rss, sdk_rss = rss("ours", above), rss("sdk", above)
            bench.add(label, ours_rss, sdk_rss, "MB", "≤ 0.80×", ours_rss / sdk_rss <= 0.80)
        else:
            bench.add(label, rss("ours", above), "skipped (smoke)", "MB", "≤ 0.80×", None)
    bench.facts["outcomes"] = sorted({str(f.get("outcome", f.get("status"))) for v in figures.values() for f in v})


# --- 3. cost of a refusal ---------------------------------------------------------------------


@dataclass
class Hosts:
    urls: list[str]
    processes: list[subprocess.Popen[bytes]]

    def close(self) -> None:
        for p in self.processes:
            p.terminate()
            p.wait(timeout=10)


def start_hosts(stack: Stack, table: str, count: int) -> Hosts:
    ports = [free_port() for _ in range(count)]
    env = {**os.environ, **stack.env(table)}
    processes = [subprocess.Popen([sys.executable, "-m", "emulators.funchost", "--port", str(p)], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    for url in urls:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(url + "/api/health", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    return Hosts(urls, processes)


def refusal_cost(bench: Bench, stack: Stack, calls: int) -> None:
    table = stack.new_table()
    stack.graph.reset()
    hosts = start_hosts(stack, table, 1)
    try:
        session = requests.Session()
        assert session.post(hosts.urls[0] + "/api/sync/autopilot", timeout=30).status_code == 202
        http_ms = []
        for _ in range(calls):
            started = time.perf_counter()
            status = session.post(hosts.urls[0] + "/api/sync/autopilot", timeout=30).status_code
            http_ms.append((time.perf_counter() - started) * 1000)
            assert status == 429
    finally:
        hosts.close()

    service = stack.service(table)
    table_ms = []
    for _ in range(calls):
        service.pipeline.memory.clear()  # as a fresh instance: the refusal must read the table
        started = time.perf_counter()
        assert service.sync(SyncRequest("autopilot"))[0].outcome.value == "cooldown"
        table_ms.append((time.perf_counter() - started) * 1000)

    client = TableServiceClient.from_connection_string(stack.azurite.connection_string).get_table_client(table)
    bare_ms = []
    for _ in range(calls):
        started = time.perf_counter()
        client.get_entity("autopilot", "state")
        bare_ms.append((time.perf_counter() - started) * 1000)

    bare50, bare99 = statistics.median(bare_ms), percentile(bare_ms, 99)
    bench.add("Refused HTTP call, p50 (warm instance)", statistics.median(http_ms), bare50, "ms", "≤ 1.3× (< 1× if from memory)",
              statistics.median(http_ms) <= 1.3 * bare50, "baseline: one bare get_entity on the same Azurite")
    bench.add("Refused HTTP call, p99 (warm instance)", percentile(http_ms, 99), bare99, "ms", "—", None)
    bench.add("Refusal read from the table, p50 (new instance)", statistics.median(table_ms), bare50, "ms", "≤ 1.3×",
              statistics.median(table_ms) <= 1.3 * bare50, "in process, no HTTP")
    bench.add("Refusal read from the table, p99 (new instance)", percentile(table_ms, 99), bare99, "ms", "—", None)


# --- 4. round trips ---------------------------------------------------------------------------


def round_trips(bench: Bench, stack: Stack) -> None:
    table = stack.new_table()
    stack.graph.reset()
    stack.identity.configure(resetStats=True)
    count = [0]

    def hook(_: Any) -> None:
        count[0] += 1

    def measure(action: Callable[[], Any]) -> tuple[int, int]:
        before_graph, before_table = sum(stack.graph_counts().values()), count[0]
        action()
        return sum(stack.graph_counts().values()) - before_graph, count[0] - before_table

    first = stack.service(table, hook)
    graph_granted, table_granted = measure(lambda: first.sync(SyncRequest("autopilot")))
    other = stack.service(table, hook)
    graph_refused, table_refused = measure(lambda: other.sync(SyncRequest("autopilot")))
    graph_known, table_known = measure(lambda: other.sync(SyncRequest("autopilot")))

    stack.graph.reset()
    fresh = stack.service(stack.new_table(), hook)
    graph_100, table_100 = measure(lambda: [fresh.sync(SyncRequest("autopilot")) for _ in range(100)])
    tokens = stack.identity.token_requests

    bench.add("Granted sync: Graph calls / table round trips", f"{graph_granted} / {table_granted}", "1 / ≤ 3", "", "1 POST, ≤ 3 table",
              graph_granted == 1 and table_granted <= 3, ratio=None)
    bench.add("Refusal, new instance: Graph calls / table round trips", f"{graph_refused} / {table_refused}", "0 / ≤ 1", "",
              "0 Graph, ≤ 1 table", graph_refused == 0 and table_refused <= 1)
    bench.add("Refusal, instance that knows: Graph calls / table round trips", f"{graph_known} / {table_known}", "0 / ≤ 1", "",
              "0 Graph, ≤ 1 table", graph_known == 0 and table_known <= 1)
    bench.add("100 calls in one window: Graph calls / table round trips", f"{graph_100} / {table_100}", "1 / ≤ 102", "",
              "1 POST", graph_100 == 1)
    bench.add("Token requests for all of the above", str(tokens), "1 per instance that calls Graph", "",
              "1 per lifetime", tokens <= 2, "two of the three instances called Graph; one token each, reused for every call")


# --- 5. contention ----------------------------------------------------------------------------


def contention(bench: Bench, stack: Stack, processes: int, callers: int) -> None:
    table = stack.new_table()
    stack.graph.reset()
    hosts = start_hosts(stack, table, processes)
    try:
        barrier = threading.Barrier(processes * callers)

        def call(i: int) -> int:
            barrier.wait()
            return requests.post(hosts.urls[i % processes] + "/api/sync/autopilot", timeout=60).status_code

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=processes * callers) as pool:
            statuses = list(pool.map(call, range(processes * callers)))
        wall = time.perf_counter() - started
    finally:
        hosts.close()
    posts = stack.graph_counts().get("POST /beta/deviceManagement/windowsAutopilotSettings/sync", 0)
    total = processes * callers
    bench.add(f"Contention: {processes} processes × {callers} callers, decisions/s", total / wall, "—", "/s", "—", None)
    bench.add("Contention: Graph sync POSTs / 202s / 5xx", f"{posts} / {statuses.count(202)} / {sum(s >= 500 for s in statuses)}",
              "1 / 1 / 0", "", "exactly 1 POST", posts == 1 and statuses.count(202) == 1 and not any(s >= 500 for s in statuses))


# --- 6. fan-out -------------------------------------------------------------------------------


def fan_out(bench: Bench, stack: Stack, connectors: int, latency: float) -> None:
    ids = [str(uuid.uuid4()) for _ in range(connectors)]
    config = {"connectors": [{"id": i, "status": "connected"} for i in ids], "latencySeconds": latency}

    stack.graph.reset()
    requests.post(stack.graph.base_url + "/_emulator/config", json=config, timeout=10).raise_for_status()
    graph = stack.service(stack.new_table()).graph
    graph.get(EXCHANGE_CONNECTORS)  # token fetched and connection warm, as for the fan-out
    started = time.perf_counter()
    for connector in ids:  # the runbook way: one connector after the other
        graph.post(f"{EXCHANGE_CONNECTORS}/{connector}/sync", json={"syncType": "deltaSync"})
    sequential = time.perf_counter() - started

    stack.graph.reset()
    requests.post(stack.graph.base_url + "/_emulator/config", json=config, timeout=10).raise_for_status()
    service = stack.service(stack.new_table())
    service.graph.get(EXCHANGE_CONNECTORS)
    started = time.perf_counter()
    results = service.sync(SyncRequest("exchange"))
    ours = time.perf_counter() - started
    started_ok = sum(r.outcome.value == "started" for r in results)
    posts = [r for r in stack.graph.stats()["requests"] if r["method"] == "POST"]
    ratio = sequential / ours
    # The target is for 100 connectors; a smoke run's handful cannot show it.
    bench.add(f"Fan-out: {connectors} Exchange connectors at {latency * 1000:.0f} ms", ours, sequential, "s",
              "≥ 8× faster", ratio >= 8 if connectors >= 100 else None,
              f"{started_ok} started; {len(posts)} writes, limit 100 per 20 s", ratio=ratio)


# --- report -----------------------------------------------------------------------------------


def report(bench: Bench, seconds: float) -> str:
    m = results.machine()
    lines = [
        "# Benchmark results",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {m['cores']} cores ({m['cpu']}), "
        f"Python {m['python']}, {m['os']}; {seconds:.0f} s in all{' (smoke run: tiny sizes, no SDK)' if bench.smoke else ''}.",
        "",
        "Reproduce: `./scripts/bench.sh` (sets up what it needs, starts Azurite and the emulators, runs everything, "
        "rewrites this file). Baselines run in the same run on the same machine: the Graph SDK for Python "
        "(`msgraph-beta-sdk`, in a throwaway virtual environment) for footprint and cold start; one bare "
        "`azure-data-tables` `get_entity` on the same Azurite for a refusal; a sequential loop (as PowerShell "
        "runbooks do it) for the fan-out. Figures are medians unless marked p99.",
        "",
        "| Measure | Ours | Baseline | Ratio | Target | Met | Note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r.name} | {r.ours} | {r.baseline} | {r.ratio} | {r.target} | {r.met} | {r.note} |" for r in bench.rows]
    lines += [
        "",
        "## Reading the results",
        "",
        "- Cold start and memory are measured from the moment the Functions worker would load the app: "
        "both processes import `azure.functions` first (the worker has it loaded before it loads any app), "
        "then import the app and answer one sync through the token endpoint, Table Storage and Graph, as in "
        "Azure: Table Storage (Azurite) and Graph (the emulator) over HTTPS only, each client loading certifi's "
        "bundle (plus the emulators' CA), the managed-identity token over plain HTTP from 127.0.0.1 as the "
        "Functions host serves it. The contenders take turns, run by run; the bytecode is compiled beforehand. "
        "`python -m bench.run cold-start` runs this part alone (and other checkouts alongside: `--compare`).",
        "- Peak RSS of the whole process includes what both contenders share: Python itself, `azure.functions` "
        "with werkzeug (about 19 MB) and azure-identity with MSAL and cryptography (about 10 MB). Against that "
        "floor the whole-process target of 0.80× is missed (about 0.86×, see the table); above the worker's own "
        "memory, which is what the app adds and what it can change, ours is about three quarters of the SDK's.",
        "- A refusal in a warm instance is answered from memory (a cooldown only moves forward, so it is safe to "
        "remember until `nextAllowedAt`); a new instance reads one table row, about the cost of the bare read.",
        "- The fan-out pays, per connector, the claim and the commit that guarantee one sync per window (two table "
        "round trips) which the runbook loop does not; with 25 side-by-side syncs under the 100-writes-per-20-s "
        "limiter it still finishes about ten times sooner. On two cores the Python work per request, not Graph, "
        "bounds it, so the ratio moves by ±1× between runs.",
    ]
    return "\n".join(lines) + "\n"


COLD_BEGIN, COLD_END = "<!-- bench.coldstart: begin -->", "<!-- bench.coldstart: end -->"
FLOOR = "the libraries alone (floor)"


def cold_start_main(argv: list[str]) -> int:
    """The cold start alone: this checkout's app, any other checkouts' (``--compare LABEL=DIR``, e.g.
    a worktree of an older commit) and the Graph SDK way, taking turns, over TLS; written to its
    own section of RESULTS.md."""
    parser = argparse.ArgumentParser(prog="bench.run cold-start", description=cold_start_main.__doc__)
    parser.add_argument("--runs", type=int, default=11, help="first calls per contender (medians)")
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR",
                        help="another checkout of the app to run alongside (repeatable)")
    parser.add_argument("--label", default="this tree", help="what to call this checkout in the table")
    parser.add_argument("--note", default="", help="a sentence for the section (what the machine was doing...)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"), help="RESULTS.md to write to ('-' for none)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    print("setting up virtual environments…", flush=True)
    app_python = venv("venv-app", ["-r", str(ROOT / "requirements.txt")])
    sdk_python = venv("venv-sdk", SDK_PACKAGES)
    contenders = [Contender(label, app_python, "app_first_call.py", Path(folder).resolve())
                  for label, _, folder in (c.partition("=") for c in args.compare)]
    contenders += [Contender(args.label, app_python, "app_first_call.py"),
                   Contender(FLOOR, app_python, "floor_app.py"),  # the same calls with the libraries alone
                   Contender("Graph SDK way", sdk_python, "sdk_app.py")]
    stack = Stack(tls=True)
    try:
        figures = first_calls(stack, contenders, app_python, ("granted, bytecode cached",), args.runs)
    finally:
        stack.close()
    text = cold_start_section(contenders, figures, args.runs, time.perf_counter() - started, args.note)
    print("\n" + text)
    if args.out != "-":
        results.write_section(Path(args.out), text, COLD_BEGIN, COLD_END)
    (WORK / f"coldstart-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json").write_text(
        json.dumps({f"{who} | {case}": v for (who, case), v in figures.items()}, indent=1))
    return 0


def cold_start_section(contenders: list[Contender], figures: dict[tuple[str, str], list[dict[str, Any]]], runs: int,
                       seconds: float, note: str) -> str:
    case = "granted, bytecode cached"
    m = results.machine()

    def med(who: str, value: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(value(f) for f in figures[(who, case)])

    def ms(f: dict[str, Any]) -> float:
        return float(f["seconds"]) * 1000

    def above(f: dict[str, Any]) -> float:
        return float(f["maxrss_kb"] - f["worker_kb"]) / 1024

    def whole(f: dict[str, Any]) -> float:
        return float(f["maxrss_kb"]) / 1024

    sdk = contenders[-1].who
    lines = [
        COLD_BEGIN,
        "## Cold start over TLS, against the Graph SDK way (issue #19)",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {m['cores']} cores ({m['cpu']}), Python {m['python']}; "
        f"{seconds:.0f} s in all. Command: `.venv/bin/python -m bench.run cold-start"
        + "".join(f" --compare '{c.who}={c.app_root}'" for c in contenders[:-3]) + "`. "
        "Each figure: a fresh process that imports `azure.functions` (the worker has it loaded before any app), then, "
        "timed from there, imports the app and answers its first sync, granted, through the HTTP trigger's function "
        "(bench/app_first_call.py; bench/sdk_app.py for msgraph-beta-sdk with azure-data-tables; bench/floor_app.py, "
        "the floor: the same state read, token and POST with azure-data-tables, azure-identity and requests and none "
        "of the app's code, i.e. the least any app on the libraries this project is fixed to can cost): managed-identity "
        "token over HTTP from 127.0.0.1 as the Functions host serves it, Table Storage (Azurite) and Graph (the "
        "emulator) over HTTPS only, the clients trusting certifi's bundle plus the emulators' CA. Bytecode compiled "
        f"beforehand. {runs} runs each, the contenders taking turns; medians.",
        "",
        "| Code | Cold start to first granted answer | Ratio to the SDK way | Peak RSS above the worker's | Ratio | "
        "Peak RSS, whole process | Ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in contenders:
        lines.append(f"| {c.who} | {med(c.who, ms):.0f} ms | {med(c.who, ms) / med(sdk, ms):.2f}× | "
                     f"{med(c.who, above):.1f} MB | {med(c.who, above) / med(sdk, above):.2f}× | "
                     f"{med(c.who, whole):.1f} MB | {med(c.who, whole) / med(sdk, whole):.2f}× |")
    lines += ["", "Every run, in order (ms): " + "; ".join(
        f"{c.who}: " + ", ".join(f"{ms(f):.0f}" for f in figures[(c.who, case)]) for c in contenders) + "."]
    floor, app = med(FLOOR, ms), med(contenders[-3].who, ms)
    lines += ["", f"The libraries alone cost {floor / med(sdk, ms):.2f}× the SDK way; the app's own code adds "
              f"{app - floor:.0f} ms above them ({app / floor:.2f}× the floor): its imports, settings checked at load, "
              "the trigger's registrations, and two more table round trips (the claim and the record)."]
    if note:
        lines += ["", note]
    lines += [COLD_END]
    return "\n".join(lines) + "\n"


def kept_sections(path: Path) -> str:
    """The sections other benchmarks write into RESULTS.md (bench/tenants.py's, bench/telemetry.py's, any
    block between ``<!-- NAME: begin -->`` and ``<!-- NAME: end -->``), kept in order when this one
    rewrites the file."""
    import re

    current = path.read_text() if path.exists() else ""
    blocks = re.finditer(r"<!-- (?P<name>[^>]+?): begin -->.*?<!-- (?P=name): end -->", current, re.DOTALL)
    return "".join("\n" + block.group(0) + "\n" for block in blocks)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tenants"]:  # ./scripts/bench.sh tenants [...]: many tenants in one window (bench/tenants.py)
        from bench import tenants

        return tenants.main(argv[1:])
    if argv[:1] == ["cold-start"]:  # ./scripts/bench.sh cold-start [...]: the cold start alone, its own section
        return cold_start_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and no SDK install (for CI)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"), help="where to write the report ('-' for none)")
    args = parser.parse_args(argv)
    smoke = args.smoke
    started = time.perf_counter()
    bench = Bench(smoke)
    WORK.mkdir(parents=True, exist_ok=True)
    print("setting up virtual environments…", flush=True)
    app_python = venv("venv-app", ["-r", str(ROOT / "requirements.txt")]) if not smoke else Path(sys.executable)
    sdk_python = None if smoke else venv("venv-sdk", SDK_PACKAGES)
    stack = Stack()
    try:
        print("1. footprint", flush=True)
        if smoke:
            bench.add("Installed dependencies", "skipped (smoke)", "skipped (smoke)", "MB", "≤ 0.10×", None)
        else:
            footprint(bench, app_python, sdk_python)
        print("2. cold start (Graph and Table Storage over TLS)", flush=True)
        tls_stack = Stack(tls=True)
        try:
            cold_start(bench, tls_stack, app_python, sdk_python, runs=1 if smoke else 7)
        finally:
            tls_stack.close()
        print("3. cost of a refusal", flush=True)
        refusal_cost(bench, stack, calls=20 if smoke else 500)
        print("4. round trips", flush=True)
        round_trips(bench, stack)
        print("5. contention", flush=True)
        contention(bench, stack, processes=2 if smoke else 4, callers=5 if smoke else 25)
        print("6. fan-out", flush=True)
        fan_out(bench, stack, connectors=10 if smoke else 100, latency=0.1)
    finally:
        stack.close()
    text = report(bench, time.perf_counter() - started)
    print("\n" + text)
    if args.out != "-":
        Path(args.out).write_text(text + kept_sections(Path(args.out)))
    missed = [r.name for r in bench.rows if r.met == "NO"]
    if missed:
        print("targets missed: " + "; ".join(missed), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
