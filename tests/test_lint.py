"""The code stays ruff- and mypy-clean: checked in the suite so that CI holds it there."""
import subprocess
import sys

from conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing():
    result = run("ruff", "check", "--no-cache", "--select", "E,F,W", "--ignore", "E501", "shared", "function_app.py", "emulators", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing_in_the_app():
    result = run("mypy", "--ignore-missing-imports", "--check-untyped-defs", "--cache-dir", "/dev/null", "shared", "function_app.py")
    assert result.returncode == 0, result.stdout + result.stderr
