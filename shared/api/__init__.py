"""The HTTP API: request parsing, routes, answers, and the web console's files. Depends on ``runtime``
and the packages below it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import face

if TYPE_CHECKING:
    from . import console, routes

__all__ = [
    "console",
    "routes",
]

__getattr__ = face(__name__, {
    "console": "console",
    "routes": "routes",
})
