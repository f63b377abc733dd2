"""A separate app process for the import-job tests: it builds the service from its environment, as
a Functions worker does (shared/runtime/process.py), and runs import steps. Each line it prints is JSON.

    python tests/importworker.py steps MESSAGE...   print {"ready"}, wait for "go" on stdin, run
                                                    each step message, print {"outcome", "at"} each
    python tests/importworker.py drain SECONDS [--first]
                                                    deliver IMPORT_QUEUE's messages as the queue
                                                    trigger does, printing {"outcome", "at"} each,
                                                    until one runs a step (or, with --first, after
                                                    the first message) or SECONDS pass
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import runtime  # noqa: E402

RAN = ("stepped", "completed", "lost")


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def steps(messages: list[str]) -> None:
    service = runtime.service()
    service.import_jobs()
    assert service.imports is not None
    service.imports.job(json.loads(messages[0])["importId"])  # warm up: table client and connection
    say(ready=True)
    sys.stdin.readline()
    for message in messages:
        say(outcome=service.run_import_step(message), at=time.time())


def drain(seconds: float, first: bool) -> None:
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    service = runtime.service()
    service.import_jobs()
    queue = QueueClient.from_connection_string(os.environ["AzureWebJobsStorage"], os.environ["IMPORT_QUEUE"],
                                               message_decode_policy=TextBase64DecodePolicy())
    say(ready=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for message in queue.receive_messages(max_messages=1, visibility_timeout=600):  # the host's 10 minutes
            outcome = service.run_import_step(message.content)
            queue.delete_message(message)
            say(outcome=outcome, at=time.time())
            if first or outcome in RAN:
                return
        time.sleep(0.1)
    say(outcome="timeout", at=time.time())


if __name__ == "__main__":
    if sys.argv[1] == "steps":
        steps(sys.argv[2:])
    else:
        drain(float(sys.argv[2]), "--first" in sys.argv[3:])
