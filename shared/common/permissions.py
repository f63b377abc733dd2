"""What the app's identity must be granted, in one place: infra/ and the docs derive from it,
and tests/test_infra.py checks that the Bicep grants exactly this."""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

# Microsoft Graph application roles each name in SYNC_TARGETS needs. A JSON file, so that
# infra/main.bicep reads the very same table (loadJsonContent) to grant them. Its keys are the sync
# targets plus ``devices`` (DEVICES_CAPABILITY), which is no sync target: naming it switches bulk
# device sync on (POST /api/devices/sync), and the timer never syncs devices. Its roles, least
# privileged for what it calls (Graph's permission tables):
# - DeviceManagementManagedDevices.PrivilegedOperations.All: managedDevices/{id}/syncDevice;
# - DeviceManagementManagedDevices.Read.All: list / get managedDevices ($filter, serial numbers,
#   lastSyncDateTime) -- read-only, not ReadWrite;
# - GroupMember.Read.All: groups/{id}/transitiveMembers (not Group.Read.All, which reads every group
#   property, nor Directory.Read.All);
# - Device.Read.All: without it Graph returns a group's device members "with limited information"
#   (id and @odata.type only, deviceId null), and deviceId is what matches a managedDevice's
#   azureADDeviceId. Read-only, device objects only.
TARGET_ROLES: dict[str, tuple[str, ...]] = {
    target: tuple(roles) for target, roles in json.loads((Path(__file__).parent.parent / "graph-roles.json").read_text()).items()
}

# The entry of TARGET_ROLES that is a capability, not a sync target (shared/common/settings.py DEVICES).
DEVICES_CAPABILITY = "devices"
# The daily check of the Apple credentials (shared/engine/expirywatch.py), always on: the least
# privileged role Graph documents for reading the APNs certificate, ADE and VPP tokens.
CREDENTIALS_CAPABILITY = "credentials"
ALWAYS = (CREDENTIALS_CAPABILITY,)

# Every Graph role any target needs (the Bicep grants those of the enabled targets).
GRAPH_APP_ROLES: tuple[str, ...] = tuple(dict.fromkeys(r for roles in TARGET_ROLES.values() for r in roles))


def roles_for(targets: Iterable[str]) -> tuple[str, ...]:
    """The roles of the names in SYNC_TARGETS (sync targets and ``devices``) and of what is always
    on (the credentials check), each once, in order."""
    return tuple(dict.fromkeys(r for t in (*targets, *ALWAYS) for r in TARGET_ROLES[t]))


# Built-in Azure roles on the storage account, by role definition id.
STORAGE_ROLES: dict[str, str] = {
    # The Functions host (keys, timer schedule monitor, singleton locks) and the Flex Consumption
    # deployment container. The app itself uses no blobs.
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    # shared/engine/state.py: cooldowns, leases and history in the state table.
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    # shared/engine/deferred.py sends the pending-sync messages; the host's queue trigger reads them.
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
}

# On Application Insights, whose local (key) auth is off.
MONITORING_ROLES: dict[str, str] = {"3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher"}
