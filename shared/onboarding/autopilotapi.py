"""The Graph calls of Autopilot onboarding (../shared/reference graph-docs/autopilot-import.md).

- import: ``POST /v1.0/deviceManagement/importedWindowsAutopilotDeviceIdentities/import``;
- import records: ``GET``/``DELETE .../importedWindowsAutopilotDeviceIdentities[/{id}]``;
- registered devices, by serial number: ``GET /beta/deviceManagement/windowsAutopilotDeviceIdentities
  ?$filter=contains(serialNumber,'…')``. Beta, because ``deploymentProfileAssignmentStatus``
  exists only there; ``contains``, because the endpoint refuses ``serialNumber eq``;
- ``POST /v1.0/deviceManagement/windowsAutopilotDeviceIdentities/{id}/updateDeviceProperties``.

Each call raises the error model's UpstreamError on a failure (GraphResponse.raise_for_status).
Paths are constants and validated GUIDs; the only query values are built from validated serial
numbers (shared/onboarding/devices.py), and the Graph client checks both again.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..clients import GraphClient, GraphResponse
from ..common import GraphResourceNotFound, parse_guid
from .imports import DeviceRow
from .rules import find_device

IMPORTED = "/v1.0/deviceManagement/importedWindowsAutopilotDeviceIdentities"
DEVICES_BETA = "/beta/deviceManagement/windowsAutopilotDeviceIdentities"
DEVICES = "/v1.0/deviceManagement/windowsAutopilotDeviceIdentities"
MAX_PAGES = 50  # a safety stop for a nextLink loop: 50 pages is far more than any import job needs


class AutopilotApi:
    def __init__(self, graph: GraphClient):
        self.graph = graph

    def find(self, serial_number: str) -> dict[str, Any] | None:
        """The registered Autopilot device with this serial number, or None."""
        params = {"$filter": f"contains(serialNumber,'{serial_number}')"}
        for page in self._pages(DEVICES_BETA, params, f"the Autopilot device {serial_number}"):
            found = find_device(page, serial_number)
            if found is not None:
                return found
        return None

    def import_devices(self, import_id: str, devices: list[DeviceRow]) -> GraphResponse:
        """One import call; the answer (200 with the created records) is the caller's to read."""
        body = {"importedWindowsAutopilotDeviceIdentities": [_import_body(import_id, d) for d in devices]}
        return self.graph.post(f"{IMPORTED}/import", json=body, once=True, bulk=True)  # never twice: see GraphClient.post

    def records(self) -> list[dict[str, Any]]:
        """Every import record in the tenant (to find those an unanswered import call created)."""
        return [record for page in self._pages(IMPORTED, None, "the Autopilot import records")
                for record in page.get("value") or [] if isinstance(record, dict)]

    def record(self, record_id: str) -> dict[str, Any] | None:
        """One import record, or None if it no longer exists."""
        try:
            answer = self.graph.get(f"{IMPORTED}/{parse_guid(record_id)}").raise_for_status("an Autopilot import record")
        except GraphResourceNotFound:
            return None
        return answer.body if isinstance(answer.body, dict) else {}

    def delete_record(self, record_id: str) -> None:
        """Delete an import record; one that is already gone counts as deleted."""
        try:
            self.graph.delete(f"{IMPORTED}/{parse_guid(record_id)}", bulk=True).raise_for_status("deleting an Autopilot import record")
        except GraphResourceNotFound:
            pass

    def set_group_tag(self, device_id: str, group_tag: str) -> None:
        self.graph.post(f"{DEVICES}/{parse_guid(device_id)}/updateDeviceProperties",
                        json={"groupTag": group_tag}, bulk=True).raise_for_status("updating an Autopilot device's group tag")

    def _pages(self, path: str, params: dict[str, str] | None, what: str) -> Iterator[dict[str, Any]]:
        """A collection's pages, following ``@odata.nextLink`` only to the same Graph host and a
        safe path (the client checks the path and query again)."""
        for _ in range(MAX_PAGES):
            answer = self.graph.get(path, params=params).raise_for_status(what)
            page = answer.body if isinstance(answer.body, dict) else {}
            yield page
            link = page.get("@odata.nextLink")
            if not isinstance(link, str):
                return
            parts = urlsplit(link)
            if f"{parts.scheme}://{parts.netloc}" != self.graph.base_url:
                return  # never follow a link off our Graph host
            path, params = parts.path, dict(parse_qsl(parts.query))


def _import_body(import_id: str, device: DeviceRow) -> dict[str, Any]:
    body: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.importedWindowsAutopilotDeviceIdentity",
        "serialNumber": device.serial_number,
        "hardwareIdentifier": device.hardware_identifier,
        "importId": import_id,
    }
    for name, value in (("productKey", device.product_key), ("groupTag", device.group_tag),
                        ("assignedUserPrincipalName", device.assigned_user_principal_name)):
        if value:
            body[name] = value
    return body
