"""Which azure-identity credential to use.

In Azure (App Service / Functions set IDENTITY_ENDPOINT and IDENTITY_HEADER) only the managed
identity is tried: no credential chain probing on a cold start. Elsewhere the default chain lets a
developer use ``az login``.
"""
from __future__ import annotations

import os

from azure.core.credentials import TokenCredential
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential


def make_credential(client_id: str | None) -> TokenCredential:
    if os.environ.get("IDENTITY_ENDPOINT") or os.environ.get("MSI_ENDPOINT"):
        return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    return DefaultAzureCredential(
        managed_identity_client_id=client_id, exclude_interactive_browser_credential=True
    )
