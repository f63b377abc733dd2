"""Which CA bundle the environment names (shared/clients/transport.py explains the variables), and whether
it exists: read by the transport for every client and by the settings check, which reports a
missing bundle by name before any call fails on it."""
from __future__ import annotations

import os
from collections.abc import Mapping

CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


def ca_bundle_problem_text(path: str) -> str:
    return f"names {path!r}, which does not exist; it must be a PEM file (or directory) of the CAs to trust"


def ca_bundle_setting(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(variable, path) of the CA bundle in use, or None for the default (certifi's)."""
    env = os.environ if env is None else env
    for name in CA_BUNDLE_VARIABLES:
        value = (env.get(name) or "").strip()
        if value:
            return name, value
    return None


def ca_bundle_problem(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(variable, what is wrong) when the CA bundle in use does not exist; None when fine."""
    found = ca_bundle_setting(env)
    if found and not os.path.exists(found[1]):
        return found[0], ca_bundle_problem_text(found[1])
    return None
