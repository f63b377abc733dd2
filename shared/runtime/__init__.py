"""The process's runtime: its settings and its service, built once, and the timer and queue
handlers. Depends on the packages below it (all but ``api``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import face

if TYPE_CHECKING:
    from . import handlers, process
    from .process import service, settings, tenancy

__all__ = [
    "handlers",
    "process",
    "service",
    "settings",
    "tenancy",
]

__getattr__ = face(__name__, {
    "handlers": "handlers",
    "process": "process",
    "service": "process",
    "settings": "process",
    "tenancy": "process",
})
