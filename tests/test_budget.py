"""Intune's write budget (shared/clients/budget.py): the decision, pure, then the shared row in
Azurite as several instances see it."""
from __future__ import annotations

import threading
import time

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient

from shared.clients.budget import DEVICES, INTUNE, MARGIN, BudgetRow, Limits, decide, paused
from shared.clients.sharedbudget import SharedBudget
from shared.common import StateStoreUnavailable

LIMITS = Limits(devices=200, intune=100, window=20.0)


# --- the decision ---------------------------------------------------------------------------------


def test_a_bulk_writer_gets_what_it_asks_while_the_window_has_room():
    grant, row = decide(BudgetRow(), LIMITS, DEVICES, 20, bulk=True, now=1000.0)
    assert grant.count == 20 and row is not None and row.grants == [(1000.0, 20)]


def test_grants_stop_at_the_limit_less_the_margin():
    row = BudgetRow([(1000.0 + i, 20) for i in range(9)])  # 180 granted
    grant, after = decide(row, LIMITS, DEVICES, 20, bulk=True, now=1010.0)
    assert grant.count == int(200 * (1 - MARGIN)) - 180 == 14 and after is not None


def test_a_full_window_answers_how_long_to_wait_and_writes_nothing():
    row = BudgetRow([(1000.0, 100), (1005.0, 94)])
    grant, after = decide(row, LIMITS, DEVICES, 20, bulk=True, now=1010.0)
    assert grant.count == 0 and after is None
    assert grant.wait_seconds == pytest.approx(1000.0 + LIMITS.lookback - 1010.0)


def test_a_grant_counts_for_the_window_and_the_time_to_send_it():
    row = BudgetRow([(1000.0, 194)])
    assert decide(row, LIMITS, DEVICES, 1, bulk=True, now=1000.0 + 20.4)[0].count == 0  # past 20 s, still counted
    assert decide(row, LIMITS, DEVICES, 1, bulk=True, now=1000.0 + LIMITS.lookback + 0.01)[0].count == 1


def test_bulk_writers_leave_the_reserve_to_sync_actions():
    row = BudgetRow([(1000.0, 87)])  # intune: 97 may be granted, 10 of them only to sync actions
    assert decide(row, LIMITS, INTUNE, 20, bulk=True, now=1001.0)[0].count == 0
    assert decide(row, LIMITS, INTUNE, 20, bulk=False, now=1001.0)[0].count == 10


def test_a_pause_grants_nothing_until_it_ends():
    row = paused(BudgetRow(), 7.0, now=1000.0, window=20.0)
    grant, after = decide(row, LIMITS, DEVICES, 20, bulk=True, now=1003.0)
    assert (grant.count, grant.wait_seconds, after) == (0, pytest.approx(4.0), None)
    assert decide(row, LIMITS, DEVICES, 20, bulk=True, now=1007.5)[0].count == 20


def test_repeated_429s_lower_the_rate_and_a_quiet_spell_restores_it():
    row = paused(paused(paused(BudgetRow(), 1, 1000.0, 20), 1, 1005.0, 20), 1, 1010.0, 20)  # three strikes
    assert row.strikes == 3
    lowered = decide(row, LIMITS, DEVICES, 500, bulk=True, now=1012.0)[0].count
    assert lowered == int(200 * (1 - MARGIN) * 0.8 ** 3) == 99
    assert decide(row, LIMITS, DEVICES, 500, bulk=True, now=1010.0 + 41)[0].count == 194


# --- shared by instances, in Table Storage -----------------------------------------------------------


@pytest.fixture
def table(azurite, table_name):
    client = TableClient.from_connection_string(azurite.connection_string, table_name)
    yield client
    client.close()


def test_instances_never_grant_more_than_the_limit_together(table):
    """Four instances, each with four threads claiming blocks as fast as they can: over any
    lookback, the grants in the row add up to no more than the limit less the margin."""
    limits = Limits(devices=60, intune=100, window=2.0)
    decided = threading.local()  # the time each thread's last claim was decided at, as the row holds it

    def clock() -> float:
        decided.at = time.time()
        return decided.at

    instances = [SharedBudget(table, limits, clock) for _ in range(4)]
    granted: list[tuple[float, int]] = []
    lock = threading.Lock()
    stop = time.monotonic() + 5

    def claim(budget: SharedBudget) -> None:
        while time.monotonic() < stop:
            try:
                grant = budget.take(DEVICES, 7)
            except StateStoreUnavailable:  # the row kept changing under heavy contention: a step's host retries
                continue
            if grant.count:
                with lock:
                    granted.append((decided.at, grant.count))
            else:
                time.sleep(min(grant.wait_seconds, 0.2))

    threads = [threading.Thread(target=claim, args=(b,)) for b in instances for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cap = int(60 * (1 - MARGIN))
    worst = max(sum(n for at, n in granted if start <= at < start + limits.lookback) for start, _ in granted)
    assert worst <= cap
    assert sum(n for _, n in granted) >= cap * 2  # and they kept granting: 5 s is over two lookbacks


def test_a_pause_written_by_one_instance_holds_the_others(table):
    first, second = SharedBudget(table, LIMITS), SharedBudget(table, LIMITS)
    first.pause(DEVICES, 3.0)
    grant = second.take(DEVICES, 20)
    assert grant.count == 0 and 2.0 < grant.wait_seconds <= 3.0
    assert second.take(INTUNE, 20).count == 20  # another area is not held


def test_sync_actions_draw_on_the_reserve_without_touching_the_table(table):
    budget = SharedBudget(table, LIMITS)
    for _ in range(97):
        assert budget.take(INTUNE, 1, bulk=False).count == 1
    assert budget.take(INTUNE, 1, bulk=False).count == 0  # this process's count of the window is full
    with pytest.raises(ResourceNotFoundError):  # nothing was written: no row (not even the table)
        table.get_entity("budget", INTUNE)
