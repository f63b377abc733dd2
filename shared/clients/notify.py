"""Outcome notifications: a JSON summary (or a Teams-ready Adaptive Card) POSTed to each
``NOTIFY_URL`` when a sync starts, completes or fails.

Delivery runs on a small background pool with bounded retries, so a slow or dead endpoint never
delays or fails a sync; failures are logged without the URL's user-info (a password) and query
(Power Automate trigger URLs carry their signature there): shared/common/redact.py.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import requests

from ..common import iso, redact_url
from .transport import configure_session, proxies_for

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRY_BACKOFF, RETRY_BACKOFF_MAX = 0.5, 5.0
EVENTS = ("syncStarted", "syncCompleted", "syncFailed", "importCompleted", "deviceSyncCompleted", "credentialExpiring",
          "credentialExpired")
TITLES = {"syncStarted": "Intune sync started", "syncCompleted": "Intune sync completed", "syncFailed": "Intune sync failed",
          "importCompleted": "Autopilot import finished", "deviceSyncCompleted": "Device sync finished",
          "credentialExpiring": "Apple credential expiring", "credentialExpired": "Apple credential expired"}
# Where a job's summary goes in the JSON body, by event (importCompleted's under "import").
DETAILS_KEY = {"deviceSyncCompleted": "deviceSync", "credentialExpiring": "credential", "credentialExpired": "credential"}
# A credential's facts on the card, in this order (shared/engine/expirywatch.py fills them).
CREDENTIAL_FACTS = (("name", "Credential"), ("appleId", "Apple ID"), ("expiresAt", "Expires"), ("daysLeft", "Days left"),
                    ("renewAt", "Renew at"))


@dataclass(frozen=True)
class Notification:
    event: str  # one of EVENTS
    target: str
    outcome: str
    at: datetime
    message: str = ""
    next_allowed_at: datetime | None = None
    graph_request_id: str | None = None
    client_request_id: str | None = None
    last_sync_date_time: str | None = None
    sync_status: str | None = None
    # An import job's summary (importCompleted): its id, counts per device state, failed devices.
    details: dict[str, Any] | None = None
    tenant: str | None = None  # a registered customer tenant's sync (None: the app's own tenant)

    def to_json(self, app: str) -> dict[str, Any]:
        return {
            "schemaVersion": SCHEMA_VERSION,
            "event": self.event,
            "app": app,
            "target": self.target,
            "outcome": self.outcome,
            "at": iso(self.at),
            "message": self.message,
            "nextAllowedAt": iso(self.next_allowed_at),
            "graphRequestId": self.graph_request_id,
            "clientRequestId": self.client_request_id,
            "lastSyncDateTime": self.last_sync_date_time,
            "syncStatus": self.sync_status,
            **({DETAILS_KEY.get(self.event, "import"): self.details} if self.details is not None else {}),
            **({"tenantId": self.tenant} if self.tenant else {}),
        }

    def to_adaptive_card(self, app: str) -> dict[str, Any]:
        """The message shape Teams' "When a Teams webhook request is received" flow accepts."""
        facts = [
            {"title": name, "value": str(value)}
            for name, value in (
                ("Tenant", self.tenant),
                ("Target", self.target),
                ("Outcome", self.outcome),
                ("At", iso(self.at)),
                ("Graph lastSyncDateTime", self.last_sync_date_time),
                ("Next sync allowed", iso(self.next_allowed_at)),
                ("Graph request-id", self.graph_request_id),
                ("App", app),
            )
            if value
        ] + self._import_facts()
        card = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": [
                {
                    "type": "TextBlock",
                    "size": "Medium",
                    "weight": "Bolder",
                    "text": TITLES[self.event],
                    "color": "Attention" if self.event in ("syncFailed", "credentialExpiring", "credentialExpired")
                    or self.outcome == "completedWithFailures" else "Good",
                },
                {"type": "TextBlock", "text": self.message, "wrap": True},
                {"type": "FactSet", "facts": facts},
            ],
        }
        return {
            "type": "message",
            "attachments": [
                {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
            ],
        }


    def _import_facts(self) -> list[dict[str, str]]:
        """An import job's counts per state, then each failed device with its reason."""
        if not self.details:
            return []
        if DETAILS_KEY.get(self.event) == "credential":
            return [{"title": title, "value": str(self.details[name])} for name, title in CREDENTIAL_FACTS
                    if self.details.get(name) is not None]
        facts = [{"title": state, "value": str(n)} for state, n in (self.details.get("counts") or {}).items() if n]
        for device in self.details.get("failedDevices") or []:
            reason = device.get("errorName") or device.get("state")
            facts.append({"title": str(device.get("serialNumber") or device.get("deviceId")),
                          "value": f"{reason}: {device.get('hint') or ''}"})
        return facts


class Notifier:
    def __init__(self, urls: tuple[str, ...], fmt: str = "json", app: str = "intune-sync", timeout: float = 10.0, retries: int = 3):
        self.urls = urls
        self.fmt = fmt
        self.app = app
        self._timeout = (min(5.0, timeout), timeout)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="notify") if urls else None
        self._pending: set[Future[bool]] = set()
        self._lock = threading.Lock()
        self._retries = retries
        # The CA bundle and each URL's proxies, from the standard environment, read once.
        self._session = configure_session(requests.Session())
        self._proxies = {url: proxies_for(url) for url in urls}

    def send(self, notification: Notification) -> list[Future[bool]]:
        """Queue delivery to every URL; returns at once."""
        if not self._pool:
            return []
        body = notification.to_adaptive_card(self.app) if self.fmt == "adaptiveCard" else notification.to_json(self.app)
        futures = [self._pool.submit(self._deliver, url, body) for url in self.urls]
        with self._lock:
            self._pending.update(futures)
        for future in futures:
            future.add_done_callback(self._forget)
        return futures

    def flush(self, timeout: float = 30.0) -> None:
        """Wait (bounded) for queued deliveries; the timer, queue and watcher functions call this
        before they return, since an idle instance may be reclaimed."""
        with self._lock:
            pending = list(self._pending)
        wait(pending, timeout=timeout)

    def _forget(self, future: Future[bool]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _deliver(self, url: str, body: dict[str, Any]) -> bool:
        # Retries by hand rather than urllib3's Retry: urllib3 logs each retry with the full URL,
        # and a Power Automate trigger URL's query is its signature.
        where = redact_url(url)  # never its user-info (a password) or query (a signature)
        outcome = "no attempt"
        for attempt in range(self._retries + 1):
            if attempt:
                time.sleep(min(RETRY_BACKOFF_MAX, RETRY_BACKOFF * 2 ** (attempt - 1)))
            try:
                response = self._session.post(url, json=body, timeout=self._timeout, proxies=self._proxies.get(url))
            except requests.RequestException as exc:
                # Never the exception's text: it carries the URL, query (signature) included.
                outcome = type(exc).__name__
                if isinstance(exc, requests.exceptions.SSLError):
                    outcome += " (is the endpoint's CA in the bundle? see REQUESTS_CA_BUNDLE / SSL_CERT_FILE)"
                    break  # an untrusted certificate stays untrusted
                continue
            if response.status_code < 300:
                return True
            outcome = f"HTTP {response.status_code}"
            if response.status_code not in RETRY_STATUSES:
                break
        log.warning("notification to %s failed after retries: %s", where, outcome)
        return False


class ServiceNotifier:
    """What one service sends: nothing without NOTIFY_URL; a customer tenant's notifications name
    the tenant, and its ``syncStarted`` is not sent (thousands of tenants each hour: only what
    needs someone's attention)."""

    def __init__(self, notifier: Notifier | None, tenant: str | None):
        self.notifier = notifier
        self.tenant = tenant

    def send(self, notification: Notification) -> None:
        self.deliver(notification)

    def deliver(self, notification: Notification) -> list[Future[bool]]:
        """Queue it; the futures say whether each URL took it (none: nothing to send)."""
        if self.notifier is None:
            return []
        if self.tenant is not None:
            if notification.event == "syncStarted":
                return []
            notification = replace(notification, tenant=self.tenant)
        return self.notifier.send(notification)

    def flush(self, timeout: float = 30.0) -> None:
        if self.notifier is not None:
            self.notifier.flush(timeout)
