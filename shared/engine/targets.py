"""Sync targets: each Intune sync action is a small unit behind one interface.

A target knows its Graph paths and how to find what to sync; the service owns cooldowns,
leases, history and the HTTP answer. Adding a target means a class here and an entry in
``TARGETS`` — no trigger changes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..clients import GraphClient, GraphResponse
from ..common import (
    Clock,
    GraphResourceNotFound,
    InvalidItemId,
    ItemNotFound,
    UnknownTarget,
    UpstreamError,
    parse_graph_time,
    parse_guid,
    utcnow,
)

if TYPE_CHECKING:
    from .state import UnitState
from ..common import TARGET_ROLES

AUTOPILOT_SETTINGS = "/beta/deviceManagement/windowsAutopilotSettings"
EXCHANGE_CONNECTORS = "/v1.0/deviceManagement/exchangeConnectors"
DEP_ONBOARDING_SETTINGS = "/beta/deviceManagement/depOnboardingSettings"
VPP_TOKENS = "/v1.0/deviceAppManagement/vppTokens"
MANAGED_GOOGLE_PLAY = "/beta/deviceManagement/androidManagedStoreAccountEnterpriseSettings"
DRIVER_UPDATE_PROFILES = "/beta/deviceManagement/windowsDriverUpdateProfiles"
CONNECTOR_STATUS = "/beta/deviceManagement/connectorStatus"
GRAPH_AUTOPILOT_WINDOW = timedelta(minutes=10)
APPLE_SYNC_WINDOW = timedelta(minutes=15)  # Apple takes one enrollment program sync per token per 15 minutes
# Graph's clock and ours may disagree a little; a sync finished this much "before" we triggered
# it still counts as ours (no earlier sync can finish that close: the cooldown is far longer).
CLOCK_SKEW = timedelta(seconds=30)


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

    @classmethod
    def of_state(cls, state: UnitState) -> Unit:
        """The unit a state row is about."""
        return cls(state.target or state.key, state.item_id)


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


@dataclass(frozen=True)
class GraphView:
    """Graph's own account of one unit, with what its health is rated from."""

    target: str
    fields: dict[str, Any]
    last_success: datetime | None  # the last sync Graph reports as good
    failure: str | None = None  # why the unit is broken (last sync failed, token not valid...)
    expires: datetime | None = None  # when the unit's token expires, if it has one


class Target(ABC):
    name: str
    per_item: bool = False  # whether callers may address one item (POST /api/sync/{target}/{id})
    takes_sync_type: bool = False  # whether the action has a syncType (Exchange only)
    # The window Graph (or Apple behind it) imposes between two syncs, answering 429 inside it;
    # None where none is documented. The unit stays closed for it plus CLOCK_SKEW_MARGIN_SECONDS.
    graph_window: timedelta | None = None

    def __init__(self, graph: GraphClient, cooldown_seconds: int, sync_type: str | None = None, clock: Clock = utcnow):
        self.graph = graph
        self.cooldown = timedelta(seconds=cooldown_seconds)
        self.default_sync_type = sync_type
        self.clock = clock

    @property
    def roles(self) -> tuple[str, ...]:
        """The Graph application roles this target needs (named in a 403)."""
        return TARGET_ROLES[self.name]

    def read(self, path: str, what: str) -> dict[str, Any]:
        return _object(self.graph.get(path).raise_for_status(what, self.roles).body)

    def units(self, item_id: str | None = None) -> list[Unit | Skip]:
        """What a sync of this target covers. For one named item, no Graph call is made here.

        This default is for a tenant-wide target (one unit, no items); ListedTarget overrides it."""
        if item_id is not None:
            raise InvalidItemId(f"{self.name} has no items: use POST /api/sync/{self.name}")
        return [Unit(self.name)]

    def precheck(self, unit: Unit) -> Skip | None:
        """Read the item's Graph-side status before syncing it, when listing did not."""
        return None

    @abstractmethod
    def sync(self, unit: Unit, sync_type: str | None, deadline: float | None = None) -> GraphResponse:
        """Send the sync action, ending before ``deadline`` (monotonic); any HTTP status comes back."""

    def cooldown_end_without_retry_after(self, now: datetime, closed: timedelta, margin: timedelta) -> datetime:
        """When Graph said 429 without Retry-After: our best estimate of the window's end, at most
        ``closed`` (how long a sync started now would close the unit) from now."""
        return now + closed

    @abstractmethod
    def graph_status(self) -> list[GraphView]:
        """Graph's own view of each unit, for GET /api/sync/status."""

    @abstractmethod
    def completion(self, unit: Unit, since: datetime) -> Completion:
        """Whether the sync of ``unit`` triggered at ``since`` has finished (one Graph read)."""


class AutopilotTarget(Target):
    name = "autopilot"
    graph_window = GRAPH_AUTOPILOT_WINDOW

    def sync(self, unit: Unit, sync_type: str | None, deadline: float | None = None) -> GraphResponse:
        return self.graph.post(f"{AUTOPILOT_SETTINGS}/sync", deadline=deadline)

    def cooldown_end_without_retry_after(self, now: datetime, closed: timedelta, margin: timedelta) -> datetime:
        # "429 if called within 10 minutes of the previous sync": ask Graph when that was. Its
        # time is on Graph's clock: ``margin`` covers an instance whose clock runs ahead of it.
        fallback = now + closed
        try:
            settings = self.graph.get(AUTOPILOT_SETTINGS)
        except UpstreamError:
            return fallback
        last = parse_graph_time(_object(settings.body).get("lastManualSyncTriggerDateTime")) if settings.ok else None
        if last is None:
            return fallback
        end = last + max(self.cooldown, GRAPH_AUTOPILOT_WINDOW + margin)
        return end if now < end <= fallback else fallback

    def completion(self, unit: Unit, since: datetime) -> Completion:
        body = self.read(AUTOPILOT_SETTINGS, "reading Autopilot settings")
        raw_last, status = body.get("lastSyncDateTime"), body.get("syncStatus")
        last = parse_graph_time(raw_last)
        if status == "inProgress" or last is None or last < since - CLOCK_SKEW:
            return Completion("running", raw_last, status)
        return Completion("failed" if status == "failed" else "completed", raw_last, status)

    def graph_status(self) -> list[GraphView]:
        body = self.read(AUTOPILOT_SETTINGS, "reading Autopilot settings")
        fields = _pick(body, "syncStatus", "lastSyncDateTime", "lastManualSyncTriggerDateTime")
        failed = body.get("syncStatus") == "failed"
        return [GraphView(self.name, fields, parse_graph_time(body.get("lastSyncDateTime")), "the last sync failed" if failed else None)]


class ManagedGooglePlayTarget(Target):
    """Managed Google Play app sync: one per tenant, only when the account is bound."""

    name = "managedGooglePlay"

    def precheck(self, unit: Unit) -> Skip | None:
        settings = self.read(MANAGED_GOOGLE_PLAY, "reading Managed Google Play settings")
        bind = settings.get("bindStatus")
        return None if bind in ("bound", "boundAndValidated") else Skip(unit, f"Managed Google Play is not bound (bindStatus {bind!r})")

    def sync(self, unit: Unit, sync_type: str | None, deadline: float | None = None) -> GraphResponse:
        return self.graph.post(f"{MANAGED_GOOGLE_PLAY}/syncApps", deadline=deadline)

    def completion(self, unit: Unit, since: datetime) -> Completion:
        settings = self.read(MANAGED_GOOGLE_PLAY, "reading Managed Google Play settings")
        raw_last, status = settings.get("lastAppSyncDateTime"), settings.get("lastAppSyncStatus")
        last = parse_graph_time(raw_last)
        if last is None or last < since - CLOCK_SKEW:
            return Completion("running", raw_last, status)
        return Completion("completed" if status == "success" else "failed", raw_last, status)

    def graph_status(self) -> list[GraphView]:
        settings = self.read(MANAGED_GOOGLE_PLAY, "reading Managed Google Play settings")
        bind, status = settings.get("bindStatus"), settings.get("lastAppSyncStatus")
        failure = None
        if bind not in ("bound", "boundAndValidated"):
            failure = f"not bound (bindStatus {bind!r})"
        elif status not in (None, "none", "success"):
            failure = f"the last app sync failed ({status})"
        last = parse_graph_time(settings.get("lastAppSyncDateTime")) if status == "success" else None
        return [GraphView(self.name, _pick(settings, "bindStatus", "lastAppSyncDateTime", "lastAppSyncStatus"), last, failure)]


class ListedTarget(Target):
    """A target with many items in one Graph collection, each synced by a bound action."""

    per_item = True
    collection: str  # the Graph collection path
    action: str  # the bound sync action
    noun: str  # what one item is called, for messages

    def sync_body(self, sync_type: str | None) -> dict[str, Any] | None:
        return None

    def skip_reason(self, item: dict[str, Any]) -> str | None:
        """Why an item must not be synced now (e.g. not connected, token expired); None to sync."""
        return None

    @abstractmethod
    def view(self, item: dict[str, Any]) -> GraphView:
        """Graph's account of one item."""

    @abstractmethod
    def completion_of(self, item: dict[str, Any], since: datetime) -> Completion:
        """Whether the item's sync triggered at ``since`` has finished."""

    def units(self, item_id: str | None = None) -> list[Unit | Skip]:
        if item_id is not None:
            return [Unit(self.name, parse_guid(item_id))]
        return [self._unit_or_skip(item) for item in self._items()]

    def precheck(self, unit: Unit) -> Skip | None:
        if unit.checked:
            return None
        result = self._unit_or_skip(self._item(unit))
        return result if isinstance(result, Skip) else None

    def sync(self, unit: Unit, sync_type: str | None, deadline: float | None = None) -> GraphResponse:
        return self.graph.post(f"{self.collection}/{unit.item_id}/{self.action}", json=self.sync_body(sync_type),
                               deadline=deadline)

    def completion(self, unit: Unit, since: datetime) -> Completion:
        return self.completion_of(self._item(unit), since)

    def graph_status(self) -> list[GraphView]:
        return [self.view(item) for item in self._items()]

    def item_name(self, item: dict[str, Any]) -> str:
        return f"{self.name}/{item.get('id')}"

    def _items(self) -> list[dict[str, Any]]:
        body = self.read(self.collection, f"listing {self.noun}s")
        items = body.get("value")
        return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []

    def _item(self, unit: Unit) -> dict[str, Any]:
        try:
            return self.read(f"{self.collection}/{unit.item_id}", f"reading {self.noun} {unit.item_id}")
        except GraphResourceNotFound:
            raise ItemNotFound(f"no {self.noun} with id {unit.item_id}") from None

    def _unit_or_skip(self, item: dict[str, Any]) -> Unit | Skip:
        try:
            unit = Unit(self.name, parse_guid(str(item.get("id"))), checked=True)
        except InvalidItemId:
            return Skip(Unit(self.name, None, checked=True), f"Graph listed a {self.noun} with an unexpected id {item.get('id')!r}")
        reason = self.skip_reason(item)
        return Skip(unit, reason) if reason else unit


class ExchangeTarget(ListedTarget):
    name = "exchange"
    takes_sync_type = True
    collection, action, noun = EXCHANGE_CONNECTORS, "sync", "Exchange connector"

    def sync_body(self, sync_type: str | None) -> dict[str, Any]:
        return {"syncType": sync_type or self.default_sync_type}

    def skip_reason(self, item: dict[str, Any]) -> str | None:
        status = item.get("status")
        return None if status == "connected" else f"connector status is {status!r}, not 'connected'"

    def view(self, item: dict[str, Any]) -> GraphView:
        return GraphView(
            self.item_name(item),
            _pick(item, "status", "lastSyncDateTime", "serverName", "connectorServerName"),
            parse_graph_time(item.get("lastSyncDateTime")),
            self.skip_reason(item),
        )

    def completion_of(self, item: dict[str, Any], since: datetime) -> Completion:
        raw_last = item.get("lastSyncDateTime")
        last = parse_graph_time(raw_last)
        if last is None or last < since - CLOCK_SKEW:
            return Completion("running", raw_last, item.get("status"))
        return Completion("completed", raw_last, item.get("status"))


class AppleAdeTarget(ListedTarget):
    """Apple Automated Device Enrollment (DEP) tokens; an expired token is skipped."""

    name = "appleAde"
    collection, action, noun = DEP_ONBOARDING_SETTINGS, "syncWithAppleDeviceEnrollmentProgram", "Apple enrollment token"
    graph_window = APPLE_SYNC_WINDOW

    def skip_reason(self, item: dict[str, Any]) -> str | None:
        expires = parse_graph_time(item.get("tokenExpirationDateTime"))
        if expires is not None and expires <= self.clock():
            return f"the token expired at {item.get('tokenExpirationDateTime')}; renew it in Apple Business Manager"
        return None

    def view(self, item: dict[str, Any]) -> GraphView:
        fields = _pick(item, "tokenName", "appleIdentifier", "lastSuccessfulSyncDateTime", "lastSyncTriggeredDateTime",
                       "lastSyncErrorCode", "tokenExpirationDateTime")
        last = parse_graph_time(item.get("lastSuccessfulSyncDateTime"))
        triggered = parse_graph_time(item.get("lastSyncTriggeredDateTime"))
        failure = None
        if item.get("lastSyncErrorCode") and triggered and (last is None or triggered > last):
            failure = f"the last sync failed with error {item.get('lastSyncErrorCode')}"
        return GraphView(self.item_name(item), fields, last, failure or self.skip_reason(item),
                         parse_graph_time(item.get("tokenExpirationDateTime")))

    def completion_of(self, item: dict[str, Any], since: datetime) -> Completion:
        raw_last = item.get("lastSuccessfulSyncDateTime")
        last, triggered = parse_graph_time(raw_last), parse_graph_time(item.get("lastSyncTriggeredDateTime"))
        code = item.get("lastSyncErrorCode")
        if last is not None and last >= since - CLOCK_SKEW:
            return Completion("completed", raw_last, "success")
        if code and triggered is not None and triggered >= since - CLOCK_SKEW:
            return Completion("failed", raw_last, f"error {code}")
        return Completion("running", raw_last, None)


class VppTarget(ListedTarget):
    """Apple Volume Purchase Program tokens; only valid tokens are synced (answers 200)."""

    name = "vpp"
    collection, action, noun = VPP_TOKENS, "syncLicenses", "VPP token"

    def skip_reason(self, item: dict[str, Any]) -> str | None:
        state = item.get("state")
        return None if state == "valid" else f"token state is {state!r}, not 'valid'"

    def view(self, item: dict[str, Any]) -> GraphView:
        fields = _pick(item, "organizationName", "state", "lastSyncDateTime", "lastSyncStatus", "expirationDateTime")
        status = item.get("lastSyncStatus")
        last = parse_graph_time(item.get("lastSyncDateTime")) if status != "failed" else None
        failure = "the last sync failed" if status == "failed" else self.skip_reason(item)
        return GraphView(self.item_name(item), fields, last, failure, parse_graph_time(item.get("expirationDateTime")))

    def completion_of(self, item: dict[str, Any], since: datetime) -> Completion:
        raw_last, status = item.get("lastSyncDateTime"), item.get("lastSyncStatus")
        last = parse_graph_time(raw_last)
        if status == "inProgress" or last is None or last < since - CLOCK_SKEW:
            return Completion("running", raw_last, status)
        return Completion("failed" if status == "failed" else "completed", raw_last, status)


class DriverInventoryTarget(ListedTarget):
    """Windows driver update profiles: refresh the driver inventory of each."""

    name = "driverInventory"
    collection, action, noun = DRIVER_UPDATE_PROFILES, "syncInventory", "Windows driver update profile"

    def view(self, item: dict[str, Any]) -> GraphView:
        sync = _object(item.get("inventorySyncStatus"))
        fields = {"displayName": item.get("displayName"), "driverInventorySyncState": sync.get("driverInventorySyncState"),
                  "lastSuccessfulSyncDateTime": sync.get("lastSuccessfulSyncDateTime")}
        failed = sync.get("driverInventorySyncState") == "failure"
        return GraphView(self.item_name(item), fields, parse_graph_time(sync.get("lastSuccessfulSyncDateTime")),
                         "the last inventory sync failed" if failed else None)

    def completion_of(self, item: dict[str, Any], since: datetime) -> Completion:
        sync = _object(item.get("inventorySyncStatus"))
        raw_last, state = sync.get("lastSuccessfulSyncDateTime"), sync.get("driverInventorySyncState")
        last = parse_graph_time(raw_last)
        if last is not None and last >= since - CLOCK_SKEW:
            return Completion("completed", raw_last, state)
        if state == "failure":
            return Completion("failed", raw_last, state)
        return Completion("running", raw_last, state)


def read_connector_status(graph: GraphClient) -> list[dict[str, Any]] | None:
    """Intune's own health of its connectors (beta); None where the tenant or API has none."""
    try:
        response = graph.get(CONNECTOR_STATUS)
    except UpstreamError:
        return None
    if not response.ok or not isinstance(response.body, dict):
        return None
    value = response.body.get("value")
    return [c for c in value if isinstance(c, dict)] if isinstance(value, list) else None


def _pick(item: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: item.get(name) for name in names}


def _object(value: Any) -> dict[str, Any]:
    """A JSON object from Graph, or an empty one: a list, string or null where an object belongs
    is read as "nothing known", never as a crash."""
    return value if isinstance(value, dict) else {}




TARGETS: dict[str, type[Target]] = {
    t.name: t
    for t in (AutopilotTarget, ExchangeTarget, AppleAdeTarget, VppTarget, ManagedGooglePlayTarget, DriverInventoryTarget)
}


class Targets(dict[str, "Target"]):
    """A service's enabled targets by name (SYNC_TARGETS, in its order)."""

    def named(self, name: str) -> Target:
        try:
            return self[name]
        except KeyError:
            raise UnknownTarget(f"unknown or disabled target {name!r}; enabled: {', '.join(self)}") from None
