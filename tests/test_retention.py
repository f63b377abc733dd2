"""The sweep (shared/assembly/retention.py) against real Azurite: expired history, asks and operations go,
live rows stay, a sweep's work is bounded, and status does not read what it does not need."""
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from conftest import autopilot_devices, start_import, unreachable_storage

from shared.assembly.retention import history_key_before
from shared.common.settings import Settings, SettingsError
from shared.engine.state import Attempt, UnitState

LIVE, OLD = uuid.uuid4().hex, uuid.uuid4().hex  # pending ids: the unit's current one, and one long gone
CONNECTOR = "exchange-6a1c2f8e-2b1d-4d7e-9a55-3c1f0e6b9d01"


def history_row(key, at, caller="test"):
    return Attempt(attempt_at=at, finished_at=at, trigger="timer", caller=caller, outcome="started").to_entity(key)


def insert(service, entities):
    """Rows written straight to the table, per partition in transactions of 100."""
    table = service.store._table
    service.store.read("autopilot")  # creates the table
    by_partition = {}
    for e in entities:
        by_partition.setdefault(e["PartitionKey"], []).append(e)
    for rows in by_partition.values():
        for i in range(0, len(rows), 100):
            table.submit_transaction([("create", row) for row in rows[i:i + 100]])


def ask_row(key, pending_id, at, caller="flow:x"):
    return {"PartitionKey": key, "RowKey": f"ask-{pending_id}-{uuid.uuid4().hex}", "caller": caller, "askedAt": at}


def history_callers(service, key):
    return sorted(row["caller"] for row in service.store.history(key, 1000))


def pending_state(service, clock, pending_id=LIVE):
    state = UnitState(key="autopilot", target="autopilot", next_allowed_at=clock.now + timedelta(minutes=5),
                        pending_id=pending_id, pending_at=clock.now + timedelta(minutes=5), pending_since=clock.now,
                        pending_asked_by="flow:first")
    service.store.read("autopilot")  # creates the table
    service.store._table.create_entity(state.to_entity())


def test_history_older_than_the_retention_is_deleted_and_newer_kept(make_service, clock):
    service = make_service(HISTORY_RETENTION_DAYS="30")
    now = clock.now
    insert(service, [
        history_row("autopilot", now - timedelta(days=31), "old-1"),
        history_row("autopilot", now - timedelta(days=400), "old-2"),
        history_row("autopilot", now - timedelta(days=30), "at-the-limit"),
        history_row("autopilot", now - timedelta(days=29), "new-1"),
        history_row("autopilot", now - timedelta(minutes=1), "new-2"),
        history_row(CONNECTOR, now - timedelta(days=45), "old-3"),  # any partition, with or without a state row
    ])
    swept = service.sweep()
    assert (swept.history, swept.asks, swept.operations) == (3, 0, 0)
    assert history_callers(service, "autopilot") == ["at-the-limit", "new-1", "new-2"]
    assert history_callers(service, CONNECTOR) == []
    assert service.sweep().total == 0


def test_the_history_cutoff_is_exact():
    # newest first: every RowKey at or above the cutoff key is older than the cutoff
    cutoff = datetime(2026, 1, 1, tzinfo=UTC)
    before = history_row("u", cutoff - timedelta(microseconds=1))["RowKey"]
    at = history_row("u", cutoff)["RowKey"]
    assert before >= history_key_before(cutoff) > at


def test_a_sweep_deletes_at_most_its_limit_batched_per_partition(make_service, clock, table_counter):
    service = make_service()
    old = clock.now - timedelta(days=100)
    insert(service, [history_row("autopilot", old - timedelta(seconds=i)) for i in range(250)]
                    + [history_row(CONNECTOR, old - timedelta(seconds=i)) for i in range(30)])
    table_counter.reset()
    swept = service.sweep(limit=120)
    assert swept.total == swept.history == 120
    # three keys-only queries (asks, operations, history), then 120 rows of one partition: 100 + 20
    assert table_counter.methods.count("POST") == 2 and table_counter.count == 5, table_counter.methods
    assert len(service.store.history("autopilot", 1000)) + len(service.store.history(CONNECTOR, 1000)) == 160
    assert service.sweep().total == 160  # the default limit (200) takes the rest
    assert service.sweep().total == 0


def test_asks_of_a_pending_sync_that_is_over_go_and_those_of_the_live_one_stay(make_service, clock):
    service = make_service()
    now = clock.now
    pending_state(service, clock)
    insert(service, [
        ask_row("autopilot", LIVE, now - timedelta(days=2), "live-but-old"),  # the unit still waits for it
        ask_row("autopilot", LIVE, now, "live"),
        ask_row("autopilot", OLD, now - timedelta(days=2), "stale"),
        ask_row("autopilot", OLD, now - timedelta(hours=1), "stale-but-recent"),  # kept for a day
        ask_row(CONNECTOR, OLD, now - timedelta(days=3), "no-state-row"),
    ])
    swept = service.sweep()
    assert (swept.asks, swept.history, swept.operations) == (2, 0, 0)
    assert sorted(c for _, c in service.store.asks("autopilot", LIVE)) == ["live", "live-but-old"]
    assert [c for _, c in service.store.asks("autopilot", OLD)] == ["stale-but-recent"]
    assert service.store.asks(CONNECTOR, OLD) == []
    assert service.store.read("autopilot").pending_id == LIVE  # the state row is never touched


def test_expired_and_long_finished_operations_go_and_running_ones_stay(make_service, clock):
    service = make_service()
    ops, now = service.operations, clock.now
    service.store.read("autopilot")  # creates the table

    def create(since, deadline):
        return ops.create("autopilot", "autopilot", None, since, deadline, "")[0]

    expired = create(now - timedelta(days=3), now - timedelta(days=2))  # never polled to the end
    running = create(now - timedelta(minutes=5), now + timedelta(minutes=55))
    just_expired = create(now - timedelta(hours=3), now - timedelta(hours=2))  # within a day of its deadline
    finished_long_ago = create(now - timedelta(days=3), now + timedelta(days=30))
    ops.finish(replace(finished_long_ago, status="completed", finished_at=now - timedelta(days=2)))
    finished_lately = create(now - timedelta(hours=2), now - timedelta(hours=1))
    ops.finish(replace(finished_lately, status="completed", finished_at=now - timedelta(hours=1)))

    swept = service.sweep()
    assert (swept.operations, swept.asks, swept.history) == (2, 0, 0)
    assert ops.get(expired.id) is None and ops.get(finished_long_ago.id) is None
    assert all(ops.get(o.id) is not None for o in (running, just_expired, finished_lately))


def test_a_sweep_with_table_storage_down_is_logged_not_raised(make_service):
    assert make_service(AzureWebJobsStorage=unreachable_storage()).sweep().total == 0


def test_status_round_trips_do_not_grow_with_old_asks_or_history(make_service, clock, graph, table_counter):
    service = make_service()
    pending_state(service, clock)
    insert(service, [ask_row("autopilot", LIVE, clock.now) for _ in range(3)])
    service.status()  # warm: table and token exist

    def measure():
        table_counter.reset()
        status = service.status()
        unit = next(t for t in status["targets"] if t["target"] == "autopilot")["units"][0]
        return table_counter.count, unit["pending"]["asks"]

    baseline = measure()
    assert baseline == (2, 4)  # the state rows (one query) and the live pending sync's asks (one count)
    # 2,000 asks of a pending sync that is over, and 2,000 history rows: status reads none of them.
    insert(service, [ask_row("autopilot", OLD, clock.now - timedelta(days=2)) for _ in range(2000)]
                    + [history_row("autopilot", clock.now - timedelta(minutes=i)) for i in range(2000)])
    assert measure() == baseline
    # Even 1,500 live asks are one keys-only request (counted up to 1,000).
    insert(service, [ask_row("autopilot", LIVE, clock.now) for _ in range(1500)])
    assert measure() == (2, 1001)


def test_the_retention_setting_is_bounded():
    base = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    assert Settings.from_env(base).history_retention_days == 90
    assert Settings.from_env({**base, "HISTORY_RETENTION_DAYS": "3650"}).history_retention_days == 3650
    for bad in ("0", "3651", "a year"):
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({**base, "HISTORY_RETENTION_DAYS": bad})
        assert caught.value.problems["HISTORY_RETENTION_DAYS"]


def finished_import(service, clock, days_ago, devices=3):
    job_id = start_import(service, autopilot_devices(devices))
    job = service.imports.job(job_id)
    if days_ago is not None:
        service.imports.update(replace(job, status="completed", finished_at=clock.now - timedelta(days=days_ago)))
    return job_id


def test_import_jobs_go_a_week_after_they_finished_with_their_devices(make_service, clock):
    service = make_service()
    old, recent, running = finished_import(service, clock, 8), finished_import(service, clock, 1), finished_import(service, clock, None)
    swept = service.sweep()
    assert (swept.imports, swept.operations, swept.history) == (4, 0, 0)
    assert service.imports.job(old) is None and service.imports.devices(old) == []
    assert all(service.imports.job(j) is not None and len(service.imports.devices(j)) == 3 for j in (recent, running))


def test_an_import_job_larger_than_one_sweep_is_finished_by_the_next(make_service, clock):
    service = make_service()
    old = finished_import(service, clock, 8, devices=3)
    assert service.sweep(limit=2).imports == 2
    assert service.imports.job(old) is not None  # the job row goes last
    assert service.sweep(limit=2).imports == 2
    assert service.imports.job(old) is None
