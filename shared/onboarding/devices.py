"""Autopilot device import requests: parse and validate every row before anything reaches Graph.

Two forms of the same request (issue #12):
- JSON ``{"devices": [{"serialNumber", "hardwareIdentifier", "productKey"?, "groupTag"?,
  "assignedUserPrincipalName"?}], "updateExisting"?: bool}``;
- ``text/csv``, as ``Get-WindowsAutopilotInfo`` writes it: header ``Device Serial Number,Windows
  Product ID,Hardware Hash`` and optionally ``Group Tag`` and ``Assigned User``; UTF-8 with or
  without a BOM, or UTF-16 with one (Windows PowerShell 5.1), CRLF or LF; separated by commas,
  semicolons (Excel where the comma is the decimal separator) or tabs. What Excel and PowerShell
  add is taken too: Excel's ``sep=;`` first line (honoured), Export-Csv's ``#TYPE ...`` first line
  (without -NoTypeInformation; skipped), and Excel's empty columns after the last named one.

Every bad row is reported at once, with its row number, serial, field and reason (HTTP 400), and
nothing is sent. No error echoes a caller's value at length (a hash is thousands of characters).
Pure: no I/O. The import job that uses it is shared/onboarding/importjob.py.
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

from ..common import AppError, nesting_exceeds

# The Intune admin center takes at most 500 devices per CSV; no limit is documented for Graph's
# import action, so one request mirrors the admin center's (../shared/reference autopilot-import).
MAX_DEVICES = 500
# What is limited is devices, and characters once decoded, never raw bytes: Windows PowerShell 5.1
# writes the same CSV in UTF-16, twice the bytes of UTF-8. A device at its longest (a 16 KB hash
# is 21,848 base64 characters, plus every other field at its longest and the punctuation of a CSV
# row or a JSON object) is under 24,000 characters.
MAX_TEXT_CHARS = MAX_DEVICES * 24_000
# The byte cap only bounds what is read: that text in UTF-16 (two bytes a character) with a BOM.
MAX_BODY_BYTES = 2 * MAX_TEXT_CHARS + 4
SIZE_LIMIT = (f"at most {MAX_DEVICES} devices and {MAX_TEXT_CHARS:,} characters per request "
              f"({MAX_BODY_BYTES:,} bytes, room for UTF-16)")
# Decoded hash size we accept: real hashes are a few KB; far smaller or larger is not a hash.
HASH_BYTES = (512, 16 * 1024)
MAX_DEPTH = 4  # {"devices": [{...}]}
MAX_PROBLEMS = 200  # problems listed in one answer (500 rows with two problems each would be fine too)
MAX_SHOWN = 40  # characters of a caller's value that an error may echo
ENCODING_MESSAGE = "the CSV must be UTF-8 or UTF-16 with a byte order mark"
# Excel saves "CSV" with the list separator of the Windows locale: ";" wherever "," is the decimal
# separator (most of Europe). The first one listed wins a tie.
DELIMITERS = (",", ";", "\t")
SEPARATOR_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs"}

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
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_FIRST_LINE = re.compile(r"[\r\n]*([^\r\n]*)")
# Lines before the header: Excel's separator hint, and the type line Export-Csv writes without
# -NoTypeInformation (#TYPE System.Management.Automation.PSCustomObject).
_SEPARATOR_HINT = re.compile(r"(?i)\s*sep=(.?)\s*")
_TYPE_LINE = re.compile(r"#TYPE(\s.*)?")
STRIPPED_LINE_BREAKS = ("the CSV has no line break, so no device rows: were the line breaks stripped on the way? "
                        "curl -d @file strips them (send the file with --data-binary @file), and so does a "
                        "PowerShell body made of Get-Content's lines (read the file with Get-Content -Raw)")


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
        serial = None if self.serial_number is None else shown(self.serial_number)
        return {"row": self.row, "serialNumber": serial, "field": shown(self.field), "reason": self.reason}


def shown(value: str) -> str:
    """``value`` as an error may echo it: cut to MAX_SHOWN characters, saying how long it was."""
    return value if len(value) <= MAX_SHOWN else f"{value[:MAX_SHOWN]}... ({len(value):,} characters)"


class InvalidDevices(AppError, ValueError):
    """The request's devices are not acceptable; ``details["rows"]`` says which and why."""

    code, http_status = "InvalidDevices", 400

    def __init__(self, message: str, problems: list[RowProblem] | None = None):
        problems = problems or []
        if len(problems) > MAX_PROBLEMS:  # a bounded answer, whatever was sent
            message += f"; the first {MAX_PROBLEMS} of {len(problems)} problems are listed"
        super().__init__(message, details={"rows": [p.to_json() for p in problems[:MAX_PROBLEMS]]})
        self.problems = problems


class TooLarge(InvalidDevices):
    """More than any MAX_DEVICES devices could take (413), whatever the encoding."""

    code, http_status = "PayloadTooLarge", 413


GROUP_TAG_RULE = "1-128 letters, digits and . _ - (no spaces)"


def group_tag_problem(tag: str) -> str | None:
    """Why ``tag`` is not a group tag (the rule every row's ``groupTag`` follows), or None."""
    return None if _GROUP_TAG.fullmatch(tag) else f"groupTag {shown(tag)!r} is not a group tag: {GROUP_TAG_RULE}"


def parse_import(body: bytes, content_type: str, group_tag: str | None = None) -> ImportRequest:
    """The validated request, or InvalidDevices naming every bad row. ``group_tag`` (the routes'
    ``groupTag`` query parameter, checked there) is every device's group tag, whatever its row says."""
    if len(body) > MAX_BODY_BYTES:
        raise TooLarge(SIZE_LIMIT)
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == "text/csv":
        rows, update_existing = _csv_rows(_csv_text(body)), False
    elif media_type == "application/json":
        rows, update_existing = _json_rows(body)
    else:
        raise InvalidDevices("send the devices as application/json or text/csv")
    if not rows:
        raise InvalidDevices("the request names no device")
    if len(rows) > MAX_DEVICES:
        raise InvalidDevices(f"at most {MAX_DEVICES} devices per request, got {len(rows)}")
    if group_tag is not None:
        rows = [row | {"groupTag": group_tag} for row in rows]
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
    hash_problem = _hash_problem(row.get("hardwareIdentifier"))
    check("hardwareIdentifier", hash_problem is None, hash_problem or "")
    check("productKey", _PRODUCT_KEY.fullmatch(row.get("productKey") or "") is not None,
          "at most 64 letters, digits and hyphens")
    tag = row.get("groupTag")
    check("groupTag", not tag or _GROUP_TAG.fullmatch(tag) is not None, GROUP_TAG_RULE)
    upn = row.get("assignedUserPrincipalName")
    check("assignedUserPrincipalName", not upn or (len(upn) <= 113 and _UPN.fullmatch(upn) is not None),
          "a user principal name such as user@contoso.com")
    return problems


def _hash_problem(value: Any) -> str | None:
    """Why ``value`` is not a hardware hash, or None. A hash cut short (a copy and paste, an
    editor's line limit) is called truncated, with the size it decodes to."""
    size = f"a hardware hash is {HASH_BYTES[0]}-{HASH_BYTES[1]} bytes decoded (a real one about 4 KB)"
    if not isinstance(value, str) or not value:
        return f"required: the base64 hardware hash ({HASH_BYTES[0]}-{HASH_BYTES[1]} bytes decoded)"
    not_base64 = "not base64: only A-Z, a-z, 0-9, + and / (and = at the end)"
    if not _BASE64.fullmatch(value):
        return not_base64
    whole = len(value) - len(value) % 4  # base64 comes in 4-character groups; a cut leaves a part
    try:
        decoded = len(base64.b64decode(value[:whole], validate=True))
    except (binascii.Error, ValueError):  # "=" before the last group
        return not_base64
    if whole < len(value) or decoded < HASH_BYTES[0]:
        return f"truncated: {len(value):,} characters decode to {decoded:,} bytes; {size}"
    if decoded > HASH_BYTES[1]:
        return f"too large: {decoded:,} bytes decoded; {size}"
    return None


def _json_rows(body: bytes) -> tuple[list[dict[str, Any]], bool]:
    if nesting_exceeds(body, MAX_DEPTH):
        raise InvalidDevices(f"the body nests JSON deeper than {MAX_DEPTH} levels")
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")  # as json.loads(bytes) does
    except UnicodeDecodeError:
        raise InvalidDevices("the body is not valid JSON") from None
    if len(text) > MAX_TEXT_CHARS:
        raise TooLarge(SIZE_LIMIT)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidDevices("the body is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        raise InvalidDevices('the body must be {"devices": [...]}')
    unknown = sorted(set(data) - {"devices", "updateExisting"})
    if unknown:
        raise InvalidDevices(f"unknown field(s) {_names(unknown)}; allowed: devices, updateExisting")
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


def _csv_text(body: bytes) -> str:
    """The CSV's characters. Windows PowerShell 5.1's Out-File (what Get-WindowsAutopilotInfo
    -OutputFile uses) writes UTF-16 with a BOM; PowerShell 7 writes UTF-8, with or without one."""
    if body[:4] in (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE):  # FF FE 00 00 begins like UTF-16 LE's BOM
        raise InvalidDevices(ENCODING_MESSAGE + "; this one is UTF-32")
    utf16 = body[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    try:
        text: str | None = body.decode("utf-16") if utf16 else body.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = None
    # UTF-16 without its BOM is valid UTF-8 too, with a NUL beside every ASCII character (UTF-32,
    # three): named, not left to fail as a header full of NULs.
    if text is not None and "\x00" in text and utf16 and "\n" not in text and "\r" not in text:
        raise InvalidDevices(STRIPPED_LINE_BREAKS)  # curl -d drops a UTF-16 CRLF's 0D and 0A, leaving 00 00
    if text is None or "\x00" in text:
        raise InvalidDevices(ENCODING_MESSAGE + _nul_hint(body, utf16))
    if len(text) > MAX_TEXT_CHARS:
        raise TooLarge(SIZE_LIMIT)
    return text


def _nul_hint(body: bytes, utf16: bool) -> str:
    """What NUL bytes in a CSV that is not UTF-8 or UTF-16 with a BOM suggest it is."""
    if b"\x00" not in body:
        return ""
    if b"\x00\x00\x00" in body[:4096]:  # ASCII in UTF-32: three NULs beside each character
        return "; this one has NUL bytes, as UTF-32 has"
    if utf16:
        return "; this one has NUL characters"
    return "; this one has NUL bytes, as UTF-16 without its byte order mark has"


def _csv_rows(text: str) -> list[dict[str, Any]]:
    reader, header = _csv_header(text)
    rows: list[dict[str, Any]] = []
    count = 0
    try:
        for line in reader:
            if not any(cell.strip() for cell in line):
                continue  # blank lines, e.g. a trailing newline
            if len(line) > len(header) and not any(cell.strip() for cell in line[len(header):]):
                line = line[:len(header)]  # Excel's empty cells after the last named column
            if len(line) != len(header):
                raise InvalidDevices(f"CSV line {reader.line_num} has {len(line)} columns, the header {len(header)} "
                                     f"(separated by {SEPARATOR_NAMES[reader.dialect.delimiter]})")
            count += 1
            if count <= MAX_DEVICES:  # the rest only counted, so that the answer names how many
                rows.append({CSV_COLUMNS[name]: (cell.strip() or None) for name, cell in zip(header, line, strict=True)})
    except csv.Error as exc:
        raise InvalidDevices(f"the CSV is malformed at line {reader.line_num}: {exc}") from None
    if count > MAX_DEVICES:
        raise InvalidDevices(f"at most {MAX_DEVICES} devices per request, got {count}")
    return rows


def _csv_header(text: str) -> tuple[Any, list[str]]:
    """A reader past the header line, and the header's column names (checked)."""
    if not text.strip():
        raise InvalidDevices("the CSV has no header line")
    if "\n" not in text and "\r" not in text:
        raise InvalidDevices(STRIPPED_LINE_BREAKS)
    preamble, hint, header_line = _preamble(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=hint or _delimiter(header_line))
    try:
        header = next(reader)
        while not header or preamble:  # blank lines before the header, and the lines before it
            preamble -= 1 if header else 0
            header = next(reader)
    except (StopIteration, csv.Error):
        raise InvalidDevices("the CSV has no header line") from None
    header = [name.strip() for name in header]
    while header and not header[-1]:  # Excel's empty columns after the last named one
        header.pop()
    missing = [name for name in REQUIRED_CSV_COLUMNS if name not in header]
    unknown = [name for name in header if name not in CSV_COLUMNS]
    if missing or unknown:
        raise InvalidDevices(f"the CSV header must be {', '.join(CSV_COLUMNS)} (the last two optional), "
                             "separated by commas, semicolons or tabs"
                             + (f"; missing: {', '.join(missing)}" if missing else "")
                             + (f"; unknown: {_names(unknown)}" if unknown else ""))
    return reader, header


def _preamble(text: str) -> tuple[int, str | None, str]:
    """(how many lines precede the header, the separator a ``sep=`` line names, the header line).
    Those lines are Excel's ``sep=;`` and Export-Csv's ``#TYPE ...``, each at most once."""
    position, count, hint, seen = 0, 0, None, set()
    while True:
        match = _FIRST_LINE.match(text, position)
        line = match.group(1) if match else ""
        sep = _SEPARATOR_HINT.fullmatch(line)
        kind = "sep" if sep else "type" if _TYPE_LINE.fullmatch(line.strip()) else None
        if kind is None or kind in seen or match is None:
            return count, hint, line
        if sep:
            hint = sep.group(1)
            if hint not in DELIMITERS:
                raise InvalidDevices(f"the CSV's first line sep={shown(hint)} names a separator this app does not "
                                     "read: use commas, semicolons or tabs")
        seen.add(kind)
        count += 1
        position = match.end()


def _delimiter(first_line: str) -> str:
    """The separator that splits the header line into the most known column names."""
    def known(delimiter: str) -> int:
        try:
            cells = next(csv.reader([first_line], delimiter=delimiter), [])
        except csv.Error:
            return 0
        return sum(cell.strip() in CSV_COLUMNS for cell in cells)
    return max(DELIMITERS, key=known)


def _names(names: list[str]) -> str:
    """Names a caller sent, each cut short, at most five (a headerless CSV's first row is a hash)."""
    listed = ", ".join(f'"{shown(name)}"' for name in names[:5])
    return listed + (f" and {len(names) - 5} more" if len(names) > 5 else "")
