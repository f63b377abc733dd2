"""What the app's identity must be granted, in one place: infra/ and the docs derive from it,
and tests/test_infra.py checks that the Bicep grants exactly this."""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

# Microsoft Graph application roles each sync target needs. A JSON file, so that
# infra/main.bicep reads the very same table (loadJsonContent) to grant them.
TARGET_ROLES: dict[str, tuple[str, ...]] = {
    target: tuple(roles) for target, roles in json.loads((Path(__file__).parent.parent / "graph-roles.json").read_text()).items()
}

# Every Graph role any target needs (the Bicep grants those of the enabled targets).
GRAPH_APP_ROLES: tuple[str, ...] = tuple(dict.fromkeys(r for roles in TARGET_ROLES.values() for r in roles))


def roles_for(targets: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r for t in targets for r in TARGET_ROLES[t]))


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
