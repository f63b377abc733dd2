"""Bulk device sync requests (POST /api/devices/sync): which managed devices to sync, checked
before anything reaches Graph.

A JSON object with exactly one selector: ``deviceIds`` (Intune managed device ids, GUIDs),
``serialNumbers`` (letters, digits and `` ._/-``, 1 to 128 characters), ``filter`` (an OData
filter on managedDevices in a conservative grammar: ``<property> eq '<value>'`` clauses joined by
`` and ``, properties from FILTER_PROPERTIES, values without quotes or control characters, at
most 200 characters) or ``groupId`` (an Entra group's id, GUID); optionally
``skipSyncedWithinMinutes`` (0 to 10080). Or a ``text/csv`` body with a ``Serial Number`` or
``Device Serial Number`` column (UTF-8 with or without a BOM, or UTF-16 with one; separated by
commas, semicolons or tabs). Every bad entry is listed with its index and reason; duplicates are
dropped. Pure: no I/O.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Any

from ..common import AppError, InvalidItemId, parse_guid

DEVICE_IDS, SERIAL_NUMBERS, FILTER, GROUP_ID = "deviceIds", "serialNumbers", "filter", "groupId"
SELECTORS = (DEVICE_IDS, SERIAL_NUMBERS, FILTER, GROUP_ID)
SKIP_FIELD = "skipSyncedWithinMinutes"
MAX_SKIP_MINUTES = 7 * 24 * 60
FILTER_PROPERTIES = ("operatingSystem", "deviceName", "serialNumber", "model", "manufacturer", "managementAgent",
                     "ownerType", "complianceState", "azureADDeviceId", "userPrincipalName")
MAX_CLAUSES, MAX_VALUE = 10, 200
CSV_SERIAL_COLUMNS = ("Serial Number", "Device Serial Number")
DELIMITERS = (",", ";", "\t")
SHOWN_IN_MESSAGE = 3
_SERIAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._/-]{0,127}")
_CLAUSE = re.compile(r"(\w+) eq '([^'\x00-\x1f\x7f]{1,200})'")  # 200: MAX_VALUE


class InvalidSelector(AppError, ValueError):
    """A device sync request that names no devices, or names them wrongly: every problem listed."""

    code, http_status = "InvalidDeviceSelector", 400

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None):
        self.errors: list[dict[str, Any]] = errors or [{"entry": "", "reason": message}]
        shown = "; ".join(_described(e) for e in self.errors[:SHOWN_IN_MESSAGE])
        more = f" (and {len(self.errors) - SHOWN_IN_MESSAGE} more)" if len(self.errors) > SHOWN_IN_MESSAGE else ""
        text = message if errors is None else f"{message}: {shown}{more}"
        super().__init__(text, details={"errors": self.errors})


def _described(error: dict[str, Any]) -> str:
    where = f"entry {error['index']} " if "index" in error else ""
    entry = f"{str(error.get('entry'))[:40]!r} " if error.get("entry") not in (None, "") else ""
    return f"{where}{entry}{error['reason']}"


@dataclass(frozen=True)
class DeviceSyncRequest:
    """The devices to sync: ``values`` (ids or serials) for those kinds, else ``filter`` or ``group_id``."""

    kind: str
    values: tuple[str, ...] = ()
    filter: str | None = None
    group_id: str | None = None
    skip_minutes: int = 0

    def to_json(self) -> dict[str, Any]:
        """The selector as the job keeps and reports it (its kind and size, not the list)."""
        shown: dict[str, Any] = {"kind": self.kind, "skipSyncedWithinMinutes": self.skip_minutes}
        if self.kind in (DEVICE_IDS, SERIAL_NUMBERS):
            shown["count"] = len(self.values)
        elif self.kind == FILTER:
            shown["filter"] = self.filter
        else:
            shown["groupId"] = self.group_id
        return shown


def parse_device_sync(body: bytes, content_type: str, *, max_devices: int, default_skip_minutes: int) -> DeviceSyncRequest:
    """The request in ``body`` (JSON or CSV by ``content_type``); InvalidSelector for anything wrong."""
    media = content_type.split(";")[0].strip().lower()
    if media in ("text/csv", "application/csv"):
        serials = _csv_serials(body)
        return _listed(SERIAL_NUMBERS, serials, max_devices, default_skip_minutes, offset=2)
    data = _json_object(body)
    unknown = sorted(set(data) - set(SELECTORS) - {SKIP_FIELD})
    if unknown:
        raise InvalidSelector("unknown fields", [{"entry": name, "reason": "not a field of this request"} for name in unknown])
    given = [name for name in SELECTORS if name in data]
    if len(given) != 1:
        raise InvalidSelector(f"name the devices with exactly one of {', '.join(SELECTORS)}"
                              + (f"; got {', '.join(given)}" if given else ""))
    skip = _skip(data.get(SKIP_FIELD, default_skip_minutes))
    kind, value = given[0], data[given[0]]
    if kind == FILTER:
        return DeviceSyncRequest(FILTER, filter=check_filter(value), skip_minutes=skip)
    if kind == GROUP_ID:
        return DeviceSyncRequest(GROUP_ID, group_id=_guid(value, "groupId"), skip_minutes=skip)
    if not isinstance(value, list):
        raise InvalidSelector(f"{kind} must be a list of strings")
    return _listed(kind, value, max_devices, skip)


def check_filter(value: Any) -> str:
    """The filter if it is in the grammar; InvalidSelector naming what is not."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidSelector("filter must be a non-empty string")
    clauses = value.split(" and ")
    if len(clauses) > MAX_CLAUSES:
        raise InvalidSelector(f"a filter has at most {MAX_CLAUSES} clauses")
    errors = []
    for index, clause in enumerate(clauses):
        match = _CLAUSE.fullmatch(clause)
        if match is None:
            errors.append({"index": index, "entry": clause[:100],
                           "reason": f"not <property> eq '<value>' (a value of 1 to {MAX_VALUE} characters, no quote or "
                                     "control character; clauses joined by ' and ')"})
        elif match.group(1) not in FILTER_PROPERTIES:
            errors.append({"index": index, "entry": clause[:100],
                           "reason": f"{match.group(1)} is not one of {', '.join(FILTER_PROPERTIES)}"})
    if errors:
        raise InvalidSelector("the filter is not in the supported grammar", errors)
    return value


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidSelector("the body is not JSON (or a text/csv body)") from None
    if not isinstance(data, dict):
        raise InvalidSelector("the body must be a JSON object")
    return data


def _skip(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SKIP_MINUTES:
        raise InvalidSelector(f"{SKIP_FIELD} must be a whole number from 0 to {MAX_SKIP_MINUTES}")
    return value


def _guid(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidSelector(f"{name} must be a GUID string")
    try:
        return parse_guid(value)
    except InvalidItemId:
        raise InvalidSelector(f"{name} is not a GUID", [{"entry": value[:100], "reason": "not a GUID"}]) from None


def _listed(kind: str, entries: list[Any], max_devices: int, skip: int, offset: int = 0) -> DeviceSyncRequest:
    """Ids or serials, each checked (``offset``: a CSV's entries are named by line)."""
    errors: list[dict[str, Any]] = []
    found: dict[str, str] = {}  # case-folded -> as given, first wins
    for index, entry in enumerate(entries):
        value, reason = _entry(kind, entry)
        if reason:
            errors.append({"index": index + offset, "entry": str(entry)[:130] if entry is not None else None,
                           "reason": reason})
        elif value.casefold() not in found:
            found[value.casefold()] = value
    if errors:
        raise InvalidSelector(f"{len(errors)} bad {'device id' if kind == DEVICE_IDS else 'serial number'}(s)", errors)
    if not found:
        raise InvalidSelector(f"{kind} names no devices")
    if len(found) > max_devices:
        raise InvalidSelector(f"at most {max_devices} devices per request, got {len(found)}")
    return DeviceSyncRequest(kind, tuple(found.values()), skip_minutes=skip)


def _entry(kind: str, entry: Any) -> tuple[str, str | None]:
    if not isinstance(entry, str):
        return "", "not a string"
    if kind == DEVICE_IDS:
        try:
            return parse_guid(entry.strip()), None
        except InvalidItemId:
            return "", "not a GUID"
    serial = entry.strip()
    if not _SERIAL.fullmatch(serial):
        return "", "a serial number is 1 to 128 letters, digits, spaces and ._/- (starting with a letter or digit)"
    return serial, None


def _csv_serials(body: bytes) -> list[Any]:
    """The serial number column's cells, in order (blank lines skipped)."""
    text = _csv_text(body)
    lines = text.splitlines()
    header_line = next((line for line in lines if line.strip()), "")
    delimiter = max(DELIMITERS, key=lambda d: sum(c.strip() in CSV_SERIAL_COLUMNS for c in header_line.split(d)))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), [])
        column = next((i for i, name in enumerate(header) if name.strip() in CSV_SERIAL_COLUMNS), None)
        if column is None:
            raise InvalidSelector(f"the CSV needs a {' or '.join(repr(c) for c in CSV_SERIAL_COLUMNS)} column "
                                  "(separated by commas, semicolons or tabs)")
        return [row[column] if column < len(row) else None for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise InvalidSelector(f"the CSV is malformed at line {reader.line_num}: {exc}") from None


def _csv_text(body: bytes) -> str:
    utf16 = body[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) and body[:4] not in (codecs.BOM_UTF32_LE,)
    try:
        text = body.decode("utf-16") if utf16 else body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidSelector("a CSV must be UTF-8 (with or without a BOM) or UTF-16 with a BOM") from None
    if "\x00" in text:
        raise InvalidSelector("a CSV must be UTF-8 (with or without a BOM) or UTF-16 with a BOM; this one has NUL characters")
    return text
