"""The sync service: one object holding named collaborators, each given what it uses.

    trigger (function_app.py -> shared/api/routes.py, shared/runtime/handlers.py)
      -> SyncService                 the facade every trigger calls; it holds:
           pipeline  SyncPipeline    gate, claim, call Graph, verdict   (shared/engine/pipeline.py)
           recorder  Recorder        commit outcome and history         (shared/engine/recording.py)
           deferred  Deferrals       pending syncs: defer, fire         (shared/engine/deferred.py)
           follower  Follower        sync and wait, watcher             (shared/engine/follow.py)
           retention Retention       the watcher's sweep of old rows    (shared/assembly/retention.py)
           status_reader StatusReader status document, health ratings  (shared/engine/status.py)
           expiry    ExpiryWatch     the daily check of Apple credentials (shared/engine/expirywatch.py)
           import_jobs() ImportJobs  Autopilot onboarding, built on first use (shared/onboarding/importjob.py)
           device_sync() DeviceSyncJobs  bulk device sync, built on first use (shared/devicesync)

Who calls whom is in the constructors below: the pipeline calls the recorder and the deferred
syncs; the deferred syncs fire through the pipeline's ``run``; the follower calls the pipeline's
``sync``, the recorder and the deferred syncs; the import jobs call the deferred syncs'
``sync_at``; the follower's repair of import jobs repairs the device-sync jobs too. The decisions themselves are pure functions in shared/engine/decisions.py.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..clients import GraphClient, Limits, Notifier, PendingQueue, ServiceNotifier, WriteBudget
from ..common import Clock, Settings, SyncRequest, SyncResult, Trigger, utcnow
from ..engine import (
    TARGETS,
    CredentialsReport,
    CredentialStore,
    Deferrals,
    ExpiryWatch,
    Follower,
    HistoryRow,
    Operation,
    OperationStore,
    PendingFire,
    Recorder,
    RefusalMemory,
    StateStore,
    StatusReader,
    SyncPipeline,
    Target,
    Targets,
    UnitState,
)
from .ondemand import DeviceSyncOnDemand, ImportJobsOnDemand, JobRepairs
from .retention import SWEEP_LIMIT, Retention, Swept

if TYPE_CHECKING:
    from ..devicesync import DeviceSyncJobs
    from ..onboarding import DeviceRow, ImportJob, ImportJobs, ImportRequest, ImportStore

__all__ = ["SyncService", "build_service", "write_budget"]


class SyncService:
    """Every trigger's entry: sync, fire, poll, watch, status, imports; each a collaborator's.

    The Autopilot import jobs (shared/onboarding/importjob.py, and with it the device rows, the import steps,
    the Autopilot API and the body parser) are imported and built on their first use, not when a
    trigger loads the app: a sync never needs them, and a cold start that only syncs does not pay
    for them (tests/test_lazy_imports.py): ``onboarding`` holds how to build them
    (shared/assembly/ondemand.py). The bulk device-sync jobs (shared/devicesync) likewise: ``devices``
    builds them on the first device sync, given ``device_queue`` (DEVICE_SYNC_QUEUE)."""

    def __init__(
        self,
        settings: Settings,
        graph: GraphClient,
        store: StateStore,
        clock: Clock = utcnow,
        operations: OperationStore | None = None,
        notifier: Notifier | None = None,
        queue: PendingQueue | None = None,
        imports: ImportStore | Callable[[], ImportStore] | None = None,
        import_queue: PendingQueue | None = None,
        tenant: str | None = None,
        device_queue: PendingQueue | None = None,
    ):
        self.settings, self.graph, self.store, self.clock, self.tenant = settings, graph, store, clock, tenant
        self.operations, self.notifier, self.queue = operations, notifier, queue
        self.import_queue, self.device_queue = import_queue, device_queue
        self.targets = Targets({name: TARGETS[name](graph, settings.cooldown_seconds(name), settings.exchange_sync_type, clock)
                                for name in settings.sync_targets})
        notices, memory = ServiceNotifier(notifier, tenant), RefusalMemory()
        self.recorder = Recorder(store, clock, tenant, notices.send, memory.remember)
        # The one cycle: a pending sync fires through the pipeline, which defers to the pending
        # syncs. The pipeline is built with them; they get its ``run`` late-bound.
        self.deferred = Deferrals(store, queue, clock, tenant, self.targets.named,
                                  lambda *unit: self.pipeline.run(*unit), notices.send)
        self.pipeline = SyncPipeline(settings, graph, store, clock, tenant, self.targets, self.recorder, self.deferred, memory)
        self.devices = DeviceSyncOnDemand(settings, graph, store, device_queue, clock, notices.send, tenant)
        self.onboarding = ImportJobsOnDemand(settings, graph, store, imports, import_queue, clock, self.targets.named,
                                             self.deferred.sync_at, notices.send)
        self.jobs = JobRepairs(self.onboarding.repair, self.devices.repair)  # the watcher repairs both kinds of job
        self.retention = Retention(store, clock, settings.history_retention_days, tenant)
        self.follower = Follower(settings, store, clock, tenant, self.targets, operations, self.pipeline.sync,
                                 self.recorder, self.deferred, notices, self.jobs.repair, self.retention.sweep)
        self.status_reader = StatusReader(settings, graph, store, self.targets, clock, tenant)
        self.expiry = ExpiryWatch(settings, graph, store.sibling(CredentialStore), clock, tenant, notices.deliver)
        self.notices = notices

    @property
    def imports(self) -> ImportStore | None:
        """The Autopilot import store (made now if it was not yet)."""
        return self.onboarding.store

    @imports.setter
    def imports(self, imports: ImportStore | None) -> None:
        self.onboarding.store = imports

    def target(self, name: str) -> Target:
        return self.targets.named(name)

    # --- the pipeline -------------------------------------------------------------------------

    def sync(self, request: SyncRequest) -> list[SyncResult]:
        return self.pipeline.sync(request)

    def sync_enabled(self, trigger: Trigger = Trigger.TIMER, caller: str = "timer", defer: bool = True) -> list[SyncResult]:
        return self.pipeline.sync_enabled(trigger, caller, defer)

    # --- deferred syncs -----------------------------------------------------------------------

    def sync_at(self, target_name: str, at: datetime, caller: str) -> SyncResult:
        return self.deferred.sync_at(target_name, at, caller)

    def fire(self, fire: PendingFire) -> SyncResult | None:
        return self.deferred.fire(fire)

    # --- the follower -------------------------------------------------------------------------

    def sync_and_follow(self, request: SyncRequest) -> tuple[SyncResult, Operation | None, str | None]:
        return self.follower.sync_and_follow(request)

    def poll(self, operation_id: str, token: str) -> Operation | None:
        return self.follower.poll(operation_id, token)

    def watch(self) -> int:
        return self.follower.watch()

    def repair(self) -> list[UnitState]:
        return self.follower.repair()

    def sweep(self, limit: int = SWEEP_LIMIT) -> Swept:
        return self.retention.sweep(limit)

    # --- the status reader --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.status_reader.status()

    def report_health(self) -> dict[str, str]:
        return self.status_reader.report_health()

    def history(self, limit: int) -> list[HistoryRow]:
        """The newest ``limit`` recorded attempts of every unit of this service's tenant, newest first."""
        return self.store.latest_history(limit)

    def check_credentials(self) -> CredentialsReport:
        """The daily check of the tenant's Apple credentials: rated, told once per threshold."""
        return self.expiry.check()

    # --- the import jobs ----------------------------------------------------------------------

    def start_import(self, request: ImportRequest, caller: str,
                     claimed: str | None = None) -> tuple[ImportJob, list[DeviceRow], str]:
        return self.import_jobs().start_import(request, caller, claimed)

    def import_status(self, import_id: str, token: str) -> tuple[ImportJob, list[DeviceRow]] | None:
        return self.import_jobs().import_status(import_id, token)

    def run_import_step(self, text: str) -> str:
        return self.import_jobs().run_import_step(text)

    def repair_imports(self) -> int:
        return self.onboarding.repair()

    def repair_jobs(self) -> int:
        """The watcher's repair of import and device-sync jobs (a customer tenant's: its device syncs)."""
        return self.jobs.repair()

    def import_jobs(self) -> ImportJobs:
        """The import jobs' collaborator, imported and built now if it was not yet."""
        return self.onboarding.get()

    # --- the device-sync jobs -----------------------------------------------------------------

    def device_sync(self) -> DeviceSyncJobs:
        """The bulk device-sync jobs' collaborator, imported and built now if it was not yet."""
        return self.devices.get()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait (at most ``timeout`` seconds) for the notifications this service sent: an idle
        instance may be reclaimed once its invocation ends."""
        self.notices.flush(timeout)


def write_budget(table: Any, settings: Settings) -> WriteBudget:
    """The tenant's Intune write budget, kept in its state table and shared by every instance."""
    from ..clients import SharedBudget

    return SharedBudget(table, Limits(settings.device_write_limit, settings.intune_write_limit,
                                      settings.write_limit_window_seconds,
                                      # a ticket outlives a crashed device-sync step's claim, which the takeover waits out
                                      ticket_seconds=2 * settings.device_sync_step_claim_seconds + 60))


def build_service(settings: Settings, clock: Clock = utcnow, **graph_options: Any) -> SyncService:
    """Wire the real clients from settings (one credential, one Graph client, one table client)."""
    from ..clients import make_credential, queue_client, table_client

    table = table_client(settings.storage, settings.state_table, make_credential)
    graph = GraphClient(
        settings.graph_base_url,
        make_credential(settings.azure_client_id),
        settings.graph_scope,
        timeout=settings.graph_timeout_seconds,
        budget=write_budget(table, settings),
        **graph_options,
    )
    notifier = Notifier(settings.notify_urls, settings.notify_format, settings.site_name)
    queue = PendingQueue(lambda: queue_client(settings.storage, settings.queue_name, make_credential))
    import_queue = PendingQueue(lambda: queue_client(settings.storage, settings.import_queue, make_credential))
    device_queue = PendingQueue(lambda: queue_client(settings.storage, settings.device_sync_queue, make_credential))

    def import_store() -> ImportStore:
        from ..onboarding import ImportStore

        return ImportStore(table)

    return SyncService(settings, graph, StateStore(table), clock, OperationStore(table), notifier, queue,
                       import_store, import_queue, device_queue=device_queue)
