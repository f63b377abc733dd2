"""Each rule in one place (issue 20, item 3), checked on the source of every module under shared/:
- one optimistic-concurrency loop (storage.read_change_write); a lost conditional write is found
  by exception type (storage.CONFLICTS), never by matching the service's error text;
- no module reaches into another object's private attributes (``store._table``);
- GUIDs are parsed in shared/common/ids.py only."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

SHARED = Path(ROOT) / "shared"


def _modules() -> dict[str, str]:
    return {str(p.relative_to(SHARED)): p.read_text(encoding="utf-8") for p in sorted(SHARED.rglob("*.py"))}


def test_conflicts_are_told_by_type_not_by_text() -> None:
    offenders = [name for name, text in _modules().items()
                 if "UpdateConditionNotSatisfied" in text and name != "clients/storage.py"]
    assert offenders == []
    storage = _modules()["clients/storage.py"]
    assert "def read_change_write(" in storage and "CONFLICTS" in storage


def test_one_retry_loop_around_conditional_writes() -> None:
    """No module but storage.py loops over attempts of a conditional write ("for _ in range(5)")."""
    offenders = [name for name, text in _modules().items() if name != "clients/storage.py"
                 and re.search(r"for _ in range\((5|attempts)\)", text)]
    assert offenders == []


def test_no_private_attribute_of_another_object() -> None:
    found = []
    for name, text in _modules().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    found.append(f"{name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom):  # nor imports another module's private name
                found += [f"{name}:{node.lineno} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert found == []


def test_guids_are_parsed_in_ids_only() -> None:
    offenders = [name for name, text in _modules().items() if name != "common/ids.py"
                 and ("uuid.UUID(" in text or "{8}-" in text)]
    assert offenders == []
