"""Valet tokens: the secret in a job's or an operation's status URL, which a caller without the
function key may poll with. Only its SHA-256 is stored; a guess is compared in constant time."""
from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token() -> tuple[str, str]:
    """A fresh valet token and the SHA-256 that is stored in its place."""
    token = secrets.token_urlsafe(32)
    return token, _hash(token)


def token_matches(stored_hash: str, token: str) -> bool:
    return hmac.compare_digest(stored_hash, _hash(token))


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
