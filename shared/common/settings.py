"""App settings, read once from the environment and validated as a whole.

Every problem names the setting it belongs to, so a deployment with a typo fails loudly at
start-up (and in ``GET /api/health``) instead of at 3 a.m. on the first timer tick.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .cabundle import ca_bundle_problem
from .errors import AppError
from .hosts import is_loopback, url_form_problem, valid_host
from .ids import is_guid
from .redact import redact_text, redact_url
from .timeouts import write_budget_seconds

# Each sync target with its cooldown setting, default and minimum (seconds).
TARGET_COOLDOWNS: dict[str, tuple[str, int, int]] = {
    # Graph refuses a second Autopilot sync within 10 minutes; a shorter cooldown only buys 429s.
    "autopilot": ("AUTOPILOT_COOLDOWN_SECONDS", 600, 600),
    "exchange": ("EXCHANGE_COOLDOWN_SECONDS", 600, 60),
    # Apple's enrollment program takes a manual sync at most every 15 minutes.
    "appleAde": ("APPLE_ADE_COOLDOWN_SECONDS", 900, 900),
    "vpp": ("VPP_COOLDOWN_SECONDS", 600, 60),
    "managedGooglePlay": ("MANAGED_GOOGLE_PLAY_COOLDOWN_SECONDS", 600, 60),
    "driverInventory": ("DRIVER_INVENTORY_COOLDOWN_SECONDS", 600, 60),
}

# Defaults live here only; infra/main.bicep repeats them and tests/test_infra.py checks it does.
DEFAULTS: dict[str, str] = {
    "GRAPH_BASE_URL": "https://graph.microsoft.com",
    "SYNC_TARGETS": "autopilot",
    "SYNC_SCHEDULE": "0 0 * * * *",
    "EXCHANGE_SYNC_TYPE": "deltaSync",
    **{setting: str(default) for setting, default, _ in TARGET_COOLDOWNS.values()},
    "SYNC_STATE_TABLE": "intunesync",
    "SYNC_QUEUE": "intunesync-deferred",
    "SYNC_LEASE_SECONDS": "180",
    # Kept over every window Graph imposes (Autopilot 10 min, Apple 15 min): instances' clocks differ.
    "CLOCK_SKEW_MARGIN_SECONDS": "30",
    "GRAPH_TIMEOUT_SECONDS": "30",
    "SYNC_WAIT_TIMEOUT_SECONDS": "3600",
    "SYNC_WATCH_SCHEDULE": "0 */2 * * * *",
    "NOTIFY_URL": "",
    "NOTIFY_FORMAT": "json",
    "HEALTH_WARNING_HOURS": "24",
    "HEALTH_UNHEALTHY_HOURS": "72",
    "HEALTH_THRESHOLDS": "",
    "TOKEN_EXPIRY_WARNING_DAYS": "30",
    # The daily check of every tenant's Apple credentials (shared/engine/expirywatch.py): APNs
    # certificate, ADE and VPP tokens, told at 30, 14, 7 and 1 days and at expiry.
    "CREDENTIAL_CHECK_SCHEDULE": "0 0 6 * * *",
    "TRUSTED_FORWARDED_HOSTS": "",
    "STATUS_DEADLINE_SECONDS": "20",
    "HISTORY_RETENTION_DAYS": "90",
    # Autopilot onboarding (shared/onboarding/rules.py): the job's queue, how often a job looks at
    # Graph, how long the first finished import waits for others to share its sync, and when a
    # device that never got its profile is given up.
    "IMPORT_QUEUE": "intunesync-imports",
    "IMPORT_POLL_SECONDS": "60",
    "IMPORT_SYNC_DELAY_SECONDS": "120",
    "IMPORT_WAIT_TIMEOUT_SECONDS": "14400",
    # How long a step's claim on its job lasts without renewal, and how often a working step
    # renews it: a step that dies is taken over within the claim (shared/onboarding/importclaim.py).
    "IMPORT_STEP_CLAIM_SECONDS": "60",
    "IMPORT_STEP_HEARTBEAT_SECONDS": "20",
    # Intune's write limits per app per tenant (shared/clients/budget.py): managed devices, every
    # other area this app writes, and the window they are counted over. Shared by every instance.
    "DEVICE_WRITE_LIMIT": "200",
    "INTUNE_WRITE_LIMIT": "100",
    "WRITE_LIMIT_WINDOW_SECONDS": "20",
    # Bulk device sync (on when SYNC_TARGETS names ``devices``; the timer never syncs devices):
    # its queue of job steps, the most devices one job may name, devices per step, and how
    # recent a device's last sync may be for it to be skipped (a request may say otherwise).
    "DEVICE_SYNC_QUEUE": "intunesync-devices",
    "DEVICE_SYNC_MAX_DEVICES": "50000",
    "DEVICE_SYNC_STEP_DEVICES": "200",
    "DEVICE_SYNC_SKIP_MINUTES": "60",
    # How long a device-sync step holds its job: a step that dies is taken over by its takeover
    # message once this has passed (a step stops starting new work after 20 s).
    "DEVICE_SYNC_STEP_CLAIM_SECONDS": "60",
    # Many tenants (shared/tenancy/registry.py): the multi-tenant app whose federated credential is the
    # app's identity (empty: one tenant, the app's own), and the queue of per-tenant syncs.
    "MULTI_TENANT_CLIENT_ID": "",
    "TENANT_QUEUE": "intunesync-tenants",
    # Who may call the HTTP routes (shared/api/callerauth.py): ``key`` (a function key opens every
    # route) or ``entra`` (an Entra ID access token for the API's app registration, API_CLIENT_ID,
    # with an app role per route). CALLER_TENANTS: more tenants whose users and apps may call (the
    # home tenant, AZURE_TENANT_ID, always may). An unknown signing key fetches the tenant's keys
    # again at most once per CALLER_KEYS_REFRESH_SECONDS.
    "CALLER_AUTH": "key",
    "API_CLIENT_ID": "",
    "CALLER_TENANTS": "",
    "CALLER_KEYS_REFRESH_SECONDS": "60",
}

KNOWN_TARGETS = tuple(TARGET_COOLDOWNS)
DEVICES = "devices"  # in SYNC_TARGETS: bulk device sync on (POST /api/devices/sync); never synced by the timer
SYNC_TYPES = ("deltaSync", "fullSync")
NOTIFY_FORMATS = ("json", "adaptiveCard")
CALLER_AUTH_MODES = ("key", "entra")
PUBLIC_AUTHORITY = "https://login.microsoftonline.com"
MIN_LEASE_SECONDS = 60
# A deferred sync is a queue message delayed until the cooldown ends; a queue message can be
# delayed 7 days at most, so no cooldown may be longer.
MAX_COOLDOWN_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Bounds:
    """The range of one numeric setting: [minimum, maximum] (minimum excluded when ``above``)."""

    minimum: float
    maximum: float
    unit: str
    whole: bool = True  # a whole number (seconds, days); else any finite number
    above: bool = False  # strictly more than ``minimum``
    why: str = ""  # why the maximum, shown when it is exceeded


# Every numeric setting and its bounds, in one table: a value outside (1e12, inf, nan) is refused
# by name at start-up instead of overflowing a date on the first sync.
NUMERIC_SETTINGS: dict[str, Bounds] = {
    **{
        setting: Bounds(minimum, MAX_COOLDOWN_SECONDS, "seconds", why="7 days, the longest a deferred sync can wait in the queue")
        for setting, _, minimum in TARGET_COOLDOWNS.values()
    },
    "SYNC_LEASE_SECONDS": Bounds(MIN_LEASE_SECONDS, 3600, "seconds", why="a dead instance must not block a unit for longer"),
    "CLOCK_SKEW_MARGIN_SECONDS": Bounds(1, 300, "seconds", why="half of Graph's 10-minute window; a clock further off "
                                        "than that is corrected from Graph's Date header, not by a margin"),
    "GRAPH_TIMEOUT_SECONDS": Bounds(0, 120, "seconds", whole=False, above=True),
    "SYNC_WAIT_TIMEOUT_SECONDS": Bounds(60, 86400, "seconds", why="a day; a sync still running then is stuck"),
    "HEALTH_WARNING_HOURS": Bounds(0, 8760, "hours", whole=False, above=True, why="a year"),
    "HEALTH_UNHEALTHY_HOURS": Bounds(0, 8760, "hours", whole=False, above=True, why="a year"),
    "HEALTH_THRESHOLDS": Bounds(0, 8760, "hours", whole=False, above=True, why="a year"),
    "TOKEN_EXPIRY_WARNING_DAYS": Bounds(1, 365, "days", why="Apple and VPP tokens last a year"),
    "STATUS_DEADLINE_SECONDS": Bounds(1, 200, "seconds", why="inside the 230 s the platform allows an HTTP call"),
    "HISTORY_RETENTION_DAYS": Bounds(1, 3650, "days"),
    "IMPORT_POLL_SECONDS": Bounds(1, 3600, "seconds"),
    "IMPORT_SYNC_DELAY_SECONDS": Bounds(0, 600, "seconds", why="one Autopilot sync window"),
    "IMPORT_WAIT_TIMEOUT_SECONDS": Bounds(600, 7 * 86400, "seconds", why="7 days, the longest a queue message can wait"),
    "IMPORT_STEP_CLAIM_SECONDS": Bounds(2, 300, "seconds", why="the function timeout: a dead step must not hold its job longer"),
    "IMPORT_STEP_HEARTBEAT_SECONDS": Bounds(1, 150, "seconds", why="half the longest claim"),
    "DEVICE_WRITE_LIMIT": Bounds(1, 400, "writes", why="Intune's limit for all apps of a tenant"),
    "INTUNE_WRITE_LIMIT": Bounds(1, 200, "writes", why="Intune's limit for all apps of a tenant"),
    "WRITE_LIMIT_WINDOW_SECONDS": Bounds(1, 300, "seconds"),
    "DEVICE_SYNC_MAX_DEVICES": Bounds(1, 200_000, "devices"),
    "DEVICE_SYNC_STEP_DEVICES": Bounds(20, 1000, "devices", why="a step must end well inside the function timeout"),
    "DEVICE_SYNC_SKIP_MINUTES": Bounds(0, 7 * 24 * 60, "minutes"),
    "DEVICE_SYNC_STEP_CLAIM_SECONDS": Bounds(5, 300, "seconds", why="the function timeout: a dead step must not hold its job longer"),
    "CALLER_KEYS_REFRESH_SECONDS": Bounds(1, 3600, "seconds", why="an hour: Entra rolls its keys over with notice, "
                                          "but a key used before it is published must not be refused for longer"),
}

def number(name: str, raw: str, problems: dict[str, str]) -> float | None:
    """``raw`` checked against NUMERIC_SETTINGS[name]; None (and a problem named ``name``) if bad."""
    bounds = NUMERIC_SETTINGS[name]
    lowest = f"more than {bounds.minimum:g}" if bounds.above else f"at least {bounds.minimum:g}"
    kind = "whole number" if bounds.whole else "number"
    # Plain ASCII decimals only: int() and float() would also take "1_000", other scripts'
    # digits, "inf" and "nan".
    pattern = r"[+-]?[0-9]{1,18}" if bounds.whole else r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?"
    try:
        if not re.fullmatch(pattern, raw.strip()):
            raise ValueError
        value = int(raw) if bounds.whole else float(raw)
    except ValueError:
        problems[name] = f"must be a {kind} of {bounds.unit} from {bounds.minimum:g} to {bounds.maximum:g}, got {raw!r}"
        return None
    if not math.isfinite(value):
        problems[name] = f"must be a finite number of {bounds.unit}, got {raw!r}"
    elif value < bounds.minimum or (bounds.above and value == bounds.minimum):
        problems[name] = f"must be {lowest}, got {value:g}"
    elif value > bounds.maximum:
        why = f" ({bounds.why})" if bounds.why else ""
        problems[name] = f"must be at most {bounds.maximum:g} {bounds.unit}{why}, got {raw.strip()}"
    else:
        return value
    return None


# Graph calls under a lease end this long before it does: time to record the outcome (with retries).
LEASE_MARGIN_SECONDS = 20

# The well-known Azurite account (public, documented by Microsoft); azure-data-tables does not
# understand the "UseDevelopmentStorage=true" shorthand that the Functions host accepts.
AZURITE_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)

_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_NCRONTAB_FIELD = re.compile(r"^[0-9A-Za-z*/,\-]+$")


class SettingsError(AppError, ValueError):
    """One or more settings are invalid; ``problems`` maps setting name to what is wrong. Every
    sync answer reports them (503) until the settings are fixed."""

    code = "SettingsInvalid"
    http_status = 503

    def __init__(self, problems: Mapping[str, str]):
        # Shown by /api/health and logged: a URL a problem names loses its credentials.
        self.problems = {name: redact_text(why) for name, why in problems.items()}
        listed = "; ".join(f"{name}: {why}" for name, why in self.problems.items())
        super().__init__(listed)
        self.message = f"the app's settings are invalid: {listed}"


@dataclass(frozen=True)
class StorageSettings:
    """Where the state table lives: the same settings the Functions host uses for its storage."""

    connection_string: str | None = None
    table_service_uri: str | None = None
    queue_service_uri: str | None = None
    use_managed_identity: bool = False
    client_id: str | None = None

    @property
    def description(self) -> str:
        """Where state goes, without any secret (for logs and /api/health)."""
        if self.connection_string:
            match = re.search(r"TableEndpoint=([^;]+)", self.connection_string)
            account = re.search(r"AccountName=([^;]+)", self.connection_string)
            if match:
                return redact_url(match.group(1))
            return f"account {account.group(1)}" if account else "connection string"
        return redact_url(str(self.table_service_uri))


@dataclass(frozen=True)
class Settings:
    graph_base_url: str
    storage: StorageSettings
    azure_client_id: str | None = None
    sync_targets: tuple[str, ...] = ("autopilot",)
    sync_schedule: str = DEFAULTS["SYNC_SCHEDULE"]
    exchange_sync_type: str = DEFAULTS["EXCHANGE_SYNC_TYPE"]
    cooldowns: tuple[tuple[str, int], ...] = tuple((t, d) for t, (_, d, _) in TARGET_COOLDOWNS.items())
    state_table: str = DEFAULTS["SYNC_STATE_TABLE"]
    queue_name: str = DEFAULTS["SYNC_QUEUE"]
    lease_seconds: int = int(DEFAULTS["SYNC_LEASE_SECONDS"])
    # Added to every Graph-imposed window (shared/engine/decisions.py closed_for): clocks of instances differ.
    clock_skew_margin_seconds: int = int(DEFAULTS["CLOCK_SKEW_MARGIN_SECONDS"])
    graph_timeout_seconds: float = float(DEFAULTS["GRAPH_TIMEOUT_SECONDS"])
    wait_timeout_seconds: int = int(DEFAULTS["SYNC_WAIT_TIMEOUT_SECONDS"])
    watch_schedule: str = DEFAULTS["SYNC_WATCH_SCHEDULE"]
    credential_check_schedule: str = DEFAULTS["CREDENTIAL_CHECK_SCHEDULE"]
    notify_urls: tuple[str, ...] = ()
    notify_format: str = DEFAULTS["NOTIFY_FORMAT"]
    # (target or "*", warning hours, unhealthy hours): when a target's last good sync is too old
    health_thresholds: tuple[tuple[str, float, float], ...] = (("*", 24.0, 72.0),)
    token_expiry_warning_days: int = int(DEFAULTS["TOKEN_EXPIRY_WARNING_DAYS"])
    # Hosts ("host" or "host:port", lower-case) a trusted front end may send as X-Forwarded-Host
    trusted_forwarded_hosts: tuple[str, ...] = ()
    # GET /api/sync/status answers within this, marking Graph reads still running unavailable.
    status_deadline_seconds: int = int(DEFAULTS["STATUS_DEADLINE_SECONDS"])
    # History rows older than this are deleted by the sweep (shared/assembly/retention.py).
    history_retention_days: int = int(DEFAULTS["HISTORY_RETENTION_DAYS"])
    import_queue: str = DEFAULTS["IMPORT_QUEUE"]
    import_poll_seconds: int = int(DEFAULTS["IMPORT_POLL_SECONDS"])
    import_sync_delay_seconds: int = int(DEFAULTS["IMPORT_SYNC_DELAY_SECONDS"])
    import_wait_timeout_seconds: int = int(DEFAULTS["IMPORT_WAIT_TIMEOUT_SECONDS"])
    import_step_claim_seconds: int = int(DEFAULTS["IMPORT_STEP_CLAIM_SECONDS"])
    import_step_heartbeat_seconds: int = int(DEFAULTS["IMPORT_STEP_HEARTBEAT_SECONDS"])
    device_write_limit: int = int(DEFAULTS["DEVICE_WRITE_LIMIT"])
    intune_write_limit: int = int(DEFAULTS["INTUNE_WRITE_LIMIT"])
    write_limit_window_seconds: float = float(DEFAULTS["WRITE_LIMIT_WINDOW_SECONDS"])
    device_sync: bool = False  # SYNC_TARGETS names ``devices`` (not a sync target: a capability)
    device_sync_queue: str = DEFAULTS["DEVICE_SYNC_QUEUE"]
    device_sync_max_devices: int = int(DEFAULTS["DEVICE_SYNC_MAX_DEVICES"])
    device_sync_step_devices: int = int(DEFAULTS["DEVICE_SYNC_STEP_DEVICES"])
    device_sync_skip_minutes: int = int(DEFAULTS["DEVICE_SYNC_SKIP_MINUTES"])
    device_sync_step_claim_seconds: int = int(DEFAULTS["DEVICE_SYNC_STEP_CLAIM_SECONDS"])
    multi_tenant_client_id: str | None = None
    tenant_queue: str = DEFAULTS["TENANT_QUEUE"]
    caller_auth: str = DEFAULTS["CALLER_AUTH"]
    api_client_id: str | None = None
    caller_tenants: tuple[str, ...] = ()
    caller_keys_refresh_seconds: int = int(DEFAULTS["CALLER_KEYS_REFRESH_SECONDS"])
    # Platform and identity settings (not in DEFAULTS): the home tenant and Entra's authority host.
    tenant_id: str | None = None
    authority_host: str = PUBLIC_AUTHORITY
    # Set by the platform, not by operators: the app's public host name and its name.
    website_hostname: str | None = None
    site_name: str = "intune-sync"

    def cooldown_seconds(self, target: str) -> int:
        return dict(self.cooldowns)[target]

    def thresholds(self, target: str) -> tuple[float, float]:
        """(warning, unhealthy) hours for ``target``: its own override, else the global ones."""
        table = {name: (warn, bad) for name, warn, bad in self.health_thresholds}
        return table.get(target, table["*"])

    @property
    def graph_scope(self) -> str:
        # Graph's resource is the base URL itself, in every national cloud.
        return f"{self.graph_base_url}/.default"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read every setting from ``env`` through its row of SETTINGS; all problems at once."""
        problems: dict[str, str] = {}

        def get(name: str) -> str:
            value = env.get(name)
            return DEFAULTS[name] if value is None or value.strip() == "" else value.strip()

        values: dict[str, Any] = {field: read(name, get(name), problems) for name, (field, read) in SETTINGS.items()}
        values["cooldowns"] = tuple((target, _whole(name, get(name), problems)) for target, (name, _, _) in TARGET_COOLDOWNS.items())
        values["health_thresholds"] = _health_thresholds(get, problems)
        values["device_sync"] = DEVICES in (t.strip() for t in get("SYNC_TARGETS").split(","))
        values["azure_client_id"] = _client_id(env, problems)
        values["tenant_id"] = _optional_guid("AZURE_TENANT_ID", (env.get("AZURE_TENANT_ID") or "").strip(), problems)
        values["authority_host"] = _authority_host(env, problems)
        values["storage"] = _storage_settings(env, problems)
        values["website_hostname"] = (env.get("WEBSITE_HOSTNAME") or "").strip() or None
        values["site_name"] = (env.get("WEBSITE_SITE_NAME") or "").strip() or "intune-sync"
        ca_problem = ca_bundle_problem(env)
        if ca_problem:
            problems[ca_problem[0]] = ca_problem[1]
        _check_lease(values["lease_seconds"], values["graph_timeout_seconds"], problems)
        _check_multi_tenant(values, problems)
        _check_import_claim(values, problems)
        _check_queues(values, problems)
        _check_callers(values, problems)
        if problems:
            raise SettingsError(problems)
        return cls(**values)


# --- how each setting is read: (setting name, raw value, problems) -> value ---------------------
# A reader records what is wrong under the setting's name and returns a stand-in, so that every
# problem is reported at once.


def _whole(name: str, raw: str, problems: dict[str, str]) -> int:
    """A whole number within its NUMERIC_SETTINGS bounds (the default stands in when it is not)."""
    value = number(name, raw, problems)
    return int(DEFAULTS[name]) if value is None else int(value)


def _seconds(name: str, raw: str, problems: dict[str, str]) -> float:
    value = number(name, raw, problems)
    return float(DEFAULTS[name]) if value is None else value


def _base_url(name: str, raw: str, problems: dict[str, str]) -> str:
    url = raw.rstrip("/")
    why = _check_base_url(url)
    if why:
        problems[name] = why
    return url


def _targets(name: str, raw: str, problems: dict[str, str]) -> tuple[str, ...]:
    """The sync targets named; ``devices`` (bulk device sync, a capability) is read by ``_device_sync``."""
    targets = tuple(dict.fromkeys(t.strip() for t in raw.split(",") if t.strip() and t.strip() != DEVICES))
    unknown = [t for t in targets if t not in KNOWN_TARGETS]
    if not targets:
        problems[name] = f"must name at least one of {', '.join(KNOWN_TARGETS)}"
    elif unknown:
        problems[name] = f"unknown target(s) {', '.join(unknown)}; known: {', '.join(KNOWN_TARGETS)}"
    return targets


def _ncrontab(name: str, raw: str, problems: dict[str, str]) -> str:
    fields = raw.split()
    if len(fields) != 6 or not all(_NCRONTAB_FIELD.match(f) for f in fields):
        problems[name] = (f"must be an NCRONTAB expression with six fields "
                          f"(second minute hour day month weekday), got {raw!r}")
    return raw


def _one_of(choices: tuple[str, ...]) -> Callable[[str, str, dict[str, str]], str]:
    def read(name: str, raw: str, problems: dict[str, str]) -> str:
        if raw not in choices:
            problems[name] = f"must be one of {', '.join(choices)}, got {raw!r}"
        return raw

    return read


def _notify_urls(name: str, raw: str, problems: dict[str, str]) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    for url in urls:
        # Named only as redact_url shows it: Power Automate trigger URLs carry their signature in
        # the query, and a URL may carry a password.
        why = url_form_problem(url)
        if why:
            problems[name] = f"every URL {why}, got {redact_url(url)!r}"
            continue
        parts = urlsplit(url)
        if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname))):
            problems[name] = f"every URL must be https (http only on loopback), got {redact_url(url)!r}"
    return urls


def _hosts(name: str, raw: str, problems: dict[str, str]) -> tuple[str, ...]:
    hosts = tuple(dict.fromkeys(h.strip().lower() for h in raw.split(",") if h.strip()))
    if any(not valid_host(h) for h in hosts):
        problems[name] = ("must be a comma list of host names (or host:port), such as sync.contoso.com; got "
                          + ", ".join(repr(h) for h in hosts if not valid_host(h)))
    return hosts


def _queue_name(name: str, raw: str, problems: dict[str, str]) -> str:
    if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", raw):
        problems[name] = f"must be 3-63 lower-case letters, digits and single hyphens, got {raw!r}"
    return raw


def _optional_guid(name: str, raw: str, problems: dict[str, str]) -> str | None:
    if not raw:
        return None
    if not is_guid(raw):
        problems[name] = f"must be an application (client) id, a GUID, got {raw!r}"
    return raw.lower()


def _guids(name: str, raw: str, problems: dict[str, str]) -> tuple[str, ...]:
    ids = tuple(dict.fromkeys(i.strip().lower() for i in raw.split(",") if i.strip()))
    bad = [i for i in ids if not is_guid(i)]
    if bad:
        problems[name] = "must be a comma list of tenant ids (GUIDs); not GUIDs: " + ", ".join(repr(i[:40]) for i in bad[:5])
    return ids


def _table_name(name: str, raw: str, problems: dict[str, str]) -> str:
    if not _TABLE_NAME.match(raw):
        problems[name] = f"must be 3-63 letters or digits starting with a letter, got {raw!r}"
    return raw


# Every setting with a field of its own: name -> (Settings field, reader). Defaults are DEFAULTS,
# numeric bounds NUMERIC_SETTINGS; cooldowns, health thresholds, storage and the identity's client
# id are read by the functions named in from_env.
SETTINGS: dict[str, tuple[str, Callable[[str, str, dict[str, str]], Any]]] = {
    "GRAPH_BASE_URL": ("graph_base_url", _base_url),
    "SYNC_TARGETS": ("sync_targets", _targets),
    "SYNC_SCHEDULE": ("sync_schedule", _ncrontab),
    "SYNC_WATCH_SCHEDULE": ("watch_schedule", _ncrontab),
    "CREDENTIAL_CHECK_SCHEDULE": ("credential_check_schedule", _ncrontab),
    "EXCHANGE_SYNC_TYPE": ("exchange_sync_type", _one_of(SYNC_TYPES)),
    "NOTIFY_URL": ("notify_urls", _notify_urls),
    "NOTIFY_FORMAT": ("notify_format", _one_of(NOTIFY_FORMATS)),
    "TRUSTED_FORWARDED_HOSTS": ("trusted_forwarded_hosts", _hosts),
    "SYNC_STATE_TABLE": ("state_table", _table_name),
    "SYNC_QUEUE": ("queue_name", _queue_name),
    "SYNC_LEASE_SECONDS": ("lease_seconds", _whole),
    "CLOCK_SKEW_MARGIN_SECONDS": ("clock_skew_margin_seconds", _whole),
    "GRAPH_TIMEOUT_SECONDS": ("graph_timeout_seconds", _seconds),
    "SYNC_WAIT_TIMEOUT_SECONDS": ("wait_timeout_seconds", _whole),
    "TOKEN_EXPIRY_WARNING_DAYS": ("token_expiry_warning_days", _whole),
    # Well inside the 230 s that the platform allows an HTTP call.
    "STATUS_DEADLINE_SECONDS": ("status_deadline_seconds", _whole),
    "HISTORY_RETENTION_DAYS": ("history_retention_days", _whole),
    "IMPORT_QUEUE": ("import_queue", _queue_name),
    "IMPORT_POLL_SECONDS": ("import_poll_seconds", _whole),
    "IMPORT_SYNC_DELAY_SECONDS": ("import_sync_delay_seconds", _whole),
    "IMPORT_WAIT_TIMEOUT_SECONDS": ("import_wait_timeout_seconds", _whole),
    "IMPORT_STEP_CLAIM_SECONDS": ("import_step_claim_seconds", _whole),
    "IMPORT_STEP_HEARTBEAT_SECONDS": ("import_step_heartbeat_seconds", _whole),
    "DEVICE_WRITE_LIMIT": ("device_write_limit", _whole),
    "INTUNE_WRITE_LIMIT": ("intune_write_limit", _whole),
    "WRITE_LIMIT_WINDOW_SECONDS": ("write_limit_window_seconds", _seconds),
    "DEVICE_SYNC_QUEUE": ("device_sync_queue", _queue_name),
    "DEVICE_SYNC_MAX_DEVICES": ("device_sync_max_devices", _whole),
    "DEVICE_SYNC_STEP_DEVICES": ("device_sync_step_devices", _whole),
    "DEVICE_SYNC_SKIP_MINUTES": ("device_sync_skip_minutes", _whole),
    "DEVICE_SYNC_STEP_CLAIM_SECONDS": ("device_sync_step_claim_seconds", _whole),
    "MULTI_TENANT_CLIENT_ID": ("multi_tenant_client_id", _optional_guid),
    "TENANT_QUEUE": ("tenant_queue", _queue_name),
    "CALLER_AUTH": ("caller_auth", _one_of(CALLER_AUTH_MODES)),
    "API_CLIENT_ID": ("api_client_id", _optional_guid),
    "CALLER_TENANTS": ("caller_tenants", _guids),
    "CALLER_KEYS_REFRESH_SECONDS": ("caller_keys_refresh_seconds", _whole),
}


def _check_lease(lease_seconds: int, timeout: float, problems: dict[str, str]) -> None:
    """Every Graph call under a lease ends LEASE_MARGIN_SECONDS before the lease does (a
    deadline). The lease must leave room for the slowest single path: a POST answered 401, a new
    token from a slow identity endpoint, and the resend."""
    needed = math.ceil(write_budget_seconds(timeout)) + LEASE_MARGIN_SECONDS
    if lease_seconds < needed and "SYNC_LEASE_SECONDS" not in problems:
        problems["SYNC_LEASE_SECONDS"] = (
            f"must be at least {needed} with GRAPH_TIMEOUT_SECONDS={timeout:g} (a sync POST answered "
            f"401, a new token and the resend, plus {LEASE_MARGIN_SECONDS} s to record the outcome), got {lease_seconds}"
        )


def _check_import_claim(values: dict[str, Any], problems: dict[str, str]) -> None:
    """A step renews its claim at least twice per claim: one late renewal must not lose it."""
    claim, beat = values["import_step_claim_seconds"], values["import_step_heartbeat_seconds"]
    if beat * 2 > claim and not {"IMPORT_STEP_CLAIM_SECONDS", "IMPORT_STEP_HEARTBEAT_SECONDS"} & set(problems):
        problems["IMPORT_STEP_HEARTBEAT_SECONDS"] = f"must be at most half of IMPORT_STEP_CLAIM_SECONDS ({claim}), got {beat}"


def _check_multi_tenant(values: dict[str, Any], problems: dict[str, str]) -> None:
    """Many tenants need a user-assigned identity (only those can be a federated credential) and
    room in the table name for each tenant's own table (the name plus 32 hex digits, at most 63)."""
    if not values.get("multi_tenant_client_id"):
        return
    if not values.get("azure_client_id"):
        problems["AZURE_CLIENT_ID"] = ("is required with MULTI_TENANT_CLIENT_ID: the client id of the user-assigned "
                                       "identity the multi-tenant app trusts (a system-assigned one cannot be a federated credential)")
    if len(values.get("state_table") or "") > 31:
        problems["SYNC_STATE_TABLE"] = "must be at most 31 characters with MULTI_TENANT_CLIENT_ID (each tenant's table adds 32)"


# The app's queues, by setting and Settings field. Each trigger acknowledges a message it cannot
# read (shared/runtime/handlers.py), so two settings naming one queue would have one trigger drop the
# other's messages; and the host parks a failed message in ``<queue>-poison``, so no queue may be
# named after another's poison queue either. The tenant queue's trigger listens even with
# MULTI_TENANT_CLIENT_ID empty (function_app.py), so all three are checked.
QUEUE_SETTINGS = {"SYNC_QUEUE": "queue_name", "IMPORT_QUEUE": "import_queue", "TENANT_QUEUE": "tenant_queue",
                  "DEVICE_SYNC_QUEUE": "device_sync_queue"}


def queue_clashes(names: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(setting, other setting, why) for each pair of queue settings naming one queue, or one
    naming the other's poison queue. Compared lower-case: Azure's queue names are."""
    found = []
    listed = [(setting, name.lower()) for setting, name in names.items()]
    for index, (setting, name) in enumerate(listed):
        for other, other_name in listed[index + 1:]:
            if name == other_name:
                found.append((setting, other, f"both name the queue {name!r}"))
            elif f"{name}-poison" == other_name or f"{other_name}-poison" == name:
                found.append((setting, other, f"{name!r} and {other_name!r}: one is the other's poison queue"))
    return found


def _check_queues(values: dict[str, Any], problems: dict[str, str]) -> None:
    """Each queue setting must name a queue of its own (see QUEUE_SETTINGS); both settings are named."""
    names = {setting: values[field] for setting, field in QUEUE_SETTINGS.items() if setting not in problems}
    for setting, other, why in queue_clashes(names):
        for name, partner in ((setting, other), (other, setting)):
            said = f"must name a different queue than {partner} ({why}): each queue's trigger would take the other's messages"
            problems[name] = f"{problems[name]}; {said}" if name in problems else said


def _check_callers(values: dict[str, Any], problems: dict[str, str]) -> None:
    """``entra`` needs the API's app registration and the home tenant: without them no token can be
    told valid, and every route would refuse every caller."""
    if values.get("caller_auth") != "entra":
        return
    if not values.get("api_client_id") and "API_CLIENT_ID" not in problems:
        problems["API_CLIENT_ID"] = "is required with CALLER_AUTH=entra: the application (client) id of the API's app registration"
    if not values.get("tenant_id") and "AZURE_TENANT_ID" not in problems:
        problems["AZURE_TENANT_ID"] = "is required with CALLER_AUTH=entra: the tenant whose users and apps call the API"


def _authority_host(env: Mapping[str, str], problems: dict[str, str]) -> str:
    """Entra's authority host (azure-identity's AZURE_AUTHORITY_HOST): https, a bare origin."""
    raw = (env.get("AZURE_AUTHORITY_HOST") or "").strip().rstrip("/") or PUBLIC_AUTHORITY
    why = url_form_problem(raw)
    parts = urlsplit(raw) if not why else None
    if why or parts is None or parts.scheme != "https" or not parts.hostname or parts.path or parts.query:
        problems["AZURE_AUTHORITY_HOST"] = f"must be an https origin such as {PUBLIC_AUTHORITY}, got {redact_url(raw)!r}"
    return raw


def _client_id(env: Mapping[str, str], problems: dict[str, str]) -> str | None:
    client_id = (env.get("AZURE_CLIENT_ID") or "").strip() or None
    if client_id and not is_guid(client_id):
        problems["AZURE_CLIENT_ID"] = "must be the client id (a GUID) of a user-assigned managed identity"
    return client_id


def _health_thresholds(get: Callable[[str], str], problems: dict[str, str]) -> tuple[tuple[str, float, float], ...]:
    """Global warning/unhealthy hours, and per-target overrides ``vpp=12:48,appleAde=24:96``."""

    def hours(name: str, raw: str) -> float:
        value = number(name, raw, problems)  # positive, finite, at most a year (NUMERIC_SETTINGS)
        return 1.0 if value is None else value

    warn, bad = hours("HEALTH_WARNING_HOURS", get("HEALTH_WARNING_HOURS")), hours("HEALTH_UNHEALTHY_HOURS", get("HEALTH_UNHEALTHY_HOURS"))
    if warn >= bad and not {"HEALTH_WARNING_HOURS", "HEALTH_UNHEALTHY_HOURS"} & set(problems):
        problems["HEALTH_WARNING_HOURS"] = "must be less than HEALTH_UNHEALTHY_HOURS"
    table = [("*", warn, bad)]
    for entry in filter(None, (e.strip() for e in get("HEALTH_THRESHOLDS").split(","))):
        target, _, pair = entry.partition("=")
        w, _, b = pair.partition(":")
        if target.strip() not in KNOWN_TARGETS or not b:
            problems["HEALTH_THRESHOLDS"] = f"entries look like vpp=12:48 (target=warning:unhealthy hours), got {entry!r}"
            continue
        before = problems.get("HEALTH_THRESHOLDS")
        tw, tb = hours("HEALTH_THRESHOLDS", w), hours("HEALTH_THRESHOLDS", b)
        if tw >= tb and problems.get("HEALTH_THRESHOLDS") == before:
            problems["HEALTH_THRESHOLDS"] = f"warning must be less than unhealthy in {entry!r}"
        table.append((target.strip(), tw, tb))
    return tuple(table)


def _check_base_url(url: str) -> str | None:
    shown = redact_url(url)
    if "@" in url:
        return f"must not carry a user name or password (Graph takes the app's token), got {shown!r}"
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed [ of an IPv6 address
        return f"must be an absolute URL such as {DEFAULTS['GRAPH_BASE_URL']}, got {shown!r}"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"must be an absolute URL such as {DEFAULTS['GRAPH_BASE_URL']}, got {shown!r}"
    why = url_form_problem(url)
    if why:
        return f"{why}, got {shown!r}"
    if parts.path or parts.query or parts.fragment:
        return f"must be the bare host (no path such as /v1.0, no query), got {shown!r}"
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return "must use https (plain http is allowed only for a local emulator on loopback)"
    return None


def _storage_settings(env: Mapping[str, str], problems: dict[str, str]) -> StorageSettings:
    conn = (env.get("AzureWebJobsStorage") or "").strip()
    if conn:
        if conn.replace(" ", "").lower().startswith("usedevelopmentstorage=true"):
            return StorageSettings(connection_string=AZURITE_CONNECTION_STRING)
        if "AccountName=" not in conn and "TableEndpoint=" not in conn:
            problems["AzureWebJobsStorage"] = "is not a storage connection string (no AccountName or TableEndpoint)"
        return StorageSettings(connection_string=conn)

    uri = (env.get("AzureWebJobsStorage__tableServiceUri") or "").strip().rstrip("/")
    queue_uri = (env.get("AzureWebJobsStorage__queueServiceUri") or "").strip().rstrip("/")
    account = (env.get("AzureWebJobsStorage__accountName") or "").strip()
    if not uri and account:
        uri = f"https://{account}.table.core.windows.net"
    if not queue_uri and account:
        queue_uri = f"https://{account}.queue.core.windows.net"
    if not queue_uri and ".table." in uri:
        queue_uri = uri.replace(".table.", ".queue.", 1)
    if not uri:
        problems["AzureWebJobsStorage"] = (
            "is not set: give a connection string (UseDevelopmentStorage=true for Azurite) or the "
            "identity-based AzureWebJobsStorage__accountName / AzureWebJobsStorage__tableServiceUri"
        )
        return StorageSettings()
    if urlsplit(uri).scheme != "https" and not is_loopback(urlsplit(uri).hostname or ""):
        problems["AzureWebJobsStorage__tableServiceUri"] = f"must be an https URL, got {redact_url(uri)!r}"

    credential = (env.get("AzureWebJobsStorage__credential") or "").strip().lower()
    client_id = (env.get("AzureWebJobsStorage__clientId") or "").strip() or None
    if credential and credential != "managedidentity":
        problems["AzureWebJobsStorage__credential"] = f"must be 'managedidentity' when set, got {credential!r}"
    if client_id and not is_guid(client_id):
        problems["AzureWebJobsStorage__clientId"] = "must be the client id (a GUID) of a user-assigned managed identity"
    return StorageSettings(
        table_service_uri=uri,
        queue_service_uri=queue_uri or None,
        use_managed_identity=credential == "managedidentity",
        client_id=client_id,
    )
