"""shared/ is packages with public faces (issue 20, item 2), checked on the source: each package's
``__init__.py`` declares ``__all__``; another package imports only names in it, never a private
name and never a module inside it; packages import each other in one direction only; and no
modules import each other in a circle, counting imports made only for typing or inside a function
(a cycle that is harmless today becomes an import error when one of them moves to the top)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

from conftest import ROOT

SHARED = Path(ROOT) / "shared"
# Lowest first: a package may import only packages before it (docs/architecture.md, Packages).
LAYERS = ("common", "clients", "engine", "onboarding", "devicesync", "assembly", "tenancy", "runtime", "api")


def modules() -> dict[str, ast.Module]:
    """Every module by dotted name under shared: "engine.pipeline", "engine" (its __init__), "" (shared's)."""
    found = {}
    for path in sorted(SHARED.rglob("*.py")):
        parts = path.relative_to(SHARED).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def package_of(module: str) -> str:
    return module.split(".")[0]


def imports(module: str, tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) of every import in ``tree`` that reaches into shared, at any
    depth (inside functions and ``if TYPE_CHECKING:`` too), relative or absolute."""
    is_package = (SHARED / module.replace(".", "/") / "__init__.py").exists() if module else True
    here = module.split(".") if module else []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and (node.module == "shared" or node.module.startswith("shared.")):
                target = node.module[len("shared."):] if node.module != "shared" else ""
            else:
                continue
            found.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name[len("shared."):], [], node.lineno) for a in node.names if a.name.startswith("shared.")]
    return found


def declared(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return [ast.literal_eval(e) for e in node.value.elts] if isinstance(node.value, (ast.List, ast.Tuple)) else None
    return None


def test_shared_is_the_declared_packages_and_each_declares_what_it_offers():
    found = modules()
    packages = {name for name in found if name and "." not in name and (SHARED / name / "__init__.py").exists()}
    assert packages == set(LAYERS)
    assert [name for name in found if name and "." not in name and name not in packages] == []  # no loose modules
    for package in LAYERS:
        offered = declared(found[package])
        assert offered, f"shared/{package}/__init__.py declares no __all__"
        # Each name offered is imported for the type checker and found at run time by the face
        # (common/faces.py: the module defining it is imported on first use).
        typed = {a.asname or a.name for node in ast.walk(found[package]) if isinstance(node, ast.ImportFrom)
                 and node.level == 1 for a in node.names} - {"face"} | ({"face"} if package == "common" else set())
        assert set(offered) == typed, f"{package}: __all__ and the typed imports differ: {set(offered) ^ typed}"
        faced = importlib.import_module(f"shared.{package}")
        assert all(getattr(faced, name) is not None for name in offered)


def test_other_packages_import_only_what_a_package_offers():
    found = modules()
    offered = {package: set(declared(found[package]) or ()) for package in LAYERS}
    wrong = []
    for module, tree in found.items():
        for target, names, line in imports(module, tree):
            if not module or package_of(target) == package_of(module):
                continue
            where = f"{module}:{line}"
            if "." in target:
                wrong.append(f"{where} imports the module {target} inside another package")
            wrong += [f"{where} imports {target}.{n}, not in its __all__" for n in names if n not in offered[target]]
            wrong += [f"{where} imports the private {target}.{n}" for n in names if n.startswith("_")]
    assert wrong == []


def test_packages_import_only_the_packages_below_them():
    found = modules()
    upward = [f"{module}:{line} ({package_of(module)}) imports {target}"
              for module, tree in found.items() if module
              for target, _, line in imports(module, tree)
              if target and LAYERS.index(package_of(target)) > LAYERS.index(package_of(module))]
    assert upward == []


def graph() -> dict[str, set[str]]:
    """Which module imports which: ``from ..engine import X`` is an edge to the engine's
    __init__ (which imports its modules); ``from . import telemetry`` one to that module."""
    found = modules()
    edges: dict[str, set[str]] = {name: set() for name in found}
    for module, tree in found.items():
        for target, names, _ in imports(module, tree):
            submodules = {f"{target}.{n}" if target else n for n in names} & set(found)
            edges[module] |= submodules or {target}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state, path = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_no_modules_import_each_other_in_a_circle():
    assert cycles(graph()) == []


def test_the_checks_find_what_they_look_for():
    """The checks see real imports (so that an empty finding means something) and would catch each
    kind of fault."""
    edges = graph()
    assert "engine" in edges["engine.pipeline"] or "clients" in edges["engine.pipeline"]
    assert {"engine.pipeline", "engine.state"} <= edges["engine"]
    assert sum(len(e) for e in edges.values()) > 100
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    tree = ast.parse("from ..engine.pipeline import SyncPipeline\nif True:\n    from ..tenancy import _private\n")
    assert imports("clients.graph", tree) == [("engine.pipeline", ["SyncPipeline"], 1), ("tenancy", ["_private"], 3)]


def test_a_package_face_loads_only_the_module_of_the_name_asked_for():
    """Importing a package costs nothing until a name is used; then only that name's module loads
    (in a fresh process: this one has loaded everything)."""
    import subprocess
    import sys

    code = ("import sys; from shared.clients import GraphClient; "
            "print(sorted(m for m in sys.modules if m.startswith('shared.clients') or m.startswith('azure.identity')))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "['shared.clients', 'shared.clients.budget', 'shared.clients.graph', 'shared.clients.safety', 'shared.clients.transport']"
