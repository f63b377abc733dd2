"""The daily check of a tenant's Apple credentials (CREDENTIAL_CHECK_SCHEDULE): read them (three
Graph reads, shared/engine/credentials.py), rate them, and tell once per threshold crossed.

"Once" holds across instances and restarts: each credential has a row in the tenant's state table
(partition ``credentials``) with the expiry date it was told about and the lowest threshold told.
The row is written with If-Match (or created if absent) *before* the notification is sent, so of
two instances checking at once exactly one wins the write and sends; the other re-reads, finds the
threshold told, and sends nothing. A renewed credential (another expiry date) starts afresh. A
notification whose delivery fails after its retries is not sent again (at most once: a day later
the next threshold, or the expiry, is told anyway). Every check emits one ``expiry`` record per
credential (days left, state), and one per kind not configured or not read.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode

from ..clients import CHANGED_OR_GONE, Notification, TableStore, read_change_write, store_errors, table_missing
from ..common import Clock, as_utc, iso, telemetry
from .credentials import RENEW_AT, Assessment, CredentialsReport, read_credentials, threshold_reached

if TYPE_CHECKING:
    from ..clients import GraphClient
    from ..common import Settings

PARTITION = "credentials"


@dataclass(frozen=True)
class ToldRow:
    """What was told about one credential: for which expiry date, the lowest threshold."""

    expires_at: datetime | None = None
    told: int | None = None
    etag: str | None = None


class CredentialStore(TableStore):
    """The told thresholds, a row per credential in the tenant's state table."""

    @staticmethod
    def key(kind: str, credential_id: str) -> str:
        # Graph's ids are GUIDs (or, for the certificate, a fixed name); hashed so that no id can
        # carry a character a row key may not hold.
        return f"{kind}-{hashlib.sha256(credential_id.encode()).hexdigest()[:32]}"

    @store_errors
    def read(self, key: str) -> ToldRow:
        try:
            entity = self._table.get_entity(partition_key=PARTITION, row_key=key)
        except ResourceNotFoundError as exc:
            if table_missing(exc):
                self._create_table()
                return ToldRow()
            return ToldRow()
        expires = entity.get("expiresAt")
        told = entity.get("told")
        return ToldRow(as_utc(expires) if isinstance(expires, datetime) else None, told if isinstance(told, int) else None,
                       entity.metadata.get("etag"))

    @store_errors
    def write(self, key: str, row: ToldRow, assessment: Assessment, now: datetime) -> ToldRow | None:
        c = assessment.credential
        entity = {"PartitionKey": PARTITION, "RowKey": key, "kind": c.kind, "credentialId": c.id[:200], "name": c.name,
                  "appleId": c.apple_id, "expiresAt": row.expires_at, "told": row.told, "toldAt": now}
        entity = {k: v for k, v in entity.items() if v is not None}
        try:
            if row.etag is None:
                meta = self._table.create_entity(entity)
            else:
                meta = self._table.update_entity(entity, mode=UpdateMode.REPLACE, etag=row.etag,
                                                 match_condition=MatchConditions.IfNotModified)
        except CHANGED_OR_GONE:
            return None
        return ToldRow(row.expires_at, row.told, meta["etag"])


class ExpiryWatch:
    """One tenant's check: read, rate, tell (``notify``), record (telemetry)."""

    def __init__(self, settings: Settings, graph: GraphClient, store: CredentialStore, clock: Clock, tenant: str | None,
                 notify: Callable[[Notification], None]):
        self.settings, self.graph, self.store, self.clock, self.tenant, self.notify = settings, graph, store, clock, tenant, notify

    def check(self) -> CredentialsReport:
        read = read_credentials(self.graph)
        now = self.clock()
        outcome = CredentialsReport.of(read, now, self.settings.token_expiry_warning_days)
        for assessment in outcome.assessed:
            threshold = self._claim(assessment, now)
            if threshold is not None:
                self.notify(notification(assessment, threshold, now, self.tenant or self.settings.tenant_id))
                outcome.told += 1
            level = logging.INFO if assessment.rating == "healthy" else logging.WARNING
            telemetry.emit("expiry", level, trigger="timer", tenant=self.tenant, target=assessment.credential.kind,
                           credentialId=assessment.credential.id, name=assessment.credential.name,
                           appleId=assessment.credential.apple_id, expiresAt=assessment.credential.expires_at,
                           daysLeft=None if assessment.days_left is None else round(assessment.days_left, 1),
                           outcome=assessment.state, health=assessment.rating, threshold=threshold)
        for kind in outcome.not_configured:
            telemetry.emit("expiry", trigger="timer", tenant=self.tenant, target=kind, outcome="notConfigured")
        for kind, why in outcome.unavailable:
            telemetry.emit("expiry", logging.WARNING, trigger="timer", tenant=self.tenant, target=kind, outcome="unavailable",
                           message=why)
        return outcome

    def _claim(self, assessment: Assessment, now: datetime) -> int | None:
        """The threshold this instance tells now, written first (If-Match), or None."""
        if assessment.days_left is None:
            return None
        left, expires = assessment.days_left, assessment.credential.expires_at
        key = self.store.key(assessment.credential.kind, assessment.credential.id)
        decided: list[int | None] = [None]

        def change(row: ToldRow) -> ToldRow | None:
            told = row.told if row.expires_at == expires else None  # renewed: start afresh
            decided[0] = threshold_reached(left, told)
            if decided[0] is None:
                return None
            return ToldRow(expires, decided[0], row.etag)

        read_change_write(lambda: self.store.read(key), change, lambda row: self.store.write(key, row, assessment, now),
                          f"record the expiry told for {assessment.credential.kind}", attempts=8)
        return decided[0]


def notification(assessment: Assessment, threshold: int, now: datetime, tenant: str | None) -> Notification:
    """What is told: the tenant (a customer's, or the home tenant's AZURE_TENANT_ID when set), the
    credential, its Apple ID and date, and where it is renewed."""
    c = assessment.credential
    event = "credentialExpired" if threshold == 0 else "credentialExpiring"
    when = iso(c.expires_at)
    told = "has expired" if threshold == 0 else f"expires in {threshold} day(s) or less"
    message = (f"{assessment.reason}. The credential {told} ({when}); renew it: {RENEW_AT[c.kind]}")
    return Notification(event, c.kind, assessment.state, now, message,
                        details={"tenantId": tenant, "kind": c.kind, "id": c.id, "name": c.name, "appleId": c.apple_id, "expiresAt": when,
                                 "daysLeft": round(assessment.days_left or 0.0, 1), "threshold": threshold,
                                 "state": assessment.state, "renewAt": RENEW_AT[c.kind]})
