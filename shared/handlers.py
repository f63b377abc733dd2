"""The timer and queue handlers: what function_app's non-HTTP triggers run."""
from __future__ import annotations

import logging

from .deferred import PendingFire
from .errors import AppError
from .model import Outcome, SyncResult, Trigger
from .runtime import service, tenancy
from .service import SyncService

log = logging.getLogger(__name__)


def run_deferred(message: str) -> SyncResult | None:
    """A pending sync's queue message became visible: fire it. A storage fault raises, so that
    the host retries the message (and moves it to the poison queue after five tries)."""
    fire = PendingFire.from_json(message)
    svc = service()
    if fire.tenant:  # a registered customer tenant's pending sync
        registry = tenancy()
        tenant = registry.registry.get(fire.tenant) if registry else None
        if registry is None or tenant is None or not tenant.enabled:
            log.warning("deferred sync for tenant %s: not registered, disabled, or multi-tenant mode is off; dropped",
                        fire.tenant)
            return None
        svc = registry.service(tenant)
    result = svc.fire(fire)
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
    registry = tenancy()
    if registry is not None:  # many tenants: the registry's pages go out on the tenant queue
        try:
            registry.fan_out(svc.clock())
        except AppError as exc:  # the next tick sends it again; the home tenant's syncs stand
            log.error("timer: the tenants' fan-out was not sent: %s", exc.message)
    _flush(svc)
    return results


def run_tenant(message: str) -> str:
    """A fan-out message of the tenant queue (shared/tenancy.py): a page of the registry, or one
    tenant to sync. A storage fault raises, so that the host retries the message."""
    registry = tenancy()
    if registry is None:
        log.warning("tenant queue: multi-tenant mode is off (MULTI_TENANT_CLIENT_ID); message dropped")
        return "off"
    what = registry.run(message)
    log.info("tenant fan-out: %s", what)
    if registry.home.notifier is not None:  # briefly: one tenant's slow endpoint must not hold the others' messages
        registry.home.notifier.flush(timeout=2)
    return what


def _flush(svc: SyncService) -> None:
    # Deliver queued notifications before the invocation ends: an idle instance may be reclaimed.
    if svc.notifier is not None:
        svc.notifier.flush(timeout=20)
