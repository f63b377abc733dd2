"""The timer and queue handlers: what function_app's non-HTTP triggers run."""
from __future__ import annotations

import logging

from .deferred import PendingFire
from .model import Outcome, SyncResult, Trigger
from .runtime import service
from .service import SyncService

log = logging.getLogger(__name__)


def run_deferred(message: str) -> SyncResult | None:
    """A pending sync's queue message became visible: fire it. A storage fault raises, so that
    the host retries the message (and moves it to the poison queue after five tries)."""
    svc = service()
    result = svc.fire(PendingFire.from_json(message))
    if result is not None:
        log.info("deferred sync %s: %s %s", result.target, result.outcome.value, result.message)
    _flush(svc)
    return result


def run_import_step(message: str) -> str:
    """A step of an Autopilot import job (shared/importjob.py). A storage fault raises, so that
    the host retries the message; the watcher resends a step whose message was lost."""
    svc = service()
    what = svc.run_import_step(message)
    log.info("import step: %s", what)
    _flush(svc)
    return what


def run_watch() -> int:
    finished = service().watch()
    if finished:
        log.info("watch: %d sync(s) seen to finish", finished)
    return finished


def run_timer(past_due: bool) -> list[SyncResult]:
    if past_due:
        log.info("timer is past due; syncing now")
    svc = service()
    results = svc.sync_enabled(Trigger.TIMER, caller="timer")
    for r in results:
        level = logging.ERROR if r.outcome is Outcome.FAILED else logging.INFO
        log.log(level, "timer sync %s: %s %s", r.target, r.outcome.value, r.message)
    _flush(svc)
    return results


def _flush(svc: SyncService) -> None:
    # Deliver queued notifications before the invocation ends: an idle instance may be reclaimed.
    if svc.notifier is not None:
        svc.notifier.flush(timeout=20)
