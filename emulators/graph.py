"""Microsoft Graph emulator for the Intune sync actions, as documented.

- ``POST /beta/deviceManagement/windowsAutopilotSettings/sync``: 204 started; 409 while a sync
  runs; 429 within 10 minutes of the previous sync (no Retry-After unless configured).
- ``GET /beta/deviceManagement/windowsAutopilotSettings``: ``syncStatus`` moves
  ``inProgress`` → ``completed`` and ``lastSyncDateTime`` advances when a sync finishes.
- ``GET {v1.0|beta}/deviceManagement/exchangeConnectors[/{id}]`` and
  ``POST .../exchangeConnectors/{id}/sync`` with ``{"syncType": "fullSync"|"deltaSync"}``.
- 401 without a valid bearer token for this audience (with a claims challenge for a revoked
  token), 403 without the ``DeviceManagementServiceConfig.ReadWrite.All`` role; OData error
  bodies; ``request-id`` and ``client-request-id`` on every answer.
- Autopilot device import (``emulators/autopilot.py`` documents them fully), ``{ver}`` = ``v1.0`` | ``beta``:
  ``POST /{ver}/deviceManagement/importedWindowsAutopilotDeviceIdentities/import``, ``GET|DELETE
  .../importedWindowsAutopilotDeviceIdentities[/{id}]`` (state settles on the emulated clock), ``GET
  /{ver}/deviceManagement/windowsAutopilotDeviceIdentities[/{id}]`` (``$filter=contains(serialNumber,'...')`` only; devices
  appear through an Autopilot sync), ``POST .../windowsAutopilotDeviceIdentities/{id}/updateDeviceProperties``.
- Managed devices and group device members (``emulators/devices.py`` documents them): ``GET
  /{ver}/deviceManagement/managedDevices[/{id}]`` (``$select``, ``$filter`` on ``eq`` clauses, ``$top``, ``@odata.nextLink``),
  ``POST .../managedDevices/{id}/syncDevice``, ``GET /{ver}/groups/{id}/transitiveMembers/microsoft.graph.device``; each
  path needs the role ``required_role`` names.
- ``GET /{ver}/deviceManagement/applePushNotificationCertificate``: the tenant's Apple MDM push
  certificate (``expirationDateTime``, ``appleIdentifier``, ``topicIdentifier``...), 300 days from
  the tenant's creation unless config ``applePushCertificate`` says otherwise (``{"expiresInDays",
  "appleIdentifier"?, "topicIdentifier"?}``, days counted from the emulated clock when configured;
  null: not set up, 404 ``ResourceNotFound``). Reads of the service configuration take
  ``DeviceManagementServiceConfig.Read.All`` as well as its ReadWrite role.
- JSON batching: ``POST /{ver}/$batch`` ``{"requests": [{"id", "method", "url" (relative to the version), "headers"?,
  "body"?}]}`` (1 to 20, unique ids, else 400) → 200 ``{"responses": [{"id", "status", "headers", "body"?}]}`` in the order
  sent. Each inner request goes through the fault list, its role check, the write limits and the routing on its own (a
  throttled one answers 429 with its own ``Retry-After``) and is logged as its own request (with ``batch`` and
  ``batchRequestId``); the batch itself needs a valid token but no role.

Tenants: the state behind these endpoints (the Autopilot sync window, last trigger and running sync,
the connectors, the Apple/VPP/driver items, Managed Google Play, the Autopilot devices and imports,
the write limit) belongs to the tenant named by the bearer token's ``tid`` claim, created with the
defaults on first use. A token without ``tid``, or with the home tenant's (``emulators.tokens.HOME_TENANT``,
what the managed-identity emulator puts in its tokens), acts on the home tenant: a single-tenant
app sees one tenant, as before. Roles come from each token (403 naming the missing role).

Test controls under ``/_emulator/`` (no auth): ``reset`` (every tenant back to the defaults),
``clock`` (advance the emulated clock, shared by all tenants and sent as every answer's ``Date``; a
negative advance puts it back), ``faults`` (a list of ``{"method"?,
"pathContains"?, "status"?, "times"? (1), "delaySeconds"?, "retryAfter"?, "tenant"?}``: answer N matching
requests with a status, a delay, a Retry-After; with ``"tenant"`` only requests whose token's tenant is
that one match, the home tenant's id also matching tokens without ``tid``), ``config`` (connectors,
sync duration and outcome, Retry-After on 429; Autopilot devices, import errors and timings, a
write limit per area (``writeLimit``, ``deviceWriteLimit``): see emulators/autopilot.py ``WriteLimit``; managed devices and
groups: see emulators/devices.py; all for the home tenant, or for ``"tenant": "<tid>"``;
``latencySeconds`` and ``revokeTokens`` act server-wide whatever the tenant), ``stats`` (the request log,
each entry with the token's ``"tenant"`` (``tid``, or null without one), ``counts`` over all tenants,
the home tenant's ``autopilotImports``, ``managedDevices`` and ``writeLimits`` (per area: ``limit``, ``windowSeconds``,
``accepted``, ``throttled``, ``maxWritesInAnyWindow``), ``throttled`` and ``deviceSyncs`` over all tenants, and ``tenants``:
per tenant id, its request ``counts``, ``throttled``, ``autopilot`` settings, ``writeLimits`` and ``managedDevices``;
``?tenant=<tid>`` gives that tenant's ``autopilotImports``, ``managedDevices`` and ``writeLimits`` instead of the home tenant's).
"""
from __future__ import annotations

import argparse
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .autopilot import AutopilotDevices, WriteLimit, _Window
from .devices import GROUP_MEMBER_ROLE, MANAGED_DEVICES, PRIVILEGED_ROLE, READ_ROLE, ManagedDevices
from .server import JsonHandler, Server
from .tokens import HOME_TENANT, decode

AUTOPILOT = "/beta/deviceManagement/windowsAutopilotSettings"
_EXCHANGE = re.compile(r"^/(v1\.0|beta)/deviceManagement/exchangeConnectors(?:/([^/]+))?(/sync)?$")
MANAGED_GOOGLE_PLAY = "/beta/deviceManagement/androidManagedStoreAccountEnterpriseSettings"
CONNECTOR_STATUS = "/beta/deviceManagement/connectorStatus"
APNS = re.compile(r"^/(v1\.0|beta)/deviceManagement/applePushNotificationCertificate$")
SERVICE_CONFIG_READ = "DeviceManagementServiceConfig.Read.All"
# Collections of items with a bound sync action: path -> (config key, action)
COLLECTIONS = {
    "/beta/deviceManagement/depOnboardingSettings": ("depOnboardingSettings", "syncWithAppleDeviceEnrollmentProgram"),
    "/v1.0/deviceAppManagement/vppTokens": ("vppTokens", "syncLicenses"),
    "/beta/deviceManagement/windowsDriverUpdateProfiles": ("windowsDriverUpdateProfiles", "syncInventory"),
}
SERVICE_CONFIG = "DeviceManagementServiceConfig.ReadWrite.All"
CONFIGURATION = "DeviceManagementConfiguration.ReadWrite.All"
APPLE_SYNC_WINDOW = timedelta(minutes=15)
BATCH = re.compile(r"^/(v1\.0|beta)/\$batch$")
MAX_BATCH = 20
_GROUPS = re.compile(r"^/(v1\.0|beta)/groups(/|$)")
Result = tuple[int, Any, dict[str, str]]


def required_role(path: str) -> str:
    """The application permission Graph demands for a path (as documented per action)."""
    if "androidManagedStoreAccountEnterpriseSettings" in path or "windowsDriverUpdateProfiles" in path:
        return CONFIGURATION
    devices = MANAGED_DEVICES.match(path)
    if devices:
        return PRIVILEGED_ROLE if devices.group(3) else READ_ROLE  # an action on a device, or reading
    if _GROUPS.match(path):
        return GROUP_MEMBER_ROLE
    return SERVICE_CONFIG
WINDOW = timedelta(minutes=10)
DEFAULT_CONNECTORS = [
    {
        "id": "6a1c2f8e-2b1d-4d7e-9a55-3c1f0e6b9d01",
        "status": "connected",
        "serverName": "exch01.contoso.local",
        "connectorServerName": "connector01",
        "exchangeConnectorType": "onPremises",
        "exchangeOrganization": "Contoso",
        "primarySmtpAddress": "intune-connector@contoso.com",
        "version": "15.2.1118",
    },
    {
        "id": "0b7d4e3a-91c2-4f6b-8e0d-5a2b7c9e1f02",
        "status": "disconnected",
        "serverName": "exch02.contoso.local",
        "connectorServerName": "connector02",
        "exchangeConnectorType": "onPremises",
        "exchangeOrganization": "Contoso",
        "primarySmtpAddress": "intune-connector2@contoso.com",
        "version": "15.2.1118",
    },
]


def _iso(value: datetime | None) -> str:
    if value is None:
        return "0001-01-01T00:00:00Z"
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Fault:
    method: str | None
    path_contains: str
    status: int | None
    times: int
    delay: float = 0.0
    retry_after: str | None = None
    tenant: str | None = None  # None: any tenant


class TenantState:
    """One tenant's Intune: what its Graph endpoints change and show. GraphEmulator's lock guards it."""

    def __init__(self, clock: Callable[[], datetime]):
        self.clock = clock
        now = clock()
        self.sync_duration = timedelta(seconds=30)
        self.retry_after_on_429: int | None = None
        self.sync_outcome = "completed"  # what syncStatus says once a sync has run
        self.last_trigger: datetime | None = None
        self.last_sync: datetime | None = None
        self.running_until: datetime | None = None
        self.connectors = {c["id"]: dict(c, lastSyncDateTime=_iso(None)) for c in DEFAULT_CONNECTORS}
        self.items: dict[str, dict[str, dict[str, Any]]] = default_items(now)
        self.managed_google_play = default_managed_google_play(now)
        self.autopilot_devices = AutopilotDevices(clock)
        self.write_limit = WriteLimit()
        self.managed_devices = ManagedDevices(clock)
        self.apns: dict[str, Any] | None = apns_certificate(now, 300, "mdm-admin@contoso.com")

    def autopilot_settings(self) -> dict[str, Any]:
        now = self.clock()
        if self.running_until and now >= self.running_until:
            self.last_sync, self.running_until = self.running_until, None
        status = "inProgress" if self.running_until else (self.sync_outcome if self.last_sync else "unknown")
        return {
            "@odata.context": "https://graph.microsoft.com/beta/$metadata#deviceManagement/windowsAutopilotSettings/$entity",
            "id": "6b6a7f8c-0c64-4a2a-9e53-3b5b0d4a1b11",
            "syncStatus": status,
            "lastSyncDateTime": _iso(self.last_sync),
            "lastManualSyncTriggerDateTime": _iso(self.last_trigger),
        }

    def trigger_autopilot(self) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        self.autopilot_settings()  # settle a finished sync first
        now = self.clock()
        if self.running_until:
            return 409, _error("Conflict", "A sync is already in progress."), {}
        if self.last_trigger and now - self.last_trigger < WINDOW:
            headers = {}
            if self.retry_after_on_429 is not None:
                headers["Retry-After"] = str(self.retry_after_on_429)
            return 429, _error("TooManyRequests", "Sync called within 10 minutes of the previous sync."), headers
        self.last_trigger = now
        self.running_until = now + self.sync_duration
        self.autopilot_devices.on_sync(now, self.running_until)
        return 204, None, {}

    def configure(self, config: dict[str, Any]) -> None:
        if "connectors" in config:
            self.connectors = {
                c["id"]: dict({"lastSyncDateTime": _iso(None)}, **c) for c in config["connectors"]
            }
        for key, _ in COLLECTIONS.values():
            if key in config:
                self.items[key] = {item["id"]: dict(item) for item in config[key]}
        if "managedGooglePlay" in config:
            self.managed_google_play = dict(config["managedGooglePlay"])
        if "applePushCertificate" in config:  # null: Apple management not set up (Graph answers 404)
            cert = config["applePushCertificate"]
            self.apns = None if cert is None else apns_certificate(
                self.clock(), float(cert.get("expiresInDays", 300)), cert.get("appleIdentifier", "mdm-admin@contoso.com"),
                cert.get("topicIdentifier"))
        if "syncDurationSeconds" in config:
            self.sync_duration = timedelta(seconds=float(config["syncDurationSeconds"]))
        if "syncOutcome" in config:
            self.sync_outcome = config["syncOutcome"]
        if "retryAfterOn429" in config:
            self.retry_after_on_429 = config["retryAfterOn429"]
        if "lastManualSyncTriggerDateTime" in config:  # as if someone pressed Sync in the portal
            when = datetime.fromisoformat(config["lastManualSyncTriggerDateTime"].replace("Z", "+00:00"))
            self.last_trigger = when
            self.running_until = when + self.sync_duration
            self.autopilot_devices.on_sync(when, self.running_until)
        self.autopilot_devices.configure(config)
        self.write_limit.configure(config)
        self.managed_devices.configure(config)

    def sync_item(self, key: str, item: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        """A bound sync action on one item, as Graph answers it."""
        now = _iso(self.clock())
        if key == "depOnboardingSettings":
            triggered = item.get("lastSyncTriggeredDateTime")
            if triggered and self.clock() - datetime.fromisoformat(triggered.replace("Z", "+00:00")) < APPLE_SYNC_WINDOW:
                return 429, _error("TooManyRequests", "Apple allows one sync every 15 minutes."), {}
            item["lastSyncTriggeredDateTime"] = now
            if item.get("failNextSync"):
                item["lastSyncErrorCode"] = 5002
            else:
                item.update(lastSuccessfulSyncDateTime=now, lastSyncErrorCode=0)
            return 204, None, {}
        if key == "vppTokens":
            item.update(lastSyncDateTime=now, lastSyncStatus="completed")
            return 200, dict(item, **{"@odata.type": "#microsoft.graph.vppToken"}), {}  # syncLicenses returns the token
        item["inventorySyncStatus"] = {"driverInventorySyncState": "success", "lastSuccessfulSyncDateTime": now}
        return 204, None, {}


class GraphEmulator(Server):
    def __init__(self, port: int = 0, home_tenant: str = HOME_TENANT):
        super().__init__(_Handler, port)
        self.lock = threading.RLock()
        self.home_tenant = home_tenant
        self.reset()

    def reset(self) -> None:
        with self.lock:
            # Requests still sleeping in a delay fault belong to the previous test: drop them.
            self.generation = getattr(self, "generation", 0) + 1
            self.offset = 0.0
            self.latency = 0.0
            self.revoked_before = 0.0
            self.tenants: dict[str, TenantState] = {}
            self.faults: list[Fault] = []
            self.requests: list[dict[str, Any]] = []
            # Graph's global limit, per app across all tenants (any request; 2,000 per second as
            # Intune's throttling page gives it): config ``appRequestLimit``, off by default.
            self.app_limit = _Window()

    # --- clock and tenants ---------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def tenant_key(self, tid: str | None) -> str:
        """Which tenant a token's ``tid`` acts on: the home tenant without one."""
        return tid or self.home_tenant

    def tenant(self, tid: str | None = None) -> TenantState:
        """A tenant's state, created with the defaults on first use (home tenant for None)."""
        key = self.tenant_key(tid)
        with self.lock:
            state = self.tenants.get(key)
            if state is None:
                state = self.tenants[key] = TenantState(self.now)
            return state

    # The home tenant's state, as before tenants existed (callers that know one tenant).
    def autopilot_settings(self, tid: str | None = None) -> dict[str, Any]:
        with self.lock:
            return self.tenant(tid).autopilot_settings()

    def trigger_autopilot(self, tid: str | None = None) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        with self.lock:
            return self.tenant(tid).trigger_autopilot()

    def configure(self, config: dict[str, Any]) -> None:
        """Apply ``/_emulator/config``: to ``config["tenant"]`` (home tenant when absent) and, for
        ``latencySeconds`` / ``revokeTokens``, to the whole server."""
        with self.lock:
            if "latencySeconds" in config:
                self.latency = float(config["latencySeconds"])
            if config.get("revokeTokens"):
                self.revoked_before = time.time()
            if "appRequestLimit" in config:
                self.app_limit.configure(config["appRequestLimit"])
            self.tenant(config.get("tenant")).configure(config)

    def add_faults(self, faults: list[dict[str, Any]]) -> None:
        with self.lock:
            for f in faults:
                self.faults.append(
                    Fault(
                        method=f.get("method"),
                        path_contains=f.get("pathContains", ""),
                        status=f.get("status"),
                        times=int(f.get("times", 1)),
                        delay=float(f.get("delaySeconds", 0)),
                        retry_after=str(f["retryAfter"]) if "retryAfter" in f else None,
                        tenant=self.tenant_key(f["tenant"]) if f.get("tenant") else None,
                    )
                )

    def take_fault(self, method: str, path: str, tid: str | None = None) -> Fault | None:
        key = self.tenant_key(tid)
        with self.lock:
            for fault in self.faults:
                if (fault.times > 0 and (fault.method in (None, method)) and fault.path_contains in path
                        and fault.tenant in (None, key)):
                    fault.times -= 1
                    return fault
        return None

    def stats(self, tid: str | None = None) -> dict[str, Any]:
        with self.lock:
            counts: dict[str, int] = {}
            per_tenant: dict[str, dict[str, int]] = {}
            for r in self.requests:
                key = f"{r['method']} {r['path']}"
                counts[key] = counts.get(key, 0) + 1
                mine = per_tenant.setdefault(self.tenant_key(r["tenant"]), {})
                mine[key] = mine.get(key, 0) + 1
            tenants = {
                key: {"counts": per_tenant.get(key, {}), "throttled": state.write_limit.throttled,
                      "autopilot": state.autopilot_settings(), "writeLimits": state.write_limit.stats(),
                      "managedDevices": state.managed_devices.stats()}
                for key, state in self.tenants.items()
            }
            for key, tenant_counts in per_tenant.items():  # tenants seen only in refused requests
                tenants.setdefault(key, {"counts": tenant_counts, "throttled": 0})
            mine = self.tenant(tid)
            return {"requests": list(self.requests), "counts": counts, "now": _iso(self.now()),
                    "autopilotImports": mine.autopilot_devices.stats(),
                    "managedDevices": mine.managed_devices.stats(), "writeLimits": mine.write_limit.stats(),
                    "throttled": sum(state.write_limit.throttled for state in self.tenants.values()) + self.app_limit.throttled,
                    "appRequestLimit": self.app_limit.stats() if self.app_limit.limit is not None else None,
                    "deviceSyncs": sum(sum(state.managed_devices.syncs.values()) for state in self.tenants.values()),
                    "tenants": tenants}


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "innerError": {}}}


def _unauthorized() -> Result:
    return 401, _error("InvalidAuthenticationToken", "Access token is empty."), {}


def _role_denied(claims: dict[str, Any], path: str, method: str = "GET") -> Result | None:
    """403 when the token lacks the role the path needs (required_role), else None. A read of the
    service configuration takes its read role too (Graph lists both for those reads)."""
    role = required_role(path)
    roles = claims.get("roles") or []
    if role in roles or (method == "GET" and role == SERVICE_CONFIG and SERVICE_CONFIG_READ in roles):
        return None
    return 403, _error(
        "Forbidden",
        f"Application is not authorized to perform this operation. Application must have one of the "
        f"following scopes: {role}",
    ), {}


def _stamp(body: Any, date: str, request_id: str, client_request_id: str) -> None:
    """Fill an OData error body's ``innerError`` as Graph does."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body["error"]["innerError"] = {"date": date, "request-id": request_id, "client-request-id": client_request_id}


def apns_certificate(now: datetime, expires_in_days: float, apple_id: str, topic: str | None = None) -> dict[str, Any]:
    """The tenant's Apple MDM push certificate, expiring ``expires_in_days`` from ``now``."""
    return {"@odata.type": "#microsoft.graph.applePushNotificationCertificate", "id": "a1b2c3d4-0000-4000-8000-00000000a9b5",
            "appleIdentifier": apple_id, "topicIdentifier": topic or "com.apple.mgmt.External.5b7d4e3a-91c2-4f6b-8e0d",
            "lastModifiedDateTime": _iso(now - timedelta(days=65)), "expirationDateTime": _iso(now + timedelta(days=expires_in_days)),
            "certificateSerialNumber": "6A1C2F8E2B1D4D7E", "certificateUploadStatus": None,
            "certificateUploadFailureReason": None}


def default_items(now: datetime) -> dict[str, dict[str, dict[str, Any]]]:
    """A small tenant: a good and an expired Apple token, a valid and an expired VPP token, and a
    driver update profile whose inventory is four days old."""
    def ago(**kw: float) -> str:
        return _iso(now - timedelta(**kw))

    def ahead(**kw: float) -> str:
        return _iso(now + timedelta(**kw))

    items: dict[str, list[dict[str, Any]]] = {
        "depOnboardingSettings": [
            {"id": "2f0a8b6e-6c3d-4f5e-9a1b-7c2d3e4f5a01", "tokenName": "Contoso ABM", "appleIdentifier": "mdm@contoso.com",
             "tokenExpirationDateTime": ahead(days=200), "lastSuccessfulSyncDateTime": ago(hours=2),
             "lastSyncTriggeredDateTime": ago(hours=2), "lastSyncErrorCode": 0},
            {"id": "2f0a8b6e-6c3d-4f5e-9a1b-7c2d3e4f5a02", "tokenName": "Old ABM token", "appleIdentifier": "old@contoso.com",
             "tokenExpirationDateTime": ago(days=5), "lastSuccessfulSyncDateTime": ago(days=6),
             "lastSyncTriggeredDateTime": ago(days=6), "lastSyncErrorCode": 0},
        ],
        "vppTokens": [
            {"id": "7b1c9d2e-3f4a-4b5c-8d6e-9f0a1b2c3d01", "organizationName": "Contoso", "state": "valid",
             "lastSyncDateTime": ago(hours=3), "lastSyncStatus": "completed", "expirationDateTime": ahead(days=20)},
            {"id": "7b1c9d2e-3f4a-4b5c-8d6e-9f0a1b2c3d02", "organizationName": "Fabrikam", "state": "expired",
             "lastSyncDateTime": ago(days=40), "lastSyncStatus": "completed", "expirationDateTime": ago(days=10)},
        ],
        "windowsDriverUpdateProfiles": [
            {"id": "c4d5e6f7-0a1b-4c2d-9e3f-4a5b6c7d8e01", "displayName": "Drivers - pilot ring",
             "inventorySyncStatus": {"driverInventorySyncState": "success", "lastSuccessfulSyncDateTime": ago(days=4)}},
        ],
    }
    return {key: {item["id"]: item for item in values} for key, values in items.items()}


def default_managed_google_play(now: datetime) -> dict[str, Any]:
    return {"id": "asdf1234", "bindStatus": "boundAndValidated", "lastAppSyncStatus": "success",
            "lastAppSyncDateTime": _iso(now - timedelta(hours=30)), "ownerOrganizationName": "Contoso"}


class _Handler(JsonHandler):
    server: GraphEmulator
    tid: str | None = None  # the tenant of this request's token (unverified), None without one

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The ``Date`` header, from the emulated clock as Graph's comes from its own: a test that
        moves this clock away from the app's shows the app a Graph whose clock differs."""
        return format_datetime(self.server.now(), usegmt=True)

    def answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        request_id = str(uuid.uuid4())
        client_request_id = self.headers.get("client-request-id") or request_id
        _stamp(body, _iso(self.server.now()), request_id, client_request_id)
        self.log(self.command, self.path_only, urlsplit(self.path).query, getattr(self, "body", b""), status,
                 client_request_id, requestId=request_id)
        self.send_json(status, body, {"request-id": request_id, "client-request-id": client_request_id, **(headers or {})})

    def log(self, method: str, path: str, query: str, body: bytes, status: int, client_request_id: str,
            **extra: Any) -> None:
        """One entry of the request log (``/_emulator/stats`` ``requests``)."""
        with self.server.lock:
            self.server.requests.append(
                {
                    "method": method,
                    "path": path,
                    "status": status,
                    "clientRequestId": client_request_id,
                    "at": _iso(self.server.now()),
                    "body": body.decode(errors="replace")[:500],
                    "query": query,
                    "tenant": self.tid,
                    **extra,
                }
            )

    def dispatch(self) -> None:
        if self.path_only.startswith("/_emulator/"):
            return self.admin()
        em = self.server
        generation = em.generation
        body = self.body = self.read_body()
        self.tid = self.token_tenant()
        if em.latency:
            time.sleep(em.latency)
        faulted = self.fault(self.command, self.path_only, generation)
        if faulted == "gone":
            self.close_connection = True
            return
        if faulted:
            return self.answer(*faulted)
        claims, denied = self.check_token()
        if denied or claims is None:
            return self.answer(*(denied or _unauthorized()))
        if BATCH.match(self.path_only):
            return self.answer(*self.batch(claims, body, generation))
        denied = _role_denied(claims, self.path_only, self.command)
        if denied:
            return self.answer(*denied)
        with em.lock:
            self.answer(*self.limited(self.command, self.path_only, self.query, body))

    def fault(self, method: str, path: str, generation: int) -> Result | str | None:
        """The answer of an injected fault matching this request (after its delay), "gone" when the emulator was
        reset during the delay, or None."""
        em = self.server
        fault = em.take_fault(method, path, self.tid)
        if not fault:
            return None
        if fault.delay:
            time.sleep(fault.delay)
            if em.generation != generation:
                return "gone"
        if fault.status:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return fault.status, _error("ServiceUnavailable" if fault.status >= 500 else "Fault", "emulated fault"), headers
        return None

    def limited(self, method: str, path: str, query: dict[str, str], body: bytes, arrived: float | None = None) -> Result:
        """Under the lock: a request over a limit is refused, anything else is routed. Limits count
        arrivals: ``arrived`` (a $batch's, for its inner requests), else now."""
        tenant = self.server.tenant(self.tid)
        at = time.monotonic() if arrived is None else arrived
        throttled = self.server.app_limit.check(at) if self.server.app_limit.limit is not None else None
        throttled = throttled or tenant.write_limit.check(method, path, at)
        if throttled:
            return throttled
        return self.route(tenant, method, path, query, body)

    def batch(self, claims: dict[str, Any], body: bytes, generation: int) -> Result:
        """``POST /{ver}/$batch``: each inner request goes through faults, roles, the write limits and routing on its
        own, in the order sent; 200 with their answers."""
        arrived = time.monotonic()  # its inner requests are counted against the limits as arriving now
        if self.command != "POST":
            return 405, _error("BadRequest", "The $batch endpoint only accepts POST."), {}
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            payload = None
        inner = payload.get("requests") if isinstance(payload, dict) else None
        if not isinstance(inner, list) or not inner:
            return 400, _error("BadRequest", "Invalid batch payload format."), {}
        if len(inner) > MAX_BATCH:
            return 400, _error("BadRequest", f"Number of included requests in the batch exceeds the limit of {MAX_BATCH}."), {}
        ids = set()
        for request in inner:
            if (not isinstance(request, dict) or not all(isinstance(request.get(k), str) and request.get(k)
                                                         for k in ("id", "method", "url"))):
                return 400, _error("BadRequest", "Each request in a batch needs an id, a method and a url."), {}
            if request["id"] in ids:
                return 400, _error("BadRequest", f"Request id {request['id']} is used more than once in the batch."), {}
            ids.add(request["id"])
        version = self.path_only.split("/")[1]
        return 200, {"responses": [self.inner(claims, version, r, generation, arrived) for r in inner]}, {}

    def inner(self, claims: dict[str, Any], version: str, request: dict[str, Any], generation: int,
              arrived: float | None = None) -> dict[str, Any]:
        """One request of a batch, answered as Graph answers it inside the batch response."""
        method, url = request["method"].upper(), urlsplit(request["url"])
        path = f"/{version}/{url.path.lstrip('/')}"
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = request.get("body")
        raw = b"" if body is None else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
        faulted = self.fault(method, path, generation)
        if faulted == "gone":
            faulted = 503, _error("ServiceUnavailable", "emulated fault"), {}
        result = faulted or _role_denied(claims, path, method)
        if not result:
            with self.server.lock:
                status, answer, headers = self.limited(method, path, query, raw, arrived)
                result = status, json.loads(json.dumps(answer)) if answer is not None else None, headers
        assert isinstance(result, tuple)
        status, answer, headers = result
        request_id = str(uuid.uuid4())
        _stamp(answer, _iso(self.server.now()), request_id, request_id)
        self.log(method, path, url.query, raw, status, request_id, batch=self.path_only, batchRequestId=request["id"])
        response: dict[str, Any] = {"id": request["id"], "status": status,
                                    "headers": ({"Content-Type": "application/json"} if answer is not None else {}) | headers}
        if answer is not None:
            response["body"] = answer
        return response

    def token_tenant(self) -> str | None:
        """The ``tid`` claim of the bearer token, if any (the token is checked later)."""
        auth = self.headers.get("Authorization", "")
        claims = decode(auth[7:].strip()) if auth.startswith("Bearer ") else None
        tid = claims.get("tid") if claims else None
        return tid if isinstance(tid, str) and tid else None

    def check_token(self) -> tuple[dict[str, Any] | None, Result | None]:
        """The bearer token's claims when it is valid for this Graph, else the 401 answer (roles are checked per path)."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return None, _unauthorized()
        claims = decode(auth[7:].strip())
        if claims is None:
            return None, (401, _error("InvalidAuthenticationToken", "IDX14100: JWT is not well formed."), {})
        if str(claims.get("aud", "")).rstrip("/") != self.server.base_url:
            return None, (401, _error("InvalidAuthenticationToken", "Access token validation failure. Invalid audience."), {})
        if float(claims.get("exp", 0)) <= time.time():
            return None, (401, _error("InvalidAuthenticationToken", "Lifetime validation failed, the token is expired."), {})
        if float(claims.get("iat", 0)) < self.server.revoked_before:
            # Continuous access evaluation: a revoked token gets a claims challenge.
            challenge = 'Bearer realm="", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZX19fQ=="'
            return None, (401, _error("InvalidAuthenticationToken", "Access token has been revoked."), {"WWW-Authenticate": challenge})
        return claims, None

    def route(self, em: TenantState, method: str, path: str, query: dict[str, str], body: bytes) -> Result:
        """The answer to one request (direct or inside a $batch) on a tenant's state."""
        if path == AUTOPILOT and method == "GET":
            return 200, em.autopilot_settings(), {}
        if path == AUTOPILOT + "/sync" and method == "POST":
            if body.strip():
                return 400, _error("BadRequest", "This action takes no request body."), {}
            return em.trigger_autopilot()
        if path == CONNECTOR_STATUS and method == "GET":
            return 200, {"value": [
                {"connectorName": "applePushNotificationServiceExpirationDateTime", "status": "healthy", "eventDateTime": _iso(em.clock())},
                {"connectorName": "vppTokenExpirationDateTime", "status": "warning", "eventDateTime": _iso(em.clock())},
            ]}, {}
        if path == MANAGED_GOOGLE_PLAY and method == "GET":
            return 200, em.managed_google_play, {}
        if APNS.match(path) and method == "GET":
            if em.apns is None:
                return 404, _error("ResourceNotFound", "The Apple push notification certificate is not set up."), {}
            return 200, em.apns, {}
        if path == MANAGED_GOOGLE_PLAY + "/syncApps" and method == "POST":
            if em.managed_google_play.get("bindStatus") not in ("bound", "boundAndValidated"):
                return 400, _error("BadRequest", "The Managed Google Play account is not bound."), {}
            em.managed_google_play.update(lastAppSyncDateTime=_iso(em.clock()), lastAppSyncStatus="success")
            return 204, None, {}
        for collection, (key, action) in COLLECTIONS.items():
            if path == collection and method == "GET":
                return 200, {"value": list(em.items[key].values())}, {}
            if path.startswith(collection + "/"):
                item_id, _, rest = path[len(collection) + 1:].partition("/")
                item = em.items[key].get(item_id)
                if item is None:
                    return 404, _error("ResourceNotFound", f"Resource not found: {item_id}"), {}
                if not rest and method == "GET":
                    return 200, item, {}
                if rest == action and method == "POST":
                    return em.sync_item(key, item)
        match = _EXCHANGE.match(path)
        if match:
            version, connector_id, sync = match.groups()
            if connector_id is None and method == "GET":
                return 200, {"@odata.context": f"https://graph.microsoft.com/{version}/$metadata#deviceManagement/exchangeConnectors", "value": list(em.connectors.values())}, {}
            connector = em.connectors.get(connector_id or "")
            if connector is None:
                return 404, _error("ResourceNotFound", f"Resource not found: {connector_id}"), {}
            if not sync and method == "GET":
                return 200, connector, {}
            if sync and method == "POST":
                try:
                    payload = json.loads(body or b"null")
                except ValueError:
                    payload = None
                if not isinstance(payload, dict) or payload.get("syncType") not in ("fullSync", "deltaSync"):
                    return 400, _error("BadRequest", "syncType must be fullSync or deltaSync."), {}
                connector["lastSyncDateTime"] = _iso(em.clock())
                return 204, None, {}
        for routed in (em.autopilot_devices, em.managed_devices):
            answer = routed.route(method, path, query, body, self.server.base_url)
            if answer:
                return answer
        if path.startswith(("/v1.0/", "/beta/")):
            return (405 if method not in ("GET", "POST") else 400), _error("BadRequest", f"Resource not found for the segment in {path}."), {}
        return 404, _error("NotFound", path), {}

    def admin(self) -> None:
        em, path = self.server, self.path_only
        payload = self.read_json() if self.command == "POST" else None
        tenant: str | None = self.query.get("tenant") or None
        if path == "/_emulator/reset":
            em.reset()
        elif path == "/_emulator/clock":
            with em.lock:
                em.offset += float((payload or {}).get("advanceSeconds", 0))
        elif path == "/_emulator/faults":
            em.add_faults(payload or [])
        elif path == "/_emulator/config":
            em.configure(payload or {})
            tenant = (payload or {}).get("tenant")
        elif path == "/_emulator/stats":
            return self.send_json(200, em.stats(tenant))
        else:
            return self.send_json(404, {"error": "unknown emulator control"})
        self.send_json(200, em.stats(tenant) | {"autopilot": em.autopilot_settings(tenant)})


def main() -> None:
    parser = argparse.ArgumentParser(description="Microsoft Graph emulator for the Intune sync actions")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    server = GraphEmulator(port=args.port)
    print(f"Graph emulator on {server.base_url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
