"""The code stays ruff- and mypy-clean (settings in pyproject.toml): checked in the suite, so CI
fails on a new finding."""
import subprocess
import sys

from conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing():
    result = run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_finds_nothing_in_the_app():
    result = run("mypy")  # files, strict and the rest from pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found" in result.stdout


def test_no_code_reads_the_reference_material_beside_the_checkout():
    """A user's clone has nothing beside it: code (comments and docstrings aside) never reaches
    ../shared/reference or climbs above the repository root; what the tests need is copied in
    (tests/fixtures/, with its source and licence)."""
    import ast
    import io
    import re
    import tokenize

    outside = "shared" + "/reference"  # spelled in two parts so that this test does not find itself
    forbidden = re.compile(re.escape(outside) + "|ROOT" + r"\.parent\b|[\"']refer" + "ence[\"']")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in listed:
        path = ROOT / name
        if not path.is_file() or name.startswith("docs/") or path.suffix == ".md":
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".py":
            docstrings = {(n.body[0].lineno, n.body[0].end_lineno) for n in ast.walk(ast.parse(text))
                          if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                          and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
            code: dict[int, str] = {}  # line -> its code, without comments and docstrings
            for token in tokenize.generate_tokens(io.StringIO(text).readline):
                if token.type != tokenize.COMMENT and (token.start[0], token.end[0]) not in docstrings:
                    code[token.start[0]] = code.get(token.start[0], "") + token.string
            found += [f"{name}:{n}: {line}" for n, line in sorted(code.items()) if forbidden.search(line)]
        elif path.suffix in (".sh", ".bicep", ".json", ".toml", ".ini", ".yaml", ".yml", ".txt", ".cfg"):
            found += [f"{name}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                      if outside in line and not line.lstrip().startswith(("#", "//"))]
    assert found == []
