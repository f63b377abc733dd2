"""Autopilot import requests (shared/onboarding/devices.py): every row validated before anything reaches
Graph. Pure: no servers."""
import base64
import codecs
import json
import random

import pytest

from shared.onboarding.devices import MAX_BODY_BYTES, MAX_DEVICES, MAX_SHOWN, MAX_TEXT_CHARS, InvalidDevices, parse_import

HASH = base64.b64encode(bytes(range(256)) * 16).decode()  # 4 KB, the size of a real 4K hash
HEADER = "Device Serial Number,Windows Product ID,Hardware Hash"


def device(serial="5CG1234XYZ", **fields):
    return {"serialNumber": serial, "hardwareIdentifier": HASH, **fields}


def as_json(*devices, **top):
    return json.dumps({"devices": list(devices), **top}).encode()


def problems(body, content_type="application/json"):
    with pytest.raises(InvalidDevices) as raised:
        parse_import(body, content_type)
    return raised.value


def test_a_json_request_is_read_with_its_optional_fields():
    request = parse_import(as_json(device(groupTag="Kiosk-01", assignedUserPrincipalName="ana@contoso.com",
                                          productKey="00330-80000-00000-AA123")), "application/json")
    [d] = request.devices
    assert (d.serial_number, d.group_tag, d.assigned_user_principal_name) == ("5CG1234XYZ", "Kiosk-01", "ana@contoso.com")
    assert d.hardware_identifier == HASH and request.update_existing is False


def test_update_existing_is_read_when_asked_for():
    assert parse_import(as_json(device(), updateExisting=True), "application/json").update_existing is True


def test_the_csv_of_get_windows_autopilot_info_is_read_with_a_bom_and_crlf():
    body = ("\ufeff" + HEADER + ",Group Tag\r\n" + f"5CG1,,{HASH},Sales\r\n" + f"5CG2,,{HASH},\r\n\r\n").encode()
    request = parse_import(body, "text/csv; charset=utf-8")
    assert [(d.serial_number, d.group_tag, d.product_key) for d in request.devices] == [("5CG1", "Sales", None), ("5CG2", None, None)]


def test_a_duplicate_serial_is_named_even_when_its_first_row_has_another_problem():
    error = problems(as_json(device("5CG1", hardwareIdentifier="bad"), device("5CG1")))
    assert [(p.row, p.field) for p in error.problems] == [(1, "hardwareIdentifier"), (2, "serialNumber")]


def test_the_utf16_csv_of_windows_powershell_5_is_read():
    # Get-WindowsAutopilotInfo -OutputFile writes with Out-File: UTF-16 LE with a BOM in Windows PowerShell 5.1.
    body = (HEADER + "\r\n" + f"5CG1,,{HASH}\r\n").encode("utf-16")
    assert body[:2] == b"\xff\xfe"
    assert [d.serial_number for d in parse_import(body, "text/csv").devices] == ["5CG1"]


def test_a_csv_in_another_encoding_is_refused_by_name():
    error = problems((HEADER + "\r\n" + f"5CG\xe91,,{HASH}\r\n").encode("latin-1"), "text/csv")
    assert "UTF-8 or UTF-16" in error.message


def test_every_bad_row_is_named_with_its_field_and_reason():
    error = problems(as_json(device(), device("", ), device("5CG3", hardwareIdentifier="not base64!"),
                             device("5CG4", groupTag="has spaces"), device("5CG5", assignedUserPrincipalName="nobody")))
    assert error.http_status == 400 and error.code == "InvalidDevices"
    assert [(r["row"], r["field"]) for r in error.details["rows"]] == [
        (2, "serialNumber"), (3, "hardwareIdentifier"), (4, "groupTag"), (5, "assignedUserPrincipalName")]
    assert "4 of 5 devices" in error.message


def test_a_hash_of_implausible_size_is_refused():
    tiny = base64.b64encode(b"x" * 10).decode()
    assert problems(as_json(device(hardwareIdentifier=tiny))).details["rows"][0]["field"] == "hardwareIdentifier"


def test_duplicate_serials_in_one_request_are_refused_naming_the_first():
    [row] = problems(as_json(device("5CG1"), device("5cg1"))).details["rows"]
    assert row["row"] == 2 and "row 1" in row["reason"]


def test_more_than_the_maximum_is_refused_before_any_row_is_checked():
    body = as_json(*[device(f"S{i}") for i in range(MAX_DEVICES + 1)])
    assert f"at most {MAX_DEVICES}" in problems(body).message


@pytest.mark.parametrize("body, media", [
    (b"[" * 1100 + b"]" * 1100, "application/json"),
    (b'{"devices": "all"}', "application/json"),
    (b'{"devices": [], "extra": 1}', "application/json"),
    (b'{"devices": [1]}', "application/json"),
    (b'{"devices": [{"serialNumber": 5}]}', "application/json"),
    (b'{"devices": [{"serialNumber": "x", "color": "red"}]}', "application/json"),
    (b"", "text/csv"),
    (b"Serial,Hash\nx,y\n", "text/csv"),
    ((HEADER + "\nonly-two,columns\n").encode(), "text/csv"),
    ("\xff".encode("latin-1"), "text/csv"),
    (b"<devices/>", "application/xml"),
])
def test_malformed_requests_are_a_400_never_an_exception(body, media):
    assert problems(body, media).http_status == 400


def test_an_empty_device_list_is_refused():
    assert "no device" in problems(as_json()).message


# --- issue #19: the limit in every encoding, and CSV messages an admin can act on ----------------

ENCODINGS = {
    "utf-8": lambda text: text.encode(),
    "utf-8-bom": lambda text: codecs.BOM_UTF8 + text.encode(),
    "utf-16-le-bom": lambda text: codecs.BOM_UTF16_LE + text.encode("utf-16-le"),  # Windows PowerShell 5.1
    "utf-16-be-bom": lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
}


def realistic_csv(count, separator=","):
    """What Get-WindowsAutopilotInfo writes for ``count`` devices: random 4 KB hashes (5,464 base64
    characters, at the long end of real ones), an empty product ID, CRLF."""
    rng = random.Random(count)
    lines = [separator.join(("Device Serial Number", "Windows Product ID", "Hardware Hash"))]
    lines += [separator.join((f"PF3{i:06d}", "", base64.b64encode(rng.randbytes(4096)).decode())) for i in range(count)]
    return "\r\n".join(lines) + "\r\n"


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_500_realistic_devices_are_accepted_in_every_encoding(encoding):
    body = ENCODINGS[encoding](realistic_csv(MAX_DEVICES))
    assert len(parse_import(body, "text/csv").devices) == MAX_DEVICES


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_501_devices_are_refused_naming_the_count_in_every_encoding(encoding):
    error = problems(ENCODINGS[encoding](realistic_csv(MAX_DEVICES + 1)), "text/csv")
    assert error.http_status == 400 and f"at most {MAX_DEVICES} devices per request, got {MAX_DEVICES + 1}" in error.message


def test_a_body_over_the_decoded_text_limit_is_too_large():
    body = (HEADER + "\r\n" + "x" * MAX_TEXT_CHARS).encode()  # under the byte cap, over the text limit
    assert len(body) < MAX_BODY_BYTES
    error = problems(body, "text/csv")
    assert (error.http_status, error.code) == (413, "PayloadTooLarge") and "500 devices" in error.message


@pytest.mark.parametrize("separator", [";", "\t"], ids=["semicolon", "tab"])
@pytest.mark.parametrize("quoted", [False, True], ids=["bare", "quoted"])
def test_a_csv_separated_by_semicolons_or_tabs_is_read(separator, quoted):
    # Excel saves "CSV" with ";" where "," is the decimal separator; Export-Csv quotes every field.
    def line(*cells):
        return separator.join(f'"{c}"' if quoted else c for c in cells)
    text = "\r\n".join([line("Device Serial Number", "Windows Product ID", "Hardware Hash", "Group Tag"),
                        line("5CG1", "", HASH, "Sales"), line("5CG2", "", HASH, "")]) + "\r\n"
    request = parse_import(text.encode(), "text/csv")
    assert [(d.serial_number, d.group_tag, d.hardware_identifier) for d in request.devices] == [
        ("5CG1", "Sales", HASH), ("5CG2", None, HASH)]


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_gets_the_encoding_message(codec):
    error = problems((HEADER + "\r\n" + f"5CG1,,{HASH}\r\n").encode(codec), "text/csv")
    assert error.message.startswith("the CSV must be UTF-8 or UTF-16 with a byte order mark")
    assert "NUL" in error.message and "\x00" not in error.message and "header" not in error.message


@pytest.mark.parametrize("cut, decoded", [(1001, 750), (400, 300), (8, 6)], ids=["mid-group", "whole-groups", "tiny"])
def test_a_truncated_hash_is_called_truncated_with_its_decoded_size(cut, decoded):
    [row] = problems((HEADER + "\r\n" + f"5CG1,,{HASH[:cut]}\r\n").encode(), "text/csv").details["rows"]
    assert row["field"] == "hardwareIdentifier"
    assert row["reason"].startswith("truncated") and f"{decoded:,} bytes" in row["reason"]


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_a_csv_whose_line_breaks_were_stripped_gets_a_hint_to_send_it_as_binary(encoding):
    body = ENCODINGS[encoding](realistic_csv(3))
    error = problems(body.replace(b"\r", b"").replace(b"\n", b""), "text/csv")  # what curl -d @devices.csv sends
    assert "line break" in error.message and "--data-binary" in error.message


@pytest.mark.parametrize("body, media", [
    (f"5CG1,,{HASH}\r\n5CG2,,{HASH}\r\n".encode(), "text/csv"),  # no header: the first row read as one
    (f"{HEADER}\r\n{HASH},,{HASH}\r\n".encode(), "text/csv"),  # the columns mixed up
    (as_json(device(HASH)), "application/json"),
    (as_json(device(**{HASH: "x"})), "application/json"),
    (json.dumps({"devices": [device()], HASH: 1}).encode(), "application/json"),
], ids=["headerless csv", "hash as serial", "json hash as serial", "json hash as field", "json hash as top field"])
def test_no_error_echoes_a_hash_at_length(body, media):
    error = problems(body, media)
    answer = json.dumps({"message": error.message, **error.details})
    assert HASH[:MAX_SHOWN + 1] not in answer and len(answer) < 2000


# --- what Excel and PowerShell write around a CSV, and encodings named as what they are ----------

@pytest.mark.parametrize("codec", ["utf-32", "utf-32-le", "utf-32-be"], ids=["bom-le", "no-bom-le", "no-bom-be"])
def test_a_utf32_csv_is_named_utf32_not_utf16(codec):
    # FF FE 00 00, UTF-32 LE's byte order mark, begins like UTF-16 LE's: it was read as UTF-16.
    error = problems((HEADER + "\r\n" + f"5CG1,,{HASH}\r\n").encode(codec), "text/csv")
    assert error.message.startswith("the CSV must be UTF-8 or UTF-16 with a byte order mark")
    assert "UTF-32" in error.message and "UTF-16 without" not in error.message


def excel_csv(separator, cells_after=2, hint=None, type_line=False, codec="utf-8"):
    """Three devices as Excel saves them after a cell right of the last column was touched: the
    header and every row end in ``cells_after`` empty cells; optionally its sep= line first."""
    lines = [separator.join([*HEADER.split(","), "Group Tag"] + [""] * cells_after)]
    lines += [separator.join([f"5CG{i}", "", HASH, f"Tag{i}"] + [""] * cells_after) for i in range(3)]
    lines = ([f"sep={hint}"] if hint else []) + lines
    lines = (['#TYPE System.Management.Automation.PSCustomObject'] if type_line else []) + lines
    return ("\r\n".join(lines) + "\r\n").encode(codec)


@pytest.mark.parametrize("separator", [",", ";", "\t"], ids=["comma", "semicolon", "tab"])
@pytest.mark.parametrize("cells_after", [1, 2, 5])
def test_excels_empty_columns_after_the_last_named_one_are_ignored(separator, cells_after):
    request = parse_import(excel_csv(separator, cells_after), "text/csv")
    assert [(d.serial_number, d.group_tag) for d in request.devices] == [("5CG0", "Tag0"), ("5CG1", "Tag1"), ("5CG2", "Tag2")]


def test_a_row_with_a_value_in_a_column_the_header_does_not_name_is_refused():
    body = excel_csv(",").replace(b"5CG1,," + HASH.encode() + b",Tag1,,", b"5CG1,," + HASH.encode() + b",Tag1,x,")
    assert "CSV line 3 has 6 columns, the header 4" in problems(body, "text/csv").message


@pytest.mark.parametrize("hint, separator", [(";", ";"), (",", ","), ("\t", "\t")], ids=["semicolon", "comma", "tab"])
@pytest.mark.parametrize("codec", ["utf-8", "utf-8-sig", "utf-16"])
def test_excels_sep_line_is_honoured_and_skipped(hint, separator, codec):
    request = parse_import(excel_csv(separator, 0, hint=hint, codec=codec), "text/csv")
    assert [d.serial_number for d in request.devices] == ["5CG0", "5CG1", "5CG2"]


def test_a_sep_line_wins_over_what_the_header_suggests_and_line_numbers_count_it():
    # sep=; on a file whose header is comma-separated: honoured, so the header is one unknown column.
    assert "missing: Device Serial Number" in problems(excel_csv(",", 0, hint=";"), "text/csv").message
    body = excel_csv(";", 0, hint=";").replace(b"5CG1;;", b"5CG1;;;", 1)
    assert "CSV line 4 has 5 columns, the header 4" in problems(body, "text/csv").message  # sep=; is line 1


def test_a_sep_line_naming_a_separator_this_app_does_not_read_is_named():
    error = problems(excel_csv("|", 0, hint="|"), "text/csv")
    assert "sep=|" in error.message and "commas, semicolons or tabs" in error.message


@pytest.mark.parametrize("codec", ["utf-8", "utf-8-sig", "utf-16"])
@pytest.mark.parametrize("hint", [None, ";"])
def test_export_csvs_type_line_is_skipped(codec, hint):
    # Export-Csv without -NoTypeInformation (Windows PowerShell 5.1's default) writes it first.
    request = parse_import(excel_csv(";" if hint else ",", 0, hint=hint, type_line=True, codec=codec), "text/csv")
    assert [d.serial_number for d in request.devices] == ["5CG0", "5CG1", "5CG2"]
