"""The web console's weight and time to first useful paint (issue #24), in Debian's Chromium
driven by Playwright against the app on the local Functions host, Azurite and the Graph emulator.

    python -m bench.console [--runs 9] [--out bench/RESULTS.md | -]

First useful paint: from the navigation's start to the moment the Status view shows its first
unit's row (the first thing an admin looks for), measured in the page (performance.now()) in a
fresh browser context each run (nothing cached). Side by side in the same run: the same page's
first contentful paint, and the status API call alone (what the page must wait for in any case),
timed from the same browser (fetch), so that the page's own cost is the difference. Weight: every
byte the page fetched, by kind, and what gzip would make of the static files.
"""
from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from bench import results
from bench.run import Stack
from emulators.azurite import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN, END = "<!-- bench.console: begin -->", "<!-- bench.console: end -->"
CHROMIUM = "/usr/bin/chromium"
USEFUL = 'tr[data-unit="autopilot"]'


def start_app(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "emulators.funchost", "--port", str(port)], cwd=ROOT,
                               env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(f"{url}/api/health", timeout=1)
            return process, url
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the app host did not start")


def one_run(browser: Any, app: str) -> dict[str, Any]:
    context = browser.new_context()
    page = context.new_page()
    sizes: dict[str, int] = {}

    def counted(response: Any) -> None:
        try:
            body = response.body()
        except Exception:  # a redirect or an aborted request has no body
            return
        kind = Path(response.url.split("?")[0]).suffix.lstrip(".") or "api"
        sizes[kind] = sizes.get(kind, 0) + len(body)

    page.on("response", counted)
    page.goto(f"{app}/api/console")
    page.wait_for_selector(USEFUL, timeout=30_000)
    # The page marks the moment its Status view is on screen (console/status.js): no polling delay counted.
    useful = page.evaluate("performance.getEntriesByName('status-shown')[0].startTime")
    paint = page.evaluate("(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null")
    api = page.evaluate("""async () => { const t = performance.now();
        const r = await fetch('/api/sync/status', {cache: 'no-store'}); await r.json(); return performance.now() - t; }""")
    page.wait_for_load_state("networkidle")
    context.close()
    return {"useful_ms": useful, "fcp_ms": paint, "status_api_ms": api, "bytes": sizes}


def static_weight() -> dict[str, tuple[int, int]]:
    """Each file the page loads in key mode, and MSAL (entra mode only): bytes, gzipped bytes."""
    folder = ROOT / "console"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".html", ".js", ".css"))
    return {str(p.relative_to(folder)): (len(p.read_bytes()), len(gzip.compress(p.read_bytes(), 9))) for p in files}


def section(runs: list[dict[str, Any]], weight: dict[str, tuple[int, int]], seconds: float) -> str:
    m = results.machine()
    med = lambda key: statistics.median(r[key] for r in runs if r[key] is not None)  # noqa: E731
    fetched = {k: statistics.median(r["bytes"].get(k, 0) for r in runs) for k in sorted({k for r in runs for k in r["bytes"]})}
    own = {k: v for k, v in weight.items() if not k.startswith("vendor/")}
    vendor = {k: v for k, v in weight.items() if k.startswith("vendor/")}
    lines = [BEGIN, "## The web console: weight and time to first useful paint (issue #24)", "",
             f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {m['cores']} cores ({m['cpu']}), Python {m['python']}; "
             f"{seconds:.0f} s in all. Command: `.venv/bin/python -m bench.console`. Debian's Chromium, headless, a fresh "
             f"context per run (nothing cached), {len(runs)} runs, medians; the app in key mode on the local Functions host "
             "(emulators/funchost.py) with Azurite and the Graph emulator, on 127.0.0.1.", "",
             "| Measure | Median | Side by side |", "| --- | --- | --- |",
             f"| First useful paint (the Status view's first unit row) | {med('useful_ms'):.0f} ms | "
             f"the status API alone, from the same page: {med('status_api_ms'):.0f} ms "
             f"({med('useful_ms') / med('status_api_ms'):.1f}×) |",
             f"| First contentful paint | {med('fcp_ms'):.0f} ms | {med('fcp_ms') / med('useful_ms'):.2f}× the useful paint |",
             f"| Fetched, key mode | {sum(fetched.values()) / 1024:.1f} KB | "
             + ", ".join(f"{k} {v / 1024:.1f} KB" for k, v in fetched.items()) + " |",
             f"| The page's own files | {sum(b for b, _ in own.values()) / 1024:.1f} KB | "
             f"{sum(g for _, g in own.values()) / 1024:.1f} KB gzipped, {len(own)} files, no build step |",
             f"| MSAL for the browser (entra mode only) | {sum(b for b, _ in vendor.values()) / 1024:.1f} KB | "
             f"{sum(g for _, g in vendor.values()) / 1024:.1f} KB gzipped (vendor/, with its licence) |",
             "", "Every run (first useful paint, ms): " + ", ".join(f"{r['useful_ms']:.0f}" for r in runs) + ".", END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--out", default=str(RESULTS), help="RESULTS.md to write this benchmark's section in ('-' for none)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    stack = Stack()
    app_process = None
    try:
        app_process, app = start_app(stack.env(stack.new_table()))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            one_run(browser, app)  # warm the app process (its first call loads the service), not counted
            runs = [one_run(browser, app) for _ in range(args.runs)]
            browser.close()
    finally:
        if app_process is not None:
            app_process.terminate()
        stack.close()
    text = section(runs, static_weight(), time.monotonic() - started)
    results.publish(text, args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
