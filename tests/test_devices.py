"""Autopilot import requests (shared/devices.py): every row validated before anything reaches
Graph. Pure: no servers."""
import base64
import json

import pytest

from shared.devices import MAX_DEVICES, InvalidDevices, parse_import

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
