"""Autopilot onboarding: import requests (JSON and CSV), import jobs and their steps, the
Autopilot Graph calls and the per-device rules. Imported on first use only (a sync's cold
start does not load it). Depends on ``common``, ``clients`` and ``engine``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import face

if TYPE_CHECKING:
    from .devices import MAX_BODY_BYTES, SIZE_LIMIT, ImportRequest, group_tag_problem, parse_import
    from .importjob import ImportJobs
    from .imports import CREATING, JOB_ROW, DeviceRow, ImportJob, ImportStore

__all__ = [
    "CREATING",
    "DeviceRow",
    "ImportJob",
    "ImportJobs",
    "ImportRequest",
    "ImportStore",
    "JOB_ROW",
    "MAX_BODY_BYTES",
    "SIZE_LIMIT",
    "group_tag_problem",
    "parse_import",
]

__getattr__ = face(__name__, {
    "CREATING": "imports",
    "DeviceRow": "imports",
    "ImportJob": "imports",
    "ImportJobs": "importjob",
    "ImportRequest": "devices",
    "ImportStore": "imports",
    "JOB_ROW": "imports",
    "MAX_BODY_BYTES": "devices",
    "SIZE_LIMIT": "devices",
    "group_tag_problem": "devices",
    "parse_import": "devices",
})
