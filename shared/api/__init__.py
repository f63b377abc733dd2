"""The HTTP API: request parsing, routes, answers. Depends on ``runtime`` and the packages below it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import face

if TYPE_CHECKING:
    from . import routes

__all__ = [
    "routes",
]

__getattr__ = face(__name__, {
    "routes": "routes",
})
