"""The process's runtime: its settings and its service, built once, and the timer and queue
handlers. Depends on the packages below it (all but ``api``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import face

if TYPE_CHECKING:
    from . import handlers, process
    from .process import http_auth_level, service, settings, signing_keys, tenancy

__all__ = [
    "handlers",
    "http_auth_level",
    "process",
    "service",
    "settings",
    "signing_keys",
    "tenancy",
]

__getattr__ = face(__name__, {
    "handlers": "handlers",
    "http_auth_level": "process",
    "process": "process",
    "service": "process",
    "settings": "process",
    "signing_keys": "process",
    "tenancy": "process",
})
