"""Many tenants from one deployment (MULTI_TENANT_CLIENT_ID set): a sync service per registered
customer tenant, the timer's fan-out over the registry, and the consent check.

Each tenant's service is the single-tenant service unchanged, given the tenant's own Graph
client (a token from shared/clients/identity.py's TenantCredentials: one credential and one cached token per
tenant per process) and the tenant's own state table (``<SYNC_STATE_TABLE><tenant id hex>``), so
no tenant's cooldown, lease, history or pending sync can touch another's. Deferred syncs share
the one queue (their messages name the tenant); "sync and wait" operations live in the home table
(an operation names its tenant), so one poll route serves them all.

Fan-out: the timer sends one ``page`` message to TENANT_QUEUE; a page lists PAGE_SIZE tenants,
sends one ``tenant`` message each and the next page's message, so that 10,000 tenants never make
one long invocation. A ``tenant`` message syncs that tenant's targets through the same claim as
every other caller (a duplicate finds the unit in its window and makes no Graph call), repairs
the tenant's rows as the watcher does for the home tenant, and records the outcome in the
registry: one tenant's failure is its own and never slows the others.
"""
from __future__ import annotations

import base64
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ..assembly import SyncService, write_budget
from ..clients import GraphClient, PendingQueue, TenantCredentials, make_credential, table_client
from ..common import AppError, GraphAccessDenied, HomeTenant, TokenUnavailable, Trigger, UpstreamError, iso, messages, telemetry
from ..engine import StateStore
from .registry import (
    CONSENTED,
    HOME_TENANT,
    MISSING_ROLE,
    NOT_CONSENTED,
    PAGE_SIZE,
    UNAVAILABLE,
    Tenant,
    TenantStore,
    state_of_results,
    token_failure_state,
    token_of,
)

log = logging.getLogger(__name__)

MAX_SERVICES = 256  # tenant services kept per process (each holds a Graph client and its token)
SWEEP_EVERY = timedelta(days=1)  # each tenant's retention sweep, at its first tick after this


WORK = ("sync", "credentials")


@dataclass(frozen=True)
class TenantMessage:
    """A fan-out message: a page of the registry to send out, or one tenant to sync."""

    kind: str  # "page" or "tenant"
    tick: datetime
    tenant_id: str | None = None
    continuation: str | None = None
    work: str = "sync"  # or "credentials": the daily check of the tenant's Apple credentials

    @property
    def scheduled_at(self) -> datetime:
        return self.tick  # visible at once

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "tick": iso(self.tick), "tenantId": self.tenant_id,
                           "continuation": self.continuation, "work": self.work})

    @classmethod
    def from_json(cls, text: str) -> TenantMessage:
        """The message, checked field by field (InvalidMessage, shared/common/messages.py): a tenant's has a
        tenant id (a GUID), a page's may have a continuation token that this app wrote."""
        data = messages.message_object(text)
        kind = data.get("kind")
        if kind not in ("page", "tenant"):
            raise messages.InvalidMessage("kind is neither page nor tenant")
        tick = messages.time(data, "tick")
        work = data.get("work", "sync")  # absent in the messages of earlier versions: a sync
        if work not in WORK:
            raise messages.InvalidMessage(f"work is none of {', '.join(WORK)}")
        if kind == "tenant":
            return cls(kind, tick, tenant_id=messages.guid(data, "tenantId"), work=work)
        continuation = messages.text(data, "continuation", r"[A-Za-z0-9_=-]+", required=False, limit=4096)
        try:
            token_of(continuation)
        except ValueError:
            raise messages.InvalidMessage("continuation is not a continuation token of this app") from None
        return cls(kind, tick, continuation=continuation, work=work)


class Tenancy:
    """The registry and a service per tenant, around the home service."""

    def __init__(self, home: SyncService, credentials: TenantCredentials, queue: PendingQueue):
        self.home, self.settings, self.credentials, self.queue = home, home.settings, credentials, queue
        self.registry = home.store.sibling(TenantStore)
        self._services: OrderedDict[tuple[str, tuple[str, ...]], SyncService] = OrderedDict()
        self._lock = threading.Lock()
        self.page_size = PAGE_SIZE
        self._home_tenant: str | None = None

    # --- services ---------------------------------------------------------------------------

    def service(self, tenant: Tenant) -> SyncService:
        """The tenant's service (cached per process, least recently used dropped first). Never the
        app's own tenant's (HomeTenant), and none while that cannot be told (TokenUnavailable):
        a second service of it would sync it a second time in one Graph window."""
        self.refuse_home(tenant.id)
        targets = tenant.target_names(self.settings.sync_targets)
        key = (tenant.id, targets)
        with self._lock:
            found = self._services.get(key)
            if found is not None:
                self._services.move_to_end(key)
                return found
        settings = replace(self.settings, sync_targets=targets)
        # A table client of its own: clients made from one service client share its policy objects,
        # and building one while another sends a request re-links them under it (azure-core's
        # "_SansIOHTTPPolicyRunner has no attribute next", seen in the 10,000-tenant benchmark).
        table = table_client(self.settings.storage, table_name_of(self.settings.state_table, tenant.id), make_credential)
        # Its own write budget too, in its own table: Intune counts writes per app per tenant.
        graph = GraphClient(settings.graph_base_url, self.credentials.for_tenant(tenant.id), settings.graph_scope,
                            timeout=settings.graph_timeout_seconds, pool_size=4, budget=write_budget(table, settings),
                            token_source=f"Microsoft Entra ID for tenant {tenant.id} (asserting with the app's identity)")
        built = SyncService(settings, graph, StateStore(table), self.home.clock, self.home.operations, self.home.notifier,
                            self.home.queue, tenant=tenant.id, device_queue=self.home.device_queue)
        with self._lock:
            built = self._services.setdefault(key, built)  # a concurrent build of the same tenant: one wins
            while len(self._services) > MAX_SERVICES:
                # Not closed: a message may still be using it; its pool goes when the last user lets go.
                self._services.popitem(last=False)
        return built

    # --- fan-out ------------------------------------------------------------------------------

    def fan_out(self, tick: datetime, work: str = "sync") -> None:
        """A timer's part: send the first page's message (the pages send the rest); ``work``: what
        each tenant's message does (its syncs, or the daily credentials check)."""
        self.queue.schedule(TenantMessage("page", tick, work=work), tick)

    def run(self, text: str) -> str:
        """A fan-out message. Returns what was done (for the log and tests)."""
        try:
            message = TenantMessage.from_json(text)
        except messages.InvalidMessage as exc:
            messages.log_invalid("tenant", "TENANT_QUEUE", exc)
            return "invalid"
        if message.kind == "page":
            return self._page(message)
        if message.work == "credentials":
            return self._check_credentials(message)
        return self._sync(message)

    def _page(self, message: TenantMessage) -> str:
        tenants, following = self.registry.page(message.continuation, self.page_size)
        now = self.home.clock()
        if following:  # first, so that a fault in the sends below never loses the rest of the registry
            self.queue.schedule(TenantMessage("page", message.tick, continuation=following, work=message.work), now)
        sent = 0
        for tenant in tenants:
            if tenant.enabled:
                self.queue.schedule(TenantMessage("tenant", message.tick, tenant_id=tenant.id, work=message.work), now)
                sent += 1
        return f"page: {sent} tenant(s)"

    def _sync(self, message: TenantMessage) -> str:
        tenant = self.registry.get(message.tenant_id or "")
        if tenant is None or not tenant.enabled:
            telemetry.emit("tenant", trigger="tenant", tenant=message.tenant_id, outcome="skipped",
                           message="not registered (any more), or disabled: not synced")
            return "skipped: not registered or disabled"
        try:
            svc = self.service(tenant)
        except (HomeTenant, TokenUnavailable) as exc:  # the app's own tenant, or it cannot be told: not synced
            state = HOME_TENANT if isinstance(exc, HomeTenant) else UNAVAILABLE
            self.registry.record(tenant.id, state, exc.message, self.home.clock())
            telemetry.emit("tenant", logging.WARNING, trigger="tenant", tenant=tenant.id, outcome=state, message=exc.message)
            return state
        # No defer: a duplicated (or retried) message finds the unit in its window and does nothing.
        results = svc.sync_enabled(Trigger.TIMER, caller=f"timer (tick {iso(message.tick)})", defer=False)
        svc.repair()  # what the watcher does for the home tenant, once per tick for each tenant
        svc.repair_jobs()  # its device-sync jobs whose step message was lost
        now = self.home.clock()
        swept = tenant.last_swept_at is None or now - tenant.last_swept_at >= SWEEP_EVERY
        if swept:  # the tenant's old history and asks: bounded, and once a day (four queries)
            svc.sweep()
        state, reason = state_of_results(results)
        reason = self._for_tenant(tenant.id, state, reason)
        self.registry.record(tenant.id, state, reason, now, swept_at=now if swept else None)
        level = logging.INFO if state == "synced" else logging.WARNING
        telemetry.emit("tenant", level, trigger="tenant", tenant=tenant.id, outcome=state, message=reason)
        return state

    def _check_credentials(self, message: TenantMessage) -> str:
        """One tenant's daily credentials check (three Graph reads), recorded in the registry."""
        tenant = self.registry.get(message.tenant_id or "")
        if tenant is None or not tenant.enabled:
            return "skipped: not registered or disabled"
        try:
            svc = self.service(tenant)
        except (HomeTenant, TokenUnavailable) as exc:  # the home tenant is checked by the timer itself
            return f"skipped: {exc.code}"
        report = svc.check_credentials()
        following = report.next_expiry
        self.registry.record_credentials(tenant.id, report.state, self.home.clock(),
                                         following.credential.expires_at if following else None,
                                         following.credential.kind if following else None,
                                         following.credential.name if following else None)
        return f"credentials: {report.state}"

    # --- consent ------------------------------------------------------------------------------

    def check(self, tenant: Tenant) -> tuple[str, str]:
        """Check the tenant's consent for real: a token, then one cheap Graph read. Recorded."""
        svc = self.service(tenant)
        try:
            svc.graph.ensure_token()
            # One status read per distinct set of roles the tenant's targets need, so a missing one is named.
            readers = {target.roles: target for target in svc.targets.values()}
            for target in readers.values():
                target.graph_status()
            state, reason = CONSENTED, f"a token was issued and Graph answered {', '.join(t.name for t in readers.values())}"
        except TokenUnavailable as exc:
            state, reason = token_failure_state(exc.message) or UNAVAILABLE, exc.message
        except GraphAccessDenied as exc:
            state, reason = MISSING_ROLE, exc.message
        except (UpstreamError, AppError) as exc:
            state, reason = UNAVAILABLE, exc.message
        reason = self._for_tenant(tenant.id, state, reason)
        self.registry.record(tenant.id, state, reason, self.home.clock())
        return state, reason

    def _for_tenant(self, tenant_id: str, state: str, reason: str) -> str:
        """What a customer's admin must do, said for the multi-tenant app (not the app's identity)."""
        if state == MISSING_ROLE:
            return (f"the multi-tenant app ({self.credentials.app_client_id}) lacks an application permission in this "
                    f"tenant: an admin grants it again at {self.credentials.consent_url(tenant_id)} ({reason})")[:1000]
        if state == NOT_CONSENTED:
            return (f"the tenant has not consented to the multi-tenant app: an admin opens "
                    f"{self.credentials.consent_url(tenant_id)} ({reason})")[:1000]
        return reason


    def home_tenant(self) -> str:
        """The app's own tenant (the ``tid`` of its own Graph token; read once per process).
        TokenUnavailable when it cannot be read: the callers then refuse (fail closed)."""
        if self._home_tenant is None:
            try:
                token = self.home.graph.current_token()
            except AppError as exc:
                raise TokenUnavailable(f"the app's own tenant cannot be told now: its managed identity's token is "
                                       f"unavailable ({exc.message}); try again shortly") from exc
            tenant = _claim(token, "tid")
            if tenant is None:
                raise TokenUnavailable("the app's own tenant cannot be told: its token for Graph names no tenant (tid)")
            self._home_tenant = tenant
        return self._home_tenant

    def refuse_home(self, tenant_id: str) -> None:
        """HomeTenant if ``tenant_id`` is the app's own tenant: its routes and timer already sync it,
        and a registry entry for it would give it two state tables and two syncs in one Graph window."""
        if tenant_id.lower() == self.home_tenant():
            raise HomeTenant(f"tenant {tenant_id} is the app's own tenant: its own routes and timer sync it, never as "
                             f"a customer (that would sync it twice in one Graph window); remove it with "
                             f"DELETE /api/tenants/{tenant_id}")


def _claim(token: str, name: str) -> str | None:
    """One claim of a JWT we were issued (read, not validated: it only names our own tenant)."""
    try:
        payload = token.split(".")[1]
        value = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get(name)
    except (IndexError, ValueError, AttributeError):
        return None
    return str(value).lower() if value else None


def table_name_of(state_table: str, tenant_id: str) -> str:
    """A tenant's own state table: the home table's name and the tenant id's hex (at most 63)."""
    return f"{state_table}{tenant_id.replace('-', '').lower()}"
