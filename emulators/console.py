"""The local run's live log: one readable line per invocation and per telemetry event.

In Azure the same events are traces in Application Insights (shared/common/telemetry.py); here they are
printed as they happen, e.g.::

    22:14:03  POST /api/sync/autopilot -> 202 (41 ms)
    22:14:03    sync      autopilot              started: Graph 204 in 12 ms, by http (next 22:24:03Z)
    22:16:00  timer sync_watch (3 ms)
"""
from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TextIO

_lock = threading.Lock()
_invocation = threading.local()  # the events of the invocation running on this thread


@contextmanager
def invocation(describe: Callable[[], str]) -> Iterator[None]:
    """Print an invocation's line (``describe()`` once it is over) followed by the events it
    logged on this thread, so that each call's events stand under it."""
    events: list[str] = []
    _invocation.events = events
    try:
        yield
    finally:
        _invocation.events = None
        try:
            with _lock:
                line(describe(), _locked=True)
                for text in events:
                    line(text, indent=True, _locked=True)
        except Exception:  # a closed stdout: nothing to tell
            pass


def line(text: str, indent: bool = False, stream: TextIO | None = None, _locked: bool = False) -> None:
    """Print one line with the local time, whole even when threads print together."""
    if not _locked:
        with _lock:
            return line(text, indent, stream, _locked=True)
    print(f"{datetime.now():%H:%M:%S}  {'  ' if indent else ''}{text}", file=stream or sys.stdout, flush=True)


def _hhmmss(value: Any) -> str:
    return str(value)[11:] if isinstance(value, str) and len(value) > 11 else str(value)


def _sync(e: dict[str, Any]) -> str:
    outcome = e.get("outcome", "?")
    if e.get("attempted"):
        detail = f"Graph {e.get('httpStatus', 'no answer')} in {e.get('durationMs', '?')} ms"
    else:
        detail = "no Graph call"
    parts = [f"{outcome}: {detail}, by {e.get('trigger', '?')}"]
    if e.get("errorCode"):
        parts.append(f"{e['errorCode']}: {e.get('message', '')}")
    if e.get("scheduledAt"):
        parts.append(f"fires at {_hhmmss(e['scheduledAt'])}")
    elif e.get("nextAllowedAt") and outcome != "failed":
        parts.append(f"next {_hhmmss(e['nextAllowedAt'])}")
    return "; ".join(parts)


def readable(e: dict[str, Any]) -> str:
    """One event as a line: its kind, what it is about, and what happened."""
    event = e.get("event", "?")
    about = e.get("unit") or e.get("importId") or e.get("tenant") or e.get("code") or ""
    if event == "sync":
        what = _sync(e)
    elif event == "health":
        what = e.get("health", "?") + (f": {e['message']}" if e.get("message") else "")
    elif event in ("timer", "import") and e.get("counts"):
        counts = ", ".join(f"{v} {k}" for k, v in e["counts"].items() if v)
        what = f"{e.get('outcome', 'tick')}" + (f" (step {e['step']})" if e.get("step") else "") + f": {counts or 'nothing'}"
    else:
        what = str(e.get("outcome") or "") + (f" (step {e['step']})" if e.get("step") else "")
        if e.get("message"):
            what += f": {e['message']}"
    tenant = f" [tenant {e['tenant']}]" if e.get("tenant") and about != e.get("tenant") else ""
    return f"{event:<9} {about:<22} {what}{tenant}"


class EventPrinter(logging.Handler):
    """Prints the app's telemetry records (shared/common/telemetry.py) readably."""

    def __init__(self, print_line: Callable[..., None] = line):
        super().__init__(logging.INFO)
        self.print_line = print_line

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = getattr(record, "intune_sync", None)
            if isinstance(fields, dict):
                buffered = getattr(_invocation, "events", None)
                if buffered is not None:  # printed after the invocation's own line
                    buffered.append(readable(fields))
                else:
                    self.print_line(readable(fields), indent=True)
        except Exception:  # a closed stdout must not break the sync that logged this
            self.handleError(record)
