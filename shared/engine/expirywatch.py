"""The daily check of a tenant's Apple credentials (CREDENTIAL_CHECK_SCHEDULE): read them (three
Graph reads, shared/engine/credentials.py), rate them, and tell once per threshold crossed.

"Once" holds across instances and restarts: each credential has a row in the tenant's state table
(partition ``credentials``) with the expiry date it was told about, the lowest threshold told, the
claim of the check that tells it, and whether that was delivered. The claim is written with
If-Match (or created if absent) *before* the notification is sent: of two instances checking at
once exactly one wins and sends; the other re-reads, finds the threshold told, and sends nothing.
A write whose answer was lost (the SDK's retry then meets our own change) is recognised by the
claim in the row: ours, so we send. The check waits for the delivery and records it; one that
failed is sent again by the next check (the claim taken again, so again by one instance). A
renewed credential (an expiry date more than a day from the one told) starts afresh; Graph's
dates differing by seconds do not. Days left are counted on Graph's clock when ours is off
(credentials.checked_at). Every check emits one ``expiry`` record per credential (days left,
state), and one per kind not configured or not read.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from azure.core.exceptions import ResourceNotFoundError

from ..clients import Notification, TableStore, read_change_write, store_errors, table_missing
from ..common import Clock, StateStoreUnavailable, as_utc, iso, telemetry
from .credentials import RENEW_AT, Assessment, CredentialsReport, read_credentials, threshold_reached

if TYPE_CHECKING:
    from ..clients import GraphClient
    from ..common import Settings

PARTITION = "credentials"


@dataclass(frozen=True)
class ToldRow:
    """What was told about one credential: for which expiry date, the lowest threshold, by which
    check's claim, and whether it reached NOTIFY_URL."""

    expires_at: datetime | None = None
    told: int | None = None
    claim: str | None = None
    delivered: bool = False
    claimed_at: datetime | None = None
    etag: str | None = None


RESEND_AFTER = timedelta(hours=1)  # an undelivered claim this old is no other check's still sending: sent again
SAME_EXPIRY = timedelta(days=1)  # dates closer than this are one credential's (a renewal moves it by months)
DELIVERY_WAIT = 20.0  # seconds the check waits for its notifications to be delivered


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
        expires, told, at = entity.get("expiresAt"), entity.get("told"), entity.get("toldAt")
        return ToldRow(as_utc(expires) if isinstance(expires, datetime) else None, told if isinstance(told, int) else None,
                       entity.get("claim") if isinstance(entity.get("claim"), str) else None,
                       entity.get("delivered") is True, as_utc(at) if isinstance(at, datetime) else None,
                       entity.metadata.get("etag"))

    @store_errors
    def write(self, key: str, row: ToldRow, assessment: Assessment, now: datetime) -> ToldRow | None:
        c = assessment.credential
        entity = {"PartitionKey": PARTITION, "RowKey": key, "kind": c.kind, "credentialId": c.id[:200], "name": c.name,
                  "appleId": c.apple_id, "expiresAt": row.expires_at, "told": row.told, "claim": row.claim,
                  "delivered": row.delivered, "toldAt": row.claimed_at or now}
        entity = {k: v for k, v in entity.items() if v is not None}
        etag = self._create_or_replace(entity, row.etag)
        return None if etag is None else replace(row, etag=etag)


class ExpiryWatch:
    """One tenant's check: read, rate, tell (``notify``, whose futures say if it was delivered), record."""

    def __init__(self, settings: Settings, graph: GraphClient, store: CredentialStore, clock: Clock, tenant: str | None,
                 notify: Callable[[Notification], list[Future[bool]]]):
        self.settings, self.graph, self.store, self.clock, self.tenant, self.notify = settings, graph, store, clock, tenant, notify

    def check(self) -> CredentialsReport:
        read = read_credentials(self.graph)
        outcome = CredentialsReport.of(read, self.clock(), self.settings.token_expiry_warning_days)
        for assessment in outcome.assessed:
            threshold = self._tell(assessment, outcome.checked_at or self.clock())
            outcome.told += threshold is not None
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

    def _tell(self, assessment: Assessment, now: datetime) -> int | None:
        """Claim the threshold to tell (or an undelivered one), send it, record its delivery."""
        if assessment.days_left is None:
            return None
        key = self.store.key(assessment.credential.kind, assessment.credential.id)
        mine = uuid.uuid4().hex
        threshold = self._claim(key, assessment, now, mine)
        if threshold is None:
            return None
        futures = self.notify(notification(assessment, threshold, now, self.tenant or self.settings.tenant_id))
        done, _ = wait(futures, timeout=DELIVERY_WAIT)
        if len(done) == len(futures) and all(f.result() for f in done):
            self._delivered(key, assessment, now, mine)
        return threshold

    def _claim(self, key: str, assessment: Assessment, now: datetime, mine: str) -> int | None:
        """The threshold this check tells, its claim written first (If-Match); None: nothing to tell."""
        left, expires = float(assessment.days_left or 0.0), assessment.credential.expires_at
        decided: list[int | None] = [None]
        won = [False]

        def change(row: ToldRow) -> ToldRow | None:
            if row.claim == mine:  # our write landed; only its answer was lost
                won[0] = True
                return None
            same = row.expires_at is not None and expires is not None and abs(row.expires_at - expires) < SAME_EXPIRY
            told = row.told if same else None
            threshold = threshold_reached(left, told)
            stale = row.claimed_at is None or now - row.claimed_at > RESEND_AFTER
            if threshold is None and same and told is not None and not row.delivered and stale:
                threshold = told  # told by a check long over, and it never reached anyone: again
            decided[0] = threshold
            return None if threshold is None else ToldRow(expires, threshold, mine, False, now, row.etag)

        try:
            written = read_change_write(lambda: self.store.read(key), change,
                                        lambda row: self.store.write(key, row, assessment, now),
                                        f"record the expiry told for {assessment.credential.kind}", attempts=8,
                                        last_look=True)
        except StateStoreUnavailable:
            if self.store.read(key).claim == mine:  # the write landed; its answer was lost with the connection
                return decided[0]
            raise
        return decided[0] if written is not None or won[0] else None

    def _delivered(self, key: str, assessment: Assessment, now: datetime, mine: str) -> None:
        read_change_write(lambda: self.store.read(key),
                          lambda row: replace(row, delivered=True) if row.claim == mine and not row.delivered else None,
                          lambda row: self.store.write(key, row, assessment, now),
                          f"record the delivery told for {assessment.credential.kind}", attempts=4)


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
