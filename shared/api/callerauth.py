"""Who is calling, and may they (CALLER_AUTH; docs/security.md).

- ``key`` (the default): the host has checked the function key before the app runs; every key
  holder may do everything. The caller is ``key``; the headers a caller sets
  (``x-ms-client-principal-name``, ``x-ms-workflow-name``…) are kept only as what it *claimed*.
- ``entra``: the routes are anonymous at the host and the app checks ``Authorization: Bearer``
  itself (Easy Auth is not documented as enforced on Flex Consumption). The token must be RS256,
  signed with a key the tenant publishes, issued by an allowed tenant (AZURE_TENANT_ID and
  CALLER_TENANTS) for this API (API_CLIENT_ID or ``api://`` it), and current (60 s of skew). PyJWT
  checks signature, ``exp``, ``nbf``, ``iss`` and ``aud``; the tenant is checked before any key is
  fetched, so a token cannot make the app read another tenant's keys. Each route needs one app
  role (``ROLE_OF`` in shared/api/routes.py); a registered tenant with ``operatorGroups`` needs
  the caller in one of them too.

The decisions (``caller_from_claims``, ``require_role``, ``require_operator``) are pure; the
signature check needs the keys (shared/clients/signingkeys.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..common import Forbidden, Unauthenticated

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..clients import SigningKeys
    from ..common import Settings

SYNC_RUN, DEVICES_IMPORT, DEVICES_SYNC, TENANTS_MANAGE, STATUS_READ = (
    "Sync.Run", "Devices.Import", "Devices.Sync", "Tenants.Manage", "Status.Read")
ROLES = (SYNC_RUN, DEVICES_IMPORT, DEVICES_SYNC, TENANTS_MANAGE, STATUS_READ)
# Not a role: what a route asks of a caller that any authenticated caller may use, whatever its
# roles (GET /api/me). Such a route is never open: a key (key mode) or a valid token (entra) it needs.
ANY_ROLE = "(any role)"
LEEWAY_SECONDS = 60  # clock skew allowed on exp and nbf
MAX_TOKEN_CHARS = 16_000  # Entra's access tokens are a few KB; a header of megabytes is not one


@dataclass(frozen=True)
class Caller:
    """Who asked. ``kind``: ``user`` or ``app`` (a valid token), ``key`` (a function key holder)."""

    kind: str
    name: str  # the UPN, the app id, or "key"
    object_id: str | None = None
    tenant: str | None = None
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] | None = None  # None: the token names none (or too many: ``groups_overage``)
    groups_overage: bool = False
    claimed: str | None = None  # key mode: what the caller's own headers say it is (unverified)
    role_used: str | None = None

    @property
    def label(self) -> str:
        """The caller as history rows, jobs and telemetry record it (at most 200 characters)."""
        if self.kind == "key":
            return "key"
        used = f", role {self.role_used}" if self.role_used else ""
        return f"{self.kind}:{self.name} (object {self.object_id}{used})"[:200]

    def using(self, role: str | None) -> Caller:
        return Caller(self.kind, self.name, self.object_id, self.tenant, self.roles, self.groups, self.groups_overage,
                      self.claimed, role)


# --- the decisions, pure ---------------------------------------------------------------------------


def claimed_by_headers(headers: Mapping[str, str]) -> str | None:
    """What the request's headers say of its sender: set by any key holder, so never the identity."""
    if headers.get("x-ms-client-principal-name"):
        return f"user:{headers['x-ms-client-principal-name']}"[:200]
    if headers.get("x-ms-workflow-name"):
        return f"flow:{headers['x-ms-workflow-name']}/{headers.get('x-ms-workflow-run-id', '')}"[:200]
    forwarded = (headers.get("x-forwarded-for") or "").split(",")[0].strip()
    return f"http:{forwarded}"[:200] if forwarded else None


def caller_from_claims(claims: Mapping[str, Any]) -> Caller:
    """The caller a validated token names: a person (``preferred_username``) or an app (``idtyp``
    ``app``, named by its ``azp``/``appid``)."""
    roles = claims.get("roles")
    groups = claims.get("groups")
    overage = "groups" in (claims.get("_claim_names") or {}) or claims.get("hasgroups") is True
    app_only = claims.get("idtyp") == "app" or ("scp" not in claims and "preferred_username" not in claims)
    name = str(claims.get("azp") or claims.get("appid") or "?") if app_only else \
        str(claims.get("preferred_username") or claims.get("upn") or claims.get("oid"))
    return Caller("app" if app_only else "user", name[:120], str(claims.get("oid") or claims.get("sub") or ""),
                  str(claims.get("tid") or ""),
                  tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else (),
                  tuple(str(g).lower() for g in groups) if isinstance(groups, list) else None, overage)


def key_caller(headers: Mapping[str, str]) -> Caller:
    """A function key holder: every role is theirs (the host checked the key); its headers only claim."""
    return Caller("key", "key", roles=ROLES, claimed=claimed_by_headers(headers))


def require_role(caller: Caller, role: str) -> Caller:
    """``caller`` with the role it uses, or 403 naming the role it lacks (``ANY_ROLE``: the caller as it is)."""
    if role == ANY_ROLE:
        return caller
    if caller.kind != "key" and role not in caller.roles:
        raise Forbidden("MissingRole", f"this route needs the app role {role}; the token has "
                        f"{', '.join(caller.roles) or 'none'} (docs/security.md: assigning roles)", role=role)
    return caller.using(role)


def may_operate(caller: Caller, operator_groups: tuple[str, ...]) -> bool:
    """Whether the caller may act on a tenant limited to ``operator_groups`` (none: anyone may)."""
    return caller.kind == "key" or not operator_groups or bool(set(caller.groups or ()) & set(operator_groups))


def require_operator(caller: Caller, tenant_id: str, operator_groups: tuple[str, ...]) -> None:
    """A registered tenant with operator groups: the caller must be in one (the token's ``groups``)."""
    if may_operate(caller, operator_groups):
        return
    if caller.groups_overage:
        raise Forbidden("GroupsOverage", f"tenant {tenant_id} is limited to its operator groups, and the token names "
                        "too many groups to list them (Entra's overage): emit only the groups assigned to the "
                        "application (docs/security.md)", tenant=tenant_id)
    raise Forbidden("NotAnOperator", f"tenant {tenant_id} is limited to its operator groups; the caller is in "
                    "none of them", tenant=tenant_id)


def allowed_tenants(settings: Settings) -> frozenset[str]:
    return frozenset(t for t in (settings.tenant_id, *settings.caller_tenants) if t)


def audiences(settings: Settings) -> list[str]:
    return [str(settings.api_client_id), f"api://{settings.api_client_id}"]


# --- the token --------------------------------------------------------------------------------------


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token of ``Authorization: Bearer <token>``; 401 TokenMissing without one."""
    scheme, _, token = (headers.get("authorization") or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("TokenMissing", "send an Entra ID access token for this API: Authorization: Bearer <token>")
    token = token.strip()
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthenticated("InvalidToken", "the token is too long to be an access token")
    return token


def validate(token: str, keys: SigningKeys, settings: Settings) -> Caller:
    """The caller the token names, once it has passed every check; else 401 saying which failed."""
    import jwt  # PyJWT: loaded with the first token, so that key mode's cold start does not pay for it

    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise Unauthenticated("InvalidToken", "the token is not a JWT") from None
    if header.get("alg") != "RS256":
        raise Unauthenticated("InvalidAlgorithm", f"the token must be signed with RS256, not {ascii(str(header.get('alg'))[:20])}")
    tenant = str(unverified.get("tid") or "").lower()
    if tenant not in allowed_tenants(settings):
        raise Unauthenticated("TenantNotAllowed", "the token's tenant may not call this API (AZURE_TENANT_ID, CALLER_TENANTS)")
    key = keys.key(tenant, str(header.get("kid") or ""))
    if key is None:
        raise Unauthenticated("UnknownSigningKey", "the token is signed with a key its tenant does not publish")
    try:
        claims = jwt.decode(token, key, algorithms=["RS256"], audience=audiences(settings), issuer=keys.issuer(tenant),
                            leeway=LEEWAY_SECONDS, options={"require": ["exp", "nbf", "iss", "aud", "tid"]})
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("TokenExpired", "the token has expired; get a new one") from None
    except jwt.ImmatureSignatureError:
        raise Unauthenticated("TokenNotYetValid", "the token is not valid yet (nbf)") from None
    except jwt.InvalidAudienceError:
        raise Unauthenticated("InvalidAudience", "the token is for another API (aud is not API_CLIENT_ID)") from None
    except jwt.InvalidIssuerError:
        raise Unauthenticated("InvalidIssuer", "the token's issuer is not its tenant's") from None
    except jwt.InvalidSignatureError:
        raise Unauthenticated("InvalidSignature", "the token's signature does not match its signing key") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthenticated("InvalidToken", f"the token has no {exc.claim} claim") from None
    except jwt.PyJWTError as exc:
        raise Unauthenticated("InvalidToken", f"the token is not valid: {type(exc).__name__}") from None
    return caller_from_claims(claims)
