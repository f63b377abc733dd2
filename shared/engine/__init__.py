"""The sync engine: the pipeline (gate, claim, call, verdict), the recorder, deferred syncs, the
follower (sync and wait, watcher), the status reader, the targets, the state rows and the pure
decisions. Depends on ``common`` and ``clients``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import face

if TYPE_CHECKING:
    from .credentials import CredentialsReport, read_credentials
    from .decisions import in_flight
    from .deferred import Deferrals, PendingFire
    from .expirywatch import CredentialStore, ExpiryWatch
    from .follow import Follower
    from .operations import OPERATION_ROW, Operation, OperationStore
    from .pipeline import RefusalMemory, SyncPipeline
    from .recording import Recorder
    from .state import ASK_PREFIX, HISTORY_PREFIX, MAX_TICKS, STATE_ROW, HistoryRow, StateStore, UnitState
    from .status import StatusReader
    from .targets import TARGETS, Target, Targets

__all__ = [
    "ASK_PREFIX",
    "CredentialStore",
    "CredentialsReport",
    "Deferrals",
    "ExpiryWatch",
    "Follower",
    "HISTORY_PREFIX",
    "HistoryRow",
    "MAX_TICKS",
    "OPERATION_ROW",
    "Operation",
    "OperationStore",
    "PendingFire",
    "Recorder",
    "RefusalMemory",
    "STATE_ROW",
    "StateStore",
    "StatusReader",
    "SyncPipeline",
    "TARGETS",
    "Target",
    "Targets",
    "UnitState",
    "in_flight",
    "read_credentials",
]

__getattr__ = face(__name__, {
    "ASK_PREFIX": "state",
    "CredentialStore": "expirywatch",
    "CredentialsReport": "credentials",
    "Deferrals": "deferred",
    "ExpiryWatch": "expirywatch",
    "Follower": "follow",
    "HISTORY_PREFIX": "state",
    "HistoryRow": "state",
    "MAX_TICKS": "state",
    "OPERATION_ROW": "operations",
    "Operation": "operations",
    "OperationStore": "operations",
    "PendingFire": "deferred",
    "Recorder": "recording",
    "RefusalMemory": "pipeline",
    "STATE_ROW": "state",
    "StateStore": "state",
    "StatusReader": "status",
    "SyncPipeline": "pipeline",
    "TARGETS": "targets",
    "Target": "targets",
    "Targets": "targets",
    "UnitState": "state",
    "in_flight": "decisions",
    "read_credentials": "credentials",
})
