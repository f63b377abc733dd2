"""Intune's write budget (shared/clients/budget.py): the decision, pure, then the shared row in
Azurite as several instances see it."""
from __future__ import annotations

import threading
import time

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient

from shared.clients.budget import (
    DEVICES,
    INTUNE,
    MARGIN,
    BudgetRow,
    Limits,
    LocalBudget,
    decide,
    granted_under,
    new_ticket,
    paused,
)
from shared.clients.sharedbudget import SharedBudget
from shared.common import StateStoreUnavailable

LIMITS = Limits(devices=200, intune=100, window=20.0)


# --- the decision ---------------------------------------------------------------------------------


def test_a_bulk_writer_gets_what_it_asks_while_the_window_has_room():
    grant, row = decide(BudgetRow(), LIMITS, DEVICES, 20, bulk=True, now=1000.0)
    assert grant.count == 20 and row is not None and row.grants == [(1000.0, 20)]


def test_a_grant_under_a_ticket_records_the_ticket_with_the_count_granted():
    row = BudgetRow([(1000.0, 180)])
    grant, after = decide(row, LIMITS, DEVICES, 20, bulk=True, now=1010.0, ticket="1010-ab")
    assert grant.count == 14 and after is not None and after.tickets == {"1010-ab": 14}


def test_a_claim_that_is_not_granted_records_no_ticket():
    grant, after = decide(BudgetRow([(1000.0, 194)]), LIMITS, DEVICES, 20, bulk=True, now=1010.0, ticket="1010-ab")
    assert grant.count == 0 and after is None


def test_tickets_are_forgotten_after_their_keep_and_kept_before_it():
    now = 1000.0 + LIMITS.ticket_seconds + 1
    _, after = decide(BudgetRow(tickets={"1000-aa": 20, "1100-bb": 20}), LIMITS, DEVICES, 1, bulk=True, now=now)
    assert after is not None and after.tickets == {"1100-bb": 20}


def test_a_ticket_tells_granted_from_never_granted_until_it_is_too_old_to_tell():
    ticket = new_ticket(5000.0)
    assert ticket.startswith("5000-")
    keep = LIMITS.ticket_seconds
    assert granted_under({ticket: 12}, ticket, now=5001.0, keep=keep) == 12
    assert granted_under({}, ticket, now=5001.0, keep=keep) == 0  # never granted: never sent
    assert granted_under({ticket: 12}, ticket, now=5000.0 + keep, keep=keep) is None  # cannot tell
    assert granted_under({}, "not-a-ticket", now=5001.0, keep=keep) is None


def test_the_local_budget_keeps_tickets_too():
    budget = LocalBudget(LIMITS)
    ticket = new_ticket(time.time())
    assert budget.take(DEVICES, 20, ticket=ticket).count == 20
    assert budget.granted_for(DEVICES, ticket) == 20
    assert budget.granted_for(DEVICES, new_ticket(time.time())) == 0


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


def test_another_instance_reads_what_a_ticket_was_granted(table):
    first, second = SharedBudget(table, LIMITS), SharedBudget(table, LIMITS)
    granted, refused = new_ticket(time.time()), new_ticket(time.time())
    assert first.take(DEVICES, 20, ticket=granted).count == 20
    first.pause(DEVICES, 5.0)
    assert first.take(DEVICES, 20, ticket=refused).count == 0
    assert (second.granted_for(DEVICES, granted), second.granted_for(DEVICES, refused)) == (20, 0)


def test_sync_actions_draw_on_the_reserve_without_touching_the_table(table):
    budget = SharedBudget(table, LIMITS)
    for _ in range(97):
        assert budget.take(INTUNE, 1, bulk=False).count == 1
    assert budget.take(INTUNE, 1, bulk=False).count == 0  # this process's count of the window is full
    with pytest.raises(ResourceNotFoundError):  # nothing was written: no row (not even the table)
        table.get_entity("budget", INTUNE)


def test_a_grant_back_later_than_half_its_travel_allowance_is_late():
    from shared.clients.budget import SEND_SHARE, Grant, late

    allowance = LIMITS.window * SEND_SHARE  # 1 s of 20 s
    assert not late(Grant(20, at=1000.0), LIMITS, now=1000.0 + allowance / 2 - 0.01)
    assert late(Grant(20, at=1000.0), LIMITS, now=1000.0 + allowance / 2 + 0.01)
    assert not late(Grant(20), LIMITS, now=5000.0)  # counted in this process: no table write to wait for
