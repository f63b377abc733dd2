"""The local host's timer schedules (emulators/ncrontab.py): the next firing of an NCRONTAB
expression, as the Functions host computes it (six fields, seconds first, UTC)."""
from datetime import UTC, datetime

import pytest

from emulators.ncrontab import Schedule

NOW = datetime(2026, 11, 25, 22, 59, 30, tzinfo=UTC)  # a Wednesday


@pytest.mark.parametrize("expression, expected", [
    ("0 0 * * * *", datetime(2026, 11, 25, 23, 0, 0, tzinfo=UTC)),  # the sync timer's default: hourly
    ("0 */2 * * * *", datetime(2026, 11, 25, 23, 0, 0, tzinfo=UTC)),  # the watcher's default
    ("*/10 * * * * *", datetime(2026, 11, 25, 22, 59, 40, tzinfo=UTC)),
    ("0 30 9 * * MON-FRI", datetime(2026, 11, 26, 9, 30, 0, tzinfo=UTC)),
    ("0 0 0 1 JAN *", datetime(2027, 1, 1, tzinfo=UTC)),
    ("15,45 59 22 * * *", datetime(2026, 11, 25, 22, 59, 45, tzinfo=UTC)),
    ("0 0 12 * * SUN", datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)),
])
def test_the_next_firing_is_the_first_time_the_schedule_names_after_now(expression, expected):
    assert Schedule(expression).next_after(NOW) == expected


def test_a_firing_time_itself_is_not_the_next_firing():
    assert Schedule("0 0 * * * *").next_after(datetime(2026, 11, 25, 23, 0, tzinfo=UTC)) == datetime(2026, 11, 26, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("expression", ["* * * * *", "60 * * * * *", "0 0 25 * * *", "0 0 * * * FUNDAY", "0 */0 * * * *"])
def test_an_expression_the_host_would_refuse_raises(expression):
    with pytest.raises(ValueError):
        Schedule(expression)
