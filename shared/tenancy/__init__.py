"""Many tenants from one deployment: the registry of customer tenants, a service per tenant,
the fan-out and the consent check. Loaded only in multi-tenant mode. Depends on ``common``,
``clients``, ``engine`` and ``assembly`` (the layers below it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import face

if TYPE_CHECKING:
    from .customers import Tenancy
    from .registry import Tenant

__all__ = [
    "Tenancy",
    "Tenant",
]

__getattr__ = face(__name__, {
    "Tenancy": "customers",
    "Tenant": "registry",
})
