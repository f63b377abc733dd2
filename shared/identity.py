"""Which azure-identity credential to use.

In Azure (App Service / Functions set IDENTITY_ENDPOINT and IDENTITY_HEADER) only the managed
identity is tried: no credential chain probing on a cold start. Elsewhere the default chain lets a
developer use ``az login``.
"""
from __future__ import annotations

import os
from typing import Any

from azure.core.credentials import TokenCredential
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from .graph import TOKEN_BACKOFF_MAX, TOKEN_CONNECT_TIMEOUT, TOKEN_READ_TIMEOUT, TOKEN_RETRIES

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
