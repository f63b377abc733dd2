"""The pure parts of many tenants: what a tenant's failure means, its targets and table, the
token-exchange audience per cloud, the admin-consent URL, the fan-out message."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from shared.clients.identity import EXCHANGE_AUDIENCE, exchange_audience
from shared.common.messages import InvalidMessage
from shared.common.model import Outcome, SyncResult
from shared.tenancy.customers import TenantMessage, table_name_of
from shared.tenancy.registry import (
    FAILED,
    MISSING_ROLE,
    NOT_CONSENTED,
    SYNCED,
    UNAVAILABLE,
    UNKNOWN_TENANT,
    Tenant,
    _token_text,
    state_of_results,
    token_failure_state,
    token_of,
)

TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"


@pytest.mark.parametrize("message,state", [
    ("AADSTS700016: Application with identifier 'x' was not found in the directory 'y'.", NOT_CONSENTED),
    ("AADSTS65001: The user or administrator has not consented to use the application", NOT_CONSENTED),
    ("AADSTS90002: Tenant 'y' not found.", UNKNOWN_TENANT),
    ("AADSTS7000215: Invalid client secret provided.", None),
    ("ManagedIdentityCredential: connection refused", None),
])
def test_an_entra_error_code_names_the_tenants_consent_state(message, state):
    assert token_failure_state(message) == state


def failed(code, message="m"):
    return SyncResult("autopilot", Outcome.FAILED, error_code=code, message=message)


@pytest.mark.parametrize("result,state", [
    (failed("TokenUnavailable", "Could not get a token: AADSTS700016: not found in the directory"), NOT_CONSENTED),
    (failed("TokenUnavailable", "Could not get a token: AADSTS90002: tenant not found"), UNKNOWN_TENANT),
    (failed("TokenUnavailable", "identity endpoint timed out"), UNAVAILABLE),
    (failed("GraphAccessDenied"), MISSING_ROLE),
    (failed("GraphUnavailable"), UNAVAILABLE),
    (failed("GraphRequestRejected"), FAILED),
    (SyncResult("autopilot", Outcome.STARTED), SYNCED),
    (SyncResult("autopilot", Outcome.COOLDOWN), SYNCED),
])
def test_a_tenants_state_after_its_sync_is_named_by_its_first_failure(result, state):
    assert state_of_results([SyncResult("vpp", Outcome.SKIPPED), result])[0] == state


def test_a_tenant_without_targets_of_its_own_syncs_every_enabled_target_and_never_a_disabled_one():
    assert Tenant(TID, "Contoso").target_names(("autopilot", "vpp")) == ("autopilot", "vpp")
    assert Tenant(TID, "Contoso", targets="vpp,exchange").target_names(("autopilot", "vpp")) == ("vpp",)


def test_each_tenant_has_a_table_of_its_own_within_the_name_limit():
    name = table_name_of("intunesync", TID)
    assert name == "intunesync72f988bf86f141af91ab2d7cd011db47" and len(table_name_of("x" * 31, TID)) == 63


@pytest.mark.parametrize("authority,audience", [
    (None, EXCHANGE_AUDIENCE),
    ("https://login.microsoftonline.com", "api://AzureADTokenExchange"),
    ("login.microsoftonline.us", "api://AzureADTokenExchangeUSGov"),
    ("https://login.chinacloudapi.cn/", "api://AzureADTokenExchangeChina"),
    ("https://127.0.0.1:8443", EXCHANGE_AUDIENCE),
])
def test_the_exchange_audience_follows_the_cloud_of_the_authority(authority, audience):
    assert exchange_audience(authority) == audience


def test_a_fan_out_message_round_trips_and_a_stranger_is_refused():
    message = TenantMessage("page", datetime(2026, 11, 25, tzinfo=UTC), continuation=_token_text({"PartitionKey": "tenants", "RowKey": TID}))
    assert TenantMessage.from_json(message.to_json()) == message
    with pytest.raises(ValueError):
        TenantMessage.from_json('{"kind": "other", "tick": "2026-11-25T00:00:00Z"}')


def test_a_continuation_token_survives_a_message_and_a_forged_one_is_refused():
    token = {"PartitionKey": "1!12!dGVuYW50cw--", "RowKey": "1!48!NzJmOQ--"}  # the SDK's keys, Azure's opaque values
    text = _token_text(token)
    assert text and text.replace("-", "").replace("_", "").replace("=", "").isalnum() and token_of(text) == token
    assert token_of(None) is None
    for forged in ("not base64!", "WzFd", "eyJhIjogMX0="):  # garbage, a JSON list, a non-string value
        with pytest.raises(ValueError):
            token_of(forged)


@pytest.mark.parametrize("token", [
    {"NextPartitionKey": "tenants", "NextRowKey": TID},  # not the SDK's keys: the fan-out would start over
    {"PartitionKey": "tenants\r\nx-ms-version: 1"},  # a header of its own, injected
    {"PartitionKey": "tenants", "RowKey": "x" * 2000},  # longer than any key
    {"PartitionKey": "tenants", "RowKey": ""},
    {},
])
def test_a_foreign_continuation_token_is_refused_in_a_query_and_in_a_fan_out_message(token):
    text = _token_text(token) or "e30="
    with pytest.raises(ValueError):
        token_of(text)
    page = json.dumps({"kind": "page", "tick": "2026-11-25T00:00:00Z", "continuation": text})
    with pytest.raises(InvalidMessage):
        TenantMessage.from_json(page)
