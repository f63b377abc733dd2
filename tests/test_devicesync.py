"""The bulk device sync request parser (shared/devicesync/selector.py): pure, no I/O."""
from __future__ import annotations

import json

import pytest

from shared.devicesync import DeviceSyncRequest, InvalidSelector, parse_device_sync

ID1, ID2 = "0f8fad5b-d9cb-469f-a165-70867728950e", "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def parse(body, content_type="application/json", max_devices=100, skip=60):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_device_sync(raw, content_type, max_devices=max_devices, default_skip_minutes=skip)


def test_device_ids_are_parsed_lower_case_and_duplicates_dropped():
    request = parse({"deviceIds": [ID1, ID2.upper(), ID1]})
    assert request == DeviceSyncRequest("deviceIds", (ID1, ID2), skip_minutes=60)


def test_serial_numbers_keep_their_order_and_duplicates_are_dropped_case_insensitively():
    request = parse({"serialNumbers": ["SN1", "ab-2/x", "sn1"], "skipSyncedWithinMinutes": 0})
    assert (request.kind, request.values, request.skip_minutes) == ("serialNumbers", ("SN1", "ab-2/x"), 0)


def test_a_filter_in_the_grammar_is_kept_as_given():
    text = "operatingSystem eq 'Windows' and deviceName eq 'PC-1'"
    assert parse({"filter": text}) == DeviceSyncRequest("filter", filter=text, skip_minutes=60)


def test_a_group_id_is_a_guid():
    assert parse({"groupId": ID1.upper()}).group_id == ID1


def test_each_bad_id_is_listed_with_its_index_and_reason():
    with pytest.raises(InvalidSelector) as caught:
        parse({"deviceIds": [ID1, "nope", 7]})
    assert caught.value.errors == [{"index": 1, "entry": "nope", "reason": "not a GUID"},
                                   {"index": 2, "entry": "7", "reason": "not a string"}]
    assert (caught.value.code, caught.value.http_status) == ("InvalidDeviceSelector", 400)
    assert "entry 1 'nope' not a GUID" in caught.value.message


def test_bad_serials_are_each_listed():
    with pytest.raises(InvalidSelector) as caught:
        parse({"serialNumbers": ["ok", "", "bad'quote", "x" * 129]})
    assert [e["index"] for e in caught.value.errors] == [1, 2, 3]


@pytest.mark.parametrize("body", [{}, {"deviceIds": [ID1], "groupId": ID1}, {"deviceIds": []},
                                  {"deviceIds": [ID1], "extra": 1}, {"serialNumbers": "SN1"},
                                  {"groupId": "x"}, {"serialNumbers": ["a"], "skipSyncedWithinMinutes": 10081},
                                  {"serialNumbers": ["a"], "skipSyncedWithinMinutes": True}, [1], b"not json"])
def test_empty_double_unknown_or_malformed_selectors_are_refused(body):
    with pytest.raises(InvalidSelector):
        parse(body)


def test_more_devices_than_the_maximum_are_refused():
    with pytest.raises(InvalidSelector, match="at most 2 devices"):
        parse({"serialNumbers": ["A", "B", "C"]}, max_devices=2)


@pytest.mark.parametrize("text", ["operatingSystem ne 'Windows'", "serialNumber eq 'a' or serialNumber eq 'b'",
                                  "foo eq 'x'", "deviceName eq 'it''s'", "deviceName eq 'a\nb'",
                                  "startswith(deviceName,'PC')", "deviceName eq '" + "x" * 201 + "'",
                                  "deviceName eq ''", " and ".join(["model eq 'x'"] * 11)])
def test_filters_outside_the_grammar_are_refused(text):
    with pytest.raises(InvalidSelector):
        parse({"filter": text})


def test_a_filter_on_an_unknown_property_names_it():
    with pytest.raises(InvalidSelector) as caught:
        parse({"filter": "model eq 'X' and secret eq 'y'"})
    assert caught.value.errors[0]["index"] == 1 and "secret is not one of" in caught.value.errors[0]["reason"]


@pytest.mark.parametrize("encoding,separator", [("utf-8", ","), ("utf-8-sig", ";"), ("utf-16", "\t")])
def test_a_csv_with_a_serial_number_column_in_any_encoding_and_separator(encoding, separator):
    text = f"Device Serial Number{separator}Windows Product ID\r\nSN1{separator}x\r\n\r\nSN2{separator}y\r\nSN1{separator}z\r\n"
    request = parse(text.encode(encoding), "text/csv; charset=utf-8")
    assert (request.kind, request.values) == ("serialNumbers", ("SN1", "SN2"))


def test_a_csv_without_a_serial_column_is_refused():
    with pytest.raises(InvalidSelector, match="Serial Number"):
        parse(b"Name,Model\nA,B\n", "text/csv")


def test_a_csv_bad_serial_is_named_by_its_line():
    with pytest.raises(InvalidSelector) as caught:
        parse(b"Serial Number\nSN1\nbad'one\n", "text/csv")
    assert caught.value.errors == [{"index": 3, "entry": "bad'one", "reason": caught.value.errors[0]["reason"]}]


def test_to_json_gives_the_kind_and_size_not_the_values():
    assert parse({"serialNumbers": ["A", "B"]}).to_json() == {"kind": "serialNumbers", "count": 2,
                                                              "skipSyncedWithinMinutes": 60}


# --- a step that died: what its rows left ``sending`` become (shared/devicesync/syncsteps.recovered) ---


def test_a_row_its_tickets_grant_covered_is_queued_never_sent_again():
    from shared.devicesync.syncsteps import recovered
    from shared.devicesync.syncstore import DeviceRow

    assert recovered(DeviceRow(1, state="sending", ticket="1-a", slot=4), granted=5).state == "queued"


def test_a_row_past_its_tickets_grant_or_never_granted_is_pending_again():
    from shared.devicesync.syncsteps import recovered
    from shared.devicesync.syncstore import DeviceRow

    assert recovered(DeviceRow(1, state="sending", ticket="1-a", slot=5), granted=5).state == "pending"
    assert recovered(DeviceRow(1, state="sending", ticket="1-a", slot=0), granted=0).state == "pending"


def test_a_row_whose_grant_cannot_be_told_is_queued():
    from shared.devicesync.syncsteps import recovered
    from shared.devicesync.syncstore import DeviceRow

    assert recovered(DeviceRow(1, state="sending", ticket="1-a", slot=0), granted=None).state == "queued"
    assert recovered(DeviceRow(1, state="sending"), granted=None).state == "queued"  # a row marked before tickets


def test_a_step_starts_new_work_for_at_most_half_a_short_claim():
    from shared.devicesync.syncsteps import STEP_SECONDS, work_window

    assert work_window(60) == STEP_SECONDS  # the default claim: the step's own limit
    assert work_window(5) == 2.5  # a 5 s claim: the rest of it covers the last batch and the saves
