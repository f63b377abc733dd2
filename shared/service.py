"""The sync service, assembled from one part per responsibility (see shared/core.py):

- shared/pipeline.py: decide, claim, call Graph (the claim -> call -> commit pipeline);
- shared/recording.py: commit outcome and history, keep what could not be recorded yet;
- shared/deferred.py: asks inside the cooldown become one pending sync, fired from a queue;
- shared/follow.py: "sync and wait", the watcher tick, notifications, retention;
- shared/status.py: the status document;
- shared/importjob.py: Autopilot import jobs (import, one shared sync, follow to the profile).

The decisions themselves are pure functions in shared/decisions.py.
"""
from __future__ import annotations

from typing import Any

from .core import ServiceCore
from .deferred import DeferredSyncs, PendingQueue
from .errors import UnknownTarget
from .follow import Following
from .graph import GraphClient
from .importjob import AutopilotImports
from .imports import ImportStore
from .model import Clock, utcnow
from .notify import Notifier
from .operations import OperationStore
from .pipeline import SyncPipeline
from .recording import Recorder
from .settings import Settings
from .state import StateStore
from .status import StatusReport

__all__ = ["SyncService", "UnknownTarget", "build_service"]


class SyncService(SyncPipeline, Recorder, DeferredSyncs, Following, StatusReport, AutopilotImports, ServiceCore):
    """Every trigger's entry: sync, fire, poll, watch, status, imports (see the parts' modules)."""


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
    return SyncService(settings, graph, StateStore(table), clock, OperationStore(table), notifier, queue,
                       ImportStore(table), import_queue)
