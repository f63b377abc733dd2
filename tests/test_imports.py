"""Autopilot import jobs (shared/onboarding/importjob.py) against Azurite and the Graph emulator: import,
one shared sync, follow each device to its profile, delete its import record; every phase
survives a restart, and a duplicated message does nothing twice.

These drive the jobs in-process on a test clock (conftest.run_imports does what the queue
triggers do); tests/test_imports_http.py goes through the HTTP routes and the app hosts.
"""
from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import replace
from datetime import timedelta

from conftest import (
    advance,
    autopilot_devices,
    configure,
    faults,
    graph_calls,
    import_stats,
    run_imports,
    start_import,
    sync_posts,
)

from shared.onboarding.importjob import ImportStep
from shared.onboarding.rules import FAILED, PROFILE_ASSIGNED, REGISTERED, TIMED_OUT, WAITING_FOR_SYNC

IMPORTS = "/importedWindowsAutopilotDeviceIdentities"
IMPORTS_PATH = "/v1.0/deviceManagement" + IMPORTS


def states(svc, import_id):
    return {d.serial_number: d.state for d in svc.imports.devices(import_id)}


def import_posts(graph):
    return graph_calls(graph, "POST", IMPORTS + "/import")


def test_three_jobs_finishing_together_share_one_sync_and_every_device_gets_its_profile(service, clock, graph):
    jobs = [start_import(service, autopilot_devices(25, prefix=f"J{n}-"), caller=f"tech{n}") for n in range(3)]
    finished = run_imports(service, clock, graph, *jobs)
    assert len(sync_posts(graph)) == 1
    assert all(job.status == "completed" for job in finished)
    for job in jobs:
        assert set(states(service, job).values()) == {PROFILE_ASSIGNED}
    stats = import_stats(graph)
    assert stats["records"] == [] and len(stats["deleted"]) == 75  # every import record deleted


def test_serials_graph_fails_with_806_or_808_end_failed_with_that_name_and_the_others_complete(service, clock, graph):
    configure(graph, importErrors={"SN0002": {"deviceErrorCode": 806, "deviceErrorName": "ZtdDeviceAlreadyAssigned"},
                                   "SN0003": {"deviceErrorCode": 808, "deviceErrorName": "ZtdDeviceAssignedToOtherTenant"}})
    job = start_import(service, autopilot_devices(4))
    run_imports(service, clock, graph, job)
    devices = {d.serial_number: d for d in service.imports.devices(job)}
    assert (devices["SN0002"].state, devices["SN0002"].error_name, devices["SN0002"].error_code) == (FAILED, "ZtdDeviceAlreadyAssigned", 806)
    assert (devices["SN0003"].state, devices["SN0003"].error_name) == (FAILED, "ZtdDeviceAssignedToOtherTenant")
    assert "another organisation" in devices["SN0003"].to_json()["hint"]
    assert devices["SN0001"].state == devices["SN0004"].state == PROFILE_ASSIGNED


def test_a_device_already_registered_is_reported_as_such_and_not_imported_again(service, clock, graph):
    configure(graph, autopilotDevices=[{"serialNumber": "SN0001"}])
    job = start_import(service, autopilot_devices(2))
    run_imports(service, clock, graph, job)
    first, second = service.imports.devices(job)
    assert (first.state, first.already_registered, first.import_record_id) == (PROFILE_ASSIGNED, True, None)
    assert second.state == PROFILE_ASSIGNED and not second.already_registered
    [post] = import_posts(graph)
    assert "SN0001" not in post["body"] and "SN0002" in post["body"]


def test_a_registered_device_with_another_group_tag_fails_and_says_how_to_update_it(service, clock, graph):
    configure(graph, autopilotDevices=[{"serialNumber": "SN0001", "groupTag": "Sales"}])
    job = start_import(service, autopilot_devices(1, groupTag="Kiosk"))
    run_imports(service, clock, graph, job)
    [device] = service.imports.devices(job)
    assert (device.state, device.error_name) == (FAILED, "AlreadyRegisteredWithOtherGroupTag")
    assert "updateExisting" in device.to_json()["hint"]
    assert graph_calls(graph, "POST", "updateDeviceProperties") == []


def test_update_existing_changes_the_group_tag_of_a_registered_device_instead_of_importing_it(service, clock, graph):
    configure(graph, autopilotDevices=[{"serialNumber": "SN0001", "groupTag": "Sales"}])
    job = start_import(service, autopilot_devices(1, groupTag="Kiosk"), update_existing=True)
    run_imports(service, clock, graph, job)
    [device] = service.imports.devices(job)
    assert (device.state, device.group_tag_updated) == (PROFILE_ASSIGNED, True)
    assert [d["groupTag"] for d in import_stats(graph)["devices"]] == ["Kiosk"]
    assert import_posts(graph) == []


def test_a_duplicated_step_message_does_nothing_twice(service, clock, graph):
    job_id = start_import(service, autopilot_devices(3))
    job = service.imports.job(job_id)
    message = ImportStep(job_id, job.step, job.step_at).to_json()
    assert service.run_import_step(message) == "stepped"
    assert service.run_import_step(message) == "stale"
    assert len(import_posts(graph)) == 1


def test_a_step_message_delivered_while_another_delivery_runs_it_does_nothing(service, clock, graph):
    job_id = start_import(service, autopilot_devices(1))
    job = service.imports.job(job_id)
    service.imports.update(replace(job, step_owner="other", step_until=clock() + timedelta(minutes=4)))
    assert service.run_import_step(ImportStep(job_id, job.step, job.step_at).to_json()) == "busy"
    assert graph_calls(graph, contains="windowsAutopilotDeviceIdentities") == []


def test_a_restart_in_every_phase_loses_nothing(make_service, clock, graph):
    job = start_import(make_service(), autopilot_devices(5))
    seen: set[str] = set()

    def restart() -> None:  # a new process (new service, new clients) after every step
        nonlocal current
        current = make_service()
        seen.update(states(current, job).values())

    current = make_service()
    run_imports(current, clock, graph, job, between=restart)
    assert {WAITING_FOR_SYNC, REGISTERED} <= seen  # the restarts happened in the later phases too
    assert set(states(current, job).values()) == {PROFILE_ASSIGNED}
    assert len(import_posts(graph)) == 1 and len(sync_posts(graph)) == 1


def test_a_step_that_died_after_its_claim_is_sent_again_by_the_watcher(service, clock, graph, env):
    job_id = start_import(service, autopilot_devices(1))
    job = service.imports.job(job_id)
    service.imports.update(replace(job, step_owner="dead", step_until=clock() + timedelta(minutes=4)))
    clock.advance(60)
    assert service.repair_imports() == 0  # claimed: not overdue yet
    clock.advance(6 * 60)
    assert service.repair_imports() == 1
    assert service.run_import_step(ImportStep(job_id, job.step, clock()).to_json()) == "stepped"


def test_an_import_call_whose_answer_was_lost_is_found_again_not_repeated(service, clock, graph):
    # The emulator carries out the import after the client's 2 s read timeout: the call is ambiguous.
    faults(graph, {"method": "POST", "pathContains": IMPORTS + "/import", "delaySeconds": 3, "times": 1})
    job = start_import(service, autopilot_devices(3))
    # Graph's late answer takes a second more in real time; the test clock is far quicker than the
    # 10-minute grace, so each step also waits a little real time.
    run_imports(service, clock, graph, job, between=lambda: time.sleep(0.3))
    assert len(import_posts(graph)) == 1
    assert set(states(service, job).values()) == {PROFILE_ASSIGNED}
    assert len(import_stats(graph)["deleted"]) == 3  # one record per device, each deleted


def test_a_graph_outage_during_a_step_is_shown_in_the_job_and_loses_nothing(service, clock, graph):
    job_id = start_import(service, autopilot_devices(2))
    faults(graph, {"method": "GET", "pathContains": IMPORTS + "/", "status": 503, "times": 8})
    outages = []
    run_imports(service, clock, graph, job_id, between=lambda: outages.append(service.imports.job(job_id).message))
    assert any(m and "GraphUnavailable" in m for m in outages)
    assert set(states(service, job_id).values()) == {PROFILE_ASSIGNED}
    assert len(import_posts(graph)) == 1


def test_graph_throttling_of_writes_is_waited_out_and_no_device_is_imported_twice(service, clock, graph):
    configure(graph, writeLimit={"limit": 1, "windowSeconds": 1})
    jobs = [start_import(service, autopilot_devices(2, prefix=f"T{n}-")) for n in range(3)]
    import time

    run_imports(service, clock, graph, *jobs, between=lambda: time.sleep(0.4))
    assert graph.stats()["throttled"] > 0
    assert sorted(r["serialNumber"] for r in import_stats(graph)["devices"]) == sorted(
        f"T{n}-{i:04d}" for n in range(3) for i in (1, 2))
    assert len([r for r in import_posts(graph) if r["status"] == 200]) == 3


def test_a_device_that_never_gets_a_profile_times_out_and_keeps_its_import_record(make_service, clock, graph):
    service = make_service(IMPORT_WAIT_TIMEOUT_SECONDS="600")
    configure(graph, profileAssignmentSeconds=100000)
    job = start_import(service, autopilot_devices(1))
    [finished] = run_imports(service, clock, graph, job)
    [device] = service.imports.devices(job)
    assert (finished.status, device.state) == ("completed", TIMED_OUT)
    assert "registered" in (device.message or "")
    assert len(import_stats(graph)["records"]) == 1


def ok_import_posts(graph):
    return [r for r in import_posts(graph) if r["status"] == 200]


def test_a_step_that_outlives_its_claim_leaves_the_import_to_the_delivery_that_holds_it(service, clock, graph):
    # The first delivery is still in its (slow) first Graph call when its claim has expired and the
    # watcher has sent the step again; the second delivery claims the job and imports.
    job_id = start_import(service, autopilot_devices(2))
    job = service.imports.job(job_id)
    faults(graph, {"method": "GET", "pathContains": "windowsAutopilotDeviceIdentities", "delaySeconds": 1.5, "times": 1})
    outcome: list[object] = []
    first = threading.Thread(target=lambda: outcome.append(
        service.run_import_step(ImportStep(job_id, job.step, job.step_at).to_json())))
    first.start()
    time.sleep(0.5)
    advance(clock, graph, service.settings.import_step_claim_seconds + 1)  # its heartbeat is slower than this test
    assert service.repair_imports() == 1
    assert service.run_import_step(ImportStep(job_id, job.step, clock()).to_json()) == "stepped"
    first.join()
    assert outcome == ["lost"] and len(ok_import_posts(graph)) == 1


def test_a_group_tag_update_graph_refuses_fails_that_device_only(service, clock, graph):
    configure(graph, autopilotDevices=[{"serialNumber": "SN0001", "groupTag": "Sales"}])
    faults(graph, {"method": "POST", "pathContains": "updateDeviceProperties", "status": 400, "times": 100})
    job = start_import(service, autopilot_devices(2, groupTag="Kiosk"), update_existing=True)
    run_imports(service, clock, graph, job)
    first, second = service.imports.devices(job)
    assert (first.state, first.error_name) == (FAILED, "GroupTagUpdateRefused")
    assert second.state == PROFILE_ASSIGNED


def test_an_import_record_graph_will_not_delete_is_left_and_the_job_finishes(make_service, clock, graph):
    service = make_service(IMPORT_WAIT_TIMEOUT_SECONDS="3600")
    faults(graph, {"method": "DELETE", "pathContains": IMPORTS + "/", "status": 403, "times": 100})
    job_id = start_import(service, autopilot_devices(1))
    [job] = run_imports(service, clock, graph, job_id)
    [device] = service.imports.devices(job_id)
    assert (device.state, device.record_kept) == (PROFILE_ASSIGNED, True) and "admin center" in device.message
    assert (job.finished_at - job.created_at).total_seconds() < 1800  # not held until the deadline
    assert len(import_stats(graph)["records"]) == 1


def test_a_sync_graph_refuses_for_good_is_asked_again_only_every_half_hour_and_named(make_service, clock, graph):
    service = make_service(IMPORT_WAIT_TIMEOUT_SECONDS="3600")
    faults(graph, {"method": "POST", "pathContains": "windowsAutopilotSettings/sync", "status": 403, "times": 100})
    job_id = start_import(service, autopilot_devices(1))
    run_imports(service, clock, graph, job_id)
    [device] = service.imports.devices(job_id)
    assert len(sync_posts(graph)) == 2  # in the job's hour: the first ask, and one 30 minutes after it was given up
    assert device.state == TIMED_OUT and "DeviceManagementServiceConfig.ReadWrite.All" in device.message


def test_the_same_devices_posted_twice_are_imported_once_and_both_jobs_end_with_profiles(service, clock, graph):
    first = start_import(service, autopilot_devices(1), caller="tech1")
    second = start_import(service, autopilot_devices(1), caller="tech1-retry")
    run_imports(service, clock, graph, first, second)
    assert len(ok_import_posts(graph)) == 1
    assert states(service, first) == states(service, second) == {"SN0001": PROFILE_ASSIGNED}
    assert import_stats(graph)["records"] == []  # deleted by the job that made it


def test_jobs_of_the_largest_hashes_fit_table_storage_and_stay_under_intunes_write_limit(service, clock, graph):
    # Intune allows an app 100 writes per 20 s per tenant; the emulator answers 429 beyond that.
    configure(graph, writeLimit={"limit": 100, "windowSeconds": 20})
    big = base64.b64encode(bytes(range(256)) * 64).decode()  # 16 KiB decoded, the largest accepted
    jobs = [start_import(service, [{"serialNumber": f"B{n}-{i:04d}", "hardwareIdentifier": big} for i in range(1, 61)])
            for n in range(2)]
    run_imports(service, clock, graph, *jobs)  # 2 imports, 120 deletes and a sync: more than 100 writes
    assert all(set(states(service, job).values()) == {PROFILE_ASSIGNED} for job in jobs)
    assert graph.stats()["throttled"] == 0 and len(import_stats(graph)["deleted"]) == 120


def test_a_huge_error_name_from_graph_is_cut_and_kept(service, clock, graph):
    configure(graph, importErrors={"SN0001": {"deviceErrorCode": 1, "deviceErrorName": "E" * 40_000}})
    job_id = start_import(service, autopilot_devices(2))
    run_imports(service, clock, graph, job_id)
    first, second = service.imports.devices(job_id)
    assert (first.state, first.error_code, first.error_name) == (FAILED, 1, "E" * 200)
    assert second.state == PROFILE_ASSIGNED


def test_the_deadline_ends_a_job_even_when_graph_keeps_failing(make_service, clock, graph):
    service = make_service(IMPORT_WAIT_TIMEOUT_SECONDS="600")
    faults(graph, {"pathContains": "/deviceManagement/", "status": 503, "times": 100000})
    job_id = start_import(service, autopilot_devices(2))
    [job] = run_imports(service, clock, graph, job_id)
    assert job.status == "completed" and job.finished_at <= job.deadline + timedelta(seconds=120)
    assert set(states(service, job_id).values()) == {TIMED_OUT}


def test_an_import_answered_502_is_not_sent_again_and_its_records_are_found(service, clock, graph):
    # A gateway's 502 may come after the import was carried out: the client does not resend it
    # (it would for a read); the next step finds the records by the job's importId.
    faults(graph, {"method": "POST", "pathContains": IMPORTS + "/import", "status": 502, "times": 1})
    job = start_import(service, autopilot_devices(2))
    first = service.imports.job(job)
    assert service.run_import_step(ImportStep(job, first.step, first.step_at).to_json()) == "stepped"
    assert [r["status"] for r in import_posts(graph)] == [502]  # not resent by the client's retries
    run_imports(service, clock, graph, job)
    assert [r["status"] for r in import_posts(graph)] == [502, 200]  # nothing found after the grace: imported again
    assert set(states(service, job).values()) == {PROFILE_ASSIGNED}


def step(svc, job_id):
    job = svc.imports.job(job_id)
    return svc.run_import_step(ImportStep(job_id, job.step, job.step_at).to_json())


def test_a_device_whose_followed_import_failed_ends_failed_with_graphs_error(make_service, clock, graph):
    service = make_service(IMPORT_WAIT_TIMEOUT_SECONDS="3600")
    configure(graph, importErrors={"SN0001": {"deviceErrorCode": 808, "deviceErrorName": "ZtdDeviceAssignedToOtherTenant"}})
    first = start_import(service, autopilot_devices(1), caller="tech1")
    assert step(service, first) == "stepped"  # imported
    second = start_import(service, autopilot_devices(1), caller="tech2")
    assert step(service, second) == "stepped"  # follows the first job's import
    run_imports(service, clock, graph, first, second)  # the first job deletes its failed record as soon as it sees it
    [device] = service.imports.devices(second)
    assert (device.state, device.error_code, device.error_name) == (FAILED, 808, "ZtdDeviceAssignedToOtherTenant")
    assert "another organisation" in device.to_json()["hint"] and len(ok_import_posts(graph)) == 1


def test_a_followed_import_record_another_tool_deleted_unfinished_fails_the_device_instead_of_waiting(
        make_service, clock, graph):
    service = make_service(IMPORT_WAIT_TIMEOUT_SECONDS="3600")
    portal = service.graph.post(IMPORTS_PATH + "/import", json={"importedWindowsAutopilotDeviceIdentities": [
        {"serialNumber": "SN0001", "hardwareIdentifier": autopilot_devices(1)[0]["hardwareIdentifier"]}]}, once=True)
    [record] = portal.raise_for_status("a portal import").body["value"]
    job_id = start_import(service, autopilot_devices(1))
    assert step(service, job_id) == "stepped"
    assert service.imports.devices(job_id)[0].import_record_id == record["id"]  # followed, not imported again
    service.graph.delete(f"{IMPORTS_PATH}/{record['id']}").raise_for_status("an admin deleting the record")
    [job] = run_imports(service, clock, graph, job_id)
    [device] = service.imports.devices(job_id)
    assert (device.state, device.error_name) == (FAILED, "ImportRecordDeleted")
    assert (job.finished_at - job.created_at).total_seconds() < 600 and len(ok_import_posts(graph)) == 1


def test_a_serial_reserved_by_a_job_that_stopped_is_imported_by_another_job_after_that_jobs_deadline(
        make_service, clock, graph):
    stopped = make_service(IMPORT_WAIT_TIMEOUT_SECONDS="600")
    first = start_import(stopped, autopilot_devices(1))
    faults(graph, {"method": "GET", "pathContains": IMPORTS, "status": 503, "times": 4})
    assert step(stopped, first) == "stepped"  # it reserved SN0001, then Graph failed; it never steps again
    service = make_service(IMPORT_WAIT_TIMEOUT_SECONDS="3600")
    second = start_import(service, autopilot_devices(1))
    assert step(service, second) == "stepped"
    assert "waiting for import" in service.imports.devices(second)[0].message
    run_imports(service, clock, graph, second)
    [device] = service.imports.devices(second)
    assert device.state == PROFILE_ASSIGNED and import_stats(graph)["importsPerSerial"] == {"SN0001": 1}


def test_a_steps_takeover_message_does_nothing_and_logs_nothing_once_the_step_has_ended(make_service, graph, env, caplog):
    from conftest import drain, logged_events

    from shared.common.telemetry import LOGGER

    caplog.set_level(logging.INFO, logger=LOGGER)
    service = make_service(IMPORT_STEP_CLAIM_SECONDS="2", IMPORT_STEP_HEARTBEAT_SECONDS="1")
    job_id = start_import(service, autopilot_devices(1))
    assert step(service, job_id) == "stepped"  # it sent its takeover message, due when its claim would have lapsed
    calls = len(graph_calls(graph))
    outcomes: list[str] = []
    deadline = time.monotonic() + 30
    while len(outcomes) < 2 and time.monotonic() < deadline:  # the start's message at once, the takeover in seconds
        drain(env, "IMPORT_QUEUE", lambda message: outcomes.append(service.run_import_step(message)))
        time.sleep(0.2)
    assert outcomes == ["stale", "stale"] and len(graph_calls(graph)) == calls
    assert [e["outcome"] for e in logged_events(caplog, "import")] == ["started", "stepped", "stale"]  # the start's message only
