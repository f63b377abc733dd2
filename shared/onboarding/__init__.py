"""Autopilot onboarding: import requests (JSON and CSV), import jobs and their steps, the
Autopilot Graph calls and the per-device rules. Imported on first use only (a sync's cold
start does not load it). Depends on ``common``, ``clients`` and ``engine``.
"""
from __future__ import annotations

from .devices import MAX_BODY_BYTES, SIZE_LIMIT, ImportRequest, parse_import
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
    "parse_import",
]
