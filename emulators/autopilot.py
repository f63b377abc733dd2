"""Windows Autopilot device import in the Graph emulator, as Microsoft documents it.

Endpoints (``{ver}`` is ``v1.0`` or ``beta``; all need ``DeviceManagementServiceConfig.ReadWrite.All``):

- ``POST /{ver}/deviceManagement/importedWindowsAutopilotDeviceIdentities/import`` with
  ``{"importedWindowsAutopilotDeviceIdentities": [{"serialNumber", "hardwareIdentifier" (base64), "productKey"?, "groupTag"?,
  "assignedUserPrincipalName"?, "importId"?}, ...]}`` (1 to 500 elements) → 200 with the created import records, in request
  order, each ``state.deviceImportStatus = "pending"``. 400 for a body that is not an object, a missing or empty list, more than
  500 elements, an element without ``serialNumber`` / ``hardwareIdentifier``, invalid base64 or a property the type does not have.
- ``POST /{ver}/deviceManagement/importedWindowsAutopilotDeviceIdentities`` (Create, one element) → 201 with the record.
- ``GET .../importedWindowsAutopilotDeviceIdentities[/{id}]``, ``DELETE .../importedWindowsAutopilotDeviceIdentities/{id}`` → 204.
- ``GET /{ver}/deviceManagement/windowsAutopilotDeviceIdentities[/{id}]``: ``$filter=contains(serialNumber,'text')`` only
  (case-insensitive substring; any other filter → 400 "Invalid filter clause", as the real endpoint refuses ``eq``); pages of
  100 with an absolute ``@odata.nextLink`` (``$skiptoken``). v1.0 has no ``deploymentProfileAssignment*`` properties.
- ``POST .../windowsAutopilotDeviceIdentities/{id}/updateDeviceProperties`` (``userPrincipalName``, ``addressableUserName``,
  ``groupTag``, ``displayName``; beta also ``deviceAccountUpn``, ``deviceAccountPassword``, ``deviceFriendlyName``) → 204;
  ``DELETE .../windowsAutopilotDeviceIdentities/{id}`` → 204.

Time, all on the emulated clock and computed when read:

- An import record stays ``pending`` for ``importProcessingSeconds`` (default 60), then settles to ``error`` — the serial is in
  ``importErrors`` (the configured code and name), or a device with that serial (case-insensitive) was already registered (806
  ``ZtdDeviceAlreadyAssigned``), or an earlier, still-existing record with that serial completed (0 ``ZtdDeviceDuplicated``; this
  also covers duplicates in one batch) — or to ``complete`` with a new ``deviceRegistrationId``.
- A completed record becomes an Autopilot device only through an Autopilot sync (``POST /beta/.../windowsAutopilotSettings/sync``
  answered 204, or a portal sync set with ``lastManualSyncTriggerDateTime``) that starts at or after its completion. The device
  is registered at the sync's start and visible from the sync's end. A completed record deleted before the sync still registers
  (the device is already in the Autopilot service, the import record is only a receipt); a record deleted while pending never
  completes; deleting a record never removes its device. A serial that already has a device gets no second one.
- A new device's ``deploymentProfileAssignmentStatus`` is ``notAssigned`` for the first half of ``profileAssignmentSeconds``
  (default 120) after it became visible, ``pending`` for the second half, then ``assignedInSync`` with
  ``deploymentProfileAssignedDateTime`` (``0001-01-01T00:00:00Z`` before).

Stats (``/_emulator/stats`` ``autopilotImports``): the ``records`` not deleted, the visible ``devices``, the ``deleted`` record
ids, and ``importsPerSerial`` (serial, upper-case → how many accepted ``import`` calls carried it).

Config keys (``/_emulator/config``): ``autopilotDevices`` (replaces all devices: ``[{"serialNumber", "groupTag"?,
"deploymentProfileAssignmentStatus"? (default "assignedInSync")}, ...]``; any other device property overrides the default;
visible at once, with new ids unless given), ``importErrors`` (``{"<serial>": {"deviceErrorCode": 808, "deviceErrorName": "ZtdDeviceAssignedToOtherTenant"}}``),
``importProcessingSeconds``, ``profileAssignmentSeconds``, and ``writeLimit`` (``{"limit": N, "windowSeconds": S}`` or null):
more than N writes (POST/PUT/PATCH/DELETE under ``/{ver}/deviceManagement``, managed devices aside) in any S real seconds
→ 429 ``TooManyRequests`` with an integer ``Retry-After`` (seconds until a slot frees, at least 1); refused writes do not use
up slots. ``deviceWriteLimit`` does the same for writes under ``/{ver}/deviceManagement/managedDevices`` (see WriteLimit).
"""
from __future__ import annotations

import base64
import binascii
import bisect
import json
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

Result = tuple[int, Any, dict[str, str]]

_IMPORTED = re.compile(r"^/(v1\.0|beta)/deviceManagement/importedWindowsAutopilotDeviceIdentities(?:/([^/]+))?$")
_DEVICES = re.compile(r"^/(v1\.0|beta)/deviceManagement/windowsAutopilotDeviceIdentities(?:/([^/]+)(?:/([^/]+))?)?$")
_CONTAINS = re.compile(r"^\s*contains\(\s*serialNumber\s*,\s*'((?:[^']|'')*)'\s*\)\s*$")
_WRITE_PATH = re.compile(r"^/(v1\.0|beta)/deviceManagement(/|$)")
_DEVICE_WRITE_PATH = re.compile(r"^/(v1\.0|beta)/deviceManagement/managedDevices(/|$)")
DEFAULT_WINDOW_SECONDS = 20.0  # Intune's throttling window, for maxWritesInAnyWindow when no limit is set
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

MAX_IMPORT = 500
PAGE_SIZE = 100
RECORD_FIELDS = ("serialNumber", "productKey", "groupTag", "assignedUserPrincipalName", "importId", "hardwareIdentifier")
# What a client may send in an element besides RECORD_FIELDS: the entity's other properties (ignored, as Graph sets them).
RECORD_IGNORED = ("id", "state")
UPDATABLE_V1 = ("userPrincipalName", "addressableUserName", "groupTag", "displayName")
UPDATABLE_BETA = UPDATABLE_V1 + ("deviceAccountUpn", "deviceAccountPassword", "deviceFriendlyName")
BETA_ONLY = ("deploymentProfileAssignmentStatus", "deploymentProfileAssignedDateTime",
             "deviceAccountUpn", "deviceAccountPassword", "deviceFriendlyName")
ALREADY_ASSIGNED = (806, "ZtdDeviceAlreadyAssigned")
DUPLICATED = (0, "ZtdDeviceDuplicated")
NEVER = "0001-01-01T00:00:00Z"


def _iso(value: datetime | None) -> str:
    if value is None:
        return NEVER
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "innerError": {}}}


def _bad(message: str) -> Result:
    return 400, _error("BadRequest", message), {}


def _not_found(item_id: str) -> Result:
    return 404, _error("ResourceNotFound", f"Resource not found: {item_id}"), {}


@dataclass
class ImportRecord:
    id: str
    seq: int
    fields: dict[str, str | None]
    ready_at: datetime  # when processing ends (the completion time, whatever the outcome)
    status: str = "pending"
    registration_id: str = ""
    error_code: int = 0
    error_name: str = ""
    deleted: bool = False
    registered: bool = False

    @property
    def serial(self) -> str:
        return (self.fields["serialNumber"] or "").casefold()

    def resource(self) -> dict[str, Any]:
        return {
            "@odata.type": "#microsoft.graph.importedWindowsAutopilotDeviceIdentity",
            "id": self.id,
            **self.fields,
            "state": {
                "@odata.type": "microsoft.graph.importedWindowsAutopilotDeviceIdentityState",
                "deviceImportStatus": self.status,
                "deviceRegistrationId": self.registration_id,
                "deviceErrorCode": self.error_code,
                "deviceErrorName": self.error_name,
            },
        }


@dataclass
class Device:
    properties: dict[str, Any]
    registered_at: datetime
    visible_from: datetime
    profile_seconds: float
    fixed_status: str | None = None  # a configured device keeps its configured status
    fixed_assigned_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.properties["id"])

    @property
    def serial(self) -> str:
        return str(self.properties.get("serialNumber") or "").casefold()

    def resource(self, version: str, now: datetime) -> dict[str, Any]:
        if self.fixed_status is not None:
            status, assigned = self.fixed_status, self.fixed_assigned_at
        else:
            elapsed = (now - self.visible_from).total_seconds()
            if elapsed >= self.profile_seconds:
                status, assigned = "assignedInSync", self.visible_from + timedelta(seconds=self.profile_seconds)
            else:
                status, assigned = ("pending" if elapsed >= self.profile_seconds / 2 else "notAssigned"), None
        body = dict(self.properties, deploymentProfileAssignmentStatus=status, deploymentProfileAssignedDateTime=_iso(assigned))
        body.update(self.extra)
        if version == "v1.0":
            for name in BETA_ONLY:
                body.pop(name, None)
        return body


class AutopilotDevices:
    """Imported Autopilot device identities and the Autopilot devices they become (state for GraphEmulator).

    Not thread-safe on its own: GraphEmulator calls it under its lock."""

    def __init__(self, clock: Callable[[], datetime]):
        self.clock = clock
        self.records: dict[str, ImportRecord] = {}  # deleted ones too, until registered (see module doc)
        self.devices: dict[str, Device] = {}
        self.deleted: list[str] = []
        self.imported: dict[str, int] = {}  # serial (as sent) -> how many import calls carried it
        self.import_errors: dict[str, tuple[int, str]] = {}
        self.processing = timedelta(seconds=60)
        self.profile_seconds = 120.0
        self._seq = 0

    # --- time ------------------------------------------------------------------------------

    def settle(self, now: datetime) -> None:
        """Settle every record whose processing ended by ``now``, in completion order."""
        due = sorted((r for r in self.records.values() if r.status == "pending" and not r.deleted and r.ready_at <= now),
                     key=lambda r: (r.ready_at, r.seq))
        for record in due:
            error = self._outcome(record)
            if error:
                record.status, (record.error_code, record.error_name) = "error", error
            else:
                record.status, record.registration_id = "complete", str(uuid.uuid4())

    def _outcome(self, record: ImportRecord) -> tuple[int, str] | None:
        serial = record.serial
        if serial in self.import_errors:
            return self.import_errors[serial]
        if any(d.serial == serial and d.registered_at <= record.ready_at for d in self.devices.values()):
            return ALREADY_ASSIGNED
        if any(o is not record and not o.deleted and o.status == "complete" and o.serial == serial for o in self.records.values()):
            return DUPLICATED
        return None

    def on_sync(self, start: datetime, end: datetime) -> None:
        """An Autopilot sync started at ``start`` and ends at ``end``: it registers the records completed by its start."""
        self.settle(start)
        done = sorted((r for r in self.records.values() if r.status == "complete" and not r.registered and r.ready_at <= start),
                      key=lambda r: (r.ready_at, r.seq))
        for record in done:
            record.registered = True
            if record.deleted:
                del self.records[record.id]
            if any(d.serial == record.serial for d in self.devices.values()):
                continue
            self._add_device(self._new_device(record), start, end)

    def _new_device(self, record: ImportRecord) -> dict[str, Any]:
        f = record.fields
        return {
            "@odata.type": "#microsoft.graph.windowsAutopilotDeviceIdentity",
            "id": str(uuid.uuid4()),
            "serialNumber": f["serialNumber"],
            "groupTag": f["groupTag"] or "",
            "productKey": f["productKey"] or "",
            "manufacturer": "Contoso",
            "model": "Laptop 7",
            "enrollmentState": "notContacted",
            "userPrincipalName": f["assignedUserPrincipalName"] or "",
            "addressableUserName": "",
            "displayName": "",
        }

    def _add_device(self, properties: dict[str, Any], registered: datetime, visible: datetime,
                    status: str | None = None) -> None:
        assigned = registered if status and status.startswith("assigned") else None
        device = Device(properties, registered, visible, self.profile_seconds, status, assigned)
        self.devices[device.id] = device

    def _visible(self, now: datetime) -> list[Device]:
        return [d for d in self.devices.values() if d.visible_from <= now]

    # --- test controls -------------------------------------------------------------------

    def configure(self, config: dict[str, Any]) -> None:
        now = self.clock()
        self.settle(now)  # what finished before keeps the outcome of the old settings
        if "importProcessingSeconds" in config:
            self.processing = timedelta(seconds=float(config["importProcessingSeconds"]))
        if "profileAssignmentSeconds" in config:
            self.profile_seconds = float(config["profileAssignmentSeconds"])
        if "importErrors" in config:
            self.import_errors = {
                serial.casefold(): (int(e["deviceErrorCode"]), str(e["deviceErrorName"]))
                for serial, e in (config["importErrors"] or {}).items()
            }
        if "autopilotDevices" in config:
            self.devices = {}
            for given in config["autopilotDevices"] or []:
                given = dict(given)
                status = str(given.pop("deploymentProfileAssignmentStatus", "assignedInSync"))
                record = ImportRecord("", 0, {k: given.get(k) for k in RECORD_FIELDS}, now)
                properties = self._new_device(record) | given
                self._add_device(properties, now, now, status)

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        self.settle(now)
        return {
            "records": [r.resource() for r in self.records.values() if not r.deleted],
            "devices": [d.resource("beta", now) for d in self._visible(now)],
            "deleted": list(self.deleted),
            "importsPerSerial": dict(self.imported),
        }

    # --- requests ------------------------------------------------------------------------

    def route(self, method: str, path: str, query: dict[str, str], body: bytes, base_url: str) -> Result | None:
        """Answer a request for these resources, or None when the path or method is not one of them."""
        imported, devices = _IMPORTED.match(path), _DEVICES.match(path)
        if not imported and not devices:
            return None
        now = self.clock()
        self.settle(now)
        if imported:
            version, item_id = imported.groups()
            return self._imported(method, version, item_id, body, now)
        assert devices is not None
        version, item_id, action = devices.groups()
        return self._devices(method, version, item_id, action, query, body, path, base_url, now)

    def _imported(self, method: str, version: str, item_id: str | None, body: bytes, now: datetime) -> Result | None:
        if item_id is None:
            if method == "GET":
                return 200, {"value": [r.resource() for r in self.records.values() if not r.deleted]}, {}
            if method == "POST":  # Create: one identity
                payload = _json(body)
                if not isinstance(payload, dict):
                    return _bad("The request body must be an importedWindowsAutopilotDeviceIdentity object.")
                problem = _check_element(payload, 0)
                if problem:
                    return _bad(problem)
                return 201, self._create(payload, now).resource(), {}
            return None
        if item_id == "import":
            return self._import(version, body, now) if method == "POST" else None
        record = self.records.get(item_id)
        if record is None or record.deleted:
            return _not_found(item_id) if method in ("GET", "DELETE") else None
        if method == "GET":
            return 200, record.resource(), {}
        if method == "DELETE":
            record.deleted = True
            self.deleted.append(record.id)
            if record.status != "complete" or record.registered:
                del self.records[record.id]  # nothing left for a sync to register
            return 204, None, {}
        return None

    def _import(self, version: str, body: bytes, now: datetime) -> Result:
        payload = _json(body)
        if not isinstance(payload, dict):
            return _bad("The request body must be a JSON object.")
        elements = payload.get("importedWindowsAutopilotDeviceIdentities")
        unknown = sorted(set(payload) - {"importedWindowsAutopilotDeviceIdentities"})
        if unknown:
            return _bad(f"The parameter '{unknown[0]}' in the request payload is not a valid parameter for the operation 'import'.")
        if not isinstance(elements, list) or not elements:
            return _bad("importedWindowsAutopilotDeviceIdentities must be a non-empty collection.")
        if len(elements) > MAX_IMPORT:
            return _bad(f"At most {MAX_IMPORT} devices can be imported in one request; got {len(elements)}.")
        for index, element in enumerate(elements):
            problem = _check_element(element, index)
            if problem:
                return _bad(problem)
        created = [self._create(element, now) for element in elements]
        for element in elements:
            serial = str(element["serialNumber"]).upper()
            self.imported[serial] = self.imported.get(serial, 0) + 1
        context = f"https://graph.microsoft.com/{version}/$metadata#Collection(microsoft.graph.importedWindowsAutopilotDeviceIdentity)"
        return 200, {"@odata.context": context, "value": [r.resource() for r in created]}, {}

    def _create(self, element: dict[str, Any], now: datetime) -> ImportRecord:
        self._seq += 1
        record = ImportRecord(str(uuid.uuid4()), self._seq, {k: element.get(k) for k in RECORD_FIELDS}, now + self.processing)
        self.records[record.id] = record
        return record

    def _devices(self, method: str, version: str, item_id: str | None, action: str | None, query: dict[str, str],
                 body: bytes, path: str, base_url: str, now: datetime) -> Result | None:
        if item_id is None:
            return self._list(version, query, path, base_url, now) if method == "GET" else None
        device = self.devices.get(item_id)
        if device is None or device.visible_from > now:
            known = method in ("GET", "DELETE") if action is None else (action == "updateDeviceProperties" and method == "POST")
            return _not_found(item_id) if known else None
        if action is None:
            if method == "GET":
                return 200, device.resource(version, now), {}
            if method == "DELETE":
                del self.devices[item_id]
                return 204, None, {}
            return None
        if action != "updateDeviceProperties" or method != "POST":
            return None
        payload = _json(body)
        if not isinstance(payload, dict):
            return _bad("The request body must be a JSON object.")
        allowed = UPDATABLE_BETA if version == "beta" else UPDATABLE_V1
        for name, value in payload.items():
            if name not in allowed:
                return _bad(f"The parameter '{name}' in the request payload is not a valid parameter for the operation "
                            "'updateDeviceProperties'.")
            if value is not None and not isinstance(value, str):
                return _bad(f"The parameter '{name}' must be a string.")
        for name, value in payload.items():
            if name in UPDATABLE_V1:
                device.properties[name] = value
            else:
                device.extra[name] = value
        return 204, None, {}

    def _list(self, version: str, query: dict[str, str], path: str, base_url: str, now: datetime) -> Result:
        devices = self._visible(now)
        link_filter = ""
        if "$filter" in query:
            match = _CONTAINS.match(query["$filter"])
            if not match:
                return _bad("Invalid filter clause")
            text = match.group(1).replace("''", "'").casefold()
            devices = [d for d in devices if text in d.serial]
            link_filter = "&$filter=" + quote(query["$filter"], safe="")
        try:
            skip = int(query.get("$skiptoken", "0"))
        except ValueError:
            return _bad("Invalid $skiptoken")
        if skip < 0:
            return _bad("Invalid $skiptoken")
        page: dict[str, Any] = {"value": [d.resource(version, now) for d in devices[skip:skip + PAGE_SIZE]]}
        if skip + PAGE_SIZE < len(devices):
            page["@odata.nextLink"] = f"{base_url}{path}?$skiptoken={skip + PAGE_SIZE}{link_filter}"
        return 200, page, {}


def _json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError:
        return None


def _check_element(element: Any, index: int) -> str | None:
    """Why an element of an import cannot be accepted, or None."""
    where = f"importedWindowsAutopilotDeviceIdentities[{index}]"
    if not isinstance(element, dict):
        return f"{where} must be an importedWindowsAutopilotDeviceIdentity object."
    for name in element:
        if name not in RECORD_FIELDS and name not in RECORD_IGNORED and not name.startswith("@odata."):
            return f"{where}: the property '{name}' does not exist on type 'microsoft.graph.importedWindowsAutopilotDeviceIdentity'."
    for name in RECORD_FIELDS:
        value = element.get(name)
        if value is not None and not isinstance(value, str):
            return f"{where}: {name} must be a string."
    if not element.get("serialNumber"):
        return f"{where}: serialNumber is required."
    hardware = element.get("hardwareIdentifier")
    if not hardware:
        return f"{where}: hardwareIdentifier is required."
    try:
        base64.b64decode(str(hardware), validate=True)
    except (binascii.Error, ValueError):
        return f"{where}: hardwareIdentifier is not valid base64."
    return None


class _Window:
    """One area's sliding-window write limit, and the arrival times of the writes it accepted."""

    def __init__(self) -> None:
        self.limit: int | None = None
        self.window = 0.0
        # Arrival times, kept sorted: a $batch's inner requests count at the batch's arrival, which
        # may be earlier than a request that arrived later and was answered first.
        self.accepted: list[float] = []  # within the current window
        self.history: list[float] = []  # every accepted write since the area was configured
        self.throttled = 0

    def configure(self, setting: dict[str, Any] | None) -> None:
        self.accepted.clear()
        self.history.clear()
        if setting is None:
            self.limit = None
        else:
            self.limit, self.window = int(setting["limit"]), float(setting["windowSeconds"])

    def check(self, now: float) -> Result | None:
        if self.limit is None:
            bisect.insort(self.history, now)
            return None
        # Within the window that ends at ``now`` (later arrivals already counted stay counted).
        self.accepted = [at for at in self.accepted if at > now - self.window]
        inside = [at for at in self.accepted if at <= now]
        if len(inside) < self.limit:
            bisect.insort(self.accepted, now)
            bisect.insort(self.history, now)
            return None
        self.throttled += 1
        wait = (inside[len(inside) - self.limit] + self.window - now) if self.limit else self.window
        return 429, _error("TooManyRequests", "Please retry again later."), {"Retry-After": str(max(1, math.ceil(wait)))}

    def max_in_any_window(self, window: float) -> int:
        """The most accepted writes whose arrivals lie within less than ``window`` seconds of each other."""
        best, start = 0, 0
        for end, at in enumerate(self.history):
            while at - self.history[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best

    def stats(self) -> dict[str, Any]:
        window = self.window if self.limit is not None else DEFAULT_WINDOW_SECONDS
        return {"limit": self.limit, "windowSeconds": window, "accepted": len(self.history), "throttled": self.throttled,
                "maxWritesInAnyWindow": self.max_in_any_window(window),
                "writingSeconds": round(self.history[-1] - self.history[0], 3) if self.history else 0.0}


class WriteLimit:
    """Sliding-window limits on writes (POST/PUT/PATCH/DELETE; real seconds: they model a rate), one per area, as Intune's
    throttling tables set them: ``devices`` for writes under ``/{ver}/deviceManagement/managedDevices`` (config
    ``deviceWriteLimit``), ``intune`` for every other write under ``/{ver}/deviceManagement`` (config ``writeLimit``). Each
    is ``{"limit": N, "windowSeconds": S}`` or null (off, the default). Every accepted write's arrival is recorded (limit
    or not) for ``stats()``: per area ``limit``, ``windowSeconds`` (20, Intune's window, when off), ``accepted``,
    ``throttled``, ``maxWritesInAnyWindow`` (the most accepted writes within any span shorter than the window) and
    ``writingSeconds`` (from the first accepted write's arrival to the last's)."""

    CONFIG = {"writeLimit": "intune", "deviceWriteLimit": "devices", "requestLimit": "requests"}

    def __init__(self) -> None:
        # ``requests``: every request of the tenant, reads included (Intune's "any" row: 1,000 per
        # 20 s for most areas), config ``requestLimit``; off by default like the others.
        self.areas = {"intune": _Window(), "devices": _Window(), "requests": _Window()}

    @property
    def throttled(self) -> int:
        return sum(area.throttled for area in self.areas.values())

    def configure(self, config: dict[str, Any]) -> None:
        for key, area in self.CONFIG.items():
            if key in config:
                self.areas[area].configure(config[key])

    @staticmethod
    def area(method: str, path: str) -> str | None:
        """Which area's limit a request counts against (None: not a limited write)."""
        if method not in WRITE_METHODS or not _WRITE_PATH.match(path):
            return None
        return "devices" if _DEVICE_WRITE_PATH.match(path) else "intune"

    def check(self, method: str, path: str, arrived: float | None = None) -> Result | None:
        """None when the request may go on; a 429 answer when it is a write beyond its area's limit.
        ``arrived``: when it arrived (time.monotonic()), if not now: a $batch's inner requests
        arrive with the batch."""
        now = time.monotonic() if arrived is None else arrived
        if self.areas["requests"].limit is not None:
            throttled = self.areas["requests"].check(now)
            if throttled:
                return throttled
        area = self.area(method, path)
        if area is None:
            return None
        return self.areas[area].check(now)

    def stats(self) -> dict[str, Any]:
        return {name: area.stats() for name, area in self.areas.items()}
