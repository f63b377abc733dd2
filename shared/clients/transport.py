"""How every outbound HTTPS call finds its proxy and the CAs it trusts: the standard environment,
read once per client rather than on every request.

- CA bundle: ``REQUESTS_CA_BUNDLE``, else ``CURL_CA_BUNDLE``, else ``SSL_CERT_FILE`` (the first
  that is set wins; a file or a directory of hashed certificates). Unset: certifi's bundle.
  Behind a TLS-inspecting proxy, or against an endpoint signed by a private CA, point one of
  them at a PEM bundle that includes that CA. A variable naming a path that does not exist is a
  settings problem (``Settings.from_env`` reports it by name).
- Proxies: ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY``, resolved for the client's endpoint.

Clients keep requests' and azure-core's own environment reading off (``trust_env`` /
``use_env_settings``): it re-reads the whole environment per request, a large share of a
fan-out's CPU, and it would not know ``SSL_CERT_FILE``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import requests

from ..common import AppError, ca_bundle_problem_text, ca_bundle_setting


class CaBundleMissing(AppError, ValueError):
    """The CA bundle variable in use names a path that does not exist (also a settings problem,
    so /api/health names it before any call fails on it)."""

    code, http_status = "CaBundleMissing", 503

    def __init__(self, name: str, path: str):
        self.name, self.path = name, path
        super().__init__(f"{name}: {ca_bundle_problem_text(path)}")


def verify(env: Mapping[str, str] | None = None) -> bool | str:
    """``verify`` for requests / ``connection_verify`` for azure-core: the bundle's path, or True."""
    found = ca_bundle_setting(env)
    if not found:
        return True
    if not os.path.exists(found[1]):
        raise CaBundleMissing(*found)
    return found[1]


def proxies_for(url: str) -> dict[str, str]:
    """The proxies the environment gives for ``url`` (honouring NO_PROXY); {} for none."""
    return dict(requests.utils.get_environ_proxies(url))


def configure_session(session: requests.Session, url: str | None = None) -> requests.Session:
    """Proxies (for ``url``, the session's one host) and CA bundle, read now, once."""
    session.trust_env = False
    session.proxies = proxies_for(url) if url else {}
    session.verify = verify()
    return session


def azure_options(endpoint: str) -> dict[str, Any]:
    """Keyword arguments for an azure-core client (tables, queues) talking to ``endpoint``."""
    options: dict[str, Any] = {"use_env_settings": False}
    proxies = proxies_for(endpoint)
    if proxies:
        options["proxies"] = proxies
    bundle = verify()
    if bundle is not True:
        options["connection_verify"] = bundle
    return options
