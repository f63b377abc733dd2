"""How long an outbound call may take: the Graph connect timeout and the token request's bounds,
and what they add up to. One home, because the Graph client, the credential and the settings'
check of the lease (a lease must outlast a write's worst path) all depend on them."""
from __future__ import annotations

CONNECT_TIMEOUT = 5.0
# A token request to the identity endpoint: explicit timeouts and few retries (azure-identity's
# defaults would wait far longer), so that a hanging endpoint costs a bounded time.
TOKEN_CONNECT_TIMEOUT, TOKEN_READ_TIMEOUT, TOKEN_RETRIES, TOKEN_BACKOFF_MAX = 5, 10, 1, 2
TOKEN_WORST_CASE_SECONDS = (TOKEN_RETRIES + 1) * (TOKEN_CONNECT_TIMEOUT + TOKEN_READ_TIMEOUT) + TOKEN_RETRIES * TOKEN_BACKOFF_MAX


def write_budget_seconds(read_timeout: float) -> float:
    """The shortest deadline under which a sync write can still take its worst single path:
    one attempt answered 401, a fresh token, and the resend."""
    attempt = CONNECT_TIMEOUT + read_timeout
    return 2 * attempt + TOKEN_WORST_CASE_SECONDS
