"""The pure decisions of Autopilot onboarding (shared/onboarding/rules.py): what Graph's answers mean."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared.common.errors import AppError
from shared.onboarding.importjob import ImportStep, import_notification
from shared.onboarding.imports import DeviceRow, ImportJob
from shared.onboarding.rules import (
    FAILED,
    FOLLOW,
    IMPORTED,
    IMPORTING,
    PROFILE_ASSIGNED,
    REGISTERED,
    STATES,
    TAKE_OVER,
    TIMED_OUT,
    UNKNOWN_HINT,
    WAIT,
    WAITING_FOR_SYNC,
    ImportAnswer,
    Owner,
    all_final,
    counts,
    find_device,
    followed_failure,
    group_tag_differs,
    import_answer,
    profile_assigned,
    record_vanished,
    reserved_elsewhere,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def record(status: object, code: object = 0, name: object = "") -> dict[str, object]:
    return {"id": "x", "state": {"deviceImportStatus": status, "deviceErrorCode": code, "deviceErrorName": name}}


@pytest.mark.parametrize("status", ["unknown", "pending", "partial", None, 7, "somethingNew"])
def test_an_import_record_not_complete_or_in_error_is_still_importing(status: object) -> None:
    assert import_answer(record(status)).state == IMPORTING


def test_a_complete_import_record_means_imported() -> None:
    assert import_answer(record("complete")).state == IMPORTED


def test_an_import_error_keeps_graphs_code_and_name_and_gives_a_hint() -> None:
    answer = import_answer(record("error", 808, "ZtdDeviceAssignedToOtherTenant"))
    assert (answer.state, answer.error_code, answer.error_name) == (FAILED, 808, "ZtdDeviceAssignedToOtherTenant")
    assert answer.hint and "another organisation" in answer.hint


def test_an_import_error_without_a_name_is_named_from_its_documented_code() -> None:
    assert import_answer(record("error", 806, None)).error_name == "ZtdDeviceAlreadyAssigned"


def test_an_unknown_import_error_gets_the_general_hint() -> None:
    answer = import_answer(record("error", 999, "SomethingElse"))
    assert answer.error_name == "SomethingElse" and answer.hint == UNKNOWN_HINT


@pytest.mark.parametrize("body", [None, [], "text", {"state": "complete"}, {"state": None}])
def test_an_import_record_of_the_wrong_shape_is_still_importing(body: object) -> None:
    assert import_answer(body).state == IMPORTING


@pytest.mark.parametrize("status", ["assignedInSync", "assignedOutOfSync", "assignedUnkownSyncState"])
def test_every_assigned_value_means_the_profile_is_assigned(status: str) -> None:
    assert profile_assigned({"deploymentProfileAssignmentStatus": status})


@pytest.mark.parametrize("status", ["notAssigned", "pending", "failed", "unknown", None, 3])
def test_other_profile_values_mean_not_assigned_yet(status: object) -> None:
    assert not profile_assigned({"deploymentProfileAssignmentStatus": status})


def test_a_v1_device_without_the_beta_property_has_no_profile_known() -> None:
    assert not profile_assigned({"serialNumber": "A"})


def test_find_device_matches_the_serial_exactly_not_as_a_substring() -> None:
    answer = {"value": [{"serialNumber": "ABC12", "id": "1"}, {"serialNumber": "abc1", "id": "2"}]}
    assert find_device(answer, "ABC1") == {"serialNumber": "abc1", "id": "2"}
    assert find_device(answer, "ABC") is None


@pytest.mark.parametrize("answer", [None, {}, {"value": None}, {"value": ["x", 3]}, []])
def test_find_device_in_a_nonsense_answer_finds_nothing(answer: object) -> None:
    assert find_device(answer, "ABC1") is None


def test_a_group_tag_differs_only_when_one_was_asked_for() -> None:
    assert group_tag_differs({"groupTag": "Sales"}, "Kiosk")
    assert not group_tag_differs({"groupTag": "Sales"}, None)
    assert not group_tag_differs({"groupTag": "Kiosk"}, "Kiosk")
    assert group_tag_differs({"groupTag": None}, "Kiosk")


def test_counts_name_every_state() -> None:
    assert counts([IMPORTED, IMPORTED, FAILED]) == {s: {IMPORTED: 2, FAILED: 1}.get(s, 0) for s in STATES}


def test_a_job_is_final_only_when_every_device_is() -> None:
    assert all_final([PROFILE_ASSIGNED, FAILED, TIMED_OUT])
    assert not all_final([PROFILE_ASSIGNED, IMPORTED])


def test_an_import_step_message_round_trips() -> None:
    step = ImportStep("0b7d4e3a-91c2-4f6b-8e0d-5a2b7c9e1f02", 3, NOW)
    assert ImportStep.from_json(step.to_json()) == step


def test_a_takeover_message_round_trips_and_says_it_is_one() -> None:
    step = ImportStep("0b7d4e3a-91c2-4f6b-8e0d-5a2b7c9e1f02", 3, NOW, takeover=True)
    assert ImportStep.from_json(step.to_json()) == step and json.loads(step.to_json())["takeover"] is True


@pytest.mark.parametrize("text", ["{}", "[]", "nonsense", json.dumps({"importId": "../x", "step": 1, "scheduledAt": "2026-01-01T00:00:00Z"}),
                                  json.dumps({"importId": "0b7d4e3a-91c2-4f6b-8e0d-5a2b7c9e1f02", "step": "1", "scheduledAt": "x"})])
def test_an_import_step_message_of_the_wrong_shape_is_refused(text: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError, AppError)):  # what the step handler ignores
        ImportStep.from_json(text)


def test_the_job_notification_counts_states_and_names_failed_devices_with_their_reason() -> None:
    job = ImportJob("id1", NOW, NOW, "h", "http", 3, finished_at=NOW)
    devices = [DeviceRow(1, "A", "h", state=PROFILE_ASSIGNED),
               DeviceRow(2, "B", "h", state=FAILED, error_code=808, error_name="ZtdDeviceAssignedToOtherTenant"),
               DeviceRow(3, "C", "h", state=TIMED_OUT, message="still registered at the deadline")]
    note = import_notification(job, devices, counts(d.state for d in devices))
    body = note.to_json("app")
    assert body["event"] == "importCompleted" and body["outcome"] == "completedWithFailures"
    assert body["import"]["counts"][PROFILE_ASSIGNED] == 1
    assert [(d["serialNumber"], d["errorName"]) for d in body["import"]["failedDevices"]] == [
        ("B", "ZtdDeviceAssignedToOtherTenant"), ("C", None)]
    card = note.to_adaptive_card("app")["attachments"][0]["content"]
    facts = {f["title"]: f["value"] for f in card["body"][2]["facts"]}
    assert facts["B"].startswith("ZtdDeviceAssignedToOtherTenant") and facts[FAILED] == "1"


# --- one import per serial across jobs ---------------------------------------------------------

EARLIER, LATER = NOW - timedelta(hours=1), NOW + timedelta(minutes=5)


@pytest.mark.parametrize("owner,verdict", [
    (Owner(True, IMPORTING, True), FOLLOW),  # its import is under way: share it
    (Owner(False, IMPORTING, True), FOLLOW),  # even from a job that stopped: the record is what counts
    (Owner(True, FAILED, True, final_at=LATER, error_code=808, error_name="X"), FOLLOW),  # ended after we started: ours too
    (Owner(True, IMPORTING, False), WAIT),  # still looking it up, or its import call is unanswered
    (Owner(False, IMPORTING, False), TAKE_OVER),  # finished, gone or long past its deadline without importing
    (Owner(True, REGISTERED, False), TAKE_OVER),  # already registered: nothing to import, look it up ourselves
    (Owner(True, FAILED, False, final_at=LATER, error_name="AlreadyRegisteredWithOtherGroupTag"), TAKE_OVER),
    (Owner(True, FAILED, True, final_at=EARLIER, error_code=808, error_name="X"), TAKE_OVER),  # a later request tries again
    (None, TAKE_OVER),  # the job is gone
])
def test_what_a_job_does_about_a_serial_another_job_reserved(owner: Owner | None, verdict: str) -> None:
    assert reserved_elsewhere(owner, NOW) == verdict


def test_a_followed_import_that_intune_failed_fails_with_intunes_code_and_name() -> None:
    owner = Owner(True, FAILED, True, NOW, 808, "ZtdDeviceAssignedToOtherTenant")
    assert followed_failure(owner) == ImportAnswer(FAILED, 808, "ZtdDeviceAssignedToOtherTenant")


@pytest.mark.parametrize("owner", [None, Owner(True, IMPORTING, True), Owner(True, PROFILE_ASSIGNED, True, NOW),
                                   Owner(True, FAILED, True, NOW, None, "ImportRecordDeleted"),
                                   Owner(True, FAILED, True, NOW, None, "LookupRefused")])
def test_a_followed_import_has_no_known_failure_unless_intune_named_one(owner: Owner | None) -> None:
    assert followed_failure(owner) is None


@pytest.mark.parametrize("owner", [None, Owner(True, IMPORTING, True), Owner(True, WAITING_FOR_SYNC, True)])
def test_a_vanished_record_of_a_registered_device_means_registered(owner: Owner | None) -> None:
    assert record_vanished(owner, registered=True) is None


@pytest.mark.parametrize("state", [IMPORTED, WAITING_FOR_SYNC, REGISTERED, PROFILE_ASSIGNED])
def test_a_vanished_record_whose_import_was_seen_complete_means_imported(state: str) -> None:
    assert record_vanished(Owner(True, state, True), registered=False) == ImportAnswer(IMPORTED)


@pytest.mark.parametrize("owner", [None, Owner(True, IMPORTING, True), Owner(False, TIMED_OUT, True, NOW)])
def test_a_vanished_record_without_a_known_outcome_and_no_device_is_a_failure_not_an_import(owner: Owner | None) -> None:
    answer = record_vanished(owner, registered=False)
    assert answer is not None and (answer.state, answer.error_name) == (FAILED, "ImportRecordDeleted")


def job_at(**fields: object) -> ImportJob:
    values: dict[str, object] = {"step": 3, "step_at": NOW, **fields}
    return ImportJob("id1", NOW, NOW + timedelta(hours=4), "h", "http", 1, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("job,due", [
    (job_at(step_owner="a", step_until=NOW - timedelta(seconds=1)), True),  # the step died: its claim lapsed
    (job_at(step_owner="a", step_until=NOW + timedelta(seconds=1)), False),  # a step holds it
    (job_at(step_at=NOW - timedelta(minutes=3)), True),  # the message is overdue
    (job_at(step_at=NOW - timedelta(minutes=1)), False),  # due a minute ago: the queue is delivering it
    (job_at(step_owner="a", step_until=NOW - timedelta(seconds=1), status="completed"), False),
])
def test_the_watcher_resends_a_step_whose_claim_lapsed_at_once_and_a_lost_one_when_overdue(job: ImportJob, due: bool) -> None:
    assert job.resend_due(NOW, timedelta(minutes=2)) is due
