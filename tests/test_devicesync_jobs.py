"""Bulk device sync jobs (shared/devicesync/syncjobs.py) against Azurite and the Graph emulator: every
selector ends with the right device states, no device is ever synced twice (duplicated messages,
a step that dies after its call), a 429 puts devices back and they finish later, and a job within
the shared write budget is never throttled. Steps are driven in-process on a test clock."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from conftest import FAST_RETRY, configure, graph_calls

from emulators.devices import azure_ad_device_id, managed_device_id
from shared.clients import GraphClient, Limits, SharedBudget, make_credential, table_client
from shared.common import GraphUnavailable, Settings, StateStoreUnavailable
from shared.devicesync import PAGE_SIZE, DeviceSyncJobs, DeviceSyncRequest, DeviceSyncStep, InvalidSelector, parse_device_sync
from shared.engine import StateStore

GROUP = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


class Sent(list):
    def __call__(self, notification):
        self.append(notification)


def make_jobs(env, clock, limits=None, **overrides):
    settings = Settings.from_env({**env, "SYNC_TARGETS": "autopilot,devices", "DEVICE_SYNC_STEP_DEVICES": "100",
                                  **overrides})
    table = table_client(settings.storage, settings.state_table, make_credential)
    budget = SharedBudget(table, limits) if limits else None
    graph = GraphClient(settings.graph_base_url, make_credential(settings.azure_client_id), settings.graph_scope,
                        timeout=settings.graph_timeout_seconds, retry=FAST_RETRY, budget=budget)
    sent = Sent()
    return DeviceSyncJobs(settings, graph, StateStore(table), None, clock, sent, None), sent


def message(jobs, job_id):
    job = jobs.store.job(job_id)
    return DeviceSyncStep(job_id, job.step, job.step_at).to_json()


def run_job(jobs, clock, job_id, steps=400):
    """Run the job's steps as the queue would deliver them (waiting real time for the budget)."""
    for _ in range(steps):
        job = jobs.store.job(job_id)
        if job.done:
            return job
        gap = (job.step_at - clock()).total_seconds()
        if gap > 0:
            time.sleep(min(gap, 3))
            clock.advance(gap)
        jobs.run_step(DeviceSyncStep(job_id, job.step, job.step_at).to_json())
    raise AssertionError("the job did not finish")


def states(jobs, job_id, token):
    status = jobs.status(job_id, token)
    return {(d.get("serialNumber") or d.get("deviceId")): d["state"] for d in status.to_json()["devices"]}


def device_stats(graph):
    return graph.stats()["managedDevices"]


def serials(n, prefix="SN"):
    return [f"{prefix}{i:06d}" for i in range(1, n + 1)]


def test_device_ids_are_synced_once_each_and_an_unknown_id_is_not_found(env, clock, graph):
    configure(graph, managedDevices={"count": 5})
    jobs, sent = make_jobs(env, clock)
    unknown = managed_device_id("NOPE")
    ids = tuple(managed_device_id(s) for s in serials(5)) + (unknown,)
    job, token = jobs.start(DeviceSyncRequest("deviceIds", ids, skip_minutes=0), "tech")
    assert run_job(jobs, clock, job.id).status == "completed"
    status = jobs.status(job.id, token).to_json()
    assert status["counts"] == {"queued": 5, "skippedRecent": 0, "notFound": 1, "notSupported": 0, "failed": 0, "pending": 0}
    assert device_stats(graph)["syncs"] == {i: 1 for i in ids[:5]}
    [note] = sent
    assert (note.event, note.details["counts"]["queued"], note.to_json("app")["deviceSync"]["jobId"]) == (
        "deviceSyncCompleted", 5, job.id)
    assert note.to_adaptive_card("app")["attachments"][0]["content"]["body"][0]["text"] == "Device sync finished"


def test_serials_from_a_csv_are_synced_and_an_unknown_serial_is_not_found(env, clock, graph):
    configure(graph, managedDevices={"count": 3})
    jobs, _ = make_jobs(env, clock)
    request = parse_device_sync("Serial Number;Model\r\nSN000001;x\r\nSN000003;y\r\nUNKNOWN1;z\r\n".encode("utf-16"),
                                "text/csv", max_devices=10, default_skip_minutes=0)
    job, token = jobs.start(request, "tech")
    run_job(jobs, clock, job.id)
    assert states(jobs, job.id, token) == {"SN000001": "queued", "SN000003": "queued", "UNKNOWN1": "notFound"}
    assert set(device_stats(graph)["syncs"]) == {managed_device_id("SN000001"), managed_device_id("SN000003")}


def test_a_filter_syncs_only_the_devices_it_matches(env, clock, graph):
    configure(graph, managedDevices={"devices": [{"serialNumber": "W1"}, {"serialNumber": "I1", "operatingSystem": "iOS"},
                                                 {"serialNumber": "I2", "operatingSystem": "iOS"}]})
    jobs, _ = make_jobs(env, clock)
    job, token = jobs.start(DeviceSyncRequest("filter", filter="operatingSystem eq 'iOS'", skip_minutes=0), "tech")
    run_job(jobs, clock, job.id)
    assert states(jobs, job.id, token) == {"I1": "queued", "I2": "queued"}
    assert jobs.status(job.id, token).to_json()["selector"] == {"kind": "filter", "count": 2, "skipSyncedWithinMinutes": 0,
                                                                "filter": "operatingSystem eq 'iOS'"}


def test_a_group_syncs_its_device_members_and_a_member_without_intune_is_not_found(env, clock, graph):
    configure(graph, managedDevices={"count": 4},
              groups={GROUP: [azure_ad_device_id("SN000002"), azure_ad_device_id("SN000004"), azure_ad_device_id("X")]})
    jobs, _ = make_jobs(env, clock)
    job, token = jobs.start(DeviceSyncRequest("groupId", group_id=GROUP, skip_minutes=0), "tech")
    run_job(jobs, clock, job.id)
    counts = jobs.status(job.id, token).to_json()["counts"]
    assert (counts["queued"], counts["notFound"]) == (2, 1)
    assert set(device_stats(graph)["syncs"]) == {managed_device_id("SN000002"), managed_device_id("SN000004")}


def test_a_device_synced_within_the_skip_minutes_is_skipped_recent(env, clock, graph):
    configure(graph, managedDevices={"devices": [{"serialNumber": "A", "lastSyncMinutesAgo": 5},
                                                 {"serialNumber": "B", "lastSyncMinutesAgo": 120}]})
    jobs, _ = make_jobs(env, clock)
    job, token = jobs.start(DeviceSyncRequest("serialNumbers", ("A", "B"), skip_minutes=60), "tech")
    run_job(jobs, clock, job.id)
    assert states(jobs, job.id, token) == {"A": "skippedRecent", "B": "queued"}
    assert set(device_stats(graph)["syncs"]) == {managed_device_id("B")}


def test_an_unsupported_device_is_not_supported_with_graphs_message(env, clock, graph):
    configure(graph, managedDevices={"devices": [{"serialNumber": "A", "unsupported": True}]})
    jobs, _ = make_jobs(env, clock)
    job, token = jobs.start(DeviceSyncRequest("serialNumbers", ("A",), skip_minutes=0), "tech")
    run_job(jobs, clock, job.id)
    [device] = jobs.status(job.id, token).to_json()["devices"]
    assert device["state"] == "notSupported" and "does not support" in device["error"]["message"]


def test_a_duplicated_step_message_sends_no_second_sync(env, clock, graph):
    configure(graph, managedDevices={"count": 10})
    jobs, _ = make_jobs(env, clock)
    job, _ = jobs.start(DeviceSyncRequest("serialNumbers", tuple(serials(10)), skip_minutes=0), "tech")
    first = message(jobs, job.id)
    assert jobs.run_step(first) == "completed"
    assert jobs.run_step(first) == "stale"
    assert device_stats(graph)["deviceSyncs"] == 10 and device_stats(graph)["devicesSyncedMoreThanOnce"] == 0


def test_a_step_that_dies_after_its_call_is_retried_without_syncing_any_device_twice(env, clock, graph, monkeypatch):
    configure(graph, managedDevices={"count": 30})
    jobs, _ = make_jobs(env, clock)
    job, token = jobs.start(DeviceSyncRequest("serialNumbers", tuple(serials(30)), skip_minutes=0), "tech")
    real = jobs.graph.request
    calls = []

    def dies_after_the_first_sync_batch(method, path, *args, **kwargs):
        answer = real(method, path, *args, **kwargs)
        if kwargs.get("claimed") and not calls:
            calls.append(path)
            raise GraphUnavailable("the answer was lost", maybe_sent=True)
        return answer

    monkeypatch.setattr(jobs.graph, "request", dies_after_the_first_sync_batch)
    text = message(jobs, job.id)
    with pytest.raises(GraphUnavailable):
        jobs.run_step(text)
    assert device_stats(graph)["deviceSyncs"] == 20  # the first batch reached Graph
    jobs.run_step(text)  # the host's retry of the same message
    run_job(jobs, clock, job.id)
    assert set(states(jobs, job.id, token).values()) == {"queued"}
    assert device_stats(graph)["deviceSyncs"] == 30 and device_stats(graph)["devicesSyncedMoreThanOnce"] == 0


def test_an_inner_429_puts_devices_back_to_pending_and_they_finish_later(env, clock, graph):
    configure(graph, managedDevices={"count": 30}, deviceWriteLimit={"limit": 10, "windowSeconds": 1})
    jobs, _ = make_jobs(env, clock)
    job, token = jobs.start(DeviceSyncRequest("serialNumbers", tuple(serials(30)), skip_minutes=0), "tech")
    jobs.run_step(message(jobs, job.id))
    after_first = jobs.status(job.id, token).to_json()["counts"]
    assert after_first["queued"] == 10 and after_first["pending"] == 20
    run_job(jobs, clock, job.id)
    assert set(states(jobs, job.id, token).values()) == {"queued"}
    stats = graph.stats()
    assert stats["writeLimits"]["devices"]["throttled"] > 0
    assert stats["managedDevices"]["deviceSyncs"] == 30 and stats["managedDevices"]["devicesSyncedMoreThanOnce"] == 0


def test_a_job_within_the_shared_budget_is_never_throttled(env, clock, graph):
    configure(graph, managedDevices={"count": 300}, deviceWriteLimit={"limit": 100, "windowSeconds": 2})
    jobs, _ = make_jobs(env, clock, limits=Limits(devices=100, window=2))
    job, token = jobs.start(DeviceSyncRequest("serialNumbers", tuple(serials(300)), skip_minutes=0), "tech")
    run_job(jobs, clock, job.id)
    assert jobs.status(job.id, token).to_json()["counts"]["queued"] == 300
    limits = graph.stats()["writeLimits"]["devices"]
    assert limits["throttled"] == 0 and limits["maxWritesInAnyWindow"] <= 100


def test_status_is_paged_by_500(env, clock, graph):
    jobs, _ = make_jobs(env, clock)
    ids = tuple(managed_device_id(f"P{i}") for i in range(PAGE_SIZE + 20))
    job, token = jobs.start(DeviceSyncRequest("deviceIds", ids, skip_minutes=0), "tech")
    first, second = jobs.status(job.id, token, 0).to_json(), jobs.status(job.id, token, 1).to_json()
    assert (len(first["devices"]), first["nextPage"]) == (PAGE_SIZE, 1)
    assert (len(second["devices"]), second["nextPage"], second["devices"][-1]["deviceId"]) == (20, None, ids[-1])
    assert first["counts"]["pending"] == PAGE_SIZE + 20 and first["status"] == "running"


def test_a_wrong_token_or_unknown_job_gives_none(env, clock, graph):
    jobs, _ = make_jobs(env, clock)
    job, token = jobs.start(DeviceSyncRequest("serialNumbers", ("A",), skip_minutes=0), "tech")
    assert jobs.status(job.id, token + "x") is None
    assert jobs.status(managed_device_id("none"), token) is None


def test_bad_selectors_raise_and_make_no_graph_call(graph):
    with pytest.raises(InvalidSelector) as caught:
        parse_device_sync(b'{"deviceIds": ["x", "y"]}', "application/json", max_devices=10, default_skip_minutes=0)
    assert [e["index"] for e in caught.value.errors] == [0, 1]
    assert graph_calls(graph) == []


def test_a_group_graph_does_not_know_ends_the_job_with_no_device_and_says_why(env, clock, graph):
    """No retry can make an unknown group exist: the job completes with no device, its message
    naming Graph's answer, instead of failing its step again and again."""
    configure(graph, managedDevices={"count": 3})
    jobs, _ = make_jobs(env, clock)
    job, token = jobs.start(DeviceSyncRequest("groupId", group_id="0b8e0c1d-6a4f-4c8e-9d7a-2f1e3c4b5a69", skip_minutes=0), "tech")
    assert run_job(jobs, clock, job.id, steps=5).status == "completed"
    answer = jobs.status(job.id, token).to_json()
    assert answer["devices"] == [] and sum(answer["counts"].values()) == 0
    assert "Graph refused the group 0b8e0c1d-6a4f-4c8e-9d7a-2f1e3c4b5a69: 404" in answer["message"]
    assert device_stats(graph)["deviceSyncs"] == 0


def test_a_step_whose_instance_died_is_taken_over_once_its_claim_lapses(env, clock, graph):
    """A step claims its job for DEVICE_SYNC_STEP_CLAIM_SECONDS and sends a takeover message due
    just after; if its instance dies, that message runs the step then, not minutes later. A
    delivery that finds the job claimed sends itself again for the claim's end."""
    from dataclasses import replace

    from azure.storage.queue import QueueClient

    from shared.clients import PendingQueue, queue_client

    configure(graph, managedDevices={"count": 3})
    jobs, _ = make_jobs(env, clock, DEVICE_SYNC_STEP_CLAIM_SECONDS="30")
    name = "d" + env["SYNC_STATE_TABLE"][1:]
    jobs.queue = PendingQueue(lambda: queue_client(jobs.settings.storage, name, make_credential))
    job, _ = jobs.start(DeviceSyncRequest("serialNumbers", tuple(serials(3)), skip_minutes=0), "tech")
    step = message(jobs, job.id)
    # The instance that claimed the step died: its claim stands, the job has not moved on.
    dead = jobs.store.update(replace(jobs.store.job(job.id), step_owner="dead", step_until=clock() + timedelta(seconds=30)))
    assert dead is not None
    count = QueueClient.from_connection_string(env["AzureWebJobsStorage"], name).get_queue_properties
    before = count().approximate_message_count
    assert jobs.run_step(step) == "busy"
    assert count().approximate_message_count == before + 1  # itself again, for the claim's end
    assert device_stats(graph)["deviceSyncs"] == 0
    clock.advance(31)
    assert jobs.run_step(step) in ("stepped", "completed")  # the claim lapsed: taken over
    assert device_stats(graph)["deviceSyncs"] == 3


def test_a_step_that_ends_leaves_its_takeover_message_nothing_to_do(env, clock, graph):
    from shared.clients import PendingQueue, queue_client

    configure(graph, managedDevices={"count": 3})
    jobs, _ = make_jobs(env, clock)
    jobs.queue = PendingQueue(lambda: queue_client(jobs.settings.storage, "d" + env["SYNC_STATE_TABLE"][1:], make_credential))
    job, _ = jobs.start(DeviceSyncRequest("serialNumbers", tuple(serials(3)), skip_minutes=0), "tech")
    step = message(jobs, job.id)
    assert jobs.run_step(step) in ("stepped", "completed")
    clock.advance(120)
    assert jobs.run_step(step) == "stale"  # the takeover of a step that ended
    assert device_stats(graph)["devicesSyncedMoreThanOnce"] == 0


def test_a_short_budget_wait_is_slept_within_the_step(env, clock, graph):
    configure(graph, managedDevices={"count": 100}, deviceWriteLimit={"limit": 40, "windowSeconds": 1})
    jobs, _ = make_jobs(env, clock, limits=Limits(devices=40, window=1))
    job, token = jobs.start(DeviceSyncRequest("serialNumbers", tuple(serials(100)), skip_minutes=0), "tech")
    jobs.run_step(message(jobs, job.id))  # 38 a window (the margin off): three windows' worth in one step
    assert jobs.status(job.id, token).to_json()["counts"]["queued"] == 100
    assert graph.stats()["writeLimits"]["devices"]["throttled"] == 0


def test_a_long_budget_wait_ends_the_step_and_schedules_the_next_for_then(env, clock, graph):
    # A 10 s window: a grant back more than a quarter second late would be dropped (budget.late).
    configure(graph, managedDevices={"count": 100}, deviceWriteLimit={"limit": 40, "windowSeconds": 10})
    jobs, _ = make_jobs(env, clock, limits=Limits(devices=40, window=10))
    job, token = jobs.start(DeviceSyncRequest("serialNumbers", tuple(serials(100)), skip_minutes=0), "tech")
    jobs.run_step(message(jobs, job.id))
    assert jobs.status(job.id, token).to_json()["counts"]["queued"] == 38
    following = jobs.store.job(job.id)
    assert 6.0 < (following.step_at - clock()).total_seconds() <= 10 * 1.05


def test_a_filter_job_lists_every_page_it_can_in_one_step_and_syncs_from_the_next(env, clock, graph):
    configure(graph, managedDevices={"count": 2100})
    jobs, _ = make_jobs(env, clock)
    job, token = jobs.start(DeviceSyncRequest("filter", filter="managementAgent eq 'mdm'", skip_minutes=0), "tech")
    jobs.run_step(message(jobs, job.id))  # three pages of 999
    listed = jobs.store.job(job.id)
    assert (listed.phase, listed.device_count, listed.next_link) == ("sync", 2100, None)
    assert device_stats(graph)["deviceSyncs"] == 0  # a retried listing step could not reset a row already sent


def test_table_storage_failing_the_budget_claim_sends_nothing_keeps_every_device_and_frees_the_job(env, clock, graph,
                                                                                                   azurite):
    """The budget row cannot be read (Table Storage answers 503 behind a fault proxy) after a
    chunk's rows were marked ``sending``: the step fails before any syncDevice, its claim is let go,
    and once storage answers the job sends every device once."""
    from emulators.azurite import ACCOUNT, KEY
    from emulators.faultproxy import FaultProxy

    configure(graph, managedDevices={"count": 30})
    proxy = FaultProxy(azurite.table_endpoint).start()
    try:
        tables = f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};TableEndpoint={proxy.base_url}/{ACCOUNT};"
        jobs, _ = make_jobs({**env, "AzureWebJobsStorage": tables}, clock, limits=Limits())
        job, token = jobs.start(DeviceSyncRequest("serialNumbers", tuple(serials(30)), skip_minutes=0), "tech")
        proxy.add("fail", path_contains="PartitionKey='budget'")
        with pytest.raises(StateStoreUnavailable):
            jobs.run_step(message(jobs, job.id))
        assert device_stats(graph)["deviceSyncs"] == 0
        held = jobs.store.job(job.id)
        assert held.step_owner is None and "StateStoreUnavailable" in (held.message or "")  # the claim let go
        proxy.clear()
        run_job(jobs, clock, job.id)
    finally:
        proxy.stop()
    assert set(states(jobs, job.id, token).values()) == {"queued"}
    assert device_stats(graph)["deviceSyncs"] == 30 and device_stats(graph)["devicesSyncedMoreThanOnce"] == 0
