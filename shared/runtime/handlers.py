"""The timer and queue handlers: what function_app's non-HTTP triggers run."""
from __future__ import annotations

import logging
from collections import Counter

from ..assembly import SyncService
from ..common import AppError, HomeTenant, InvalidMessage, Outcome, SyncResult, Trigger, log_invalid, messages, telemetry
from ..engine import PendingFire
from .process import service, tenancy

log = logging.getLogger(__name__)
DEVICE_SYNC_EVENT = "devices"  # the telemetry event of device-sync jobs (shared/common/telemetry.py)


def run_deferred(message: str) -> SyncResult | None:
    """A pending sync's queue message became visible: fire it. A storage fault raises, so that
    the host retries the message (and moves it to the poison queue after five tries); a message
    that is not one of ours is logged once and acknowledged (retrying it could never help)."""
    try:
        fire = PendingFire.from_json(message)
    except InvalidMessage as exc:
        log_invalid("deferred", "SYNC_QUEUE", exc)
        return None
    svc = service() if not fire.tenant else _tenant_service(fire)
    if svc is None:
        return None
    result = svc.fire(fire)  # logs the firing (shared/common/telemetry.py)
    _flush(svc)
    return result


def _tenant_service(fire: PendingFire) -> SyncService | None:
    """The service of the customer tenant a pending sync names; None (logged) when there is none
    to fire it in: not registered, disabled, multi-tenant mode off, or the app's own tenant."""
    customers = tenancy()
    tenant = customers.registry.get(fire.tenant or "") if customers else None
    why = "not registered, disabled, or multi-tenant mode is off"
    if customers is not None and tenant is not None and tenant.enabled:
        try:
            return customers.service(tenant)
        except HomeTenant as exc:  # TokenUnavailable raises: the host retries the message
            why = exc.message
    telemetry.emit("deferred", logging.WARNING, trigger=Trigger.DEFERRED, target=fire.target, tenant=fire.tenant,
                   outcome="dropped", message=f"the pending sync was not fired: {why}")
    return None


def run_import_step(message: str) -> str:
    """A step of an Autopilot import job (shared/onboarding/importjob.py). A storage fault raises, so that
    the host retries the message; the watcher resends a step whose message was lost."""
    svc = service()
    what = svc.run_import_step(message)  # logs the step (an ``import`` event)
    _flush(svc)
    return what


def run_device_sync_step(message: str) -> str:
    """A step of a bulk device-sync job (shared/devicesync), run in the service of the tenant its
    message names (none: the app's own). A message that is not one of ours is logged once and
    acknowledged; a storage fault raises, so that the host retries the message."""
    try:
        tenant_id = messages.guid(messages.message_object(message), "tenantId", required=False)
    except InvalidMessage as exc:
        log_invalid(DEVICE_SYNC_EVENT, "DEVICE_SYNC_QUEUE", exc)
        return "invalid"
    svc = service() if tenant_id is None else _device_sync_tenant(tenant_id)
    if svc is None:
        return "dropped"
    if not svc.devices.enabled:
        telemetry.emit(DEVICE_SYNC_EVENT, logging.WARNING, trigger=DEVICE_SYNC_EVENT, tenant=tenant_id, outcome="dropped",
                       message="the step was not run: bulk device sync is off (SYNC_TARGETS names no devices)")
        return "off"
    what: str = svc.device_sync().run_step(message)  # logs the step (a ``devices`` event), or the message as invalid
    _flush(svc)
    return what


def _device_sync_tenant(tenant_id: str) -> SyncService | None:
    """The service of the customer tenant a device-sync step names; None (logged) when there is
    none to run it in: not registered, disabled, multi-tenant mode off, or the app's own tenant."""
    customers = tenancy()
    tenant = customers.registry.get(tenant_id) if customers else None
    why = "not registered, disabled, or multi-tenant mode is off"
    if customers is not None and tenant is not None and tenant.enabled:
        try:
            return customers.service(tenant)
        except HomeTenant as exc:  # TokenUnavailable raises: the host retries the message
            why = exc.message
    telemetry.emit(DEVICE_SYNC_EVENT, logging.WARNING, trigger=DEVICE_SYNC_EVENT, tenant=tenant_id, outcome="dropped",
                   message=f"the step was not run: {why}")
    return None


def run_watch() -> int:
    """The watcher tick; each finding is logged once where it is made (shared/engine/follow.py)."""
    return service().watch()


def run_credential_check() -> str:
    """The daily credentials timer (CREDENTIAL_CHECK_SCHEDULE): the home tenant's Apple credentials
    checked here, the registered tenants' through the fan-out (one message each, three reads)."""
    svc = service()
    state = "unavailable"
    try:
        state = svc.check_credentials().state
    except AppError as exc:  # Table Storage down: the tenants are still checked; tomorrow tells what is owed
        log.error("credentials check: the home tenant was not checked: %s", exc.message)
    customers = tenancy()
    if customers is not None:
        try:
            customers.fan_out(svc.clock(), work="credentials")
        except AppError as exc:
            log.error("credentials check: the tenants' fan-out was not sent: %s", exc.message)
    _flush(svc)
    return state


def run_timer(past_due: bool) -> list[SyncResult]:
    """The sync timer: every enabled target (each unit's result is a ``sync`` event), then each
    unit's health from Graph (``health`` events), one ``timer`` event with the tally, and the
    tenants' fan-out."""
    svc = service()
    results = svc.sync_enabled(Trigger.TIMER, caller="timer")
    try:
        svc.report_health()
    except Exception:  # Table Storage down, or a bug: the syncs above stand, the next tick rates
        log.exception("timer: health not rated")
    tally = Counter(r.outcome.value for r in results)
    failed = tally.get(Outcome.FAILED.value, 0)
    telemetry.emit("timer", logging.ERROR if failed else logging.INFO, trigger=Trigger.TIMER, counts=dict(tally),
                   message="past due; synced now" if past_due else None)
    customers = tenancy()
    if customers is not None:  # many tenants: the registry's pages go out on the tenant queue
        try:
            customers.fan_out(svc.clock())
        except AppError as exc:  # the next tick sends it again; the home tenant's syncs stand
            log.error("timer: the tenants' fan-out was not sent: %s", exc.message)
    _flush(svc)
    return results


def run_tenant(message: str) -> str:
    """A fan-out message of the tenant queue (shared/tenancy/customers.py): a page of the registry, or one
    tenant to sync. A storage fault raises, so that the host retries the message."""
    customers = tenancy()
    if customers is None:
        log.warning("tenant queue: multi-tenant mode is off (MULTI_TENANT_CLIENT_ID); message dropped")
        return "off"
    what = customers.run(message)  # a tenant's message logs a ``tenant`` event
    if what.startswith("page"):
        log.info("tenant fan-out: %s", what)
    customers.home.flush(timeout=2)  # briefly: one tenant's slow endpoint must not hold the others' messages
    return what


def _flush(svc: SyncService) -> None:
    svc.flush(timeout=20)
