"""Autopilot import jobs (shared/importjob.py) against Azurite and the Graph emulator: import,
one shared sync, follow each device to its profile, delete its import record; every phase
survives a restart, and a duplicated message does nothing twice.

These drive the jobs in-process on a test clock (conftest.run_imports does what the queue
triggers do); tests/test_imports_http.py goes through the HTTP routes and the app hosts.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from conftest import (
    autopilot_devices,
    configure,
    faults,
    graph_calls,
    import_stats,
    run_imports,
    start_import,
    sync_posts,
)

from shared.importjob import ImportStep
from shared.onboarding import FAILED, PROFILE_ASSIGNED, REGISTERED, TIMED_OUT, WAITING_FOR_SYNC

IMPORTS = "/importedWindowsAutopilotDeviceIdentities"


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
    run_imports(service, clock, graph, job)
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
