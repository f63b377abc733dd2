"""One worker process of bench/tenants.py: what a Functions instance's Python worker does for the
tenant queue, driven the way the host's queue trigger drives it.

It loads the app (``function_app``, so ``azure.functions`` too, as the worker has it), then pulls
messages from the tenant queue with up to ``--threads`` invocations in flight (the host fetches up
to 32 messages at a time and keeps ``batchSize + newBatchThreshold`` in flight; the Python worker
runs each sync invocation on a thread of its pool), calls ``shared.runtime.handlers.run_tenant`` with the
message text exactly as ``function_app.tenant_sync`` does, deletes the message when the invocation
succeeds and makes it visible again when it raises (moved aside after five tries, like the host).

Every Table Storage round trip of the app is counted, by what it is, through the table clients'
``raw_request_hook`` (``shared.clients.storage.table_service`` is wrapped before the app builds any
client; nothing in ``shared`` changes). Protocol with the parent, one line each:
stdin ``go`` / ``stop``; stdout ``READY {json}``, ``P <tenants> <pages> <failures>`` (progress)
and ``FINAL {json}`` (every figure, after ``stop``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAX_DEQUEUE = 5  # the host's maxDequeueCount
FETCH_MAX = 32  # the most messages one Get Messages returns


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def rss_kb(field: str = "VmRSS") -> int:
    """This process's resident memory (VmRSS), or its peak (VmHWM). Not ru_maxrss: Linux keeps that
    across exec, so a worker started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


class TableCounter:
    """Counts the app's Table Storage round trips (every attempt) by what they are."""

    def __init__(self, home_table: str):
        self.home = home_table.lower()
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, request: Any) -> None:
        kind = self.classify(request.http_request.method, request.http_request.url)
        with self.lock:
            self.counts[kind] += 1

    def classify(self, method: str, url: str) -> str:
        parts = urlsplit(url)
        path = unquote(parts.path).strip("/").split("/", 1)
        rest = path[1] if len(path) > 1 else path[0]
        if rest == "Tables":
            return "create table"
        if rest == "$batch":
            return "state commit (transaction)"
        name, _, keys = rest.partition("(")
        point = "RowKey=" in keys
        if name.lower() == self.home:
            if method == "GET":
                return "registry read" if point else "registry page query"
            return "registry record (merge)"
        if method == "DELETE":
            return "retention sweep: delete"
        if method != "GET":
            return "state claim"
        if point:
            return "state read"
        query = unquote(parts.query)
        if "RowKey eq 'state'" in query:
            return "state query (repair)"
        for marker, what in (("'ask-'", "asks"), ("'operation'", "operations"), ("'history", "history"), ("'job'", "import jobs")):
            if marker in query:
                return f"retention sweep: {what} query"
        return "other query"


class Worker:
    def __init__(self, threads: int, poll: float):
        self.threads, self.poll = threads, poll
        started, cpu0 = time.perf_counter(), cpu_seconds()
        import function_app  # noqa: F401  (what the Python worker loads: azure.functions and the app)
        from shared.clients import storage
        from shared.clients.identity import make_credential
        from shared.runtime import handlers
        from shared.runtime import process as runtime

        settings = runtime.settings()
        self.tables = TableCounter(settings.state_table)
        build = storage.table_service

        def counted(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("raw_request_hook", self.tables)
            return build(*args, **kwargs)

        storage.table_service = counted  # before the app builds a client (runtime builds them on first use)
        registry = runtime.tenancy()  # a warm instance: the app's clients built (no request made)
        assert registry is not None, "MULTI_TENANT_CLIENT_ID is not set"
        self.run_tenant = handlers.run_tenant
        self.queue = storage.queue_client(settings.storage, settings.tenant_queue, make_credential)
        self.ready = {"pid": os.getpid(), "importSeconds": time.perf_counter() - started,
                      "importCpuSeconds": cpu_seconds() - cpu0, "rssKb": rss_kb(), "threads": threads}
        self.lock = threading.Condition()
        self.in_flight = 0
        self.tenants = self.pages = self.sent = self.failures = self.poison = 0
        self.outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.queue_ops: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.first_at: float | None = None
        self.last_done_at: float | None = None
        self.cpu_at_go = 0.0
        self.cpu_at_last_done = 0.0
        self.max_fds = open_fds()
        self.max_rss_sampled = rss_kb()
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="invocation")

    # --- the queue trigger ---------------------------------------------------------------

    def fetch_loop(self) -> None:
        idle = self.poll
        while not self.stopping.is_set():
            with self.lock:
                while self.in_flight >= self.threads and not self.stopping.is_set():
                    self.lock.wait(0.5)
                free = self.threads - self.in_flight
            if self.stopping.is_set():
                break
            batch = min(FETCH_MAX, free)
            try:
                messages = list(self.queue.receive_messages(messages_per_page=batch, max_messages=batch,
                                                            visibility_timeout=600))
            except Exception as exc:  # noqa: BLE001  (a queue fault: count it, poll again)
                self.errors[f"receive: {type(exc).__name__}"] += 1
                time.sleep(idle)
                continue
            self.queue_ops["get messages"] += 1
            if not messages:
                self.queue_ops["empty polls"] += 1
                time.sleep(idle)
                continue
            self.queue_ops["messages received"] += len(messages)
            with self.lock:
                self.in_flight += len(messages)
                if self.first_at is None:
                    self.first_at = time.time()
            for message in messages:
                self.pool.submit(self.invoke, message)

    def invoke(self, message: Any) -> None:
        started = time.perf_counter()
        try:
            what = self.run_tenant(message.content)
        except Exception as exc:  # noqa: BLE001  (the host retries the message)
            logging.getLogger("bench.worker").exception("invocation failed")
            self.fail(message, exc)
            return
        finally:
            elapsed = time.perf_counter() - started
        try:
            self.queue.delete_message(message)
            self.queue_ops["delete message"] += 1
        except Exception as exc:  # noqa: BLE001
            self.errors[f"delete: {type(exc).__name__}"] += 1
        with self.lock:
            if what.startswith("page:"):
                self.pages += 1
                self.sent += int(what.split()[1])
            else:
                self.tenants += 1
                self.outcomes[what] += 1
                self.latencies.append(elapsed)
            self.last_done_at = time.time()
            self.cpu_at_last_done = cpu_seconds()
            self.in_flight -= 1
            self.lock.notify_all()

    def fail(self, message: Any, exc: Exception) -> None:
        self.errors[f"invocation: {type(exc).__name__}: {str(exc)[:120]}"] += 1
        try:
            if message.dequeue_count >= MAX_DEQUEUE:
                self.queue.delete_message(message)
                self.poison += 1
            else:
                self.queue.update_message(message, visibility_timeout=0)
                self.queue_ops["update message (retry)"] += 1
        except Exception as exc2:  # noqa: BLE001
            self.errors[f"retry: {type(exc2).__name__}"] += 1
        with self.lock:
            self.failures += 1
            self.in_flight -= 1
            self.lock.notify_all()

    # --- reporting ---------------------------------------------------------------------------

    def progress_loop(self) -> None:
        shown = None
        while not self.stopping.wait(0.25):
            self.max_fds = max(self.max_fds, open_fds())
            self.max_rss_sampled = max(self.max_rss_sampled, rss_kb())
            with self.lock:
                now = (self.tenants, self.pages, self.failures)
            if now != shown:
                print(f"P {now[0]} {now[1]} {now[2]}", flush=True)
                shown = now

    def final(self) -> dict[str, Any]:
        latencies = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return latencies[min(len(latencies) - 1, int(q * (len(latencies) - 1) + 0.5))] if latencies else None

        return {
            **self.ready,
            "tenants": self.tenants, "pages": self.pages, "sent": self.sent, "failures": self.failures,
            "poison": self.poison, "outcomes": dict(self.outcomes), "errors": dict(self.errors),
            "tableRoundTrips": dict(self.tables.counts), "queueOps": dict(self.queue_ops),
            "firstAt": self.first_at, "lastDoneAt": self.last_done_at,
            "cpuSeconds": self.cpu_at_last_done - self.cpu_at_go if self.last_done_at else 0.0,
            "maxRssKb": rss_kb("VmHWM"), "rssKbAtEnd": rss_kb(),
            "maxFds": max(self.max_fds, open_fds()),
            "latencies": [round(x, 4) for x in self.latencies],
            "latency": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
                        "mean": sum(latencies) / len(latencies) if latencies else None},
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=24, help="invocations in flight at most")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between polls of an empty queue")
    args = parser.parse_args(argv)
    # The app's warnings (a tenant not synced, a fault) go to this worker's log, as the host would keep them.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    worker = Worker(args.threads, args.poll)
    print("READY " + json.dumps(worker.ready), flush=True)
    for line in sys.stdin:
        if line.strip() == "go":
            break
    else:
        return 1
    worker.cpu_at_go = cpu_seconds()
    threads = [threading.Thread(target=worker.fetch_loop, daemon=True), threading.Thread(target=worker.progress_loop, daemon=True)]
    for t in threads:
        t.start()
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    worker.stopping.set()
    with worker.lock:
        worker.lock.notify_all()
    for t in threads:
        t.join(timeout=30)
    worker.pool.shutdown(wait=True)
    print("FINAL " + json.dumps(worker.final()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
