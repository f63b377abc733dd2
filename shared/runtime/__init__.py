"""The process's runtime: its settings and its service, built once, and the timer and queue
handlers. Depends on every package above.
"""
from __future__ import annotations

from . import handlers, process
from .process import service, settings, tenancy

__all__ = [
    "handlers",
    "process",
    "service",
    "settings",
    "tenancy",
]
