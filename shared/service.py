"""The sync service, assembled from one part per responsibility (see shared/core.py):

- shared/pipeline.py: decide, claim, call Graph (the claim -> call -> commit pipeline);
- shared/recording.py: commit outcome and history, keep what could not be recorded yet, a
  collaborator (``Recorder``) built with the service;
- shared/deferred.py: asks inside the cooldown become one pending sync, fired from a queue, a
  collaborator (``Deferrals``) built with the service;
- shared/follow.py: "sync and wait", the watcher tick, notifications, retention;
- shared/status.py: the status document and the health ratings, a collaborator (``StatusReader``)
  built with the service;
- shared/importjob.py: Autopilot import jobs (import, one shared sync, follow to the profile),
  a collaborator (``ImportJobs``) imported and built on first use (``SyncService.import_jobs``).

The decisions themselves are pure functions in shared/decisions.py.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .core import ServiceCore
from .deferred import Deferrals, PendingFire, PendingQueue
from .errors import UnknownTarget
from .follow import Following
from .graph import GraphClient
from .model import Clock, SyncResult, utcnow
from .notify import Notifier
from .operations import OperationStore
from .pipeline import SyncPipeline
from .recording import Recorder
from .settings import Settings
from .state import StateStore
from .status import StatusReader

if TYPE_CHECKING:
    from .devices import ImportRequest
    from .importjob import ImportJobs
    from .imports import DeviceRow, ImportJob, ImportStore

__all__ = ["SyncService", "UnknownTarget", "build_service"]


class SyncService(SyncPipeline, Following, ServiceCore):
    """Every trigger's entry: sync, fire, poll, watch, status, imports (see the parts' modules).

    The Autopilot import jobs (shared/importjob.py, and with it the device rows, the import steps,
    the Autopilot API and the body parser) are a collaborator, ``ImportJobs``, imported and built on
    its first use, not when a trigger loads the app: a sync never needs it, and a cold start that
    only syncs does not pay for it (tests/test_lazy_imports.py). The import methods here delegate."""

    import_store_factory: Callable[[], ImportStore] | None = None  # ``imports`` made on first use (build_service)
    _import_jobs: ImportJobs | None = None

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
        super().__init__(settings, graph, store, clock, operations, notifier, queue, imports, import_queue, tenant)
        self.recorder = Recorder(store, clock, tenant, self._notify, self._remember)
        self.status_reader = StatusReader(settings, graph, store, self.targets, clock, tenant)
        self.deferred = Deferrals(store, queue, clock, tenant, self.target, self._run, self._notify)

    def sync_at(self, target_name: str, at: datetime, caller: str) -> SyncResult:
        return self.deferred.sync_at(target_name, at, caller)

    def fire(self, fire: PendingFire) -> SyncResult | None:
        return self.deferred.fire(fire)

    def status(self) -> dict[str, Any]:
        return self.status_reader.status()

    def report_health(self) -> dict[str, str]:
        return self.status_reader.report_health()

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
            from .importjob import ImportJobs

            self._import_jobs = ImportJobs(self.settings, self.graph, self.store, lambda: self.imports, self.import_queue,
                                           self.clock, self.target, self.sync_at, self._notify)
        return self._import_jobs


def build_service(settings: Settings, clock: Clock = utcnow, **graph_options: Any) -> SyncService:
    """Wire the real clients from settings (one credential, one Graph client, one table client)."""
    from .identity import make_credential
    from .storage import queue_client, table_client

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
        from .imports import ImportStore

        return ImportStore(table)

    service.import_store_factory = import_store
    return service
