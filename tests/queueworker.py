"""A separate app process that does what a Functions instance does with the app's job queues: it
builds the service from its environment (shared/runtime/process.py) and runs the device-sync,
import-job and deferred-sync messages it receives as their queue triggers do, several at once, deleting each once it ran (a failed one comes
back after its visibility timeout, as the host's retry does). Used by the multi-process tests and
the device-sync benchmark (bench/devices.py).

    python tests/queueworker.py SECONDS [--threads N] [--idle SECONDS] [--local-budget]

Runs until SECONDS pass, or until no message came for ``--idle`` seconds after the first one.
``--local-budget``: count Intune's write budget in this process only (the baseline the shared
budget replaces). Prints one JSON line at the end: steps run, outcomes, failures, table round
trips and peak memory.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VISIBILITY = 30  # seconds a received message stays hidden: a failed step is retried after it
TABLE_CALLS = Counter[str]()


def count_table_calls() -> None:
    """Count every HTTP request azure-core sends to the table endpoint (round trips)."""
    from azure.core.pipeline.transport import RequestsTransport

    endpoint = next((p.split("=", 1)[1] for p in os.environ["AzureWebJobsStorage"].split(";")
                     if p.startswith("TableEndpoint=")), "")
    original = RequestsTransport.send
    lock = threading.Lock()

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        if endpoint and request.url.startswith(endpoint.rstrip("/").rsplit("/", 1)[0]):
            with lock:
                TABLE_CALLS["table"] += 1
        return original(self, request, **kwargs)

    RequestsTransport.send = send  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    seconds = float(argv[0])
    threads = int(argv[argv.index("--threads") + 1]) if "--threads" in argv else 8
    idle = float(argv[argv.index("--idle") + 1]) if "--idle" in argv else 0.0
    count_table_calls()
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    from shared.runtime import process

    service = process.service()
    if "--local-budget" in argv:
        from shared.clients.budget import Limits, LocalBudget

        settings = service.settings
        service.graph.budget = LocalBudget(Limits(settings.device_write_limit, settings.intune_write_limit,
                                                  settings.write_limit_window_seconds))
    from shared.runtime import handlers

    # What the app's queue triggers run (function_app.py), by queue.
    runners: dict[str, Any] = {service.settings.device_sync_queue: handlers.run_device_sync_step,
                               service.settings.import_queue: handlers.run_import_step,
                               service.settings.queue_name: handlers.run_deferred}
    queues = {name: QueueClient.from_connection_string(os.environ["AzureWebJobsStorage"], name,
                                                       message_decode_policy=TextBase64DecodePolicy())
              for name in runners}
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    started = last = time.monotonic()
    seen = False

    def run(name: str, message: Any) -> None:
        try:
            outcome = runners[name](message.content)
            queues[name].delete_message(message)
            with lock:
                outcomes[str(outcome).split(":")[0].split(" ")[0]] += 1
        except Exception as exc:  # the host would retry it: so does the visibility timeout
            with lock:
                failures.append(f"{type(exc).__name__}: {exc}"[:300])

    print(json.dumps({"ready": True}), flush=True)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        while time.monotonic() - started < seconds:
            received = []
            for name, queue in queues.items():
                try:
                    received += [(name, m) for m in queue.receive_messages(max_messages=threads, visibility_timeout=VISIBILITY)]
                except Exception:  # noqa: BLE001 - a queue not made yet: nothing sent to it
                    continue
            if received:
                seen, last = True, time.monotonic()
                list(pool.map(lambda nm: run(*nm), received))
            elif seen and idle and time.monotonic() - last > idle:
                break
            else:
                time.sleep(0.1)
    peak_kb = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
    print(json.dumps({"steps": sum(outcomes.values()), "outcomes": dict(outcomes), "failures": failures[:20],
                      "failureCount": len(failures), "tableCalls": TABLE_CALLS["table"], "peakKb": peak_kb,
                      "seconds": round(time.monotonic() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
