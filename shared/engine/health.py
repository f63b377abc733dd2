"""Health ratings from Graph's own account of each unit: is it synced recently enough?

Rules (thresholds are settings): unhealthy if the last sync failed, the unit is broken (token
expired, connector disconnected), it never synced, or its last good sync is older than the
unhealthy threshold; warning if older than the warning threshold or its token expires within
the warning window; healthy otherwise. "Older than" is strict: exactly at a threshold still
counts as within it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ..common import iso
from .targets import GraphView

RANK = {"healthy": 0, "warning": 1, "unhealthy": 2}


@dataclass(frozen=True)
class Rating:
    rating: str
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"rating": self.rating, "reasons": list(self.reasons)}


def rate(view: GraphView, now: datetime, warning_hours: float, unhealthy_hours: float, expiry_warning_days: int) -> Rating:
    bad: list[str] = []
    warn: list[str] = []
    if view.failure:
        bad.append(view.failure)
    if view.expires is not None:
        if view.expires <= now:
            bad.append(f"token expired at {iso(view.expires)}")
        elif view.expires - now <= timedelta(days=expiry_warning_days):
            warn.append(f"token expires at {iso(view.expires)}, within {expiry_warning_days} days")
    if view.last_success is None:
        bad.append("Graph reports no successful sync")
    else:
        age = now - view.last_success
        if age > timedelta(hours=unhealthy_hours):
            bad.append(f"last good sync {iso(view.last_success)} is older than {unhealthy_hours:g} h")
        elif age > timedelta(hours=warning_hours):
            warn.append(f"last good sync {iso(view.last_success)} is older than {warning_hours:g} h")
    if bad:
        return Rating("unhealthy", tuple(bad + warn))
    if warn:
        return Rating("warning", tuple(warn))
    return Rating("healthy")


def worst(ratings: list[str]) -> str:
    return max(ratings, key=RANK.__getitem__, default="healthy")
