"""Bulk device sync: requests (JSON or CSV: device ids, serial numbers, a filter or a group), jobs
that send Intune's syncDevice to each device within the tenant's write budget as queue steps, and
their status. Imported on first use only. Depends on ``common``, ``clients`` and ``engine``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import face

if TYPE_CHECKING:
    from .selector import DeviceSyncRequest, InvalidSelector, parse_device_sync
    from .syncjobs import PAGE_SIZE, DeviceSyncJobs, DeviceSyncStatus, DeviceSyncStep
    from .syncstore import DeviceRow, DeviceSyncJob, DeviceSyncStore

__all__ = [
    "DeviceRow",
    "DeviceSyncJob",
    "DeviceSyncJobs",
    "DeviceSyncRequest",
    "DeviceSyncStatus",
    "DeviceSyncStep",
    "DeviceSyncStore",
    "InvalidSelector",
    "PAGE_SIZE",
    "parse_device_sync",
]

__getattr__ = face(__name__, {
    "DeviceRow": "syncstore",
    "DeviceSyncJob": "syncstore",
    "DeviceSyncJobs": "syncjobs",
    "DeviceSyncRequest": "selector",
    "DeviceSyncStatus": "syncjobs",
    "DeviceSyncStep": "syncjobs",
    "DeviceSyncStore": "syncstore",
    "InvalidSelector": "selector",
    "PAGE_SIZE": "syncjobs",
    "parse_device_sync": "selector",
})
