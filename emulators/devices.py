"""Intune managed devices and Entra group device members in the Graph emulator, as Microsoft Graph documents them.

Endpoints (``{ver}`` is ``v1.0`` or ``beta``):

- ``GET /{ver}/deviceManagement/managedDevices`` (role ``DeviceManagementManagedDevices.Read.All``): ``$select`` (comma
  list; the answer holds those properties plus ``id``; an unknown property → 400), ``$filter`` (``<property> eq '<text>'``
  clauses joined by `` and ``, property one of ``operatingSystem``, ``serialNumber``, ``azureADDeviceId``, ``deviceName``,
  compared case-insensitively; anything else → 400 ``BadRequest``), ``$top`` (page size, default 100, 1 to 1000, else 400),
  pages linked by an absolute ``@odata.nextLink`` on the emulator's base URL with a ``$skiptoken``.
- ``GET /{ver}/deviceManagement/managedDevices/{id}`` (same role) → the device (``$select`` too), or 404 ``ResourceNotFound``.
- ``POST /{ver}/deviceManagement/managedDevices/{id}/syncDevice`` (role
  ``DeviceManagementManagedDevices.PrivilegedOperations.All``), no body → 204; ``lastSyncDateTime`` becomes the emulated
  clock's now and the device's sync count goes up. Unknown id → 404; a device configured ``"unsupported": true`` → 400
  ``BadRequest`` "...does not support this action"; a body → 400.
- ``GET /{ver}/groups/{groupId}/transitiveMembers/microsoft.graph.device`` (role ``GroupMember.Read.All``) → Entra device
  objects ``{"@odata.type": "#microsoft.graph.device", "id" (Entra object id), "deviceId" (= the managed device's
  ``azureADDeviceId``), "displayName"}``, with ``$select``, ``$top`` and paging as above; an unknown group → 404.

Managed device properties: ``id``, ``deviceName``, ``serialNumber``, ``azureADDeviceId``, ``operatingSystem``,
``lastSyncDateTime`` (ISO 8601, ``Z``), ``managementAgent`` (and whatever else a configured device carries).

Config keys (``/_emulator/config``, per tenant):

- ``managedDevices``: ``{"count": N, "prefix": "SN", "operatingSystem": "Windows", "lastSyncMinutesAgo": 180}`` generates
  N devices (serials ``SN000001``…, device names ``PC-SN000001``…; ``id`` = ``managed_device_id(serial)`` and
  ``azureADDeviceId`` = ``azure_ad_device_id(serial)``, uuid5 of the serial, so the same config gives the same devices), or
  ``{"devices": [{"serialNumber", ...}, ...]}`` (explicit devices; missing properties get the same defaults; ``"unsupported":
  true`` makes syncDevice answer 400; the flag is not shown). Either replaces every device and clears the sync counts.
- ``groups``: ``{"<groupId>": ["<azureADDeviceId>", ...] | null}`` sets (null: removes) those groups' device members.

Stats (``managedDevices`` in ``/_emulator/stats``): ``count``, ``deviceSyncs`` (accepted syncDevice calls), ``syncs``
(id → count, synced devices only), ``deviceSyncsPerDeviceMax`` and ``devicesSyncedMoreThanOnce``.

Not thread-safe on its own: GraphEmulator calls it under its lock.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

Result = tuple[int, Any, dict[str, str]]

READ_ROLE = "DeviceManagementManagedDevices.Read.All"
PRIVILEGED_ROLE = "DeviceManagementManagedDevices.PrivilegedOperations.All"
GROUP_MEMBER_ROLE = "GroupMember.Read.All"

MANAGED_DEVICES = re.compile(r"^/(v1\.0|beta)/deviceManagement/managedDevices(?:/([^/]+)(?:/([^/]+))?)?$")
GROUP_DEVICES = re.compile(r"^/(v1\.0|beta)/groups/([^/]+)/transitiveMembers/microsoft\.graph\.device$")
DEVICE_WRITE_PATH = re.compile(r"^/(v1\.0|beta)/deviceManagement/managedDevices(/|$)")
_CLAUSE = re.compile(r"^\s*(\w+)\s+eq\s+'((?:[^']|'')*)'\s*$")
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)

DEFAULT_PAGE, MAX_PAGE = 100, 1000
DEVICE_PROPERTIES = ("id", "deviceName", "serialNumber", "azureADDeviceId", "operatingSystem", "lastSyncDateTime",
                     "managementAgent")
FILTERABLE = ("operatingSystem", "serialNumber", "azureADDeviceId", "deviceName", "managementAgent")
INDEXED = ("serialNumber", "azureADDeviceId", "deviceName")
ENTRA_PROPERTIES = ("id", "deviceId", "displayName")
_MANAGED_NS = uuid.UUID("5d0c6a1e-8f7b-4b8e-9d4a-2a1f3c5e7b90")
_ENTRA_NS = uuid.UUID("9a3e1f27-4c6d-4e8b-b1a0-7d2c5f8e6b13")
_AAD_NS = uuid.UUID("c2b7e4d1-0f3a-4a6c-8e9b-1d5f7a3c2e48")


def managed_device_id(serial: str) -> str:
    """The Intune id the emulator gives a device with this serial."""
    return str(uuid.uuid5(_MANAGED_NS, serial))


def azure_ad_device_id(serial: str) -> str:
    """The Entra device id (``azureADDeviceId``) the emulator gives a device with this serial."""
    return str(uuid.uuid5(_AAD_NS, serial))


def entra_object_id(device_id: str) -> str:
    """The Entra directory object id of the device with this Entra device id."""
    return str(uuid.uuid5(_ENTRA_NS, device_id.casefold()))


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "innerError": {}}}


def _bad(message: str) -> Result:
    return 400, _error("BadRequest", message), {}


def _not_found(item_id: str) -> Result:
    return 404, _error("ResourceNotFound", f"Resource not found: {item_id}"), {}


class ManagedDevices:
    """One tenant's managed devices, their sync counts and its groups' device members."""

    def __init__(self, clock: Callable[[], datetime]):
        self.clock = clock
        self.devices: list[dict[str, Any]] = []  # in listing order
        self.by_id: dict[str, dict[str, Any]] = {}
        self.index: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.unsupported: set[str] = set()
        self.syncs: dict[str, int] = {}
        self.groups: dict[str, list[str]] = {}

    # --- test controls -------------------------------------------------------------------

    def configure(self, config: dict[str, Any]) -> None:
        if "managedDevices" in config:
            setting = config["managedDevices"] or {}
            if "devices" in setting:
                self._replace([dict(d) for d in setting["devices"] or []])
            else:
                self._generate(int(setting.get("count", 0)), str(setting.get("prefix", "SN")),
                               str(setting.get("operatingSystem", "Windows")),
                               float(setting.get("lastSyncMinutesAgo", 180)))
        for group_id, members in (config.get("groups") or {}).items():
            if members is None:
                self.groups.pop(group_id, None)
            else:
                self.groups[group_id] = [str(m) for m in members]

    def _generate(self, count: int, prefix: str, operating_system: str, minutes_ago: float) -> None:
        last_sync = _iso(self.clock() - timedelta(minutes=minutes_ago))
        devices = []
        for i in range(1, count + 1):
            serial = f"{prefix}{i:06d}"
            devices.append({"id": managed_device_id(serial), "deviceName": f"PC-{serial}", "serialNumber": serial,
                            "azureADDeviceId": azure_ad_device_id(serial), "operatingSystem": operating_system,
                            "lastSyncDateTime": last_sync, "managementAgent": "mdm"})
        self._install(devices, set())

    def _replace(self, given: list[dict[str, Any]]) -> None:
        now = self.clock()
        devices, unsupported = [], set()
        for i, device in enumerate(given, start=1):
            serial = str(device.get("serialNumber") or f"EMU{i:06d}")
            flag = bool(device.pop("unsupported", False))
            minutes = device.pop("lastSyncMinutesAgo", None)
            full = {"id": managed_device_id(serial), "deviceName": f"PC-{serial}", "serialNumber": serial,
                    "azureADDeviceId": azure_ad_device_id(serial), "operatingSystem": "Windows",
                    "lastSyncDateTime": _iso(now - timedelta(minutes=float(minutes if minutes is not None else 180))),
                    "managementAgent": "mdm"} | device
            if flag:
                unsupported.add(str(full["id"]))
            devices.append(full)
        self._install(devices, unsupported)

    def _install(self, devices: list[dict[str, Any]], unsupported: set[str]) -> None:
        self.devices = devices
        self.by_id = {str(d["id"]): d for d in devices}
        self.index = {name: {} for name in INDEXED}
        for device in devices:
            for name in INDEXED:
                self.index[name].setdefault(str(device.get(name, "")).casefold(), []).append(device)
        self.unsupported = unsupported
        self.syncs = {}

    def stats(self) -> dict[str, Any]:
        counts = self.syncs.values()
        return {"count": len(self.devices), "deviceSyncs": sum(counts), "syncs": dict(self.syncs),
                "deviceSyncsPerDeviceMax": max(counts, default=0),
                "devicesSyncedMoreThanOnce": sum(1 for n in counts if n > 1)}

    # --- requests ------------------------------------------------------------------------

    def route(self, method: str, path: str, query: dict[str, str], body: bytes, base_url: str) -> Result | None:
        """Answer a request for these resources, or None when the path is not one of them."""
        match = MANAGED_DEVICES.match(path)
        if match:
            _, device_id, action = match.groups()
            if device_id is None:
                return self._list(query, path, base_url) if method == "GET" else None
            device = self.by_id.get(device_id)
            if action is None and method == "GET":
                if device is None:
                    return _not_found(device_id)
                selected = _selection(query, self._properties())
                if isinstance(selected, tuple):
                    return selected
                return 200, _select(device, selected), {}
            if action == "syncDevice" and method == "POST":
                if device is None:
                    return _not_found(device_id)
                return self._sync(device, body)
            return None
        match = GROUP_DEVICES.match(path)
        if match and method == "GET":
            return self._group(match.group(2), query, path, base_url)
        return None

    def _properties(self) -> set[str]:
        names = set(DEVICE_PROPERTIES)
        if self.devices:
            names.update(self.devices[0])
        return names

    def _sync(self, device: dict[str, Any], body: bytes) -> Result:
        if body.strip():
            return _bad("This action takes no request body.")
        device_id = str(device["id"])
        if device_id in self.unsupported:
            return _bad(f"The device {device_id} does not support the syncDevice action.")
        device["lastSyncDateTime"] = _iso(self.clock())
        self.syncs[device_id] = self.syncs.get(device_id, 0) + 1
        return 204, None, {}

    def _list(self, query: dict[str, str], path: str, base_url: str) -> Result:
        selected = _selection(query, self._properties())
        if isinstance(selected, tuple):
            return selected
        devices = self.devices
        if "$filter" in query:
            clauses = _parse_filter(query["$filter"])
            if clauses is None:
                return _bad(f"Invalid filter clause: {query['$filter']}. Supported: <property> eq '<value>' joined by "
                            f"'and', property one of {', '.join(FILTERABLE)}.")
            indexed = next(((name, value) for name, value in clauses if name in INDEXED), None)
            if indexed:
                devices = self.index.get(indexed[0], {}).get(indexed[1], [])
            devices = [d for d in devices if all(str(d.get(n, "")).casefold() == v for n, v in clauses)]
        return _page(devices, query, path, base_url, lambda d: _select(d, selected), "managedDevices")

    def _group(self, group_id: str, query: dict[str, str], path: str, base_url: str) -> Result:
        members = self.groups.get(group_id)
        if members is None:
            return 404, _error("Request_ResourceNotFound",
                               f"Resource '{group_id}' does not exist or one of its queried reference-property objects "
                               "are not present."), {}
        selected = _selection(query, set(ENTRA_PROPERTIES))
        if isinstance(selected, tuple):
            return selected
        names = self.index.get("azureADDeviceId", {})
        objects = []
        for device_id in members:
            managed = names.get(device_id.casefold())
            objects.append({"@odata.type": "#microsoft.graph.device", "id": entra_object_id(device_id), "deviceId": device_id,
                            "displayName": managed[0].get("deviceName") if managed else device_id})

        def shown(obj: dict[str, Any]) -> dict[str, Any]:
            return obj if selected is None else {"@odata.type": obj["@odata.type"], **_select(obj, selected)}

        return _page(objects, query, path, base_url, shown, "directoryObjects")


def _parse_filter(text: str) -> list[tuple[str, str]] | None:
    clauses = []
    for part in _AND.split(text.strip()):
        match = _CLAUSE.match(part)
        if not match or match.group(1) not in FILTERABLE:
            return None
        clauses.append((match.group(1), match.group(2).replace("''", "'").casefold()))
    return clauses


def _selection(query: dict[str, str], known: set[str]) -> list[str] | None | Result:
    """The properties ``$select`` names (None without it), or a 400 answer for an unknown one."""
    if "$select" not in query:
        return None
    names = [n.strip() for n in query["$select"].split(",") if n.strip()]
    for name in names:
        if name not in known:
            return _bad(f"Could not find a property named '{name}' on the selected type.")
    return names


def _select(item: dict[str, Any], selected: list[str] | None) -> dict[str, Any]:
    if selected is None:
        return dict(item)
    return {"id": item["id"], **{n: item.get(n) for n in selected if n != "id"}}


def _page(items: list[dict[str, Any]], query: dict[str, str], path: str, base_url: str,
          shown: Callable[[dict[str, Any]], dict[str, Any]], context: str) -> Result:
    try:
        top = int(query.get("$top", DEFAULT_PAGE))
        skip = int(query.get("$skiptoken", "0"))
    except ValueError:
        return _bad("Invalid $top or $skiptoken.")
    if not 1 <= top <= MAX_PAGE:
        return _bad(f"Invalid value for $top: {top}. It must be between 1 and {MAX_PAGE}.")
    if skip < 0:
        return _bad("Invalid $skiptoken.")
    version = path.split("/")[1]
    page: dict[str, Any] = {"@odata.context": f"https://graph.microsoft.com/{version}/$metadata#{context}",
                            "value": [shown(d) for d in items[skip:skip + top]]}
    if skip + top < len(items):
        kept = "".join(f"&{name}={quote(query[name], safe='')}" for name in ("$filter", "$select", "$top") if name in query)
        page["@odata.nextLink"] = f"{base_url}{path}?$skiptoken={skip + top}{kept}"
    return 200, page, {}
