"""Autopilot device import requests: parse and validate every row before anything reaches Graph.

Two forms of the same request (issue #12):
- JSON ``{"devices": [{"serialNumber", "hardwareIdentifier", "productKey"?, "groupTag"?,
  "assignedUserPrincipalName"?}], "updateExisting"?: bool}``;
- ``text/csv``, as ``Get-WindowsAutopilotInfo`` writes it: header ``Device Serial Number,Windows
  Product ID,Hardware Hash`` and optionally ``Group Tag`` and ``Assigned User``; UTF-8 with or
  without a BOM, or UTF-16 with one (Windows PowerShell 5.1), CRLF or LF.

Every bad row is reported at once, with its row number, serial, field and reason (HTTP 400), and
nothing is sent. Pure: no I/O. The import job that uses it is shared/importjob.py.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import AppError
from .jsonbody import nesting_exceeds

# The Intune admin center takes at most 500 devices per CSV; no limit is documented for Graph's
# import action, so one request mirrors the admin center's (../shared/reference autopilot-import).
MAX_DEVICES = 500
# A 4K hardware hash is about 4,000 base64 characters; 500 of them with their CSV columns.
MAX_BODY_BYTES = 4 * 1024 * 1024
# Decoded hash size we accept: real hashes are a few KB; far smaller or larger is not a hash.
HASH_BYTES = (512, 16 * 1024)
MAX_DEPTH = 4  # {"devices": [{...}]}
MAX_PROBLEMS = 200  # problems listed in one answer (500 rows with two problems each would be fine too)

CSV_COLUMNS = {
    "Device Serial Number": "serialNumber",
    "Windows Product ID": "productKey",
    "Hardware Hash": "hardwareIdentifier",
    "Group Tag": "groupTag",
    "Assigned User": "assignedUserPrincipalName",
}
REQUIRED_CSV_COLUMNS = ("Device Serial Number", "Windows Product ID", "Hardware Hash")
FIELDS = ("serialNumber", "hardwareIdentifier", "productKey", "groupTag", "assignedUserPrincipalName")

_SERIAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._/-]{0,127}")
_PRODUCT_KEY = re.compile(r"[A-Za-z0-9-]{0,64}")
# Group tags: no spaces or punctuation beyond - _ . (they become Entra device attributes that
# dynamic groups match on).
_GROUP_TAG = re.compile(r"[A-Za-z0-9._-]{1,128}")
_UPN = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")


@dataclass(frozen=True)
class Device:
    """One device to import, validated."""

    serial_number: str
    hardware_identifier: str  # base64, as Graph's Edm.Binary takes it
    product_key: str | None = None
    group_tag: str | None = None
    assigned_user_principal_name: str | None = None


@dataclass(frozen=True)
class ImportRequest:
    devices: tuple[Device, ...]
    update_existing: bool = False


@dataclass(frozen=True)
class RowProblem:
    row: int  # 1-based: the device's position in the list, or its CSV data line
    serial_number: str | None
    field: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "serialNumber": self.serial_number, "field": self.field, "reason": self.reason}


class InvalidDevices(AppError, ValueError):
    """The request's devices are not acceptable; ``details["rows"]`` says which and why."""

    code, http_status = "InvalidDevices", 400

    def __init__(self, message: str, problems: list[RowProblem] | None = None):
        problems = problems or []
        if len(problems) > MAX_PROBLEMS:  # a bounded answer, whatever was sent
            message += f"; the first {MAX_PROBLEMS} of {len(problems)} problems are listed"
        super().__init__(message, details={"rows": [p.to_json() for p in problems[:MAX_PROBLEMS]]})
        self.problems = problems


def parse_import(body: bytes, content_type: str) -> ImportRequest:
    """The validated request, or InvalidDevices naming every bad row."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidDevices(f"the body may be at most {MAX_BODY_BYTES} bytes")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == "text/csv":
        rows, update_existing = _csv_rows(body), False
    elif media_type == "application/json":
        rows, update_existing = _json_rows(body)
    else:
        raise InvalidDevices("send the devices as application/json or text/csv")
    if not rows:
        raise InvalidDevices("the request names no device")
    if len(rows) > MAX_DEVICES:
        raise InvalidDevices(f"at most {MAX_DEVICES} devices per request, got {len(rows)}")
    devices, problems = validate(rows)
    if problems:
        raise InvalidDevices(f"{len({p.row for p in problems})} of {len(rows)} devices are not valid", problems)
    return ImportRequest(tuple(devices), update_existing)


def validate(rows: list[dict[str, Any]]) -> tuple[list[Device], list[RowProblem]]:
    """Each row checked on its own, then duplicate serials across rows."""
    devices: list[Device] = []
    problems: list[RowProblem] = []
    first_row: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        found = _row_problems(number, row)
        serial = row.get("serialNumber") if isinstance(row.get("serialNumber"), str) else None
        if serial:  # a duplicate is named even when either row has other problems too
            earlier = first_row.setdefault(serial.upper(), number)
            if earlier != number:
                found.append(RowProblem(number, serial, "serialNumber", f"the same serial number as row {earlier}"))
        problems.extend(found)
        if not found:
            devices.append(Device(row["serialNumber"], row["hardwareIdentifier"], row.get("productKey") or None,
                                  row.get("groupTag") or None, row.get("assignedUserPrincipalName") or None))
    return devices, problems


def _row_problems(number: int, row: dict[str, Any]) -> list[RowProblem]:
    serial = row.get("serialNumber") if isinstance(row.get("serialNumber"), str) else None
    problems = [RowProblem(number, serial, name, "not a known field; known: " + ", ".join(FIELDS))
                for name in row if name not in FIELDS]
    for name, value in row.items():
        if name in FIELDS and value is not None and not isinstance(value, str):
            problems.append(RowProblem(number, serial, name, "must be a string"))
    if problems:
        return problems

    def check(name: str, ok: bool, reason: str) -> None:
        if not ok:
            problems.append(RowProblem(number, serial, name, reason))

    check("serialNumber", bool(serial and _SERIAL.fullmatch(serial)),
          "required: 1-128 letters, digits, spaces and . _ / - (starting with a letter or digit)")
    check("hardwareIdentifier", _hash_ok(row.get("hardwareIdentifier")),
          f"required: the base64 hardware hash ({HASH_BYTES[0]}-{HASH_BYTES[1]} bytes decoded)")
    check("productKey", _PRODUCT_KEY.fullmatch(row.get("productKey") or "") is not None,
          "at most 64 letters, digits and hyphens")
    tag = row.get("groupTag")
    check("groupTag", not tag or _GROUP_TAG.fullmatch(tag) is not None, "1-128 letters, digits and . _ - (no spaces)")
    upn = row.get("assignedUserPrincipalName")
    check("assignedUserPrincipalName", not upn or (len(upn) <= 113 and _UPN.fullmatch(upn) is not None),
          "a user principal name such as user@contoso.com")
    return problems


def _hash_ok(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return HASH_BYTES[0] <= len(decoded) <= HASH_BYTES[1]


def _json_rows(body: bytes) -> tuple[list[dict[str, Any]], bool]:
    if nesting_exceeds(body, MAX_DEPTH):
        raise InvalidDevices(f"the body nests JSON deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidDevices("the body is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        raise InvalidDevices('the body must be {"devices": [...]}')
    unknown = sorted(set(data) - {"devices", "updateExisting"})
    if unknown:
        raise InvalidDevices(f"unknown field(s) {', '.join(unknown)}; allowed: devices, updateExisting")
    update_existing = data.get("updateExisting", False)
    if not isinstance(update_existing, bool):
        raise InvalidDevices("updateExisting must be true or false")
    rows = data["devices"]
    if len(rows) > MAX_DEVICES:  # before any row is looked at: the answer stays small
        raise InvalidDevices(f"at most {MAX_DEVICES} devices per request, got {len(rows)}")
    bad = [i for i, row in enumerate(rows, start=1) if not isinstance(row, dict)]
    if bad:
        raise InvalidDevices("every device must be a JSON object", [RowProblem(i, None, "device", "not an object") for i in bad])
    return rows, update_existing


def _csv_rows(body: bytes) -> list[dict[str, Any]]:
    try:
        # Windows PowerShell 5.1's Out-File (what Get-WindowsAutopilotInfo -OutputFile uses)
        # writes UTF-16 with a BOM; PowerShell 7 writes UTF-8, with or without one.
        text = body.decode("utf-16") if body[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidDevices("the CSV must be UTF-8 or UTF-16 with a byte order mark") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except (StopIteration, csv.Error):
        raise InvalidDevices("the CSV has no header line") from None
    missing = [name for name in REQUIRED_CSV_COLUMNS if name not in header]
    unknown = [name for name in header if name not in CSV_COLUMNS]
    if missing or unknown:
        raise InvalidDevices(f"the CSV header must be {', '.join(CSV_COLUMNS)} (the last two optional)"
                             + (f"; missing: {', '.join(missing)}" if missing else "")
                             + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    rows: list[dict[str, Any]] = []
    try:
        for line in reader:
            if not any(cell.strip() for cell in line):
                continue  # blank lines, e.g. a trailing newline
            if len(line) != len(header):
                raise InvalidDevices(f"CSV line {reader.line_num} has {len(line)} columns, the header {len(header)}")
            rows.append({CSV_COLUMNS[name]: (cell.strip() or None) for name, cell in zip(header, line, strict=True)})
            if len(rows) > MAX_DEVICES:  # stop reading: the answer is the same however many follow
                raise InvalidDevices(f"at most {MAX_DEVICES} devices per request, got more")
    except csv.Error as exc:
        raise InvalidDevices(f"the CSV is malformed at line {reader.line_num}: {exc}") from None
    return rows
