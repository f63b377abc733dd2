"""The next time an NCRONTAB schedule fires, for the local host's timer triggers.

The Functions host's six fields: second minute hour day month day-of-week, each ``*``, a number,
a range ``a-b``, a step ``*/n`` or ``a-b/n``, or a list of those; months and days of the week may be
named (``JAN``, ``MON``). Times are UTC, as the host's are unless WEBSITE_TIME_ZONE is set. Written
by hand because it is 50 lines of test tooling; the libraries for it (croniter) know five fields
plus an optional sixth with a different meaning.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

_NAMES = {
    4: {m: i for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)},
    5: {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))},
}
_BOUNDS = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


def _number(text: str, field: int) -> int | None:
    return int(text) if text.isdigit() else _NAMES.get(field, {}).get(text.upper())


def _values(spec: str, field: int) -> frozenset[int]:
    low, high = _BOUNDS[field]
    found: set[int] = set()
    for part in spec.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        first: int | None
        last: int | None
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first_text, last_text = span.split("-", 1)
            first, last = _number(first_text, field), _number(last_text, field)
        else:
            first = _number(span, field)
            last = high if step_text else first
        if first is None or last is None or not (low <= first <= high and low <= last <= high) or step < 1:
            raise ValueError(f"not an NCRONTAB field: {spec!r}")
        found.update(range(first, last + 1, step))
    return frozenset(found)


class Schedule:
    def __init__(self, expression: str):
        fields = expression.split()
        if len(fields) != 6:
            raise ValueError(f"an NCRONTAB expression has six fields: {expression!r}")
        self.seconds, self.minutes, self.hours, self.days, self.months, self.weekdays = (
            _values(spec, i) for i, spec in enumerate(fields))
        self.any_day, self.any_weekday = fields[3] == "*", fields[5] == "*"

    def _day_matches(self, when: datetime) -> bool:
        day, weekday = when.day in self.days, (when.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:  # cron: both restricted means either may match
            return day and weekday
        return day or weekday

    def next_after(self, when: datetime) -> datetime:
        """The first firing strictly after ``when`` (within a year)."""
        minute = when.astimezone(UTC).replace(second=0, microsecond=0)
        for _ in range(366 * 24 * 60):
            if minute.month in self.months and self._day_matches(minute) and minute.hour in self.hours \
                    and minute.minute in self.minutes:
                for second in sorted(self.seconds):
                    candidate = minute.replace(second=second)
                    if candidate > when:
                        return candidate
            minute += timedelta(minutes=1)
        raise ValueError("the schedule does not fire within a year")
