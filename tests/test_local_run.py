"""The README's local-run command shows a first sync end to end (on free ports here)."""
import subprocess
import sys

from conftest import ROOT


def test_the_local_run_shows_a_started_sync_then_a_cooldown():
    run = subprocess.run(
        [sys.executable, "-m", "emulators.local", "--once", "--random-ports"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    started, cooldown = run.stdout.index("HTTP 202"), run.stdout.index("HTTP 429")
    assert started < cooldown and '"outcome": "started"' in run.stdout
