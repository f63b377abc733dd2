"""Sync targets: each Intune sync action is a small unit behind one interface.

A target knows its Graph paths and how to find what to sync; the service owns cooldowns,
leases, history and the HTTP answer. Adding a target means a class here and an entry in
``TARGETS`` — no trigger changes.
"""
from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .errors import GraphResourceNotFound
from .graph import GraphClient, GraphResponse

AUTOPILOT_SETTINGS = "/beta/deviceManagement/windowsAutopilotSettings"
EXCHANGE_CONNECTORS = "/v1.0/deviceManagement/exchangeConnectors"
GRAPH_AUTOPILOT_WINDOW = timedelta(minutes=10)
# Graph's clock and ours may disagree a little; a sync finished this much "before" we triggered
# it still counts as ours (no earlier sync can finish that close: the cooldown is far longer).
CLOCK_SKEW = timedelta(seconds=30)


class InvalidItemId(ValueError):
    """A caller-supplied item id is not acceptable (HTTP 400)."""


class ItemNotFound(LookupError):
    """The item a caller named does not exist (HTTP 404)."""


@dataclass(frozen=True)
class Unit:
    """One thing with its own cooldown: the Autopilot service, or one Exchange connector."""

    target: str
    item_id: str | None = None
    checked: bool = False  # whether its Graph-side status was already read when it was listed

    @property
    def key(self) -> str:
        """Table partition key; only [a-z0-9-], safe in PartitionKey and logs."""
        return self.target if self.item_id is None else f"{self.target}-{self.item_id}"

    @property
    def name(self) -> str:
        return self.target if self.item_id is None else f"{self.target}/{self.item_id}"


@dataclass(frozen=True)
class Skip:
    unit: Unit
    reason: str


@dataclass(frozen=True)
class Completion:
    """Where a sync triggered at some moment stands, by Graph's own account."""

    status: str  # "running", "completed" or "failed"
    last_sync_date_time: str | None = None
    sync_status: str | None = None

    @property
    def done(self) -> bool:
        return self.status != "running"


def parse_guid(value: str) -> str:
    """Accept only a canonical GUID; returns it lower-case. Anything else never reaches a URL."""
    try:
        parsed = uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidItemId(f"{value!r} is not a GUID") from None
    canonical = str(parsed)
    if value.lower() != canonical:  # refuse braces, urn: prefixes, missing dashes
        raise InvalidItemId(f"{value!r} is not a GUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
    return canonical


class Target(ABC):
    name: str
    per_item: bool = False  # whether callers may address one item (POST /api/sync/{target}/{id})

    def __init__(self, graph: GraphClient, cooldown_seconds: int, sync_type: str | None = None):
        self.graph = graph
        self.cooldown = timedelta(seconds=cooldown_seconds)
        self.default_sync_type = sync_type

    @abstractmethod
    def units(self, item_id: str | None = None) -> list[Unit | Skip]:
        """What a sync of this target covers. For one named item, no Graph call is made here."""

    def precheck(self, unit: Unit) -> Skip | None:
        """Read the item's Graph-side status before syncing it, when listing did not."""
        return None

    @abstractmethod
    def sync(self, unit: Unit, sync_type: str | None) -> GraphResponse:
        """Send the sync action; any HTTP status comes back."""

    def cooldown_end_without_retry_after(self, now: datetime) -> datetime:
        """When Graph said 429 without Retry-After: our best estimate of the window's end."""
        return now + self.cooldown

    @abstractmethod
    def graph_status(self) -> list[dict[str, Any]]:
        """Graph's own view of each unit, for GET /api/sync/status."""

    @abstractmethod
    def completion(self, unit: Unit, since: datetime) -> Completion:
        """Whether the sync of ``unit`` triggered at ``since`` has finished (one Graph read)."""


class AutopilotTarget(Target):
    name = "autopilot"

    def units(self, item_id: str | None = None) -> list[Unit | Skip]:
        if item_id is not None:
            raise InvalidItemId("autopilot has no items: use POST /api/sync/autopilot")
        return [Unit(self.name)]

    def sync(self, unit: Unit, sync_type: str | None) -> GraphResponse:
        return self.graph.post(f"{AUTOPILOT_SETTINGS}/sync")

    def cooldown_end_without_retry_after(self, now: datetime) -> datetime:
        # "429 if called within 10 minutes of the previous sync": ask Graph when that was.
        fallback = now + self.cooldown
        try:
            settings = self.graph.get(AUTOPILOT_SETTINGS)
        except Exception:
            return fallback
        last = _parse_time((settings.body or {}).get("lastManualSyncTriggerDateTime")) if settings.ok else None
        if last is None:
            return fallback
        end = last + max(self.cooldown, GRAPH_AUTOPILOT_WINDOW)
        return end if now < end <= fallback else fallback

    def completion(self, unit: Unit, since: datetime) -> Completion:
        body = self.graph.get(AUTOPILOT_SETTINGS).raise_for_status("reading Autopilot settings").body or {}
        raw_last, status = body.get("lastSyncDateTime"), body.get("syncStatus")
        last = _parse_time(raw_last)
        if status == "inProgress" or last is None or last < since - CLOCK_SKEW:
            return Completion("running", raw_last, status)
        return Completion("failed" if status == "failed" else "completed", raw_last, status)

    def graph_status(self) -> list[dict[str, Any]]:
        body = self.graph.get(AUTOPILOT_SETTINGS).raise_for_status("reading Autopilot settings").body or {}
        return [
            {
                "target": self.name,
                "syncStatus": body.get("syncStatus"),
                "lastSyncDateTime": body.get("lastSyncDateTime"),
                "lastManualSyncTriggerDateTime": body.get("lastManualSyncTriggerDateTime"),
            }
        ]


class ExchangeTarget(Target):
    name = "exchange"
    per_item = True

    def units(self, item_id: str | None = None) -> list[Unit | Skip]:
        if item_id is not None:
            return [Unit(self.name, parse_guid(item_id))]
        return [self._unit_or_skip(c) for c in self._connectors()]

    def precheck(self, unit: Unit) -> Skip | None:
        if unit.checked:
            return None
        try:
            connector = self.graph.get(f"{EXCHANGE_CONNECTORS}/{unit.item_id}").raise_for_status(
                f"reading Exchange connector {unit.item_id}"
            ).body
        except GraphResourceNotFound:
            raise ItemNotFound(f"no Exchange connector with id {unit.item_id}") from None
        result = self._unit_or_skip(connector or {})
        return result if isinstance(result, Skip) else None

    def sync(self, unit: Unit, sync_type: str | None) -> GraphResponse:
        return self.graph.post(
            f"{EXCHANGE_CONNECTORS}/{unit.item_id}/sync", json={"syncType": sync_type or self.default_sync_type}
        )

    def completion(self, unit: Unit, since: datetime) -> Completion:
        connector = self.graph.get(f"{EXCHANGE_CONNECTORS}/{unit.item_id}").raise_for_status(
            f"reading Exchange connector {unit.item_id}"
        ).body or {}
        raw_last = connector.get("lastSyncDateTime")
        last = _parse_time(raw_last)
        if last is None or last < since - CLOCK_SKEW:
            return Completion("running", raw_last, connector.get("status"))
        return Completion("completed", raw_last, connector.get("status"))

    def graph_status(self) -> list[dict[str, Any]]:
        return [
            {
                "target": f"{self.name}/{c.get('id')}",
                "status": c.get("status"),
                "lastSyncDateTime": c.get("lastSyncDateTime"),
                "serverName": c.get("serverName"),
                "connectorServerName": c.get("connectorServerName"),
            }
            for c in self._connectors()
        ]

    def _connectors(self) -> list[dict[str, Any]]:
        body = self.graph.get(EXCHANGE_CONNECTORS).raise_for_status("listing Exchange connectors").body
        return [c for c in (body or {}).get("value", []) if isinstance(c, dict)]

    def _unit_or_skip(self, connector: dict[str, Any]) -> Unit | Skip:
        try:
            unit = Unit(self.name, parse_guid(str(connector.get("id"))), checked=True)
        except InvalidItemId:
            unit = Unit(self.name, None, checked=True)
            return Skip(unit, f"Graph listed a connector with an unexpected id {connector.get('id')!r}")
        status = connector.get("status")
        if status != "connected":
            return Skip(unit, f"connector status is {status!r}, not 'connected'")
        return unit


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


TARGETS: dict[str, type[Target]] = {t.name: t for t in (AutopilotTarget, ExchangeTarget)}
