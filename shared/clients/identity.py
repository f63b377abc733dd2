"""Which azure-identity credential to use.

In Azure (App Service / Functions set IDENTITY_ENDPOINT and IDENTITY_HEADER) only the managed
identity is tried: no credential chain probing on a cold start. Elsewhere the default chain lets a
developer use ``az login``.
"""
from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from ..common import TOKEN_BACKOFF_MAX, TOKEN_CONNECT_TIMEOUT, TOKEN_READ_TIMEOUT, TOKEN_RETRIES

# azure-identity passes these to its pipeline: without them a hanging identity endpoint holds a
# request for minutes (its retry policy waits and retries on its own).
TOKEN_TRANSPORT: dict[str, Any] = dict(
    connection_timeout=TOKEN_CONNECT_TIMEOUT, read_timeout=TOKEN_READ_TIMEOUT,
    retry_total=TOKEN_RETRIES, retry_backoff_factor=0.5, retry_backoff_max=TOKEN_BACKOFF_MAX,
)


def make_credential(client_id: str | None) -> TokenCredential:
    if os.environ.get("IDENTITY_ENDPOINT") or os.environ.get("MSI_ENDPOINT"):
        return ManagedIdentityCredential(client_id=client_id, **TOKEN_TRANSPORT) if client_id \
            else ManagedIdentityCredential(**TOKEN_TRANSPORT)
    return DefaultAzureCredential(
        managed_identity_client_id=client_id, exclude_interactive_browser_credential=True, **TOKEN_TRANSPORT
    )


# --- many tenants: the managed identity as a federated credential of a multi-tenant app ------
# (../shared/reference entra/managed-identity-as-federated-credential.md)

# The audience of the managed identity's token that Entra exchanges, per cloud (by authority host).
EXCHANGE_AUDIENCES = {
    "login.microsoftonline.us": "api://AzureADTokenExchangeUSGov",
    "login.chinacloudapi.cn": "api://AzureADTokenExchangeChina",
}
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"


def exchange_audience(authority_host: str | None) -> str:
    host = urlsplit(authority_host if authority_host and "://" in authority_host else f"https://{authority_host or ''}").hostname
    return EXCHANGE_AUDIENCES.get(host or "", EXCHANGE_AUDIENCE)


class TenantCredentials:
    """One ClientAssertionCredential per customer tenant (azure-identity caches each one's token),
    all asserting with one managed-identity token for the exchange audience. No secret anywhere:
    the multi-tenant app trusts the app's user-assigned identity (a federated identity credential)."""

    def __init__(self, app_client_id: str, identity_client_id: str | None, authority_host: str | None = None):
        self.app_client_id = app_client_id
        self.authority_host = authority_host or os.environ.get("AZURE_AUTHORITY_HOST") or None
        self._scope = exchange_audience(self.authority_host) + "/.default"
        self._identity = make_credential(identity_client_id)
        self._credentials: dict[str, TokenCredential] = {}
        self._lock = threading.Lock()

    def for_tenant(self, tenant_id: str) -> TokenCredential:
        from azure.identity import ClientAssertionCredential

        with self._lock:
            credential = self._credentials.get(tenant_id)
            if credential is None:
                options: dict[str, Any] = dict(TOKEN_TRANSPORT)
                if self.authority_host:  # a configured authority (a national cloud, an emulator): no discovery
                    options |= dict(authority=self.authority_host, disable_instance_discovery=True)
                credential = ClientAssertionCredential(tenant_id, self.app_client_id, self._assertion, **options)
                self._credentials[tenant_id] = credential
            return credential

    def _assertion(self) -> str:
        # azure-identity calls this whenever it needs a new app token; ManagedIdentityCredential
        # caches the identity's token itself.
        return self._identity.get_token(self._scope).token

    def consent_url(self, tenant_id: str) -> str:
        """Where a customer's admin grants tenant-wide consent to the multi-tenant app."""
        host = (self.authority_host or "https://login.microsoftonline.com").rstrip("/")
        host = host if "://" in host else f"https://{host}"
        return f"{host}/{tenant_id}/adminconsent?client_id={self.app_client_id}"
