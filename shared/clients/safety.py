"""What the app may send to Graph: the last line of defence against a caller's text in a path or
a query. Paths are built from constants and validated GUIDs; query values from validated input
only (a serial number is letters, digits and " ._/-", shared/onboarding/devices.py; a device-sync
filter is checked by shared/devicesync/selector.py): no quote can end an OData string early.
The Graph client checks every request against these, and the $batch helper every inner request."""
from __future__ import annotations

import re

SAFE_PATH = re.compile(r"^/(v1\.0|beta)((/[A-Za-z0-9\-]+)+|/\$batch)$")
# A request inside a $batch: relative to the batch's version; a cast segment is allowed there
# (``/groups/{id}/transitiveMembers/microsoft.graph.device``).
INNER_PATH = re.compile(r"^(/([A-Za-z0-9\-]+|microsoft\.graph\.[A-Za-z]+))+$")
_PROPERTY = (r"(operatingSystem|deviceName|serialNumber|model|manufacturer|managementAgent|ownerType|complianceState"
             r"|azureADDeviceId|userPrincipalName)")
_CLAUSE = _PROPERTY + r" eq '[^'\x00-\x1f\x7f]{1,200}'"
SAFE_QUERY = {
    # Autopilot lookups by serial; device sync: <property> eq '<value>' clauses joined by " and ".
    "$filter": re.compile(r"^contains\(serialNumber,'[A-Za-z0-9 ._/-]{1,128}'\)$|^" + _CLAUSE + r"( and " + _CLAUSE + r"){0,9}$"),
    "$select": re.compile(r"^[A-Za-z,]{1,400}$"),
    # a nextLink's paging options, echoed back to Graph as it gave them
    "$skiptoken": re.compile(r"^[A-Za-z0-9%=_.+/-]{1,2048}$"),
    "$top": re.compile(r"^[0-9]{1,4}$"),
}


def safe_query(name: str, value: str) -> bool:
    return name in SAFE_QUERY and bool(SAFE_QUERY[name].match(value))
