"""The HTTP API: request parsing, routes, answers. Depends on ``runtime`` and the packages below it.
"""
from __future__ import annotations

from . import routes

__all__ = [
    "routes",
]
