"""Messages that are not the app's own, on each of its queues (issue #19, item 5): each is logged
once as invalid and acknowledged, never retried into the poison queue, and changes nothing.

Delivered as the local Functions host does (emulators/funchost.QueuePoller: delete on success,
``<queue>-poison`` after five failures) from real Azurite queues, to the app's own queue triggers,
in multi-tenant mode so that every queue's handler is live."""
from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy
from conftest import FUNCTIONS, call, graph_calls, logged_events
from test_tenants import TENANTS, mt_env, register  # noqa: F401  (mt_env: the multi-tenant fixture)

from emulators.funchost import QueueFunction, QueuePoller
from shared.runtime import process as runtime

TICK = "2026-11-25T00:00:00Z"
LONG = "7" * 40_000  # a 40 KB field: within a queue message's 64 KB, far beyond any id
GUID = str(uuid.uuid4())
# Times no message of ours holds: at the calendar's edges (no UTC form: OverflowError), and beyond
# the years a message's time may fall in (shared/common/messages.py, TIME_YEARS).
FAR_TIMES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z",
             "9999-12-31T23:59:59Z", "1999-12-31T23:59:59Z", "2100-12-31T23:30:00-01:00"]


def b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def body(**fields: Any) -> str:
    return json.dumps(fields)


# Whatever the queue: not an object of ours at all.
NOT_OBJECTS = ["{not json", '["tenant"]', '"tenant"', "42", "null", "true", "[" * 40_000, "{}"]

DEFERRED = dict(unitKey="autopilot", target="autopilot", itemId=None, pendingId="a" * 32, scheduledAt=TICK, generation=0)
DEFERRED_BAD = [
    *[body(**{k: v for k, v in DEFERRED.items() if k != name}) for name in ("unitKey", "target", "pendingId", "scheduledAt")],
    *[body(**{**DEFERRED, **change}) for change in (
        {"target": 5}, {"target": ["autopilot"]}, {"target": "printers", "unitKey": "printers"}, {"target": LONG},
        {"unitKey": 5}, {"unitKey": LONG}, {"unitKey": "exchange"}, {"unitKey": "autopilot/../x#"},
        {"target": "exchange", "unitKey": "exchange-x", "itemId": "x"}, {"itemId": 5}, {"itemId": LONG},
        {"pendingId": 5}, {"pendingId": LONG}, {"pendingId": "a/b"},
        {"scheduledAt": 5}, {"scheduledAt": "soon"}, {"scheduledAt": "2026-11-25T00:00:00"}, {"scheduledAt": LONG},
        *[{"scheduledAt": far} for far in FAR_TIMES],
        {"generation": "1"}, {"generation": True}, {"generation": 1.5}, {"generation": -1},
        {"tenantId": 5}, {"tenantId": "contoso"}, {"tenantId": LONG}, {"tenantId": "{" + GUID + "}"},
    )],
    json.dumps(DEFERRED).replace('"generation": 0', '"generation": 1e400'),  # a float too big: infinity
]

TENANT_BAD = [
    body(tick=TICK, tenantId=GUID), body(kind="tenants", tick=TICK, tenantId=GUID), body(kind=5, tick=TICK),
    body(kind="PAGE", tick=TICK), body(kind="tenant", tenantId=GUID), body(kind="tenant", tick=5, tenantId=GUID),
    body(kind="tenant", tick="soon", tenantId=GUID), body(kind="tenant", tick=TICK),
    body(kind="tenant", tick=TICK, tenantId=5), body(kind="tenant", tick=TICK, tenantId=LONG),
    body(kind="tenant", tick=TICK, tenantId="contoso"), body(kind="tenant", tick=TICK, tenantId=[GUID]),
    body(kind="page", tick=TICK, continuation=5), body(kind="page", tick=TICK, continuation=LONG),
    body(kind="page", tick=TICK, continuation="not base64!"), body(kind="page", tick=TICK, continuation=b64([1])),
    body(kind="page", tick=TICK, continuation=b64({"PartitionKey": "tenants\r\nx-ms-version: 1"})),
    body(kind="page", tick=TICK, continuation=b64({"NextPartitionKey": "tenants", "NextRowKey": GUID})),
    *[body(kind="tenant", tick=far, tenantId=TENANTS[20]) for far in FAR_TIMES],  # a registered tenant's
    *[body(kind="page", tick=far) for far in FAR_TIMES],
]

IMPORT_BAD = [
    body(step=1, scheduledAt=TICK), body(importId=5, step=1, scheduledAt=TICK), body(importId=LONG, step=1, scheduledAt=TICK),
    body(importId="job-1", step=1, scheduledAt=TICK), body(importId=GUID, scheduledAt=TICK),
    body(importId=GUID, step="1", scheduledAt=TICK), body(importId=GUID, step=True, scheduledAt=TICK),
    body(importId=GUID, step=1.5, scheduledAt=TICK), body(importId=GUID, step=-1, scheduledAt=TICK),
    body(importId=GUID, step=1), body(importId=GUID, step=1, scheduledAt=5), body(importId=GUID, step=1, scheduledAt="soon"),
    *[body(importId=GUID, step=1, scheduledAt=far) for far in FAR_TIMES],
]

# queue setting -> (its trigger, its telemetry event, its malformed messages)
QUEUES = {
    "SYNC_QUEUE": ("sync_deferred", "deferred", NOT_OBJECTS + DEFERRED_BAD),
    "TENANT_QUEUE": ("tenant_sync", "tenant", NOT_OBJECTS + TENANT_BAD),
    "IMPORT_QUEUE": ("autopilot_import_step", "import", NOT_OBJECTS + IMPORT_BAD),
}


def queue(env: dict[str, str], name: str) -> QueueClient:
    return QueueClient.from_connection_string(env["AzureWebJobsStorage"], name, message_encode_policy=TextBase64EncodePolicy(),
                                              message_decode_policy=TextBase64DecodePolicy())


def depth(env: dict[str, str], name: str) -> int:
    try:
        return queue(env, name).get_queue_properties().approximate_message_count
    except ResourceNotFoundError:
        return 0


def snapshot(env: dict[str, str]) -> dict[str, Any]:
    """Every row of the app's tables (home and tenants') with its ETag, and every queue's depth."""
    tables = TableServiceClient.from_connection_string(env["AzureWebJobsStorage"])
    rows = {(t.name, e["PartitionKey"], e["RowKey"]): e.metadata["etag"] for t in tables.list_tables()
            if t.name.startswith(env["SYNC_STATE_TABLE"]) for e in tables.get_table_client(t.name).list_entities()}
    names = [env[s] for s in QUEUES]
    return {"rows": rows, "queues": {n: depth(env, n) for n in names + [n + "-poison" for n in names]}}


def deliver_all(env: dict[str, str], setting: str, trigger: Callable[..., Any], raised: list[str]) -> int:
    """Deliver every visible message once, as the local host does; how many were delivered."""
    poller = QueuePoller(QueueFunction(trigger.__name__, env[setting], "AzureWebJobsStorage", _recording(trigger, raised)))
    source, poison = queue(env, env[setting]), queue(env, env[setting] + "-poison")
    delivered = 0
    for message in list(source.receive_messages(messages_per_page=32, visibility_timeout=60)):
        poller.deliver(source, poison, message)
        delivered += 1
    return delivered


def _recording(trigger: Callable[..., Any], raised: list[str]) -> Callable[..., Any]:
    def run(message: Any) -> Any:
        try:
            return trigger(message)
        except Exception as exc:  # the host would retry it, then park it in the poison queue
            raised.append(f"{type(exc).__name__}: {str(exc)[:200]} <- {message.get_body()[:80]!r}")
            raise

    return run


@pytest.fixture
def with_state(mt_env):  # noqa: F811
    """A registered tenant, a pending sync of the app's own Autopilot, and a tenant's sync done."""
    register(TENANTS[20])
    assert call("POST", "sync/autopilot")[0] == 202
    assert call("POST", "sync/autopilot?defer=true")[2]["outcome"] == "scheduled"
    assert call("POST", f"tenants/{TENANTS[20]}/sync/autopilot")[0] == 202
    for setting in QUEUES:
        try:
            queue(mt_env, mt_env[setting]).create_queue()
        except ResourceExistsError:
            pass
    return mt_env


@pytest.mark.parametrize("setting", list(QUEUES))
def test_every_malformed_message_is_acknowledged_logged_once_as_invalid_and_changes_nothing(with_state, graph, caplog, setting):
    env = with_state
    name, event, bodies = QUEUES[setting]
    before, calls = snapshot(env), len(graph_calls(graph))
    for text in bodies:
        queue(env, env[setting]).send_message(text)
    raised: list[str] = []
    with caplog.at_level(logging.INFO):
        delivered = deliver_all(env, setting, FUNCTIONS[name], raised)
    assert raised == [] and delivered == len(bodies)
    invalid = [e for e in logged_events(caplog, event) if e["outcome"] == "invalid"]
    assert len(invalid) == len(bodies) and all(setting in e["message"] and e["_level"] == "ERROR" for e in invalid)
    assert snapshot(env) == before and len(graph_calls(graph)) == calls  # acknowledged; no row, queue or Graph call changed


@pytest.mark.parametrize("setting,valid,outcome", [
    ("TENANT_QUEUE", lambda: body(kind="tenant", tick=TICK, tenantId=TENANTS[21]), "synced"),
    ("SYNC_QUEUE", lambda: _pending_fire(), "early"),  # its cooldown has not ended: sent again for then
    ("IMPORT_QUEUE", lambda: body(importId=GUID, step=1, scheduledAt=TICK), "stale"),  # no such job (any more)
])
def test_a_valid_message_after_malformed_ones_still_does_its_work(with_state, graph, caplog, setting, valid, outcome):
    env = with_state
    register(TENANTS[21])
    name, event, bodies = QUEUES[setting]
    for text in [*bodies[:3], valid()]:
        queue(env, env[setting]).send_message(text)
    raised: list[str] = []
    with caplog.at_level(logging.INFO):
        deliver_all(env, setting, FUNCTIONS[name], raised)
    outcomes = sorted(e["outcome"] for e in logged_events(caplog, event))  # the queue does not promise an order
    assert raised == [] and outcomes == sorted(["invalid"] * 3 + [outcome])


def _pending_fire() -> str:
    from shared.engine.deferred import PendingFire

    state = runtime.service().store.read("autopilot")
    return PendingFire("autopilot", "autopilot", None, state.pending_id or "", state.pending_at or datetime.now(UTC)).to_json()


@pytest.mark.parametrize("name", [name for name, _, _ in QUEUES.values()])
def test_a_message_that_is_not_utf8_is_acknowledged_not_retried(mt_env, name, caplog):  # noqa: F811
    import azure.functions as func

    with caplog.at_level(logging.INFO):
        FUNCTIONS[name](func.QueueMessage(body=b'{"kind": "\xff\xfe"}'))  # returns: acknowledged
    assert [e["outcome"] for e in logged_events(caplog) if e["outcome"] == "invalid"] == ["invalid"]


def test_each_kind_of_message_the_app_writes_is_read_back_as_it_was():
    from shared.engine.deferred import PendingFire
    from shared.onboarding.importjob import ImportStep
    from shared.tenancy.customers import TenantMessage
    from shared.tenancy.registry import _token_text

    at = datetime(2026, 11, 25, 8, 30, tzinfo=UTC)
    written = [
        PendingFire(f"exchange-{GUID}", "exchange", GUID, uuid.uuid4().hex, at, 3, TENANTS[0]),
        PendingFire("autopilot", "autopilot", None, uuid.uuid4().hex, at),
        TenantMessage("tenant", at, tenant_id=TENANTS[0]),
        TenantMessage("page", at, continuation=_token_text({"PartitionKey": "1!12!dGVuYW50cw--", "RowKey": "1!48!NzJmOQ--"})),
        TenantMessage("page", at),
        ImportStep(GUID, 7, at),
    ]
    assert [type(m).from_json(m.to_json()) for m in written] == written
