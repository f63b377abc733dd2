"""Microsoft Entra ID emulator: the token endpoint of a multi-tenant app whose only credential is a
managed identity's token (a federated identity credential, FIC), and a browser sign-in (authorization
code with PKCE) for a single-page app, served over HTTPS as azure-identity and MSAL require.

    entra = start_entra(tmp_path)            # HTTPS with a throwaway CA (emulators/tls.py)
    entra.configure({"federatedSubject": identity.principal_id(None), "tenants": {tid: {}}})
    env: AZURE_AUTHORITY_HOST=entra.base_url, REQUESTS_CA_BUNDLE=entra.ca_file (entra.env())
    ClientAssertionCredential(tid, entra.client_id, func, authority=entra.base_url,
                              disable_instance_discovery=True).get_token(graph_url + "/.default")

What the clients ask (found by running them against it):
- azure-identity's ``ClientAssertionCredential`` (and every credential built on its ``AadClient``) sends
  one ``POST /{tenant}/oauth2/v2.0/token`` (form: ``client_assertion``, ``client_assertion_type``,
  ``client_id``, ``grant_type=client_credentials``, ``scope``; header ``x-ms-client-request-id``) and
  nothing else: no instance or tenant discovery, whatever ``disable_instance_discovery`` says. It
  retries the POST on 5xx (and 429) like any azure-core pipeline.
- MSAL's ``ConfidentialClientApplication`` (azure-identity's secret and certificate credentials)
  with ``instance_discovery=False`` first sends ``GET /{tenant}/v2.0/.well-known/openid-configuration``
  and needs ``authorization_endpoint`` and ``token_endpoint`` there (it takes the tenant from the
  token endpoint's path); any 4xx there becomes ``ValueError("Unable to get authority configuration
  ...")``. Its token POST adds ``client_info=1`` and the header ``client-request-id``.
- MSAL for the browser (@azure/msal-browser 5, read from its source): instance discovery goes to
  login.microsoftonline.com itself unless the host is in ``knownAuthorities`` (give it the
  emulator's ``127.0.0.1:<port>``); then ``GET {authority}/v2.0/.well-known/openid-configuration``
  (CORS), whose ``issuer`` must have the authority's scheme, host and port; the browser goes to
  ``authorization_endpoint`` (``response_mode=fragment``, ``code_challenge_method=S256``, ``nonce``,
  ``state``; by a form POST with ``httpMethod: "POST"``); the token POST (CORS, preflighted: it sends
  ``X-AnchorMailbox``) redeems the code with ``code_verifier`` and ``scope`` plus ``openid profile
  offline_access``; it checks the id token's ``nonce`` and builds the account from ``client_info``.

Endpoints:
- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: the tenant's OIDC metadata (issuer
  ``{base}/{tenant}/v2.0``, ``token_endpoint`` ``{base}/{tenant}/oauth2/v2.0/token``...); an unknown
  tenant: 400 ``invalid_tenant`` AADSTS90002, as Entra answers. ``GET /{tenant}/discovery/v2.0/keys``:
  the RSA keys that sign callers' tokens for the app's API (emulators/signing.py); the tokens the
  token endpoint issues for Graph stay unsigned (only the Graph emulator reads them).
- The browser sign-in (emulators/signin.py): ``GET`` (or ``POST``) ``/{tenant}/oauth2/v2.0/authorize``
  (``client_id``, ``redirect_uri``, ``response_type=code``, ``scope``, ``state``, ``nonce``,
  ``code_challenge``, ``code_challenge_method=S256``, ``response_mode`` ``fragment`` | ``query``,
  ``prompt``, ``login_hint``): a sign-in page for a test user (a user name, a checkbox per app role of
  the API, all checked; the button ``#signin``). Unknown tenant (AADSTS90002), no ``client_id``
  (AADSTS900144) or ``redirect_uri`` (AADSTS900971), or a redirect URI that is neither
  ``http://localhost`` / ``http://127.0.0.1`` (any port and path) nor one of ``spaRedirectUris``
  (AADSTS50011): an error page, no redirect. Else errors go back to the redirect URI
  (``error``, ``error_description``, ``state``): no ``response_type`` or ``scope`` ``invalid_request``
  AADSTS900144, not ``code`` ``unsupported_response_type`` AADSTS700054, no ``code_challenge`` or
  not S256 ``invalid_request`` AADSTS9002325; ``prompt=none`` without the emulator's session cookie
  ``login_required`` AADSTS50058 (with it: a code for the same user and roles, no page). The form's
  POST redirects with ``code`` (single use, 5 minutes), ``client_info`` (base64url ``{"uid", "utid"}``),
  ``state``, ``session_state`` and sets the session cookie. ``/{tenant}/oauth2/v2.0/logout``: ends the
  session, 302 to ``post_logout_redirect_uri`` (with ``state``) only when it is an allowed redirect
  URI, else a "signed out" page. ``GET /common/discovery/instance?authorization_endpoint=``: the host
  as its own cloud (``tenant_discovery_endpoint``, ``metadata``). CORS: the token endpoint, the
  OpenID configuration, the keys and instance discovery answer ``Access-Control-Allow-Origin`` with
  the request's ``Origin``, and their ``OPTIONS`` preflight.
- ``POST /{tenant}/oauth2/v2.0/token`` with ``grant_type`` ``authorization_code`` (``code``,
  ``code_verifier``, ``redirect_uri``, ``client_id``, ``scope``) or ``refresh_token``
  (``refresh_token``, ``client_id``, ``scope``): without an ``Origin`` header 400 ``invalid_request``
  AADSTS9002327 (an SPA's code redeems cross-origin only); unknown code or refresh token
  ``invalid_grant`` AADSTS9002313, redeemed already AADSTS54005, expired AADSTS70008 (an expired
  refresh token: AADSTS700084), another ``client_id`` AADSTS70000, another ``redirect_uri``
  ``invalid_client`` AADSTS500112, no ``code_verifier`` AADSTS900144, a verifier whose S256 is not
  the challenge ``invalid_grant`` AADSTS501481; scopes of two resources ``invalid_scope`` AADSTS28000.
  200: ``token_type``, ``scope``, ``expires_in``, ``ext_expires_in``, ``access_token`` (RS256, as
  ``callerToken``: ``aud`` the scope's resource without ``api://``, ``roles`` the ticked ones,
  ``scp``, ``azp`` the client; only OpenID scopes: a Graph token without roles), ``id_token`` (RS256,
  ``aud`` the client, ``nonce``, ``oid``, ``tid``, ``preferred_username``, ``name``), ``client_info``,
  and with ``offline_access`` an opaque ``refresh_token`` (usable again and again for 24 hours from
  the sign-in, never extended) and ``refresh_token_expires_in``.
- ``POST /{tenant}/oauth2/v2.0/token`` (``client_credentials``), checked in this order, each refusal
  with Entra's error body (as the grants' refusals above: ``error``, ``error_description``
  "AADSTSnnnnn: ... Trace ID: ... Correlation ID: ... Timestamp: ...",
  ``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id`` (the request's ``client-request-id``
  or ``x-ms-client-request-id``), ``error_uri``):

  - tenant unknown: 400 ``invalid_request`` AADSTS90002
  - tenant configured to ``fail``: that status, ``temporarily_unavailable`` (503) or ``server_error``, AADSTS50000
  - ``grant_type`` missing: 400 ``invalid_request`` AADSTS900144; not one of the three: 400
    ``unsupported_grant_type`` AADSTS70003
  - ``client_id`` missing: 400 ``invalid_request`` AADSTS900144
  - ``client_id`` not the multi-tenant app, or the tenant has not consented (the app is not
    provisioned there): 400 ``unauthorized_client`` AADSTS700016 "Application with identifier '<client>'
    was not found in the directory '<tenant>'..."
  - ``client_secret`` sent instead of an assertion (the app has no secret): (*) ``invalid_client`` AADSTS7000215
  - no ``client_assertion``: (*) ``invalid_client`` AADSTS7000218
  - ``client_assertion_type`` not jwt-bearer: 400 ``invalid_request`` AADSTS900144
  - the assertion is not a JWT: (*) ``invalid_client`` AADSTS50027; expired: AADSTS700024; a user
    (delegated) token: AADSTS700229
  - no federated credential configured (``federatedSubject`` null): (*) ``invalid_client`` AADSTS70021
  - ``iss`` not the FIC's issuer: AADSTS700211; ``aud`` not its audience: AADSTS700212; ``sub`` (else
    ``oid``) not its subject: AADSTS700213; all (*) ``invalid_client``, "No matching federated identity
    record found for presented assertion issuer/audience/subject '<value>'..."
  - ``scope`` missing: 400 ``invalid_request`` AADSTS900144; not exactly one ``<resource>/.default``: 400
    ``invalid_scope`` AADSTS70011

  (*) ``invalidClientStatus``, default 400 as Microsoft documents for the token endpoint's errors
  (Entra has been seen answering 401 to ``invalid_client``: set 401 to test that). The FIC
  comparisons are exact and case-sensitive, as documented. Success: 200 ``{"token_type": "Bearer",
  "expires_in", "ext_expires_in", "access_token"}``; the access token (emulators/tokens.py) has
  ``aud`` = the scope's resource, ``tid`` = the tenant, ``appid`` = the client id, ``roles`` = the
  tenant's consented roles, ``idtyp`` = ``app``, ``iss`` = ``https://sts.windows.net/{tenant}/``,
  ``oid``/``sub`` = the app's service principal in that tenant.

Controls under ``/_emulator/`` (same HTTPS port, no client certificate):
- ``POST config`` with any of: ``clientId`` (the multi-tenant app, default ``DEFAULT_CLIENT_ID``),
  ``federatedIssuer`` (default ``https://login.microsoftonline.com/{HOME_TENANT}/v2.0``, what the
  managed-identity emulator puts in ``iss``), ``federatedSubject`` (the managed identity's principal
  id; default null: no FIC, every assertion refused with AADSTS70021), ``audience`` (default
  ``api://AzureADTokenExchange``), ``lifetimeSeconds`` (default 3599), ``invalidClientStatus``
  (default 400), ``spaRedirectUris`` (the https redirect URIs of the SPA platform; default none),
  ``keysFail`` (a status, e.g. 503, that the OpenID configuration and the keys
  answer until set to null: Entra down for the app's token checks), ``tenants`` and
  ``replaceTenants``, ``resetStats``. ``tenants`` is
  ``{"<tid>": {"consented"?: bool (true), "roles"?: [...] (ALL_ROLES), "fail"?: status | null,
  "failTimes"?: n | null (every request), "retryAfter"?: seconds | null} | null}``: merged tenant by
  tenant (an object sets the keys it lists, a new tenant starting from the defaults; null removes
  the tenant, which is then unknown); with ``"replaceTenants": true`` the given map replaces them
  all. The home tenant (``HOME_TENANT``) is known and consented at start and after reset. Tenant ids
  are case-insensitive. The answer is the configuration now in force.
- ``GET stats``: counters kept as the requests arrive, so the answer costs the same after ten
  tokens or a million: ``tokenRequests``, ``discoveryRequests``, ``outcomes`` (every token request
  counted by ``"issued"`` / ``"AADSTSnnnnn"`` / ``"http<status>"``), ``tenantsAsked`` (distinct
  tenants that asked) and ``tenantsByTokenRequests`` (``{"1": tenants that asked once, "2": ...}``);
  once the browser sign-in has been used, ``signIn``: ``signInPages`` shown, ``signIns`` (codes
  issued), ``authorizationCodeGrants`` and ``refreshTokenGrants`` (tokens issued), ``signOuts``.
  ``GET stats?tenant=<tid>``: that tenant's ``tokenRequests``, ``issued``, ``outcomes`` and
  ``requests``. ``GET stats?detail=1`` (and ``EntraEmulator.stats()`` in process): everything, as
  large as the run: ``tokenRequests``, ``discoveryRequests``, ``tenants`` (per requested tenant:
  ``tokenRequests``, ``issued``, ``outcomes``), ``requests`` (each token request: ``tenant``,
  ``clientId``, ``scope``, ``subject``, ``status``, ``outcome``, ``correlationId``, ``at``).
- ``POST callerToken``: a signed access token for the app's own API (CALLER_AUTH=entra), body the
  options of ``SigningKeys.caller_token``: ``tenant`` (default the home tenant), ``roles``, ``upn``,
  ``app_only``, ``groups``, ``groups_overage``, ``audience`` (default ``API_CLIENT_ID``), ``lifetime``,
  ``not_before_in``, ``issuer``, ``sign`` (``current`` | ``unknown`` | ``none`` | ``hs256-public``).
  Answer ``{"access_token", "token_type"}``.
- ``POST rotateKeys`` (``{"keepOld": true}``): a new signing key, published beside the old one
  (or alone); answer ``{"kid"}``.
- ``POST reset``: the defaults above, stats, codes, refresh tokens and sessions cleared (the signing keys stay).

A connection idle for ``idle_seconds`` (default 15, ``--idle-seconds``) is closed, as real front
ends close idle keep-alive connections. Each tenant's credential keeps its own connection, so
without that the emulator held one thread per tenant ever served (10,000 threads, 1 GB, in the
10,000-tenant bench), and when the workers exited, those threads ending together starved the
process: any request, however small, then waited minutes for the interpreter lock.
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from . import signin
from .server import JsonHandler, Server
from .signing import SigningKeys
from .tls import CertificateAuthority, serve_tls
from .tokens import ALL_ROLES, EXCHANGE_AUDIENCE, HOME_TENANT, decode, issue, issuer

DEFAULT_CLIENT_ID = "5e1c7a9b-3d2f-4b8e-a6c0-9f1e2d3c4b5a"  # the multi-tenant app registration
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_LIFETIME = 3599
IDLE_SECONDS = 15.0  # a keep-alive connection idle this long is closed
FIC_DOCS = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
_SERVICE_PRINCIPALS = uuid.UUID("6ba7b812-9dad-11d1-80b4-00c04fd430c8")

Answer = tuple[int, dict[str, Any], dict[str, str], str]  # status, body, headers, outcome


@dataclass
class Tenant:
    consented: bool = True
    roles: list[str] = field(default_factory=lambda: list(ALL_ROLES))
    fail: int | None = None
    fail_times: int | None = None  # None: every request while ``fail`` is set
    retry_after: int | None = None

    def update(self, config: dict[str, Any]) -> None:
        if "consented" in config:
            self.consented = bool(config["consented"])
        if "roles" in config:
            self.roles = [str(role) for role in config["roles"] or []]
        if "fail" in config:
            self.fail = int(config["fail"]) if config["fail"] else None
        if "failTimes" in config:
            self.fail_times = None if config["failTimes"] is None else int(config["failTimes"])
        if "retryAfter" in config:
            self.retry_after = None if config["retryAfter"] is None else int(config["retryAfter"])

    def snapshot(self) -> dict[str, Any]:
        return {"consented": self.consented, "roles": list(self.roles), "fail": self.fail,
                "failTimes": self.fail_times, "retryAfter": self.retry_after}


def _timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%d %H:%M:%SZ")


def _instant(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def aad_error(error: str, code: int, message: str, correlation_id: str) -> dict[str, Any]:
    """An error body as Entra's token and discovery endpoints send it."""
    ts, trace = _timestamp(datetime.now(UTC)), str(uuid.uuid4())
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {correlation_id} Timestamp: {ts}",
        "error_codes": [code],
        "timestamp": ts,
        "trace_id": trace,
        "correlation_id": correlation_id,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }


def _unknown_tenant(tenant: str) -> str:
    return (f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the "
            "correct cloud. Check with your subscription administrator, this may happen if there are no active "
            "subscriptions for the tenant.")


def _no_fic(what: str, value: Any) -> str:
    return (f"No matching federated identity record found for presented assertion {what} '{value}'. Please check your "
            f"federated identity credential Subject, Audience and Issuer against the presented assertion. {FIC_DOCS}")


class EntraEmulator(Server):
    def __init__(self, port: int = 0, idle_seconds: float | None = IDLE_SECONDS):
        super().__init__(_Handler, port)
        self.idle_seconds = idle_seconds  # None: keep idle connections open for ever
        self.lock = threading.Lock()
        self.https_url: str | None = None
        self.ca_file: Path | None = None
        self.signing = SigningKeys()  # kept across reset(): a reset does not roll the keys over
        self.reset()

    # --- serving -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.https_url or super().base_url

    def serve_tls(self, ca: CertificateAuthority) -> str:
        """Speak HTTPS only, with a certificate from ``ca`` (call before start); the https URL."""
        self.https_url = serve_tls(self, ca.issue(("127.0.0.1", "localhost"), name="entra"))
        self.ca_file = ca.cert_file
        return self.https_url

    def env(self) -> dict[str, str]:
        """What points azure-identity at this emulator: its authority host and the CA to trust."""
        env = {"AZURE_AUTHORITY_HOST": self.base_url}
        if self.ca_file is not None:
            env["REQUESTS_CA_BUNDLE"] = str(self.ca_file)
        return env

    # --- configuration -------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.client_id = DEFAULT_CLIENT_ID
            self.federated_issuer = issuer(HOME_TENANT)
            self.federated_subject: str | None = None
            self.audience = EXCHANGE_AUDIENCE
            self.lifetime = DEFAULT_LIFETIME
            self.invalid_client_status = 400
            self.keys_fail: int | None = None  # the OpenID configuration and keys answer this status
            self.tenants: dict[str, Tenant] = {HOME_TENANT: Tenant()}
            self.signin = signin.SignIns()  # the browser sign-in's codes, tokens, sessions and stats
            self._clear_stats()

    def _clear_stats(self) -> None:
        self.token_requests = 0
        self.discovery_requests = 0
        self.per_tenant: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.tenant_requests: dict[str, list[dict[str, Any]]] = {}  # the same records, by tenant
        self.outcomes: Counter[str] = Counter()
        self.tenants_by_count: Counter[int] = Counter()  # tenants by how many token requests they made

    def configure(self, config: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if "clientId" in config:
                self.client_id = str(config["clientId"])
            if "federatedIssuer" in config:
                self.federated_issuer = str(config["federatedIssuer"])
            if "federatedSubject" in config:
                subject = config["federatedSubject"]
                self.federated_subject = None if subject is None else str(subject)
            if "audience" in config:
                self.audience = str(config["audience"])
            if "lifetimeSeconds" in config:
                self.lifetime = int(config["lifetimeSeconds"])
            if "invalidClientStatus" in config:
                self.invalid_client_status = int(config["invalidClientStatus"])
            if "keysFail" in config:
                self.keys_fail = None if config["keysFail"] is None else int(config["keysFail"])
            if config.get("replaceTenants"):
                self.tenants = {}
            for tid, settings in (config.get("tenants") or {}).items():
                key = str(tid).lower()
                if settings is None:
                    self.tenants.pop(key, None)
                    continue
                tenant = self.tenants.get(key) or Tenant()
                tenant.update(dict(settings))
                self.tenants[key] = tenant
            self.signin.configure(config)
            if config.get("resetStats"):
                self._clear_stats()
            return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        return {"clientId": self.client_id, "federatedIssuer": self.federated_issuer,
                "federatedSubject": self.federated_subject, "audience": self.audience,
                "lifetimeSeconds": self.lifetime, "invalidClientStatus": self.invalid_client_status,
                "keysFail": self.keys_fail, "spaRedirectUris": list(self.signin.redirect_uris),
                "tenants": {tid: t.snapshot() for tid, t in self.tenants.items()}}

    def summary(self) -> dict[str, Any]:
        """The counters (``GET stats``): the same size whatever the number of requests and tenants."""
        with self.lock:
            return {"tokenRequests": self.token_requests, "discoveryRequests": self.discovery_requests,
                    "outcomes": dict(self.outcomes), "tenantsAsked": len(self.per_tenant),
                    "tenantsByTokenRequests": {str(k): v for k, v in sorted(self.tenants_by_count.items()) if v}
                    } | self.signin.stats()

    def tenant_stats(self, tenant: str) -> dict[str, Any]:
        """One tenant's counters and token requests (``GET stats?tenant=``)."""
        key = tenant.lower()
        with self.lock:
            mine = self.per_tenant.get(key) or {"tokenRequests": 0, "outcomes": {}}
            return {"tenant": key, "tokenRequests": mine["tokenRequests"], "issued": mine["outcomes"].get("issued", 0),
                    "outcomes": dict(mine["outcomes"]), "requests": list(self.tenant_requests.get(key, []))}

    def stats(self) -> dict[str, Any]:
        """Everything (``GET stats?detail=1``): every tenant and every request, as large as the run."""
        with self.lock:
            return {"tokenRequests": self.token_requests, "discoveryRequests": self.discovery_requests,
                    "tenants": {tid: {"tokenRequests": s["tokenRequests"], "issued": s["outcomes"].get("issued", 0),
                                      "outcomes": dict(s["outcomes"])} for tid, s in self.per_tenant.items()},
                    "requests": list(self.requests)} | self.signin.stats()

    # --- endpoints -----------------------------------------------------------------------

    def openid_configuration(self, tenant: str, correlation_id: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.discovery_requests += 1
            known = tenant.lower() in self.tenants
        if not known:
            return 400, aad_error("invalid_tenant", 90002, _unknown_tenant(tenant), correlation_id)
        base = f"{self.base_url}/{tenant.lower()}"
        return 200, {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name",
                                 "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username",
                                 "name", "tid", "ver", "at_hash", "c_hash", "email"],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }

    def token(self, tenant: str, form: dict[str, str], correlation_id: str,
              origin: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.lock:
            status, body, headers, outcome = self._token(tenant, form, correlation_id, origin)
            key = tenant.lower()
            self.token_requests += 1
            mine = self.per_tenant.setdefault(key, {"tokenRequests": 0, "outcomes": {}})
            if mine["tokenRequests"]:  # counters only: summary() never reads the records
                self.tenants_by_count[mine["tokenRequests"]] -= 1
            mine["tokenRequests"] += 1
            self.tenants_by_count[mine["tokenRequests"]] += 1
            mine["outcomes"][outcome] = mine["outcomes"].get(outcome, 0) + 1
            self.outcomes[outcome] += 1
            claims = decode(form.get("client_assertion", "")) or {}
            record = {"tenant": key, "clientId": form.get("client_id"), "scope": form.get("scope"),
                      "subject": claims.get("sub") or claims.get("oid"), "status": status,
                      "outcome": outcome, "correlationId": correlation_id,
                      "at": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
            self.requests.append(record)
            self.tenant_requests.setdefault(key, []).append(record)
        return status, body, headers

    def _token(self, tenant_id: str, form: dict[str, str], correlation_id: str, origin: str | None = None) -> Answer:
        def refuse(status: int, error: str, code: int, message: str) -> Answer:
            return status, aad_error(error, code, message, correlation_id), {}, f"AADSTS{code}"

        def bad_client(code: int, message: str) -> Answer:
            return refuse(self.invalid_client_status, "invalid_client", code, message)

        def missing(name: str) -> Answer:
            return refuse(400, "invalid_request", 900144, f"The request body must contain the following parameter: '{name}'.")

        key = tenant_id.lower()
        tenant = self.tenants.get(key)
        if tenant is None:
            return refuse(400, "invalid_request", 90002, _unknown_tenant(tenant_id))
        if tenant.fail:
            status = tenant.fail
            if tenant.fail_times is not None:
                tenant.fail_times -= 1
                if tenant.fail_times <= 0:
                    tenant.fail, tenant.fail_times = None, None
            error = "temporarily_unavailable" if status == 503 else "server_error"
            body = aad_error(error, 50000, "There was an error issuing a token or an issue with our sign-in service.",
                             correlation_id)
            headers = {"Retry-After": str(tenant.retry_after)} if tenant.retry_after is not None else {}
            return status, body, headers, f"http{status}"
        grant = form.get("grant_type")
        if not grant:
            return missing("grant_type")
        if grant in signin.GRANTS:  # a person's sign-in in a browser (emulators/signin.py)
            return self.signin.token(self, key, form, origin, refuse)
        if grant != "client_credentials":
            return refuse(400, "unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant}'.")
        client_id = form.get("client_id")
        if not client_id:
            return missing("client_id")
        if client_id != self.client_id or not tenant.consented:
            return refuse(400, "unauthorized_client", 700016,
                          f"Application with identifier '{client_id}' was not found in the directory '{key}'. This can "
                          "happen if the application has not been installed by the administrator of the tenant or "
                          "consented to by any user in the tenant. You may have sent your authentication request to the "
                          "wrong tenant.")
        assertion = form.get("client_assertion")
        if not assertion:
            if form.get("client_secret"):
                return bad_client(7000215, "Invalid client secret provided. Ensure the secret being sent in the request "
                                           f"is the client secret value, not the client secret ID, for a secret added to app '{client_id}'.")
            return bad_client(7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
        if form.get("client_assertion_type") != JWT_BEARER:
            return missing("client_assertion_type")
        claims = decode(assertion)
        if claims is None:
            return bad_client(50027, "JWT token is invalid or malformed.")
        now = time.time()
        if float(claims.get("exp", 0)) <= now:
            return bad_client(700024, f"Client assertion is not within its valid time range. Current time: {_instant(now)}, "
                                      f"assertion valid from {_instant(float(claims.get('nbf', claims.get('iat', 0))))}, "
                                      f"expiry time of assertion {_instant(float(claims.get('exp', 0)))}. Review the "
                                      "documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .")
        if claims.get("idtyp") == "user":
            return bad_client(700229, "ForbiddenTokenType: Only app-only tokens can be used as Federated Identity "
                                      "Credentials for AAD issuer.")
        iss, aud, sub = claims.get("iss"), claims.get("aud"), claims.get("sub") or claims.get("oid")
        if self.federated_subject is None:
            return bad_client(70021, f"No matching federated identity record found for presented assertion. Assertion "
                                     f"Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{aud}'. {FIC_DOCS}")
        if iss != self.federated_issuer:
            return bad_client(700211, _no_fic("issuer", iss))
        if aud != self.audience and not (isinstance(aud, list) and self.audience in aud):
            return bad_client(700212, _no_fic("audience", aud))
        if sub != self.federated_subject:
            return bad_client(700213, _no_fic("subject", sub))
        scope = form.get("scope")
        if not scope:
            return missing("scope")
        if len(scope.split()) != 1 or not scope.endswith("/.default") or scope == "/.default":
            return refuse(400, "invalid_scope", 70011,
                          f"The provided value for the input parameter 'scope' is not valid. The scope {scope} is not "
                          "valid. Client credential flows must have a scope value with /.default suffixed to the "
                          "resource identifier (application ID URI).")
        resource = scope[: -len("/.default")]
        service_principal = str(uuid.uuid5(_SERVICE_PRINCIPALS, f"{key}/{client_id}"))
        token, _ = issue(resource, list(tenant.roles), self.lifetime, client_id, tid=key,
                         iss=f"https://sts.windows.net/{key}/", oid=service_principal, sub=service_principal)
        body = {"token_type": "Bearer", "expires_in": self.lifetime, "ext_expires_in": self.lifetime,
                "access_token": token}
        return 200, body, {}, "issued"


class _Handler(JsonHandler):
    server: EntraEmulator

    def setup(self) -> None:
        # A read timeout on the connection: an idle keep-alive connection (or a handshake that never
        # comes) ends its thread; http.server closes the connection on the timeout.
        super().setup()
        self.connection.settimeout(self.server.idle_seconds)

    def end_headers(self) -> None:
        signin.add_cors(self)  # CORS for the endpoints a browser app calls
        super().end_headers()

    def correlation_id(self) -> str:
        return (self.headers.get("client-request-id") or self.headers.get("x-ms-client-request-id")
                or str(uuid.uuid4()))

    def dispatch(self) -> None:
        em, path = self.server, self.path_only
        if path.startswith("/_emulator/"):
            return self.admin()
        parts = path.strip("/").split("/")
        tenant, rest = parts[0], "/".join(parts[1:])
        if signin.dispatch(self, tenant, rest):  # the browser sign-in, CORS preflights, sign-out, instance discovery
            return
        no_store = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
        if em.keys_fail and rest in ("v2.0/.well-known/openid-configuration", "discovery/v2.0/keys"):
            with em.lock:
                em.discovery_requests += 1
            return self.send_json(em.keys_fail, aad_error("temporarily_unavailable", 50000, "The service is temporarily "
                                                          "unavailable.", self.correlation_id()))
        if rest == "v2.0/.well-known/openid-configuration" and self.command in ("GET", "HEAD"):
            status, body = em.openid_configuration(tenant, self.correlation_id())
            return self.send_json(status, body)
        if rest == "discovery/v2.0/keys" and self.command == "GET":
            with em.lock:
                known = tenant.lower() in em.tenants
            if not known:
                return self.send_json(400, aad_error("invalid_tenant", 90002, _unknown_tenant(tenant), self.correlation_id()))
            return self.send_json(200, em.signing.jwks())
        if rest == "oauth2/v2.0/token":
            correlation_id = self.correlation_id()
            if self.command != "POST":
                return self.send_json(400, aad_error("invalid_request", 900561,
                                                     "The endpoint only accepts POST, OPTIONS requests. Received a "
                                                     f"{self.command} request.", correlation_id), no_store)
            raw = self.read_body().decode(errors="replace")
            form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
            status, body, headers = em.token(tenant, form, correlation_id, self.headers.get("Origin"))
            return self.send_json(status, body, no_store | {"client-request-id": correlation_id,
                                                           "x-ms-request-id": str(body.get("trace_id") or uuid.uuid4())}
                                  | headers)
        self.send_json(404, {"error": "not_found", "error_description": f"No such Entra endpoint: {path}"})

    def admin(self) -> None:
        em, path = self.server, self.path_only
        if path == "/_emulator/config" and self.command == "POST":
            return self.send_json(200, em.configure(self.read_json() or {}))
        if path == "/_emulator/config" and self.command == "GET":
            with em.lock:
                return self.send_json(200, em.snapshot())
        if path == "/_emulator/stats" and self.command == "GET":
            query = self.query
            if query.get("tenant"):
                return self.send_json(200, em.tenant_stats(query["tenant"]))
            return self.send_json(200, em.stats() if query.get("detail") not in (None, "", "0", "false") else em.summary())
        if path == "/_emulator/callerToken" and self.command == "POST":
            options = self.read_json() or {}
            tenant = str(options.pop("tenant", HOME_TENANT))
            return self.send_json(200, {"access_token": em.signing.caller_token(em.base_url, tenant=tenant, **options),
                                        "token_type": "Bearer"})
        if path == "/_emulator/rotateKeys" and self.command == "POST":
            options = self.read_json() or {}
            return self.send_json(200, {"kid": em.signing.rotate(keep_old=bool(options.get("keepOld", True)))})
        if path == "/_emulator/reset" and self.command == "POST":
            em.reset()
            return self.send_json(204)
        self.send_json(404, {"error": "unknown emulator control"})


def start_entra(directory: Path | str, ca: CertificateAuthority | None = None, port: int = 0,
                idle_seconds: float | None = IDLE_SECONDS) -> EntraEmulator:
    """Create and start an Entra emulator over HTTPS; ``.base_url`` is its https URL (the authority
    host) and ``.ca_file`` the CA to trust (a new one in ``directory`` unless ``ca`` is given)."""
    server = EntraEmulator(port, idle_seconds)
    server.serve_tls(ca or CertificateAuthority.create(directory, name="entra emulator CA"))
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=8092)
    parser.add_argument("--dir", default=None, help="where to write the CA (default: a new temporary directory)")
    parser.add_argument("--idle-seconds", type=float, default=IDLE_SECONDS,
                        help="close a keep-alive connection idle this long (0: never)")
    args = parser.parse_args()
    server = start_entra(args.dir or tempfile.mkdtemp(prefix="entra-"), port=args.port,
                         idle_seconds=args.idle_seconds or None)
    for name, value in server.env().items():
        print(f"{name}={value}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
