"""Each rule in one place (issue 20): "when may a unit sync" (its window, its lease in flight) is
decided in shared/engine/decisions.py only. Everywhere else asks that module (refusal_for, in_cooldown,
in_flight, orphaned_claim, closed_until, not_before) instead of comparing the fields with a time.

The check is syntactic (the AST of every module under shared/, sub-packages included): an
ordering comparison (<, <=, >, >=) or a min()/max() that involves a unit's ``next_allowed_at`` or
``lease_expires_at``, read directly or through a local name bound from one. The modules that SET
the window (state, recording, pipeline) may merge windows with min()/max() (nextAllowedAt only
ever moves forward); none may compare one. The checker is shown to find the rule where it lives
and to find each restatement this rule replaced, so that it cannot pass by finding nothing."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

RULE_FIELDS = frozenset({"next_allowed_at", "lease_expires_at"})
ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)
# The modules that write nextAllowedAt: they may merge windows (max), never compare them with a time.
WRITERS = frozenset({"state", "recording", "pipeline"})


def _bound_names(node: ast.Assign | ast.AnnAssign | ast.NamedExpr) -> list[tuple[str, ast.AST]]:
    """(name, value) for each local name an assignment binds, pairing tuple targets with tuple values."""
    target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(node, "target", None)
    value = node.value
    if value is None or target is None:
        return []
    if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
        return [(t.id, v) for t, v in zip(target.elts, value.elts, strict=True) if isinstance(t, ast.Name)]
    return [(n.id, value) for n in ast.walk(target) if isinstance(n, ast.Name)]


def _mentions(node: ast.AST, names: set[str]) -> bool:
    """Whether the expression reads a rule field (an attribute, or a parameter named after one) or a name bound from one."""
    return any((isinstance(n, ast.Attribute) and n.attr in RULE_FIELDS)
               or (isinstance(n, ast.Name) and (n.id in RULE_FIELDS or n.id in names)) for n in ast.walk(node))


def _is_field(value: ast.AST, names: set[str]) -> bool:
    """Whether the value is a rule field itself: the field, a name bound from one, a choice between
    such values (``a or b``, ``a if c else b``), or one shifted by a duration (``end + margin``).
    A call's result is not (closed_until(...) is the rule's own answer)."""
    if isinstance(value, ast.Attribute):
        return value.attr in RULE_FIELDS
    if isinstance(value, ast.Name):
        return value.id in RULE_FIELDS or value.id in names
    if isinstance(value, ast.BoolOp):
        return any(_is_field(v, names) for v in value.values)
    if isinstance(value, ast.IfExp):
        return _is_field(value.body, names) or _is_field(value.orelse, names)
    if isinstance(value, ast.BinOp):
        return _is_field(value.left, names) or _is_field(value.right, names)
    return False


def _scopes(tree: ast.Module) -> list[list[ast.AST]]:
    """The nodes of each function (with what it nests), and of the module's own statements."""
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    top = [stmt for stmt in tree.body if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    return [list(ast.walk(f)) for f in functions] + [[n for stmt in top for n in ast.walk(stmt)]]


def rule_uses(source: str, writer: bool = False) -> list[tuple[int, str]]:
    """(line, code) of each place in ``source`` that compares (or, outside a writer, merges) a
    unit's window or lease with another time."""
    tree = ast.parse(source)
    found: dict[int, str] = {}
    for nodes in _scopes(tree):
        tainted: set[str] = set()  # locals bound from a rule field (in this scope), to a fixed point
        for _ in range(3):
            for node in nodes:
                if isinstance(node, ast.Assign | ast.AnnAssign | ast.NamedExpr):
                    tainted |= {name for name, value in _bound_names(node) if _is_field(value, tainted)}
        for node in nodes:
            compared = isinstance(node, ast.Compare) and any(isinstance(op, ORDERING) for op in node.ops) \
                and _mentions(node, tainted)
            merged = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("max", "min") \
                and not writer and _mentions(node, tainted)
            if compared or merged:
                found[node.lineno] = ast.get_source_segment(source, node) or ""
    return sorted(found.items())


def _modules() -> dict[Path, str]:
    return {path: path.read_text() for path in sorted((ROOT / "shared").rglob("*.py"))}


def test_no_module_but_decisions_compares_a_units_window_or_lease_with_a_time():
    modules = _modules()
    names = {path.stem for path in modules}
    assert {"decisions", "status", "deferred", "importjob", "pipeline"} <= names and len(modules) > 20
    found = [f"{path.relative_to(ROOT)}:{line}: {code}"
             for path, source in modules.items() if path.stem != "decisions"
             for line, code in rule_uses(source, writer=path.stem in WRITERS)]
    assert found == [], "ask shared/engine/decisions.py (in_cooldown, in_flight, closed_until, ...) instead:\n" + "\n".join(found)


def test_the_rule_is_written_in_the_decisions_module():
    """The checker finds the rule where it lives: the window, the lease, and the due time."""
    (decisions,) = [source for path, source in _modules().items() if path.stem == "decisions"]
    code = " ".join(code for _, code in rule_uses(decisions))
    assert "next_allowed_at > now" in code and "lease_expires_at > now" in code and "max(at, state.next_allowed_at" in code


def test_the_checker_finds_each_restatement_this_rule_replaced():
    restated = {  # as status.py, deferred.py, importjob.py, state.py and pipeline.py had them
        "def f(state, now):\n    return bool(state.next_allowed_at and state.next_allowed_at > now)\n": True,
        "def f(refusal, now):\n    return refusal.next_allowed_at if refusal.next_allowed_at and refusal.next_allowed_at > now else now\n": True,
        "def f(state, at):\n    return max(at, state.next_allowed_at or at)\n": True,
        "def f(self, now):\n    return bool(self.lease_owner) and self.lease_expires_at is not None and self.lease_expires_at > now\n": True,
        "def f(known, now):\n    return known is None or known.next_allowed_at is None or known.next_allowed_at <= now\n": True,
        # through a local name
        "def f(state, now):\n    before = None if state.claim_at else state.next_allowed_at\n    return before and before > now\n": True,
        "def f(state, now):\n    end, x = state.lease_expires_at, 1\n    return now < end\n": True,
        # not the rule: writing the window, reading it, or another time
        "def f(state, until):\n    return replace(state, next_allowed_at=until)\n": False,
        "def f(state):\n    return state.next_allowed_at is None or state.next_allowed_at == state.last_attempt_at\n": False,
        "def f(state, now):\n    end, x = state.lease_expires_at, state.pending_at\n    return x > now\n": False,
        "def f(state, now):\n    return state.pending_at and state.pending_at > now\n": False,
    }
    assert {source: bool(rule_uses(source)) for source in restated} == restated
    merge = "def f(a, b):\n    return max((t for t in (a.next_allowed_at, b.next_allowed_at) if t), default=None)\n"
    assert rule_uses(merge) and not rule_uses(merge, writer=True)  # a writer may merge windows
    assert rule_uses("def f(s, now):\n    return s.next_allowed_at > now\n", writer=True)  # but not compare them


# --- sizes and bases (issue 20: parts are objects given their collaborators, not mixins) ----------

CLASS_LINES, FUNCTION_LINES = 200, 50


def _definitions() -> list[tuple[str, ast.AST]]:
    return [(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node)
            for path, source in _modules().items() for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_class_over_200_lines_and_no_function_over_50():
    long = [f"{where}: {node.end_lineno - node.lineno + 1} lines" for where, node in _definitions()  # type: ignore[attr-defined]
            if node.end_lineno - node.lineno + 1 > (CLASS_LINES if isinstance(node, ast.ClassDef) else FUNCTION_LINES)]  # type: ignore[attr-defined]
    assert long == []


def test_only_exceptions_have_more_than_one_base():
    """A class of the app has one base at most: an exception may also name the built-in kind it
    is (``AppError, ValueError``), nothing else mixes classes together."""
    import importlib

    mixed = []
    for path in _modules():
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and len(node.bases) > 1 and not issubclass(getattr(module, node.name), BaseException):
                mixed.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert mixed == []
    assert len(_definitions()) > 500  # the checks read the whole app
