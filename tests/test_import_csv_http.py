"""The Autopilot CSV as admins really send it, through the local Functions host over HTTP
(issue #19, items 8 and 12): the 500-device limit holds in every encoding, Excel's separators
are read, and a body that cannot be read says why without echoing its hashes."""
from __future__ import annotations

import codecs

import pytest
import requests
from conftest import graph_calls
from test_devices import ENCODINGS, realistic_csv

from shared.onboarding.devices import MAX_DEVICES, MAX_SHOWN


@pytest.fixture
def app(start_app_hosts, env):
    return start_app_hosts(1, env)[0]


def post_csv(app: str, body: bytes) -> requests.Response:
    return requests.post(f"{app}/api/autopilot/devices", data=body, headers={"Content-Type": "text/csv"}, timeout=60)


def test_500_devices_written_by_windows_powershell_are_accepted(app, graph):
    body = codecs.BOM_UTF16_LE + realistic_csv(MAX_DEVICES).encode("utf-16-le")  # Out-File in PowerShell 5.1
    assert len(body) > 4 * 1024 * 1024  # over the old byte limit, which counted bytes, not devices
    answer = post_csv(app, body)
    assert answer.status_code == 202, answer.text
    assert len(answer.json()["devices"]) == MAX_DEVICES and answer.headers["Location"]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le-bom"])
def test_501_devices_are_refused_naming_the_count_and_nothing_reaches_graph(app, graph, encoding):
    answer = post_csv(app, ENCODINGS[encoding](realistic_csv(MAX_DEVICES + 1)))
    assert answer.status_code == 400 and answer.headers["Content-Type"] == "application/json"
    assert f"got {MAX_DEVICES + 1}" in answer.json()["error"]["message"]
    assert graph_calls(graph) == []


def test_a_semicolon_separated_csv_saved_by_excel_is_accepted(app, graph):
    answer = post_csv(app, realistic_csv(2, separator=";").encode())
    assert answer.status_code == 202, answer.text
    assert [d["serialNumber"] for d in answer.json()["devices"]] == ["PF3000000", "PF3000001"]


def test_excels_sep_line_and_empty_trailing_columns_and_export_csvs_type_line_are_accepted(app, graph):
    lines = realistic_csv(2, separator=";").split("\r\n")
    excel = ["#TYPE System.Management.Automation.PSCustomObject", "sep=;", *[f"{line};;" for line in lines if line]]
    answer = post_csv(app, codecs.BOM_UTF16_LE + ("\r\n".join(excel) + "\r\n").encode("utf-16-le"))
    assert answer.status_code == 202, answer.text
    assert [d["serialNumber"] for d in answer.json()["devices"]] == ["PF3000000", "PF3000001"]


def test_a_utf32_csv_is_refused_as_utf32_and_nothing_reaches_graph(app, graph):
    answer = post_csv(app, realistic_csv(2).encode("utf-32"))
    assert answer.status_code == 400 and "UTF-32" in answer.json()["error"]["message"]
    assert graph_calls(graph) == []


def test_a_csv_sent_with_curl_d_gets_the_data_binary_hint_and_nothing_reaches_graph(app, graph):
    stripped = realistic_csv(3).replace("\r", "").replace("\n", "").encode()  # curl -d @devices.csv
    answer = post_csv(app, stripped)
    assert answer.status_code == 400 and "--data-binary" in answer.json()["error"]["message"]
    assert len(answer.text) < 2000  # none of the three hashes echoed
    assert graph_calls(graph) == []


def test_bad_rows_are_named_with_their_values_cut_short(app, graph):
    header, first, _, third, _ = realistic_csv(3).split("\r\n")
    hash_ = first.split(",")[2]
    lines = [header, f"PF3000000,,{hash_[:1001]}", f"{hash_},,{hash_}", third]  # a hash cut short; one as serial
    answer = post_csv(app, ("\r\n".join(lines) + "\r\n").encode())
    rows = answer.json()["error"]["rows"]
    assert answer.status_code == 400 and [(r["row"], r["field"]) for r in rows] == [(1, "hardwareIdentifier"), (2, "serialNumber")]
    assert rows[0]["reason"].startswith("truncated") and hash_[:MAX_SHOWN + 1] not in answer.text
    assert graph_calls(graph) == []
