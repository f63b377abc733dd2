"""The process's runtime: its settings, read and validated once, and its one service, built on
first use. The HTTP mapping (shared/api/routes.py) and the timer and queue handlers
(shared/runtime/handlers.py) both take them from here.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from typing import TYPE_CHECKING

from ..assembly import SyncService, build_service
from ..common import DEFAULTS, Settings, SettingsError, configuration_notices, telemetry

if TYPE_CHECKING:
    import azure.functions as func

    from ..clients import SigningKeys
    from ..tenancy import Tenancy

log = logging.getLogger(__name__)
# The Azure SDKs log every HTTP request and response at INFO (azure-core's HttpLoggingPolicy): in
# Application Insights that would be most of the traces, unsampled (host.json), and paid for.
# Their failures still reach the log as warnings and as our own errors.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)


@functools.lru_cache(maxsize=1)
def _settings_or_problems() -> Settings | SettingsError:
    try:
        return Settings.from_env(os.environ)
    except SettingsError as exc:  # kept, so that every call reports it without re-reading
        return exc


def settings() -> Settings:
    loaded = _settings_or_problems()
    if isinstance(loaded, SettingsError):
        raise loaded
    return loaded


_service_lock = threading.RLock()  # reentrant: the tenancy is built from the service


@functools.lru_cache(maxsize=1)
def _service() -> SyncService:
    return build_service(settings())


def service() -> SyncService:
    # One service per process, even when the first requests arrive together: lru_cache alone
    # would let concurrent first calls each build (and race to import) their own clients.
    with _service_lock:
        return _service()


@functools.lru_cache(maxsize=1)
def _tenancy() -> Tenancy | None:
    current = settings()
    if not current.multi_tenant_client_id:
        return None
    from ..clients import PendingQueue, TenantCredentials, make_credential, queue_client
    from ..tenancy import Tenancy

    queue = PendingQueue(lambda: queue_client(current.storage, current.tenant_queue, make_credential))
    return Tenancy(service(), TenantCredentials(current.multi_tenant_client_id, current.azure_client_id), queue)


def tenancy() -> Tenancy | None:
    """The registry and the tenants' services; None unless MULTI_TENANT_CLIENT_ID is set."""
    with _service_lock:
        return _tenancy()


@functools.lru_cache(maxsize=1)
def _signing_keys() -> SigningKeys:
    from ..clients import SigningKeys

    current = settings()
    return SigningKeys(current.authority_host, current.caller_keys_refresh_seconds)


def signing_keys() -> SigningKeys:
    """Entra's signing keys, for callers' tokens (CALLER_AUTH=entra), fetched on first use."""
    with _service_lock:
        return _signing_keys()


def http_auth_level() -> func.AuthLevel:
    """The host's check of the HTTP routes: the function key, unless callers bring Entra tokens
    (CALLER_AUTH=entra), which the app checks itself (shared/api/callerauth.py). Read when the app
    loads: a changed setting restarts it."""
    import azure.functions as func

    entra = (os.environ.get("CALLER_AUTH") or "").strip() == "entra"
    return func.AuthLevel.ANONYMOUS if entra else func.AuthLevel.FUNCTION


def check_settings_at_startup() -> None:
    """Validate once when the worker loads the app; problems are logged, and /api/health and
    every sync answer name them (the app still loads, so that health can answer)."""
    try:
        current = settings()
    except SettingsError as exc:
        log.error("invalid app settings: %s", exc)
        return
    for notice in configuration_notices(current):
        telemetry.emit("notice", logging.WARNING, code=notice.code, target=notice.target, message=notice.message)


def reload() -> None:
    """Forget the cached settings and service (for tests that change settings in-process)."""
    _settings_or_problems.cache_clear()
    _service.cache_clear()
    _tenancy.cache_clear()
    _signing_keys.cache_clear()


def binding_expression(setting: str) -> str:
    """A trigger's schedule or queue name from an app setting. The host resolves %SETTING% only
    when the setting exists; otherwise the code's default is used."""
    return f"%{setting}%" if os.environ.get(setting) else DEFAULTS[setting]
