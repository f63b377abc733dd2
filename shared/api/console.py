"""The web console (docs/console.md): its files, served from the repository's ``console/`` folder,
and the settings its page needs to sign in (``/api/console/config.json``).

These routes know no caller and read no state: anonymous at the host, they serve only files of
``console/`` (an allow-list of extensions, no dot-files, nothing whose real path leaves the
folder) and the sign-in settings, never data; every answer carries the console's
Content-Security-Policy and the other security headers. The files are read once per process.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import azure.functions as func

from ..common import SettingsError
from ..runtime import settings
from .callerauth import ROLES
from .routes import ApiError, handle_open

if TYPE_CHECKING:
    from ..common import Settings

FOLDER = Path(__file__).resolve().parents[2] / "console"
INDEX = "index.html"
# The only files served, by extension: what a static page is made of.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".ico": "image/x-icon",
    ".png": "image/png",
}
MAX_PATH_CHARS = 200
# A path segment: letters, digits and . _ -, not starting with a dot (no dot-files, no "." or "..").
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
NOT_FOUND = "no such file in the console"


@dataclass(frozen=True)
class File:
    body: bytes
    content_type: str
    etag: str


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def servable(path: str) -> str | None:
    """``path`` (relative to the console's folder, ``/``-separated) if it may name a console file:
    allowed segments only (no backslash, no absolute path, no dot-file, no ``..``), an allowed
    extension; else None."""
    if not path or len(path) > MAX_PATH_CHARS or not all(_SEGMENT.fullmatch(part) for part in path.split("/")):
        return None
    return path if PurePosixPath(path).suffix.lower() in CONTENT_TYPES else None


def inside(folder: Path, path: str) -> Path | None:
    """The real path of ``folder/path`` if it is inside ``folder`` (symbolic links resolved)."""
    real = (folder / path).resolve()
    return real if real.is_relative_to(folder.resolve()) else None


class Files:
    """The console's files, read on first use and kept for the process: every servable file under
    ``folder`` whose real path is inside it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()
        self._files: dict[str, File] | None = None

    def get(self, path: str) -> File | None:
        with self._lock:
            if self._files is None:
                self._files = self._read()
            return self._files.get(path)

    def _read(self) -> dict[str, File]:
        found: dict[str, File] = {}
        if not self.folder.is_dir():
            return found
        for candidate in sorted(self.folder.rglob("*")):
            name = servable(candidate.relative_to(self.folder).as_posix())
            real = inside(self.folder, name) if name else None
            if name and real is not None and real.is_file():
                body = real.read_bytes()
                found[name] = File(body, CONTENT_TYPES[PurePosixPath(name).suffix.lower()], etag_of(body))
        return found


FILES = Files(FOLDER)


# --- the routes ------------------------------------------------------------------------------------


def serve(req: func.HttpRequest) -> func.HttpResponse:
    """GET (or HEAD) /api/console, /api/console/ and /api/console/{*path}: a console file, else 404."""
    return secured(handle_open(req, {"GET": _file, "HEAD": _file}))


def config(req: func.HttpRequest) -> func.HttpResponse:
    """GET (or HEAD) /api/console/config.json: how the page signs in (``sign_in``)."""
    return secured(handle_open(req, {"GET": _config, "HEAD": _config}))


def _file(req: func.HttpRequest) -> func.HttpResponse:
    path = req.route_params.get("path") or INDEX
    name = servable(path)
    found = FILES.get(name) if name and inside(FILES.folder, name) is not None else None
    if found is None:
        raise ApiError(404, "NotFound", NOT_FOUND)
    return cached(req, found)


def _config(req: func.HttpRequest) -> func.HttpResponse:
    body = json.dumps(sign_in(settings())).encode()  # invalid settings: the usual 503 naming them
    return cached(req, File(body, "application/json", etag_of(body)))


def cached(req: func.HttpRequest, file: File) -> func.HttpResponse:
    """200 with ``file`` (no body for HEAD), or 304 when the caller's If-None-Match names its ETag."""
    mimetype = file.content_type.split(";")[0]
    if etag_matches(req.headers.get("if-none-match"), file.etag):
        return func.HttpResponse(status_code=304, headers={"ETag": file.etag}, mimetype=mimetype)
    body = b"" if req.method.upper() == "HEAD" else file.body
    return func.HttpResponse(body, status_code=200, mimetype=mimetype,
                             headers={"Content-Type": file.content_type, "ETag": file.etag})


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match's weak comparison (RFC 9110 13.1.2): ``*`` or any listed tag, W/ or not."""
    if not if_none_match:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in tags)


# --- what every console answer carries ------------------------------------------------------------


def secured(response: func.HttpResponse) -> func.HttpResponse:
    """``response`` with the console's security headers (its JSON errors too)."""
    for name, value in security_headers(_authority_origin()).items():
        response.headers[name] = value
    return response


def security_headers(authority: str | None) -> dict[str, str]:
    """The Content-Security-Policy lets the page load only its own files and talk only to this
    app and, to sign in (CALLER_AUTH=entra), to the Entra authority (``authority``, an origin).
    No frames at all: MSAL signs in and renews in a popup (a hidden frame could not land on this
    page anyway, which refuses to be framed)."""
    connect = "'self'" if authority is None else f"'self' {authority}"
    policy = "; ".join((
        "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
        f"connect-src {connect}", "frame-src 'none'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'",
    ))
    return {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache"}


def _authority_origin() -> str | None:
    """The Entra authority's origin in entra mode; None in key mode (or with invalid settings: the
    strictest policy)."""
    try:
        current = settings()
    except SettingsError:
        return None
    return origin(current.authority_host) if current.caller_auth == "entra" else None


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def sign_in(current: Settings) -> dict[str, Any]:
    """What the page needs to sign in (MSAL.js's configuration) and the app roles it may meet.
    Key mode: no sign-in (the page asks for a function key)."""
    roles = list(ROLES)
    if current.caller_auth != "entra":
        return {"mode": "key", "roles": roles}
    client, tenant = current.api_client_id, current.tenant_id
    # Users of the other allowed tenants (CALLER_TENANTS) sign in through /organizations; the app
    # still admits only the listed tenants (shared/api/callerauth.py).
    others = set(current.caller_tenants) - {tenant}
    authority = current.authority_host.rstrip("/")
    return {
        "mode": "entra", "clientId": client, "tenantId": tenant,
        "authority": f"{authority}/{'organizations' if others else tenant}",
        "knownAuthorities": [origin(authority).partition("://")[2]],
        "scopes": [f"api://{client}/user_impersonation"],
        "roles": roles,
    }
