"""The tenant registry (many tenants from one deployment): which customer tenants to sync, kept
in the state table (partition ``tenants``, one row per tenant id), and what their last sync or
consent check said.

What a tenant's failure means is decided here, purely, from the error the service reported:
Entra's AADSTS codes (../shared/reference entra/managed-identity-as-federated-credential.md)
for the token, Graph's 403 for a missing role.
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode

from ..clients import TableStore, from_row, store_errors, table_missing, to_row
from ..common import Outcome, SyncResult, iso

PARTITION = "tenants"
PAGE_SIZE = 500  # tenants listed per fan-out message: one invocation sends at most this many messages

# A tenant's state, as the registry reports it.
CONSENTED, NOT_CONSENTED, MISSING_ROLE, UNKNOWN_TENANT, UNAVAILABLE, SYNCED, FAILED = (
    "consented", "notConsented", "missingRole", "unknownTenant", "unavailable", "synced", "failed")
# Entra's codes for "this tenant has not consented to the app" (not provisioned, no admin consent).
# A registry entry for the app's own tenant (written before it was refused): never synced as a customer.
HOME_TENANT = "homeTenant"
_NOT_CONSENTED_CODES = {"700016", "65001", "90094", "500011", "650057", "7000112"}
_UNKNOWN_TENANT_CODES = {"90002", "90038"}
_AADSTS = re.compile(r"AADSTS(\d{5,7})")


@dataclass(frozen=True)
class Tenant:
    id: str
    display_name: str
    targets: str | None = None  # comma list; None: every target the app enables
    enabled: bool = True
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_checked_at: datetime | None = None
    last_state: str | None = None  # synced, failed, or a consent state (see above)
    last_reason: str | None = None
    last_swept_at: datetime | None = None  # the tenant table's last retention sweep
    operator_groups: str | None = None  # comma list of Entra group ids whose members may act on it (entra callers)
    # The last daily check of its Apple credentials (shared/engine/expirywatch.py).
    credentials_state: str | None = None  # healthy, warning, unhealthy, notConfigured, unavailable
    credentials_checked_at: datetime | None = None
    next_expiry_at: datetime | None = None
    next_expiry_kind: str | None = None
    next_expiry_name: str | None = None
    etag: str | None = None

    def groups(self) -> tuple[str, ...]:
        return tuple(g for g in (self.operator_groups or "").split(",") if g)

    def target_names(self, enabled: tuple[str, ...]) -> tuple[str, ...]:
        chosen = tuple(t for t in (self.targets or "").split(",") if t)
        return tuple(t for t in enabled if t in chosen) if chosen else enabled

    def to_json(self) -> dict[str, Any]:
        return {"tenantId": self.id, "displayName": self.display_name,
                "targets": [t for t in (self.targets or "").split(",") if t] or None, "enabled": self.enabled,
                "createdAt": iso(self.created_at), "updatedAt": iso(self.updated_at),
                "lastCheckedAt": iso(self.last_checked_at), "state": self.last_state, "reason": self.last_reason,
                "operatorGroups": list(self.groups()) or None,
                "credentials": {"state": self.credentials_state, "checkedAt": iso(self.credentials_checked_at),
                                "nextExpiryAt": iso(self.next_expiry_at), "nextExpiryKind": self.next_expiry_kind,
                                "nextExpiryName": self.next_expiry_name} if self.credentials_checked_at else None}


CHECK_FIELDS = ("credentials_state", "credentials_checked_at", "next_expiry_at", "next_expiry_kind", "next_expiry_name")


def token_failure_state(message: str) -> str | None:
    """notConsented or unknownTenant from the AADSTS code in a token error; None for other faults."""
    codes = set(_AADSTS.findall(message))
    if codes & _UNKNOWN_TENANT_CODES:
        return UNKNOWN_TENANT
    if codes & _NOT_CONSENTED_CODES:
        return NOT_CONSENTED
    return None


def state_of_results(results: list[SyncResult]) -> tuple[str, str]:
    """A tenant's state after its sync: the first failure decides (its consent, its role, or an
    outage), else synced. Returns (state, reason)."""
    for result in results:
        if result.outcome is not Outcome.FAILED:
            continue
        reason = f"{result.error_code}: {result.message}"[:1000]
        if result.error_code == "TokenUnavailable":
            return token_failure_state(result.message) or UNAVAILABLE, reason
        if result.error_code == "GraphAccessDenied":
            return MISSING_ROLE, reason
        if result.error_code in ("GraphUnavailable", "StateStoreUnavailable"):
            return UNAVAILABLE, reason
        return FAILED, reason
    outcomes = ", ".join(f"{r.target} {r.outcome.value}" for r in results)
    return SYNCED, outcomes[:1000]


class TenantStore(TableStore):
    @store_errors
    def put(self, tenant: Tenant, now: datetime) -> tuple[Tenant, bool]:
        """Create or update a tenant (what it last reported is kept). Returns (tenant, created)."""
        current = self.get(tenant.id)
        merged = replace(tenant, created_at=current.created_at if current else now, updated_at=now,
                         last_checked_at=current.last_checked_at if current else None,
                         last_state=current.last_state if current else None,
                         last_reason=current.last_reason if current else None,
                         last_swept_at=current.last_swept_at if current else None,
                         **({name: getattr(current, name) for name in CHECK_FIELDS} if current else {}))
        self._table.upsert_entity(self._entity(merged), mode=UpdateMode.REPLACE)
        return merged, current is None

    @store_errors
    def get(self, tenant_id: str) -> Tenant | None:
        try:
            entity = self._table.get_entity(partition_key=PARTITION, row_key=tenant_id)
        except ResourceNotFoundError as exc:
            if table_missing(exc):
                raise
            return None
        return from_row(Tenant, entity, skip=("id", "etag"), id=tenant_id, etag=entity.metadata.get("etag"))

    @store_errors
    def delete(self, tenant_id: str) -> bool:
        if self.get(tenant_id) is None:
            return False
        self._table.delete_entity(PARTITION, tenant_id)
        return True

    @store_errors
    def page(self, continuation: str | None = None, size: int = PAGE_SIZE) -> tuple[list[Tenant], str | None]:
        """One page of tenants (id order) and the token for the next page (None after the last)."""
        # The SDK's continuation token is a dict, whatever its type hints say.
        query: Any = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": PARTITION}, results_per_page=size)
        pages: Any = query.by_page(continuation_token=token_of(continuation))
        rows = list(next(pages, []))
        tenants = [from_row(Tenant, row, skip=("id", "etag"), id=row["RowKey"], etag=row.metadata.get("etag")) for row in rows]
        return tenants, _token_text(pages.continuation_token)

    @store_errors
    def record(self, tenant_id: str, state: str, reason: str, at: datetime, swept_at: datetime | None = None) -> None:
        """What a tenant's last sync or check said (a merge: the tenant's settings are kept)."""
        row: dict[str, Any] = {"PartitionKey": PARTITION, "RowKey": tenant_id, "lastState": state,
                               "lastReason": reason[:1000], "lastCheckedAt": at}
        if swept_at is not None:
            row["lastSweptAt"] = swept_at
        try:
            self._table.update_entity(row, mode=UpdateMode.MERGE)
        except ResourceNotFoundError as exc:
            if table_missing(exc):
                raise
            # deleted meanwhile: nothing to record

    @store_errors
    def record_credentials(self, tenant_id: str, state: str, at: datetime, next_at: datetime | None,
                           next_kind: str | None, next_name: str | None) -> None:
        """What a tenant's daily credentials check found (a merge, like ``record``)."""
        row: dict[str, Any] = {"PartitionKey": PARTITION, "RowKey": tenant_id, "credentialsState": state,
                               "credentialsCheckedAt": at, "nextExpiryAt": next_at, "nextExpiryKind": next_kind,
                               "nextExpiryName": (next_name or "")[:200] or None}
        try:
            self._table.update_entity({k: v for k, v in row.items() if v is not None}, mode=UpdateMode.MERGE)
        except ResourceNotFoundError as exc:
            if table_missing(exc):
                raise

    def _entity(self, tenant: Tenant) -> dict[str, Any]:
        return to_row(tenant, PARTITION, tenant.id, skip=("id", "etag"))


def _token_text(token: Any) -> str | None:
    """The table SDK's continuation token (a dict) as one URL-safe string for a message or a query."""
    if not token:
        return None
    return base64.urlsafe_b64encode(json.dumps(token, separators=(",", ":")).encode()).decode()


def token_of(text: str | None) -> dict[str, str] | None:
    """The SDK's token back; anything that is not one of ours is refused (ValueError)."""
    if not text:
        return None
    try:
        token = json.loads(base64.urlsafe_b64decode(text.encode()))
    except (ValueError, RecursionError) as exc:  # not base64, not JSON, or nested too deep
        raise ValueError("not a continuation token of this app") from exc
    # The SDK's keys, and values it can send as headers (visible ASCII: no line breaks to inject).
    if not isinstance(token, dict) or not token or not set(token) <= {"PartitionKey", "RowKey"} or not all(
            isinstance(v, str) and re.fullmatch(r"[\x21-\x7e]{1,1024}", v) for v in token.values()):
        raise ValueError("not a continuation token of this app")
    return token
