"""What every part of the sync service shares: its clients, its clock and its targets.

The service is assembled from one class per responsibility (shared/service.py), each in the
module named for it: the claim -> call -> commit pipeline (pipeline) and following syncs to their
end (follow). They meet here: the attributes they share, and the few methods one part calls on
another, declared once. Recording attempts (recording), deferred syncs (deferred), the status
document (status) and the import jobs (importjob) are collaborators instead: plain classes given
what they use, not parts of this stack; the parts reach the recorder as ``self.recorder`` and the
deferred syncs as ``self.deferred``.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from .errors import UnknownTarget
from .graph import GraphClient
from .model import Clock, SyncRequest, SyncResult, utcnow
from .notify import Notifier
from .operations import OperationStore
from .settings import Settings
from .state import StateStore
from .targets import TARGETS, Target

if TYPE_CHECKING:
    from .deferred import Deferrals, PendingQueue
    from .imports import ImportStore
    from .recording import Recorder


class ServiceCore(ABC):
    """The shared part of every SyncService part; its abstract methods are the calls one part
    makes on another, each defined by exactly one part (SyncService cannot be built otherwise)."""

    recorder: Recorder  # commits attempts (shared/recording.py), built by SyncService
    deferred: Deferrals  # pending syncs: defer, fire, send a message (shared/deferred.py), built by SyncService

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
        self.settings = settings
        self.graph = graph
        self.store = store
        self.clock = clock
        self.operations = operations
        self.notifier = notifier
        self.queue = queue
        self.imports = imports  # Autopilot import jobs (shared/importjob.py), and their queue
        self.import_queue = import_queue
        self.tenant = tenant  # a registered customer tenant this service syncs (None: the app's own)
        # Refusals this process has already seen: a cooldown only ever moves forward (Graph's
        # window stands whatever our table says), so until it ends it can be answered from memory.
        self._known: dict[str, SyncResult] = {}
        self._known_lock = threading.Lock()
        self.targets: dict[str, Target] = {
            name: TARGETS[name](graph, settings.cooldown_seconds(name), settings.exchange_sync_type, clock)
            for name in settings.sync_targets
        }

    def target(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            raise UnknownTarget(
                f"unknown or disabled target {name!r}; enabled: {', '.join(self.targets)}"
            ) from None

    # --- what one part calls on another ------------------------------------------------------

    @abstractmethod
    def sync(self, request: SyncRequest) -> list[SyncResult]:
        """Defined by shared/pipeline.py."""

    @abstractmethod
    def repair_imports(self) -> int:
        """Defined by shared/service.py (delegating to the import jobs, shared/importjob.py)."""
