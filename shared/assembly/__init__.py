"""The service assembled: ``SyncService`` holds the engine's collaborators and the import jobs,
``build_service`` wires the real clients, and the retention sweep spans the rows of both.
Depends on ``common``, ``clients``, ``engine`` (and ``onboarding``, loaded on first use).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import face

if TYPE_CHECKING:
    from .service import SyncService, build_service, write_budget

__all__ = [
    "SyncService",
    "build_service",
    "write_budget",
]

__getattr__ = face(__name__, {
    "SyncService": "service",
    "build_service": "service",
    "write_budget": "service",
})
