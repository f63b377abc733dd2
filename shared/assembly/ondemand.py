"""The Autopilot import jobs and the bulk device-sync jobs, each imported and built on its first use.

A sync never needs them; a cold start that only syncs does not load onboarding (its modules, the
import store, the body parser) nor devicesync (tests/test_lazy_imports.py). These holders are what
the service and the follower are given instead: each knows how to build its jobs, and builds them once.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from ..clients import GraphClient, Notification, PendingQueue
from ..common import Clock, Settings, SyncResult, UpstreamError
from ..engine import StateStore, Target

if TYPE_CHECKING:
    from ..devicesync import DeviceSyncJobs
    from ..onboarding import ImportJobs, ImportStore


class ImportJobsOnDemand:
    """Given what ``ImportJobs`` is given; ``imports`` is the import store, or how to make it."""

    def __init__(self, settings: Settings, graph: GraphClient, state: StateStore,
                 imports: ImportStore | Callable[[], ImportStore] | None, import_queue: PendingQueue | None, clock: Clock,
                 target: Callable[[str], Target], sync_at: Callable[[str, datetime, str], SyncResult],
                 notify: Callable[[Notification], None]):
        self.settings, self.graph, self.state, self.import_queue, self.clock = settings, graph, state, import_queue, clock
        self.target, self.sync_at, self.notify = target, sync_at, notify
        self._imports = imports
        self._jobs: ImportJobs | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether this service runs import jobs at all (a customer tenant's does not)."""
        return self.import_queue is not None and self._imports is not None

    @property
    def store(self) -> ImportStore | None:
        """The import store (made now if it was not yet)."""
        with self._lock:
            if callable(self._imports):
                self._imports = self._imports()
            return self._imports

    @store.setter
    def store(self, imports: ImportStore | None) -> None:
        with self._lock:
            self._imports = imports

    def get(self) -> ImportJobs:
        """The import jobs, imported and built now if they were not yet."""
        with self._lock:
            if self._jobs is None:
                from ..onboarding import ImportJobs

                self._jobs = ImportJobs(self.settings, self.graph, self.state, lambda: self.store, self.import_queue,
                                        self.clock, self.target, self.sync_at, self.notify)
            return self._jobs

    def repair(self) -> int:
        """The watcher's repair of import jobs; nothing when this service runs none."""
        return self.get().repair_imports() if self.enabled else 0


class JobRepairs:
    """The watcher's repair of every kind of job (import jobs, device-sync jobs): each runs even if
    one before it failed; the first failure is raised once all have run."""

    def __init__(self, *repairs: Callable[[], int]):
        self.repairs = repairs

    def repair(self) -> int:
        repaired, failure = 0, None
        for repair in self.repairs:
            try:
                repaired += repair()
            except UpstreamError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return repaired


class DeviceSyncOnDemand:
    """Given what ``DeviceSyncJobs`` is given (shared/devicesync): the bulk device-sync jobs of this
    service's tenant, imported and built the first time a device sync is asked for or stepped."""

    def __init__(self, settings: Settings, graph: GraphClient, state: StateStore, queue: PendingQueue | None,
                 clock: Clock, notify: Callable[[Notification], None], tenant: str | None):
        self.settings, self.graph, self.state, self.queue, self.clock = settings, graph, state, queue, clock
        self.notify, self.tenant = notify, tenant
        self._jobs: DeviceSyncJobs | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether this service runs device-sync jobs: SYNC_TARGETS names ``devices``, and it has their queue."""
        return self.settings.device_sync and self.queue is not None

    def get(self) -> DeviceSyncJobs:
        """The device-sync jobs, imported and built now if they were not yet."""
        with self._lock:
            if self._jobs is None:
                from ..devicesync import DeviceSyncJobs

                self._jobs = DeviceSyncJobs(self.settings, self.graph, self.state, self.queue, self.clock, self.notify,
                                            self.tenant)
            return self._jobs

    def repair(self) -> int:
        """The watcher's repair of device-sync jobs; nothing when this service runs none."""
        return self.get().repair() if self.enabled else 0
