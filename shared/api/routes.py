"""HTTP mapping: validate what callers send, call the service, shape the answer.

Bad input is refused here with a 4xx JSON error before anything reaches the service, so a
caller can never make us call Graph with a path piece of its choosing.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import SplitResult, urlencode, urlsplit

import azure.functions as func

from ..assembly import SyncService
from ..common import (
    SYNC_TYPES,
    AppError,
    InvalidItemId,
    Outcome,
    SettingsError,
    SyncRequest,
    SyncResult,
    Trigger,
    configuration_notices,
    host_name,
    is_loopback,
    iso,
    nesting_exceeds,
    parse_guid,
    valid_host,
)
from ..runtime import service, settings, signing_keys, tenancy
from .callerauth import (
    ANY_ROLE,
    DEVICES_IMPORT,
    DEVICES_SYNC,
    STATUS_READ,
    SYNC_RUN,
    TENANTS_MANAGE,
    Caller,
    bearer_token,
    key_caller,
    may_operate,
    require_operator,
    require_role,
    validate,
)

if TYPE_CHECKING:  # onboarding and many tenants are imported on their first request, not by a sync's cold start
    from ..engine import HistoryRow
    from ..onboarding import ImportRequest
    from ..tenancy import Tenancy, Tenant

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4096
MAX_JSON_DEPTH = 32  # the only body is {"syncType": ...}: depth 1
POLL_SECONDS = 30  # Retry-After for "sync and wait" polls; an Autopilot sync takes minutes
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_STATUS_BY_OUTCOME = {
    Outcome.STARTED: 202,
    Outcome.COOLDOWN: 429,
    Outcome.IN_PROGRESS: 409,
    Outcome.SKIPPED: 200,
    Outcome.SCHEDULED: 202,
}


class ApiError(AppError):
    """Bad input, refused before anything reaches the service (a 4xx of its own code)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message, headers=headers)
        self.http_status, self.code = status, code


# --- responses ---------------------------------------------------------------------------


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body),
        status_code=status,
        mimetype="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, details: dict[str, Any] | None = None,
) -> func.HttpResponse:
    return json_response({"error": {"code": code, "message": message, **(details or {})}}, status, headers)


def result_response(results: list[SyncResult], single: bool) -> func.HttpResponse:
    if not single:
        return json_response({"results": [r.to_json() for r in results]}, 200)
    result = results[0]
    status = _STATUS_BY_OUTCOME.get(result.outcome) or result.failure_status or 502
    headers = {}
    if result.outcome in (Outcome.COOLDOWN, Outcome.IN_PROGRESS) and result.retry_after_seconds:
        headers["Retry-After"] = str(result.retry_after_seconds)
    return json_response(result.to_json(), status, headers)


Action = Callable[[func.HttpRequest, Caller], func.HttpResponse]
# An action of a route that knows no caller at all (the web console's files and sign-in settings,
# shared/api/console.py): nothing is authenticated, no state is read.
OpenAction = Callable[[func.HttpRequest], func.HttpResponse]
_A = TypeVar("_A")
ANONYMOUS = Caller("anonymous", "anonymous")


def handle(req: func.HttpRequest, method: str, action: Action) -> func.HttpResponse:
    """Run one route: method check, the caller (and its role), then the action; every failure
    becomes a JSON answer."""
    return handle_methods(req, {method: action})


def handle_methods(req: func.HttpRequest, actions: dict[str, Action]) -> func.HttpResponse:
    """A route with an action per method (the registry's PUT, GET and DELETE)."""
    return _answer(req, actions, lambda action: action(req, authenticate(req, ROLE_OF[action])))


def handle_open(req: func.HttpRequest, actions: dict[str, OpenAction]) -> func.HttpResponse:
    """A route that knows no caller (shared/api/console.py): the Host, the method and the error
    model as on every route; nothing authenticated."""
    return _answer(req, actions, lambda action: action(req))


def _answer(req: func.HttpRequest, actions: dict[str, _A], run: Callable[[_A], func.HttpResponse]) -> func.HttpResponse:
    try:
        _request_url(req)  # a Host that cannot be parsed is a 400 on every route, as Kestrel answers
        action = actions.get(req.method.upper())
        if action is None:
            allowed = ", ".join(actions)
            return error_response(405, "MethodNotAllowed", f"use {' or '.join(actions)} for this route", {"Allow": allowed})
        return run(action)
    except AppError as exc:  # the one error model (shared/common/errors.py)
        return error_response(exc.http_status, exc.code, exc.message, exc.headers, exc.details)
    except Exception:  # a bug: log it with its trace, answer without leaking internals
        # The path only: the query may hold an operation token or a function key.
        log.exception("unhandled error in %s %s", req.method, _path_for_log(req.url))
        return error_response(500, "InternalError", "unexpected error; see the function's logs")


def _request_url(req: func.HttpRequest) -> SplitResult:
    """``req.url`` split; a 400 unless the request's Host header and the URL's host are each a bare
    ``host[:port]`` (DNS name, IPv4 or [IPv6], a port in digits; hosts.valid_host) or empty.
    The Host header is checked itself: the URL is built from it, so ``Host: host/path`` (or
    ``host?x``, ``user@host``) makes a URL whose host looks fine and whose path or query carries
    the rest into every absolute URL built from it. ``urlsplit`` raises on an unbalanced ``[``."""
    invalid = ApiError(400, "InvalidHost", "the request's Host header is not a valid host[:port]")
    try:
        parts = urlsplit(str(req.url))
    except ValueError:
        raise invalid from None
    for host in (req.headers.get("host"), parts.netloc):
        if host and not valid_host(host):
            raise invalid
    return parts


def _path_for_log(url: str) -> str:
    """The URL's path, never an exception (this runs in the error path)."""
    try:
        return urlsplit(url).path
    except ValueError:
        return "(unparseable URL)"


# --- actions -----------------------------------------------------------------------------


def sync(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    return _sync(req, service(), caller)


def _sync(req: func.HttpRequest, svc: SyncService, caller: Caller) -> func.HttpResponse:
    target = req.route_params.get("target", "")
    item_id = req.route_params.get("itemId")
    kind = svc.target(target)  # UnknownTarget -> 404 before the body is read
    per_item = kind.per_item
    wait = _flag(req, "wait")
    if wait and per_item and item_id is None:
        path = _request_url(req).path.rstrip("/")
        raise ApiError(400, "WaitNeedsOneUnit", f"wait=true follows one sync: name one item (POST {path}/{{id}})")
    sync_type = _read_body(req, allow_sync_type=kind.takes_sync_type)
    request = SyncRequest(target=target, item_id=item_id, sync_type=sync_type, trigger=Trigger.HTTP,
                          caller=caller.label, claimed_caller=caller.claimed, defer=_flag(req, "defer"))
    if wait:
        _public_origin(req)  # no valid host for the poll URL: refused before anything starts
        result, operation, token = svc.sync_and_follow(request)
        if operation is None:
            return result_response([result], single=True)
        location = _operation_url(req, operation.id, token or "")
        return json_response(result.to_json(), 202, {"Location": location, "Retry-After": str(POLL_SECONDS)})
    results = svc.sync(request)
    # One unit answers with its own status; a fan-out answers 200 with every unit's result,
    # unless the fan-out itself failed (e.g. listing the connectors), which answers as one.
    single = item_id is not None or not per_item or [r.target for r in results] == [target]
    return result_response(results, single)


def status(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    return json_response(service().status())


def me(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    """Who the app takes the caller for, and the app roles it holds (a key holder: every role)."""
    return json_response({"caller": caller.label, "kind": caller.kind, "roles": list(caller.roles)})


HISTORY_TOP, MAX_HISTORY_TOP = 50, 200


def history(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    """The newest recorded attempts of the home tenant, every unit, newest first (``top``, 1-200)."""
    top = _history_top(req)
    return json_response({"top": top, "history": [_history_json(row) for row in service().history(top)]})


def _history_top(req: func.HttpRequest) -> int:
    raw = req.params.get("top")
    if raw is None:
        return HISTORY_TOP
    if not raw.isascii() or not raw.isdigit() or len(raw) > 3 or not 1 <= int(raw) <= MAX_HISTORY_TOP:
        raise ApiError(400, "InvalidQuery", f"top must be a whole number from 1 to {MAX_HISTORY_TOP}")
    return int(raw)


def _history_json(row: HistoryRow) -> dict[str, Any]:
    attempt = row.attempt
    return {
        "target": row.target, "itemId": row.item_id,
        "unit": row.target if row.item_id is None else f"{row.target}/{row.item_id}",
        "outcome": attempt.outcome, "trigger": attempt.trigger, "caller": attempt.caller,
        "claimedCaller": attempt.claimed_caller, "syncType": attempt.sync_type,
        "graphRequestId": attempt.graph_request_id, "clientRequestId": attempt.client_request_id,
        "httpStatus": attempt.http_status, "attemptAt": iso(attempt.attempt_at), "finishedAt": iso(attempt.finished_at),
        "durationMs": attempt.duration_ms, "nextAllowedAt": iso(attempt.next_allowed_at),
        "ambiguous": bool(attempt.ambiguous), "message": attempt.error,
    }


def operation(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    """Poll a "sync and wait" operation: 202 while the sync runs, 200 with the final status.

    Anonymous at the host: the token in the URL is the credential (see shared/engine/operations.py).
    Any mismatch answers the same 404, so the route reveals nothing about other operations.
    """
    not_found = ApiError(404, "OperationNotFound", "no such operation, or the token does not match")
    try:
        operation_id = parse_guid(req.route_params.get("operationId", ""))
    except InvalidItemId:
        raise not_found from None
    token = req.params.get("token") or ""
    if not token or len(token) > 100:
        raise not_found
    svc = service()
    found = svc.operations.get(operation_id) if svc.operations is not None else None
    if found is not None and found.tenant_id:  # a customer tenant's sync: its service follows it
        svc = _tenant_service(found.tenant_id)
    current = svc.poll(operation_id, token)
    if current is None:
        raise not_found
    if current.done:
        return json_response(current.to_json(), 200)
    return json_response(
        current.to_json(), 202, {"Location": _operation_url(req, current.id, token), "Retry-After": str(POLL_SECONDS)}
    )


def import_devices(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    """Start an Autopilot import job (shared/onboarding/importjob.py): 202 with the job and the absolute
    Location of its status, which carries its own token like a "sync and wait" operation (Power
    Automate follows it to the end: "Import Autopilot devices and wait")."""
    return _start_import(req, caller, wait=True)


def start_import(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    """The same job, answered 201 with its status URL in the body and Location: a 201 is not
    followed by Power Automate, so the flow goes on at once ("Start an Autopilot import")."""
    return _start_import(req, caller, wait=False)


def validate_devices(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    """The devices an import of this body would start with, each row checked as the import checks
    it (the same 400 naming every bad row): nothing stored, no Graph call (the web console shows it
    before anything is sent)."""
    request = _import_request(req, service())
    return json_response({"count": len(request.devices), "devices": [
        {"row": row, "serialNumber": d.serial_number, "groupTag": d.group_tag}
        for row, d in enumerate(request.devices, start=1)]})


def _import_request(req: func.HttpRequest, svc: SyncService) -> ImportRequest:
    """The request's devices, validated: every bad row named (400) before anything is stored.
    ``groupTag`` (query, optional) is every device's group tag, checked by the rows' own rule."""
    from ..onboarding import MAX_BODY_BYTES as MAX_IMPORT_BYTES
    from ..onboarding import SIZE_LIMIT as IMPORT_SIZE_LIMIT
    from ..onboarding import group_tag_problem, parse_import

    svc.target("autopilot")  # the job ends in an Autopilot sync: 404 when that target is off
    group_tag = req.params.get("groupTag") or None  # empty: each row's own tag, as an empty cell is no tag
    problem = group_tag_problem(group_tag) if group_tag is not None else None
    if problem:
        raise ApiError(400, "InvalidQuery", problem)
    declared = req.headers.get("content-length")
    # The limit that counts is devices (shared/onboarding/devices.py); bytes only cap what is read.
    if declared and declared.isdigit() and int(declared) > MAX_IMPORT_BYTES:
        raise ApiError(413, "PayloadTooLarge", IMPORT_SIZE_LIMIT)
    body = req.get_body() or b""
    if len(body) > MAX_IMPORT_BYTES:
        raise ApiError(413, "PayloadTooLarge", IMPORT_SIZE_LIMIT)
    content_type = req.headers.get("content-type") or ""
    if content_type.split(";")[0].strip().lower() not in ("application/json", "text/csv"):
        raise ApiError(415, "UnsupportedMediaType",
                       "send the devices as application/json or as text/csv (the CSV of Get-WindowsAutopilotInfo)")
    return parse_import(body, content_type, group_tag)


def _start_import(req: func.HttpRequest, caller: Caller, wait: bool) -> func.HttpResponse:
    svc = service()
    request = _import_request(req, svc)
    _public_origin(req)  # no valid host for the status URL: refused before anything starts
    job, devices, token = svc.start_import(request, caller.label, caller.claimed)
    location = _import_url(req, job.id, token)
    answer = {"importId": job.id, "status": job.status, "deadline": iso(job.deadline), "statusUrl": location,
              "devices": [{"serialNumber": d.serial_number, "state": d.state} for d in devices]}
    return json_response(answer, 202 if wait else 201, {"Location": location, "Retry-After": _import_poll_seconds()})


def import_status(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    """Poll an import job: 202 while any device is on its way, 200 when every one is final.
    Anonymous at the host, like operations: the token is the credential; any mismatch is 404."""
    not_found = ApiError(404, "ImportNotFound", "no such import job, or the token does not match")
    try:
        import_id = parse_guid(req.route_params.get("importId", ""))
    except InvalidItemId:
        raise not_found from None
    token = req.params.get("token") or ""
    if not token or len(token) > 100:
        raise not_found
    found = service().import_status(import_id, token)
    if found is None:
        raise not_found
    job, devices = found
    if job.done:
        return json_response(job.to_json(devices), 200)
    return json_response(job.to_json(devices), 202,
                         {"Location": _import_url(req, job.id, token), "Retry-After": _import_poll_seconds()})


def _import_url(req: func.HttpRequest, import_id: str, token: str) -> str:
    origin, prefix = _public_origin(req)
    return f"{origin}{prefix}/autopilot/imports/{import_id}?{urlencode({'token': token})}"


def _import_poll_seconds() -> str:
    return str(min(POLL_SECONDS * 2, settings().import_poll_seconds))


# --- bulk device sync (shared/devicesync) ------------------------------------------------------------

# Bytes read at most from a device-sync body: room for DEVICE_SYNC_MAX_DEVICES entries at their
# longest (a 128-character serial in UTF-16, its quotes and separator), plus MAX_BODY_BYTES for the
# rest. The selector's own limits (checked by parse_device_sync, each bad entry named) are what
# count; this only caps what is read.
DEVICE_SYNC_ENTRY_BYTES = 300
MAX_PAGE = 100_000


def device_sync(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    """Start a bulk device-sync job: 202 with its counts and the absolute Location of its status,
    which carries its own token (Power Automate follows it without the key: "Sync devices and wait")."""
    _device_sync_on()
    return _start_device_sync(req, service(), None, caller, wait=True)


def start_device_sync(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    """The same job, answered 201 with its status URL in the body and Location: a 201 is not
    followed by Power Automate, so the flow goes on at once ("Start a device sync")."""
    _device_sync_on()
    return _start_device_sync(req, service(), None, caller, wait=False)


def tenant_device_sync(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    """A registered customer tenant's bulk device-sync job, run by that tenant's service."""
    return _start_tenant_device_sync(req, caller, wait=True)


def start_tenant_device_sync(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    return _start_tenant_device_sync(req, caller, wait=False)


def _start_tenant_device_sync(req: func.HttpRequest, caller: Caller, wait: bool) -> func.HttpResponse:
    _device_sync_on()
    customers = _tenancy()
    tenant = _registered(customers, _tenant_id(req), caller)
    if not tenant.enabled:
        raise ApiError(409, "TenantDisabled", f"tenant {tenant.id} is disabled; enable it with PUT /api/tenants/{tenant.id}")
    return _start_device_sync(req, customers.service(tenant), tenant.id, caller, wait)


def device_sync_status(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    """Poll a device-sync job: 202 while it runs, 200 when it is done; ``page`` pages the devices.
    Anonymous at the host: the token is the credential (never logged); any mismatch is the same 404."""
    job_id, page, token = _device_sync_poll(req)
    return _device_sync_answer(req, service(), None, job_id, page, token)


def tenant_device_sync_status(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    """A customer tenant's job, polled like the home tenant's; an unregistered tenant is the same 404."""
    tenant_id = _tenant_id(req)
    job_id, page, token = _device_sync_poll(req)
    customers = tenancy()
    tenant = customers.registry.get(tenant_id) if customers is not None else None
    if customers is None or tenant is None:
        raise _device_sync_not_found()
    return _device_sync_answer(req, customers.service(tenant), tenant.id, job_id, page, token)


def _device_sync_on() -> None:
    if not settings().device_sync:
        raise ApiError(404, "DeviceSyncOff", "bulk device sync is off: add devices to SYNC_TARGETS (e.g. autopilot,devices)")


def _start_device_sync(req: func.HttpRequest, svc: SyncService, tenant_id: str | None, caller: Caller,
                       wait: bool) -> func.HttpResponse:
    from ..devicesync import parse_device_sync

    if not svc.devices.enabled:
        _device_sync_on()  # settings first; else this service has no device-sync queue
        raise ApiError(404, "DeviceSyncOff", "bulk device sync is not available for this service")
    current = settings()
    limit = device_sync_max_bytes(current.device_sync_max_devices)
    too_large = ApiError(413, "PayloadTooLarge", f"the body may be at most {limit:,} bytes "
                         f"({current.device_sync_max_devices:,} devices, DEVICE_SYNC_MAX_DEVICES)")
    declared = req.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = req.get_body() or b""
    if len(body) > limit:
        raise too_large
    # Every bad entry named (InvalidSelector: 400, its ``errors`` in the answer through AppError.details)
    # before anything is stored or Graph is called.
    request = parse_device_sync(body, req.headers.get("content-type") or "", max_devices=current.device_sync_max_devices,
                                default_skip_minutes=current.device_sync_skip_minutes)
    _public_origin(req)  # no valid host for the status URL: refused before anything starts
    jobs = svc.device_sync()
    job, token = jobs.start(request, caller.label, caller.claimed)
    started = jobs.status(job.id, token)  # the counts as every poll gives them (its first page is at most PAGE_SIZE rows)
    location = _device_sync_url(req, tenant_id, job.id, token, 0)
    answer = {"jobId": job.id, "status": job.status} | ({"counts": started.counts} if started else {}) \
        | ({} if wait else {"statusUrl": location})
    return json_response(answer, 202 if wait else 201, {"Location": location, "Retry-After": str(POLL_SECONDS)})


def device_sync_max_bytes(max_devices: int) -> int:
    return max_devices * DEVICE_SYNC_ENTRY_BYTES + MAX_BODY_BYTES


def _device_sync_not_found() -> ApiError:
    return ApiError(404, "DeviceSyncNotFound", "no such device-sync job, or the token does not match")


def _device_sync_poll(req: func.HttpRequest) -> tuple[str, int, str]:
    """(job id, page, token) of a poll: a job id that is no GUID or a bad page is a 400; a missing
    or oversized token is the 404 of every mismatch."""
    try:
        job_id = parse_guid(req.route_params.get("jobId", ""))
    except InvalidItemId:
        raise ApiError(400, "InvalidJobId", "the job id must be a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)") from None
    raw = req.params.get("page") or "0"
    if not raw.isascii() or not raw.isdigit() or len(raw) > 6 or int(raw) > MAX_PAGE:
        raise ApiError(400, "InvalidQuery", f"page must be a whole number from 0 to {MAX_PAGE}")
    token = req.params.get("token") or ""
    if not token or len(token) > 100:
        raise _device_sync_not_found()
    return job_id, int(raw), token


def _device_sync_answer(req: func.HttpRequest, svc: SyncService, tenant_id: str | None, job_id: str, page: int,
                        token: str) -> func.HttpResponse:
    if not svc.devices.enabled:  # turned off since: no job to tell of, as for any unknown one
        raise _device_sync_not_found()
    found = svc.device_sync().status(job_id, token, page)
    if found is None:
        raise _device_sync_not_found()
    answer = found.to_json()
    following = answer.get("nextPage")
    if isinstance(following, int):  # the next page's absolute URL (docs/devices.md), like Location
        answer["nextPage"] = _device_sync_url(req, tenant_id, job_id, token, following)
    if found.done:
        return json_response(answer, 200)
    location = _device_sync_url(req, tenant_id, job_id, token, page)
    return json_response(answer, 202, {"Location": location, "Retry-After": str(POLL_SECONDS)})


def _device_sync_url(req: func.HttpRequest, tenant_id: str | None, job_id: str, token: str, page: int) -> str:
    origin, prefix = _public_origin(req)
    scope = f"/tenants/{tenant_id}" if tenant_id else ""
    query = {"token": token} | ({"page": str(page)} if page else {})
    return f"{origin}{prefix}{scope}/devices/sync/{job_id}?{urlencode(query)}"


# --- many tenants (shared/tenancy/customers.py) ----------------------------------------------------------


def tenants_list(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    customers = _tenancy()
    continuation = req.params.get("continuation") or None
    if continuation is not None and (len(continuation) > 1000 or not re.fullmatch(r"[A-Za-z0-9_-]+=*", continuation)):
        raise ApiError(400, "InvalidQuery", "continuation must be the value a previous page returned")
    try:
        tenants, following = customers.registry.page(continuation)
    except ValueError:
        raise ApiError(400, "InvalidQuery", "continuation must be the value a previous page returned") from None
    # A tenant limited to its operator groups is listed only to its operators.
    shown = [t for t in tenants if may_operate(caller, t.groups())]
    return json_response({"tenants": [t.to_json() | {"consentUrl": customers.credentials.consent_url(t.id)} for t in shown],
                          "continuation": following})


def tenant_put(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    customers = _tenancy()
    tenant_id = _tenant_id(req)
    data = _json_object(req, {"displayName", "targets", "enabled", "operatorGroups"})
    name = data.get("displayName")
    if not isinstance(name, str) or not name.strip() or len(name) > 256:
        raise ApiError(400, "InvalidBody", "displayName is required: 1-256 characters")
    targets = data.get("targets")
    enabled_targets = customers.settings.sync_targets
    if targets is not None and (not isinstance(targets, list) or not targets or
                                not all(isinstance(t, str) and t in enabled_targets for t in targets)):
        raise ApiError(400, "InvalidBody", f"targets must be a non-empty list of enabled targets: {', '.join(enabled_targets)}")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ApiError(400, "InvalidBody", "enabled must be true or false")
    customers.refuse_home(tenant_id)  # 409 HomeTenant; 503 TokenUnavailable while the home tenant cannot be told
    existing = customers.registry.get(tenant_id)
    if existing is not None:  # changing a tenant limited to its operators is for them
        require_operator(caller, existing.id, existing.groups())
    # Absent: the groups stay as they are (a rename must not lift the limit); [] clears them.
    groups = _operator_groups(data["operatorGroups"]) if "operatorGroups" in data else \
        list(existing.groups()) if existing is not None else []
    from ..tenancy import Tenant

    tenant = Tenant(tenant_id, name.strip(), ",".join(dict.fromkeys(targets)) if targets else None, enabled,
                    operator_groups=",".join(groups) or None)
    saved, created = customers.registry.put(tenant, customers.home.clock())
    answer = saved.to_json() | {"consentUrl": customers.credentials.consent_url(tenant_id)}
    return json_response(answer, 201 if created else 200)


MAX_OPERATOR_GROUPS = 20


def _operator_groups(value: Any) -> list[str]:
    """``operatorGroups``: Entra group ids (GUIDs), at most MAX_OPERATOR_GROUPS; null or [] is none."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_OPERATOR_GROUPS or not all(isinstance(g, str) for g in value):
        raise ApiError(400, "InvalidBody", f"operatorGroups must be a list of at most {MAX_OPERATOR_GROUPS} Entra group ids")
    try:
        return list(dict.fromkeys(parse_guid(g) for g in value))
    except InvalidItemId:
        raise ApiError(400, "InvalidBody", "operatorGroups must list Entra group ids (GUIDs)") from None


def tenant_get(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    """The tenant, with its consent checked for real (a token and one Graph read)."""
    customers = _tenancy()
    tenant = _registered(customers, _tenant_id(req), caller)
    state, reason = customers.check(tenant)
    checked = customers.registry.get(tenant.id) or tenant  # with the check just recorded
    answer = checked.to_json() | {"state": state, "reason": reason, "consentUrl": customers.credentials.consent_url(tenant.id)}
    return json_response(answer)


def tenant_delete(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    customers = _tenancy()
    tenant_id = _tenant_id(req)
    existing = customers.registry.get(tenant_id)
    if existing is not None:
        require_operator(caller, existing.id, existing.groups())
    if not customers.registry.delete(tenant_id):
        raise ApiError(404, "TenantNotFound", f"tenant {tenant_id} is not registered")
    return json_response({"tenantId": tenant_id, "deleted": True})


def tenant_sync(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    customers = _tenancy()
    tenant = _registered(customers, _tenant_id(req), caller)
    if not tenant.enabled:
        raise ApiError(409, "TenantDisabled", f"tenant {tenant.id} is disabled; enable it with PUT /api/tenants/{tenant.id}")
    return _sync(req, customers.service(tenant), caller)


def tenant_status(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    customers = _tenancy()
    tenant = _registered(customers, _tenant_id(req), caller)
    return json_response(customers.service(tenant).status() | {"tenantId": tenant.id})


def tenant_history(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    """A registered tenant's newest recorded attempts (its own state table), as ``history``."""
    top = _history_top(req)
    customers = _tenancy()
    tenant = _registered(customers, _tenant_id(req), caller)
    rows = customers.service(tenant).history(top)
    return json_response({"tenantId": tenant.id, "top": top, "history": [_history_json(row) for row in rows]})


def _tenancy() -> Tenancy:
    customers = tenancy()
    if customers is None:
        raise ApiError(404, "MultiTenantOff", "many tenants are not enabled: set MULTI_TENANT_CLIENT_ID (see docs/msp.md)")
    return customers


def _tenant_id(req: func.HttpRequest) -> str:
    try:
        return parse_guid(req.route_params.get("tenantId", ""))
    except InvalidItemId:
        raise ApiError(400, "InvalidTenantId", "the tenant id must be a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)") from None


def _registered(customers: Tenancy, tenant_id: str, caller: Caller) -> Tenant:
    """The registered tenant, if the caller may act on it (its operator groups); else 404 or 403."""
    tenant = customers.registry.get(tenant_id)
    if tenant is None:
        raise ApiError(404, "TenantNotFound", f"tenant {tenant_id} is not registered; PUT /api/tenants/{tenant_id} first")
    require_operator(caller, tenant.id, tenant.groups())
    return tenant


def _tenant_service(tenant_id: str) -> SyncService:
    customers = tenancy()
    tenant = customers.registry.get(tenant_id) if customers else None
    if customers is None or tenant is None:
        raise ApiError(404, "OperationNotFound", "no such operation, or the token does not match")
    return customers.service(tenant)


def _json_object(req: func.HttpRequest, allowed: set[str]) -> dict[str, Any]:
    body = req.get_body() or b""
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, "PayloadTooLarge", f"the body may be at most {MAX_BODY_BYTES} bytes")
    data = _decoded_object(req, body)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(400, "InvalidBody", f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return data


def health(req: func.HttpRequest, caller: Caller) -> func.HttpResponse:
    try:
        current = settings()
    except SettingsError as exc:
        return json_response({"status": "unhealthy", "settingsValid": False, "problems": exc.problems}, 503)
    return json_response(
        {
            "status": "healthy",
            "settingsValid": True,
            "targets": list(current.sync_targets),
            "graphBaseUrl": current.graph_base_url,
            "stateStore": current.storage.description,
            "stateTable": current.state_table,
            "schedule": current.sync_schedule,
            "notices": [n.to_json() for n in configuration_notices(current)],
        }
    )


# --- input -------------------------------------------------------------------------------


def _decoded_object(req: func.HttpRequest, body: bytes, or_else: str = "") -> dict[str, Any]:
    """``body`` as a JSON object (sent as application/json, not nested too deep, valid); else a 4xx."""
    if (req.headers.get("content-type") or "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "UnsupportedMediaType", f"send the body as application/json{or_else}")
    if nesting_exceeds(body, MAX_JSON_DEPTH):
        # json.loads recurses per level: ~1,000 "[" (well under the size limit) is a RecursionError.
        raise ApiError(400, "InvalidJson", f"the body nests JSON deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "InvalidJson", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "InvalidBody", "the body must be a JSON object")
    return data


def _read_body(req: func.HttpRequest, allow_sync_type: bool) -> str | None:
    """The optional JSON body ``{"syncType": ...}``; empty is fine, anything odd is a 4xx."""
    declared = req.headers.get("content-length")
    body = req.get_body() or b""
    if len(body) > MAX_BODY_BYTES or (declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES):
        raise ApiError(413, "PayloadTooLarge", f"the body may be at most {MAX_BODY_BYTES} bytes")
    if not body:  # no body at all; whitespace is a body, and not valid JSON
        return None
    data = _decoded_object(req, body, " (or send no body)")
    allowed = {"syncType"} if allow_sync_type else set()
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(
            400,
            "InvalidBody",
            f"unknown field(s) {', '.join(unknown)}" + ("; allowed: syncType" if allowed else "; this route takes no body"),
        )
    sync_type = data.get("syncType")
    if "syncType" in data and (not isinstance(sync_type, str) or sync_type not in SYNC_TYPES):
        raise ApiError(400, "InvalidSyncType", f"syncType must be one of {', '.join(SYNC_TYPES)}")
    return sync_type


def _flag(req: func.HttpRequest, name: str) -> bool:
    raw = req.params.get(name)
    if raw is None:
        return False
    value = raw.lower()
    if value not in ("true", "false", "1", "0"):
        raise ApiError(400, "InvalidQuery", f"{name} must be true or false")
    return value in ("true", "1")


def _operation_url(req: func.HttpRequest, operation_id: str, token: str) -> str:
    """Absolute, as the async pattern requires; the token carries the poller's authority."""
    origin, prefix = _public_origin(req)
    return f"{origin}{prefix}/operations/{operation_id}?{urlencode({'token': token})}"


def _public_origin(req: func.HttpRequest) -> tuple[str, str]:
    """(``scheme://host``, path prefix such as ``/api``) under which callers reach this app.

    The poll URL carries its operation's token, so its host must be ours, never one a caller
    chose: X-Forwarded-Host (and -Proto) count only when TRUSTED_FORWARDED_HOSTS lists that host
    (a front end such as Front Door or APIM that sets them); else the app's WEBSITE_HOSTNAME,
    else the request's own host. Each must be a bare host[:port] (no user-info, path or other
    characters); anything but loopback is https, so the token never travels in clear. With no
    valid host at all the call is refused (400) before anything is started."""
    parts = _request_url(req)
    trusted = settings().trusted_forwarded_hosts
    forwarded = (req.headers.get("x-forwarded-host") or "").split(",")[0].strip()
    proto = (req.headers.get("x-forwarded-proto") or "").split(",")[0].strip().lower()
    website = settings().website_hostname or ""
    if forwarded and valid_host(forwarded) and (forwarded.lower() in trusted or host_name(forwarded) in trusted):
        host, scheme = forwarded, proto if proto in ("http", "https") else parts.scheme
    elif website and valid_host(website):
        host, scheme = website, parts.scheme
    elif parts.netloc and valid_host(parts.netloc):
        host, scheme = parts.netloc, parts.scheme
    else:
        raise ApiError(400, "InvalidHost", "the request's host is not a valid host name; no poll URL can be built")
    if not is_loopback(host_name(host).strip("[]")):
        scheme = "https"
    # The route's prefix (/api by default); anything odd in it falls back to the default.
    prefix = _route_prefix(parts.path)
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)*", prefix) or "/../" in prefix + "/" or "/./" in prefix + "/":
        prefix = "/api"
    return f"{scheme}://{host}", prefix


def _route_prefix(path: str) -> str:
    """The part of a request's path before our routes (``/api`` unless host.json changes it)."""
    found = [path.find(marker) for marker in ("/sync/", "/operations/", "/autopilot/", "/tenants/", "/devices/") if marker in path]
    return path[:min(found)] if found else "/api"


def authenticate(req: func.HttpRequest, role: str | None) -> Caller:
    """The caller of a route that needs ``role`` (None: the route is open, e.g. a valet-token poll).
    With a function key (CALLER_AUTH=key) the host has checked the key; with ``entra`` the bearer
    token is checked here, before anything else is read (shared/api/callerauth.py)."""
    if role is None:
        return ANONYMOUS
    current = settings()  # invalid settings: 503 before anything, in either mode
    if current.caller_auth != "entra":
        return require_role(key_caller(req.headers), role)
    return require_role(validate(bearer_token(req.headers), signing_keys(), current), role)


# The app role each action needs (None: open to anyone; its token or nothing is the credential;
# ANY_ROLE: any authenticated caller, whatever its roles).
ROLE_OF: dict[Action, str | None] = {
    sync: SYNC_RUN, tenant_sync: SYNC_RUN,
    status: STATUS_READ, tenant_status: STATUS_READ, tenants_list: STATUS_READ, tenant_get: STATUS_READ,
    history: STATUS_READ, tenant_history: STATUS_READ,
    import_devices: DEVICES_IMPORT, start_import: DEVICES_IMPORT, validate_devices: DEVICES_IMPORT,
    device_sync: DEVICES_SYNC, start_device_sync: DEVICES_SYNC,
    tenant_device_sync: DEVICES_SYNC, start_tenant_device_sync: DEVICES_SYNC,
    tenant_put: TENANTS_MANAGE, tenant_delete: TENANTS_MANAGE,
    me: ANY_ROLE,
    operation: None, import_status: None, device_sync_status: None, tenant_device_sync_status: None, health: None,
}
