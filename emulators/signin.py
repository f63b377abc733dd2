"""Browser sign-in for a single-page app, as Entra serves it to MSAL for the browser: the
authorization code flow with PKCE (an SPA redirect URI), CORS on the endpoints an SPA reads,
sign-out, and instance discovery. Part of the Entra emulator (emulators/entra.py, whose docstring
lists the endpoints); its state is ``EntraEmulator.signin``, new at every reset.

The person is a test user: the sign-in page asks a user name and which of the API's app roles
the access token carries, and the form's "Sign in" issues the code. Tokens are RS256 with the
emulator's signing keys (emulators/signing.py), so the app's own validation
(shared/api/callerauth.py) accepts the access token when the scope names its API.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt

from .signing import API_ROLES, USER_OBJECT

if TYPE_CHECKING:
    from .entra import EntraEmulator, _Handler

    Answer = tuple[int, dict[str, Any], dict[str, str], str]
    Refuse = Callable[[int, str, int, str], Answer]

DEFAULT_USER = "alice@contoso.com"
CODE_SECONDS = 300  # an authorization code's lifetime
REFRESH_SECONDS = 24 * 3600  # an SPA's refresh token: a fixed 24 hours, never extended
ID_TOKEN_SECONDS = 3600
GRAPH_APP = "00000003-0000-0000-c000-000000000000"  # the resource of a sign-in that names no API
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
GRANTS = ("authorization_code", "refresh_token")
CORS = ("oauth2/v2.0/token", "v2.0/.well-known/openid-configuration", "discovery/v2.0/keys", "discovery/instance")
SESSION_COOKIE = "emulator_session"
MARKER = "emulator_signin"  # the sign-in form's own field: a POST without it is an authorize request
_PAIRWISE = uuid.UUID("3c9e2f5a-7b1d-4e8a-9f6c-0d2b4a6e8c1f")


@dataclass(frozen=True)
class Grant:
    """What a code, a refresh token or a browser session stands for."""

    tenant: str
    client_id: str
    redirect_uri: str
    scope: str
    upn: str
    roles: tuple[str, ...]
    challenge: str = ""
    nonce: str | None = None
    expires: float = 0.0

    @property
    def oid(self) -> str:  # the user's object id, as SigningKeys.caller_token derives it
        return str(uuid.uuid5(USER_OBJECT, f"{self.tenant}/{self.upn}/False"))


class SignIns:
    """Codes, refresh tokens and sessions issued by the sign-in page; the SPA redirect URIs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clock: Callable[[], float] = time.time
        self.redirect_uris: list[str] = []  # https URIs an SPA may use (http://localhost and 127.0.0.1 always may)
        self.codes: dict[str, tuple[Grant, bool]] = {}  # code -> (grant, redeemed)
        self.refresh_tokens: dict[str, Grant] = {}
        self.sessions: dict[str, Grant] = {}
        self.counts: Counter[str] = Counter()

    def configure(self, config: dict[str, Any]) -> None:
        if "spaRedirectUris" in config:
            self.redirect_uris = [str(uri) for uri in config["spaRedirectUris"] or []]

    def stats(self) -> dict[str, Any]:
        """``{"signIn": {...}}`` once the browser sign-in has been used, else nothing."""
        names = ("signInPages", "signIns", "authorizationCodeGrants", "refreshTokenGrants", "signOuts")
        with self.lock:
            return {"signIn": {name: self.counts[name] for name in names}} if +self.counts else {}

    def count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def allowed(self, uri: str) -> bool:
        """An SPA redirect URI: http on localhost or 127.0.0.1 (any port), or an https one configured."""
        try:
            parts = urlsplit(uri)
            host = parts.hostname
        except ValueError:
            return False
        if parts.fragment or "*" in uri:
            return False
        if parts.scheme == "http":
            return host in ("localhost", "127.0.0.1")
        return parts.scheme == "https" and uri in self.redirect_uris

    def issue_code(self, grant: Grant) -> str:
        code = "0.A" + secrets.token_urlsafe(48)
        now = self.clock()
        with self.lock:
            self.codes = {c: g for c, g in self.codes.items() if g[0].expires > now}
            self.codes[code] = (replace(grant, expires=now + CODE_SECONDS), False)
            self.counts["signIns"] += 1
        return code

    def open_session(self, grant: Grant) -> str:
        session = str(uuid.uuid4())
        with self.lock:
            self.sessions[session] = grant
        return session

    # --- the token endpoint's two grants (called under the emulator's lock) ------------------

    def token(self, em: EntraEmulator, tenant: str, form: dict[str, str], origin: str | None, refuse: Refuse) -> Answer:
        if not origin:
            return refuse(400, "invalid_request", 9002327, "Tokens issued for the 'Single-Page Application' client-type "
                                                           "may only be redeemed via cross-origin requests.")
        for name in ("client_id", "code" if form["grant_type"] == "authorization_code" else "refresh_token"):
            if not form.get(name):
                return refuse(400, "invalid_request", 900144, f"The request body must contain the following parameter: '{name}'.")
        if form["grant_type"] == "authorization_code":
            found = self._redeem(tenant, form, refuse)
        else:
            found = self._refresh(tenant, form, refuse)
        if not isinstance(found, Grant):
            return found
        return self._issue(em, found, form.get("scope") or found.scope, form["grant_type"], refuse)

    def _redeem(self, tenant: str, form: dict[str, str], refuse: Refuse) -> Grant | Answer:
        with self.lock:
            grant, redeemed = self.codes.get(form["code"]) or (None, False)
            if grant is None or grant.tenant != tenant:
                return refuse(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
            if redeemed:
                return refuse(400, "invalid_grant", 54005, "OAuth2 Authorization code was already redeemed, please retry "
                                                           "with a new valid code or use an existing refresh token.")
            if grant.expires <= self.clock():
                return refuse(400, "invalid_grant", 70008, "The provided authorization code or refresh token has expired due "
                                                           "to inactivity. Send a new interactive authorization request for "
                                                           "this user and resource.")
            if form["client_id"] != grant.client_id:
                return refuse(400, "invalid_grant", 70000, "Provided grant is invalid or malformed (issued to another "
                                                           "application).")
            if form.get("redirect_uri") != grant.redirect_uri:
                return refuse(400, "invalid_client", 500112, f"The reply address '{form.get('redirect_uri')}' does not match "
                                                             f"the reply address '{grant.redirect_uri}' provided when "
                                                             "requesting Authorization code.")
            verifier = form.get("code_verifier")
            if not verifier:
                return refuse(400, "invalid_request", 900144, "The request body must contain the following parameter: "
                                                              "'code_verifier'.")
            if _challenge(verifier) != grant.challenge:
                return refuse(400, "invalid_grant", 501481, "The Code_Verifier does not match the code_challenge supplied "
                                                            "in the authorization request.")
            self.codes[form["code"]] = (grant, True)
            return grant

    def _refresh(self, tenant: str, form: dict[str, str], refuse: Refuse) -> Grant | Answer:
        with self.lock:
            grant = self.refresh_tokens.get(form["refresh_token"])
        if grant is None or grant.tenant != tenant:
            return refuse(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        if grant.expires <= self.clock():
            issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(grant.expires - REFRESH_SECONDS))
            return refuse(400, "invalid_grant", 700084, "The refresh token was issued to a single page app (SPA), and "
                                                        "therefore has a fixed, limited lifetime of 1.00:00:00, which cannot "
                                                        "be extended. It is now expired and a new sign in request must be "
                                                        f"sent by the SPA to the sign in page. The token was issued on {issued}.")
        if form["client_id"] != grant.client_id:
            return refuse(400, "invalid_grant", 70000, "Provided grant is invalid or malformed (issued to another application).")
        return grant

    def _issue(self, em: EntraEmulator, grant: Grant, scope: str, grant_type: str, refuse: Refuse) -> Answer:
        resources = {s.rpartition("/")[0] for s in scope.split() if s not in OIDC_SCOPES}
        if len(resources) > 1:
            return refuse(400, "invalid_scope", 28000, "Provided value for the input parameter scope is not valid because "
                                                       f"it contains more than one resource. Scope {scope} is not valid.")
        if "" in resources:
            return refuse(400, "invalid_scope", 70011, f"The provided value for the input parameter 'scope' is not valid. "
                                                       f"The scope {scope} is not valid.")
        resource = resources.pop() if resources else None
        names = [s.rpartition("/")[2] for s in scope.split() if s not in OIDC_SCOPES]
        scp = " ".join(n for n in names if n != ".default") or "user_impersonation"
        audience = resource.removeprefix("api://") if resource else GRAPH_APP
        access = em.signing.caller_token(em.base_url, tenant=grant.tenant, audience=audience,
                                         roles=list(grant.roles) if resource else [], upn=grant.upn, object_id=grant.oid,
                                         lifetime=em.lifetime, azp=grant.client_id,
                                         scp=scp if resource else "openid profile email User.Read")
        body: dict[str, Any] = {
            "token_type": "Bearer", "scope": " ".join(s for s in scope.split() if s not in OIDC_SCOPES) or
            "openid profile email User.Read", "expires_in": em.lifetime, "ext_expires_in": em.lifetime,
            "access_token": access, "id_token": self._id_token(em, grant, grant_type == "authorization_code"),
            "client_info": _b64(json.dumps({"uid": grant.oid, "utid": grant.tenant}).encode()),
        }
        if "offline_access" in grant.scope.split() or grant_type == "refresh_token":
            body |= self._refresh_token(grant, grant_type)
        self.count("authorizationCodeGrants" if grant_type == "authorization_code" else "refreshTokenGrants")
        return 200, body, {}, "issued"

    def _refresh_token(self, grant: Grant, grant_type: str) -> dict[str, Any]:
        """A new opaque refresh token; after a refresh, with the first one's expiry (an SPA's is never extended)."""
        now = self.clock()
        kept = grant if grant_type == "refresh_token" else replace(grant, expires=now + REFRESH_SECONDS)
        token = "1.A" + secrets.token_urlsafe(64)
        with self.lock:
            self.refresh_tokens[token] = kept
        return {"refresh_token": token, "refresh_token_expires_in": int(kept.expires - now)}

    def _id_token(self, em: EntraEmulator, grant: Grant, with_nonce: bool) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "aud": grant.client_id, "iss": f"{em.base_url}/{grant.tenant}/v2.0", "iat": now, "nbf": now,
            "exp": now + ID_TOKEN_SECONDS, "name": grant.upn.split("@")[0].title(), "oid": grant.oid,
            "preferred_username": grant.upn, "sub": str(uuid.uuid5(_PAIRWISE, f"{grant.oid}/{grant.client_id}")),
            "tid": grant.tenant, "ver": "2.0", "uti": secrets.token_urlsafe(16)[:22],
        }
        if with_nonce and grant.nonce:
            claims["nonce"] = grant.nonce
        with em.signing.lock:
            key = em.signing.current
        return jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": key.kid, "typ": "JWT"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _challenge(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode()).digest())


def _error(error: str, code: int, message: str, correlation_id: str) -> dict[str, Any]:
    from .entra import aad_error  # entra imports this module

    return aad_error(error, code, message, correlation_id)


# --- HTTP: what emulators/entra.py's handler hands over ------------------------------------------


def add_cors(handler: _Handler) -> None:
    """``Access-Control-Allow-Origin: <Origin>`` on the endpoints an SPA calls (from ``end_headers``)."""
    headers = getattr(handler, "headers", None)
    origin = headers.get("Origin") if headers is not None else None
    rest = urlsplit(getattr(handler, "path", "") or "").path.strip("/").partition("/")[2]
    if origin and rest in CORS:
        handler.send_header("Access-Control-Allow-Origin", origin)
        handler.send_header("Vary", "Origin")


def dispatch(handler: _Handler, tenant: str, rest: str) -> bool:
    """Serve the sign-in endpoints and CORS preflights; False for every other request."""
    if handler.command == "OPTIONS" and rest in CORS:
        asked = handler.headers.get("Access-Control-Request-Headers") or "content-type, client-request-id, x-anchormailbox"
        _send(handler, 200, b"", {"Access-Control-Allow-Methods": "GET, POST, OPTIONS", "Access-Control-Allow-Headers": asked,
                                  "Access-Control-Max-Age": "86400"})
    elif rest == "oauth2/v2.0/authorize" and handler.command in ("GET", "POST"):
        _authorize(handler, tenant)
    elif rest == "oauth2/v2.0/logout" and handler.command in ("GET", "POST"):
        _logout(handler, tenant)
    elif rest == "discovery/instance" and tenant.lower() == "common" and handler.command == "GET":
        _instance_discovery(handler)
    else:
        return False
    return True


def _send(handler: _Handler, status: int, data: bytes, headers: dict[str, str]) -> None:
    handler.send_response(status)
    for name, value in (headers | {"Cache-Control": "no-store, no-cache", "Content-Length": str(len(data))}).items():
        handler.send_header(name, value)
    handler.end_headers()
    if data and handler.command != "HEAD":
        handler.wfile.write(data)


def _page(handler: _Handler, status: int, title: str, body: str, headers: dict[str, str] | None = None) -> None:
    document = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{_STYLE}</style></head><body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>")
    _send(handler, status, document.encode(), {"Content-Type": "text/html; charset=utf-8",
                                               "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                                               "X-Frame-Options": "DENY"} | (headers or {}))


def _error_page(handler: _Handler, code: int, message: str) -> None:
    body = _error("invalid_request", code, message, handler.correlation_id())["error_description"]
    _page(handler, 400, "Sorry, but we're having trouble signing you in.", f'<p id="error">{html.escape(body)}</p>')


def _redirect(handler: _Handler, uri: str, mode: str, params: dict[str, str | None], headers: dict[str, str] | None = None) -> None:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    where = f"{uri}#{query}" if mode == "fragment" else f"{uri}{'&' if '?' in uri else '?'}{query}"
    _send(handler, 302, b"", {"Location": where} | (headers or {}))


def _redirect_error(handler: _Handler, params: dict[str, str], error: str, code: int, message: str) -> None:
    body = _error(error, code, message, params.get("client-request-id") or handler.correlation_id())
    _redirect(handler, params["redirect_uri"], params.get("response_mode") or "query",
              {"error": error, "error_description": body["error_description"], "error_uri": body["error_uri"],
               "state": params.get("state")})


def _form(handler: _Handler) -> dict[str, list[str]]:
    raw = handler.read_body().decode(errors="replace") if handler.command == "POST" else ""
    return parse_qs(raw, keep_blank_values=True)


def _authorize(handler: _Handler, tenant: str) -> None:
    form = _form(handler)
    params = handler.query | {k: v[-1] for k, v in form.items()}
    em = handler.server
    if not _checked(handler, em, tenant.lower(), params):
        return
    if MARKER in form:  # the sign-in page's form
        roles = tuple(r for r in API_ROLES if r in form.get("role", []))
        upn = (params.get("username") or "").strip() or DEFAULT_USER
        return _grant_code(handler, _grant(tenant.lower(), params, upn, roles), params)
    if params.get("prompt") == "none":
        return _silent(handler, tenant.lower(), params)
    em.signin.count("signInPages")
    _page(handler, 200, "Sign in to your account", _signin_form(handler.path_only, tenant, params))


def _checked(handler: _Handler, em: EntraEmulator, tenant: str, params: dict[str, str]) -> bool:
    """Entra's checks, in its order: an error page where no redirect is safe, else an error redirect."""
    from .entra import _unknown_tenant

    with em.lock:
        known = tenant in em.tenants
    uri = params.get("redirect_uri") or ""
    if not known:
        _error_page(handler, 90002, _unknown_tenant(tenant))
    elif not params.get("client_id"):
        _error_page(handler, 900144, "The request body must contain the following parameter: 'client_id'.")
    elif not uri:
        _error_page(handler, 900971, "No reply address provided.")
    elif not em.signin.allowed(uri):
        _error_page(handler, 50011, f"The redirect URI '{uri}' specified in the request does not match the redirect URIs "
                                    f"configured for the application '{params['client_id']}'. Make sure the redirect URI "
                                    "sent in the request matches one added to your application in the Azure portal. "
                                    "Navigate to https://aka.ms/redirectUriMismatchError to learn more about how to fix this.")
    else:
        return _checked_request(handler, params)
    return False


def _checked_request(handler: _Handler, params: dict[str, str]) -> bool:
    missing = next((name for name in ("response_type", "scope", "code_challenge") if not params.get(name)), None)
    if missing in ("response_type", "scope"):
        _redirect_error(handler, params, "invalid_request", 900144,
                        f"The request body must contain the following parameter: '{missing}'.")
    elif params["response_type"] != "code":
        _redirect_error(handler, params, "unsupported_response_type", 700054,
                        f"response_type '{params['response_type']}' is not enabled for the application.")
    elif missing or params.get("code_challenge_method") != "S256":
        _redirect_error(handler, params, "invalid_request", 9002325,
                        "Proof Key for Code Exchange is required for cross-origin authorization code redemption "
                        "(code_challenge, with code_challenge_method S256).")
    else:
        return True
    return False


def _grant(tenant: str, params: dict[str, str], upn: str, roles: tuple[str, ...]) -> Grant:
    return Grant(tenant, params["client_id"], params["redirect_uri"], params["scope"], upn, roles,
                 params["code_challenge"], params.get("nonce"))


def _grant_code(handler: _Handler, grant: Grant, params: dict[str, str], session: str | None = None) -> None:
    signin = handler.server.signin
    code = signin.issue_code(grant)
    headers = {}
    if session is None:
        session = signin.open_session(grant)
        headers["Set-Cookie"] = f"{SESSION_COOKIE}={session}; Path=/; Secure; HttpOnly; SameSite=None"
    client_info = _b64(json.dumps({"uid": grant.oid, "utid": grant.tenant}).encode())
    _redirect(handler, grant.redirect_uri, params.get("response_mode") or "query",
              {"code": code, "client_info": client_info, "state": params.get("state"), "session_state": session}, headers)


def _session(handler: _Handler) -> str | None:
    for part in (handler.headers.get("Cookie") or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == SESSION_COOKIE:
            return value
    return None


def _silent(handler: _Handler, tenant: str, params: dict[str, str]) -> None:
    """``prompt=none``: a code for the browser's signed-in user (the session cookie), else login_required."""
    signin, session = handler.server.signin, _session(handler)
    with signin.lock:
        known = signin.sessions.get(session or "")
    if known is None or known.tenant != tenant:
        return _redirect_error(handler, params, "login_required", 50058,
                               "A silent sign-in request was sent but no user is signed in.")
    _grant_code(handler, _grant(tenant, params, known.upn, known.roles), params, session)


def _signin_form(path: str, tenant: str, params: dict[str, str]) -> str:
    def attr(value: str) -> str:
        return html.escape(value, quote=True)

    hidden = "".join(f'<input type="hidden" name="{attr(k)}" value="{attr(v)}">' for k, v in params.items()
                     if k not in ("username", "role", MARKER))
    roles = "".join(f'<div><input type="checkbox" id="role-{r.replace(".", "-")}" name="role" value="{r}" checked>'
                    f'<label for="role-{r.replace(".", "-")}">{r}</label></div>' for r in API_ROLES)
    user = params.get("login_hint") or DEFAULT_USER
    return (f"<p>Entra ID emulator: sign in as a test user of tenant <code>{attr(tenant)}</code> to application "
            f"<code>{attr(params['client_id'])}</code>.</p>"
            f'<form method="post" action="{attr(path)}">{hidden}<input type="hidden" name="{MARKER}" value="1">'
            f'<p><label for="username">User name</label> <input type="text" id="username" name="username" '
            f'value="{attr(user)}" autocomplete="username" required></p>'
            f"<fieldset><legend>App roles in the token</legend>{roles}</fieldset>"
            '<p><button type="submit" id="signin">Sign in</button></p></form>')


def _logout(handler: _Handler, tenant: str) -> None:
    """Ends the emulator's session; back to ``post_logout_redirect_uri`` only when it is an allowed one."""
    params = handler.query | {k: v[-1] for k, v in _form(handler).items()}
    signin = handler.server.signin
    session = _session(handler)
    with signin.lock:
        signin.sessions.pop(session or "", None)
        signin.counts["signOuts"] += 1
    expired = {"Set-Cookie": f"{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=None; Max-Age=0"}
    target = params.get("post_logout_redirect_uri") or ""
    if target and signin.allowed(target) and params.get("state"):
        return _redirect(handler, target, "query", {"state": params["state"]}, expired)
    if target and signin.allowed(target):
        return _send(handler, 302, b"", {"Location": target} | expired)
    _page(handler, 200, "You signed out of your account", "<p>It's a good idea to close all browser windows.</p>", expired)


def _instance_discovery(handler: _Handler) -> None:
    """``GET /common/discovery/instance``: the emulator's host is its own cloud, as Entra answers for a host it does not know."""
    asked = handler.query.get("authorization_endpoint") or f"{handler.server.base_url}/common/oauth2/v2.0/authorize"
    parts = urlsplit(asked)
    host = parts.netloc.lower() or urlsplit(handler.server.base_url).netloc
    tenant = parts.path.strip("/").split("/")[0] or "common"
    body = {"tenant_discovery_endpoint": f"https://{host}/{tenant}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}]}
    handler.send_json(200, body)


_STYLE = ("body{font-family:system-ui,sans-serif;background:#f2f2f2;margin:0}main{max-width:28rem;margin:3rem auto;"
          "background:#fff;padding:2rem;box-shadow:0 2px 6px rgba(0,0,0,.2)}h1{font-size:1.4rem}fieldset{margin:1rem 0}"
          "input[type=text]{width:100%;box-sizing:border-box;padding:.4rem}button{background:#0067b8;color:#fff;"
          "border:0;padding:.5rem 2rem;font-size:1rem}#error{color:#a80000}")
