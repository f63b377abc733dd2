"""Apple credentials and their expiry: the APNs (MDM push) certificate, the ADE (enrollment program)
tokens and the VPP tokens of a tenant, read from Graph (three reads), rated, and the thresholds at
which someone is told (shared/engine/expirywatch.py tells them, once per crossing).

- **Read**: ``GET /v1.0/deviceManagement/applePushNotificationCertificate`` (``expirationDateTime``,
  ``appleIdentifier``, ``topicIdentifier``), ``GET /beta/deviceManagement/depOnboardingSettings``
  (``tokenExpirationDateTime``, ``appleIdentifier``) and ``GET /v1.0/deviceAppManagement/vppTokens``
  (``expirationDateTime``, ``appleId``). A tenant without Apple management answers 404 for the
  certificate and empty lists for the tokens: ``notConfigured``, not an error.
- **Rated** (pure): ``unhealthy`` inside ``UNHEALTHY_DAYS`` or expired, ``warning`` inside
  TOKEN_EXPIRY_WARNING_DAYS, else ``healthy``. An expired APNs certificate is in Intune's 30-day
  grace (renewable with the same Apple ID, devices still enrolled) until ``APNS_GRACE_DAYS`` have
  passed; after that every Apple device has to enrol again.
- **Thresholds**: 30, 14, 7 and 1 days left, and expiry (0). The one to tell is the lowest that
  the days left have reached; told again only when a lower one is reached, or when the expiry
  date changes (the credential was renewed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from ..common import UpstreamError, iso, parse_graph_time

if TYPE_CHECKING:
    from ..clients import GraphClient

APNS, ADE, VPP = "apnsCertificate", "adeToken", "vppToken"
KINDS = (APNS, ADE, VPP)
APNS_PATH = "/v1.0/deviceManagement/applePushNotificationCertificate"
ADE_PATH = "/beta/deviceManagement/depOnboardingSettings"
VPP_PATH = "/v1.0/deviceAppManagement/vppTokens"
THRESHOLDS = (30, 14, 7, 1, 0)  # days left at which someone is told; 0: expired
UNHEALTHY_DAYS = 7
APNS_GRACE_DAYS = 30
NOUNS = {APNS: "Apple MDM push certificate", ADE: "Apple enrollment program (ADE) token", VPP: "Apple VPP token"}
# Where each is renewed: the APNs certificate in the Intune admin center (with the same Apple ID,
# at Apple's push certificates portal); the tokens in Apple Business (or School) Manager, then
# uploaded to Intune.
RENEW_AT = {
    APNS: "https://intune.microsoft.com/#view/Microsoft_Intune_DeviceSettings/DevicesIosMenu/~/appleEnrollment "
          "(Apple MDM Push certificate; renew at https://identity.apple.com with the same Apple ID)",
    ADE: "https://business.apple.com (download the server token), then Intune admin center > Devices > iOS/iPadOS > "
         "Enrollment > Enrollment program tokens",
    VPP: "https://business.apple.com (Apps and Books: download the content token), then Intune admin center > "
         "Tenant administration > Connectors and tokens > Apple VPP tokens",
}


@dataclass(frozen=True)
class Credential:
    """One Apple credential of a tenant."""

    kind: str
    id: str
    name: str
    apple_id: str | None
    expires_at: datetime | None


@dataclass(frozen=True)
class Assessment:
    """A credential rated at ``now``."""

    credential: Credential
    state: str  # valid, expiring, expiringSoon, inGracePeriod, expired, unknown
    rating: str  # healthy, warning, unhealthy
    days_left: float | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        c = self.credential
        return {"kind": c.kind, "id": c.id, "name": c.name, "appleId": c.apple_id, "expiresAt": iso(c.expires_at),
                "daysLeft": None if self.days_left is None else round(self.days_left, 1), "state": self.state,
                "rating": self.rating, "reason": self.reason}


@dataclass(frozen=True)
class CredentialsRead:
    """What the three reads found: the credentials, the kinds not set up, the kinds not read."""

    credentials: tuple[Credential, ...] = ()
    not_configured: tuple[str, ...] = ()
    unavailable: tuple[tuple[str, str], ...] = ()  # (kind, why)
    graph_now: datetime | None = None  # Graph's clock (its Date header) when it answered


@dataclass
class CredentialsReport:
    """A tenant's credentials at one moment: each rated, the kinds not set up or not read, and
    (the daily check) how many were told."""

    assessed: list[Assessment] = field(default_factory=list)
    not_configured: tuple[str, ...] = ()
    unavailable: tuple[tuple[str, str], ...] = ()
    told: int = 0
    checked_at: datetime | None = None

    @classmethod
    def of(cls, read: CredentialsRead, now: datetime, warning_days: int) -> CredentialsReport:
        at = checked_at(now, read.graph_now)
        return cls([assess(c, at, warning_days) for c in read.credentials], read.not_configured, read.unavailable, 0, at)

    @property
    def state(self) -> str:
        """In one word: unhealthy if any credential is; else unavailable if a read failed (what it
        did not read may be expiring); else the worst rating; notConfigured without any."""
        worst = max((a.rating for a in self.assessed), key=("healthy", "warning", "unhealthy").index, default=None)
        if worst == "unhealthy":
            return worst
        if self.unavailable:
            return "unavailable"
        return worst or "notConfigured"

    @property
    def next_expiry(self) -> Assessment | None:
        """The credential that expires next; with every one expired, the last to have expired."""
        upcoming = [a for a in self.assessed if a.days_left is not None and a.days_left > 0]
        if upcoming:
            return min(upcoming, key=lambda a: a.days_left or 0.0)
        dated = [a for a in self.assessed if a.days_left is not None]
        return max(dated, key=lambda a: a.days_left or 0.0) if dated else None

    def to_json(self) -> dict[str, Any]:
        following = self.next_expiry
        return {"state": self.state, "credentials": [a.to_json() for a in self.assessed],
                "notConfigured": list(self.not_configured),
                "unavailable": [{"kind": kind, "reason": why} for kind, why in self.unavailable],
                "nextExpiry": following.to_json() if following else None}


# --- the decisions, pure ------------------------------------------------------------------------------


CLOCK_TRUST = timedelta(minutes=5)


def checked_at(own: datetime, graph: datetime | None) -> datetime:
    """The moment the days left are counted from: our clock, or Graph's (its Date header) when
    ours is more than CLOCK_TRUST off: a clock days off would tell a threshold days early, and
    then, corrected, never tell the ones it skipped."""
    return graph if graph is not None and abs(own - graph) > CLOCK_TRUST else own


def days_left(expires_at: datetime, now: datetime) -> float:
    return (expires_at - now) / timedelta(days=1)


def assess(credential: Credential, now: datetime, warning_days: int) -> Assessment:
    """The credential's state and rating at ``now``."""
    noun, expires = NOUNS[credential.kind], credential.expires_at
    if expires is None:
        return Assessment(credential, "unknown", "warning", None, f"Graph gives no expiry date for the {noun}")
    left = days_left(expires, now)
    when = iso(expires)
    if left <= 0:
        if credential.kind == APNS and left > -APNS_GRACE_DAYS:
            return Assessment(credential, "inGracePeriod", "unhealthy", left,
                              f"the {noun} expired at {when}: renew it with the same Apple ID within "
                              f"{math.ceil(APNS_GRACE_DAYS + left)} day(s), or every Apple device must enrol again")
        return Assessment(credential, "expired", "unhealthy", left, f"the {noun} expired at {when}")
    if left <= UNHEALTHY_DAYS:
        return Assessment(credential, "expiringSoon", "unhealthy", left, f"the {noun} expires at {when}, "
                          f"within {UNHEALTHY_DAYS} days")
    if left <= warning_days:
        return Assessment(credential, "expiring", "warning", left, f"the {noun} expires at {when}, within {warning_days} days")
    return Assessment(credential, "valid", "healthy", left, f"the {noun} expires at {when}")


def threshold_reached(left: float, told: int | None) -> int | None:
    """The threshold to tell now (30, 14, 7, 1 or 0 for expired), or None: the lowest threshold
    ``left`` days have reached, if lower than the one already told (``told``) for this expiry."""
    reached = [t for t in THRESHOLDS if left <= t]
    if not reached:
        return None
    current = min(reached)
    return current if told is None or current < told else None


# --- the reads ------------------------------------------------------------------------------------------


MAX_PAGES = 5  # of tokens per kind: a tenant has a few; more pages than this is no tenant's
MAX_ITEMS = 100


class Unreadable(ValueError):
    """Graph's answer is not the shape its documentation gives: the kind is unavailable, with why."""


def read_credentials(graph: GraphClient) -> CredentialsRead:
    """The tenant's Apple credentials: three Graph reads (more only if a token list has further
    pages), each on its own: one failing, or answering nonsense, leaves the others."""
    found: list[Credential] = []
    not_configured: list[str] = []
    unavailable: list[tuple[str, str]] = []
    graph_now: datetime | None = None
    for kind, path in ((APNS, APNS_PATH), (ADE, ADE_PATH), (VPP, VPP_PATH)):
        try:
            items, date = _read_kind(graph, kind, path)
        except UpstreamError as exc:
            unavailable.append((kind, f"{exc.code}: {exc.message}"[:300]))
            continue
        except Unreadable as exc:
            unavailable.append((kind, f"Graph's answer could not be read: {exc}"[:300]))
            continue
        graph_now = graph_now or date
        if items is None:
            not_configured.append(kind)
        else:
            found += items
    return CredentialsRead(tuple(found), tuple(not_configured), tuple(unavailable), graph_now)


def _read_kind(graph: GraphClient, kind: str, path: str) -> tuple[list[Credential] | None, datetime | None]:
    """One kind's credentials (None: not set up) and Graph's clock (its Date header)."""
    response = graph.get(path)
    if response.status == 404:
        return None, response.date
    if not response.ok:
        raise Unreadable(f"Graph answered {response.status} {response.error_code or ''}".strip())
    body = response.body
    if not isinstance(body, dict):
        raise Unreadable("not a JSON object")
    if kind == APNS:
        return _apns(body), response.date
    items = _page_items(body)
    following = body.get("@odata.nextLink")
    for _ in range(MAX_PAGES - 1):
        if not isinstance(following, str) or len(items) >= MAX_ITEMS:
            break
        params = {k: v for k, v in parse_qsl(urlsplit(following).query) if k in ("$skiptoken", "$top")}
        page = graph.get(path, params=params)
        if not page.ok or not isinstance(page.body, dict):
            raise Unreadable(f"a further page answered {page.status}")
        items += _page_items(page.body)
        following = page.body.get("@odata.nextLink")
    parse = _ade_token if kind == ADE else _vpp_token
    credentials = [parse(item) for item in items[:MAX_ITEMS]]
    return credentials or None, response.date


def _apns(body: dict[str, Any]) -> list[Credential] | None:
    expires = _date(body.get("expirationDateTime"))
    if expires is None and not body.get("appleIdentifier"):
        return None  # an empty certificate object (or Graph's 0001-01-01 placeholder): push is not set up
    return [Credential(APNS, str(body.get("id") or "applePushNotificationCertificate"), str(body.get("topicIdentifier") or
                       "Apple MDM push certificate")[:200], _text(body.get("appleIdentifier")), expires)]


def _ade_token(item: dict[str, Any]) -> Credential:
    return Credential(ADE, str(item.get("id"))[:200], str(item.get("tokenName") or item.get("id"))[:200],
                      _text(item.get("appleIdentifier")), _date(item.get("tokenExpirationDateTime")))


def _vpp_token(item: dict[str, Any]) -> Credential:
    return Credential(VPP, str(item.get("id"))[:200], str(item.get("displayName") or item.get("organizationName") or
                      item.get("id"))[:200], _text(item.get("appleId")), _date(item.get("expirationDateTime")))


def _page_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    value = body.get("value")
    if not isinstance(value, list):
        raise Unreadable("no value list")
    items = [item for item in value if isinstance(item, dict)]
    if any(not item.get("id") for item in items) or len(items) != len(value):
        raise Unreadable("a token without an id")
    return items


def _date(value: Any) -> datetime | None:
    """A date Graph gives, or None: absent, unreadable, or its 0001-01-01 placeholder."""
    parsed = parse_graph_time(value)
    return parsed if parsed is not None and parsed.year > 2000 else None


def _text(value: Any) -> str | None:
    return str(value)[:200] if isinstance(value, str) and value else None
