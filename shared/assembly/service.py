"""The sync service: one object holding named collaborators, each given what it uses.

    trigger (function_app.py -> shared/api/routes.py, shared/runtime/handlers.py)
      -> SyncService                 the facade every trigger calls; it holds:
           pipeline  SyncPipeline    gate, claim, call Graph, verdict   (shared/engine/pipeline.py)
           recorder  Recorder        commit outcome and history         (shared/engine/recording.py)
           deferred  Deferrals       pending syncs: defer, fire         (shared/engine/deferred.py)
           follower  Follower        sync and wait, watcher             (shared/engine/follow.py)
           retention Retention       the watcher's sweep of old rows    (shared/assembly/retention.py)
           status_reader StatusReader status document, health ratings  (shared/engine/status.py)
           import_jobs() ImportJobs  Autopilot onboarding, built on first use (shared/onboarding/importjob.py)

Who calls whom is in the constructors below: the pipeline calls the recorder and the deferred
syncs; the deferred syncs fire through the pipeline's ``run``; the follower calls the pipeline's
``sync``, the recorder and the deferred syncs; the import jobs call the deferred syncs'
``sync_at``. The decisions themselves are pure functions in shared/engine/decisions.py.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..clients import GraphClient, Notices, Notifier
from ..common import Clock, Settings, SyncRequest, SyncResult, Trigger, UnknownTarget, utcnow
from ..engine import (
    TARGETS,
    Deferrals,
    Follower,
    Operation,
    OperationStore,
    PendingFire,
    PendingQueue,
    Recorder,
    RefusalMemory,
    StateStore,
    StatusReader,
    SyncPipeline,
    Target,
    Targets,
    UnitState,
)
from .retention import SWEEP_LIMIT, Retention, Swept

if TYPE_CHECKING:
    from ..onboarding import DeviceRow, ImportJob, ImportJobs, ImportRequest, ImportStore

__all__ = ["SyncService", "UnknownTarget", "build_service"]


class SyncService:
    """Every trigger's entry: sync, fire, poll, watch, status, imports; each a collaborator's.

    The Autopilot import jobs (shared/onboarding/importjob.py, and with it the device rows, the import steps,
    the Autopilot API and the body parser) are imported and built on their first use, not when a
    trigger loads the app: a sync never needs them, and a cold start that only syncs does not pay
    for them (tests/test_lazy_imports.py)."""

    import_store_factory: Callable[[], ImportStore] | None = None  # ``imports`` made on first use (build_service)

    def __init__(
        self,
        settings: Settings,
        graph: GraphClient,
        store: StateStore,
        clock: Clock = utcnow,
        operations: OperationStore | None = None,
        notifier: Notifier | None = None,
        queue: PendingQueue | None = None,
        imports: ImportStore | None = None,
        import_queue: PendingQueue | None = None,
        tenant: str | None = None,
    ):
        self.settings, self.graph, self.store, self.clock, self.tenant = settings, graph, store, clock, tenant
        self.operations, self.notifier, self.queue = operations, notifier, queue
        self.imports, self.import_queue = imports, import_queue  # Autopilot import jobs, and their queue
        self.targets = Targets({name: TARGETS[name](graph, settings.cooldown_seconds(name), settings.exchange_sync_type, clock)
                                for name in settings.sync_targets})
        notices, memory = Notices(notifier, tenant), RefusalMemory()
        self.recorder = Recorder(store, clock, tenant, notices.send, memory.remember)
        # The one cycle: a pending sync fires through the pipeline, which defers to the pending syncs.
        self.deferred = Deferrals(store, queue, clock, tenant, self.targets.named,
                                  lambda *unit: self.pipeline.run(*unit), notices.send)
        self.pipeline = SyncPipeline(settings, graph, store, clock, tenant, self.targets, self.recorder, self.deferred, memory)
        self.retention = Retention(store, clock, settings.history_retention_days, tenant)
        self.follower = Follower(settings, store, clock, tenant, self.targets, operations, self.pipeline.sync,
                                 self.recorder, self.deferred, notices, self.repair_imports, self.retention.sweep)
        self.status_reader = StatusReader(settings, graph, store, self.targets, clock, tenant)
        self._notices = notices
        self._import_jobs: ImportJobs | None = None

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

    # --- the import jobs ----------------------------------------------------------------------

    def start_import(self, request: ImportRequest, caller: str) -> tuple[ImportJob, list[DeviceRow], str]:
        return self.import_jobs().start_import(request, caller)

    def import_status(self, import_id: str, token: str) -> tuple[ImportJob, list[DeviceRow]] | None:
        return self.import_jobs().import_status(import_id, token)

    def run_import_step(self, text: str) -> str:
        return self.import_jobs().run_import_step(text)

    def repair_imports(self) -> int:
        if self.import_queue is None or (self.imports is None and self.import_store_factory is None):
            return 0  # no import jobs here (a tenant's service): nothing to import either
        return self.import_jobs().repair_imports()

    def import_jobs(self) -> ImportJobs:
        """The import jobs' collaborator, imported and built now if it was not yet."""
        if self.imports is None and self.import_store_factory is not None:
            self.imports = self.import_store_factory()
        if self._import_jobs is None:
            from ..onboarding import ImportJobs

            self._import_jobs = ImportJobs(self.settings, self.graph, self.store, lambda: self.imports, self.import_queue,
                                           self.clock, self.targets.named, self.sync_at, self._notices.send)
        return self._import_jobs


def build_service(settings: Settings, clock: Clock = utcnow, **graph_options: Any) -> SyncService:
    """Wire the real clients from settings (one credential, one Graph client, one table client)."""
    from ..clients import make_credential, queue_client, table_client

    graph = GraphClient(
        settings.graph_base_url,
        make_credential(settings.azure_client_id),
        settings.graph_scope,
        timeout=settings.graph_timeout_seconds,
        **graph_options,
    )
    table = table_client(settings.storage, settings.state_table, make_credential)
    notifier = Notifier(settings.notify_urls, settings.notify_format, settings.site_name)
    queue = PendingQueue(lambda: queue_client(settings.storage, settings.queue_name, make_credential))
    import_queue = PendingQueue(lambda: queue_client(settings.storage, settings.import_queue, make_credential))
    service = SyncService(settings, graph, StateStore(table), clock, OperationStore(table), notifier, queue,
                          None, import_queue)

    def import_store() -> ImportStore:
        from ..onboarding import ImportStore

        return ImportStore(table)

    service.import_store_factory = import_store
    return service
