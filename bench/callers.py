"""What an Entra ID caller costs (issue 22): the app's check of a bearer token (CALLER_AUTH=entra,
shared/api/callerauth.py) against the Entra emulator over TLS, next to key mode's, in one run.

    python -m bench.callers              # writes its section of bench/RESULTS.md
    python -m bench.callers --smoke --out -

1. first token of a process: a new ``SigningKeys`` (no keys yet), so the check reads the tenant's
   OpenID configuration and its keys (two HTTPS GETs, a TLS handshake) and then verifies the
   RS256 signature and the claims;
2. later tokens: the keys cached, only the signature and claims;
3. key mode: ``routes.authenticate`` of a route with a role (the host checked the key; the app
   only notes the headers the caller claims).
Each is the median of many calls in this process; the emulator runs in threads of it (on Azure
Entra is a network round trip away: the first call there costs that latency twice more).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import azure.functions as func

from bench import results
from emulators.entra import start_entra
from emulators.signing import API_CLIENT_ID
from emulators.tokens import HOME_TENANT

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN, END = "<!-- bench.callers: begin -->", "<!-- bench.callers: end -->"


def timed(call: object, runs: int) -> float:
    """Median milliseconds of ``call()`` over ``runs`` calls."""
    assert callable(call)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--first", type=int, default=25, help="first-token checks (a new key cache each)")
    parser.add_argument("--cached", type=int, default=5000, help="checks with the keys cached")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.smoke:
        args.first, args.cached = 3, 50
    started = time.monotonic()
    entra = start_entra(tempfile.mkdtemp(prefix="bench-entra-"))
    os.environ.update({**entra.env(), "CALLER_AUTH": "entra", "API_CLIENT_ID": API_CLIENT_ID, "AZURE_TENANT_ID": HOME_TENANT,
                       "AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    from shared.api.callerauth import validate
    from shared.api.routes import authenticate
    from shared.clients import SigningKeys
    from shared.common import Settings
    from shared.runtime import process

    try:
        settings = Settings.from_env(os.environ)
        token = entra.signing.caller_token(entra.base_url, tenant=HOME_TENANT, roles=["Sync.Run"])
        first = timed(lambda: validate(token, SigningKeys(settings.authority_host, 60), settings), args.first)
        keys = SigningKeys(settings.authority_host, 60)
        validate(token, keys, settings)
        cached = timed(lambda: validate(token, keys, settings), args.cached)
        os.environ["CALLER_AUTH"] = "key"
        process.reload()
        request = func.HttpRequest("POST", "http://localhost/api/sync/autopilot", headers={"x-ms-workflow-name": "flow"},
                                   body=b"")
        key = timed(lambda: authenticate(request, "Sync.Run"), args.cached)
    finally:
        entra.stop()
    m = results.machine()
    text = "\n".join([
        BEGIN, "## Entra ID callers: what a validated token costs (issue #22)", "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {m['cores']} cores ({m['cpu']}), Python {m['python']}; "
        f"{time.monotonic() - started:.0f} s in all. Command: `python -m bench.callers`. The Entra emulator over TLS in "
        "this process's threads (emulators/entra.py, RS256 keys of 2,048 bits); medians.", "",
        "| The check | Per request | Runs |", "| --- | --- | --- |",
        f"| `entra`, the first token of a process (OpenID configuration and keys fetched over HTTPS, then verified) | "
        f"{first:.2f} ms | {args.first} |",
        f"| `entra`, every later token (keys cached: RS256 signature and claims) | {cached * 1000:.0f} µs | {args.cached:,} |",
        f"| `key` (the host checked the key; the app notes what the headers claim) | {key * 1000:.1f} µs | {args.cached:,} |",
        "",
        "A process fetches a tenant's keys once (then once a day, or when a token names a key it does not know, at "
        "most once per CALLER_KEYS_REFRESH_SECONDS); every other request pays the signature check. PyJWT is "
        "loaded with the first token (azure-identity loads it anyway with the first Graph token), so key mode's "
        "cold start is unchanged: tests/test_lazy_imports.py keeps the key fetcher off a sync's cold start.",
        END, ""])
    results.publish(text, args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
