"""docs/architecture.md names only what exists (issue 20, item 6): every file and module, setting,
telemetry event and field, notification, error class and ``module.name`` it names is checked
against the code, the way tests/test_monitoring.py checks the monitoring queries against
telemetry.FIELDS / EVENTS. The error list names every AppError subclass, and the telemetry
events every event the app logs. Each kind of reference must be found a minimum number of times,
so that a change to the doc's style cannot make the check pass by finding nothing."""
from __future__ import annotations

import ast
import importlib
import re
from functools import cache

from conftest import ROOT

from shared.clients import notify
from shared.common import telemetry
from shared.common.settings import DEFAULTS

DOC = ROOT / "docs" / "architecture.md"
SHARED = ROOT / "shared"
# Every module of the app by its name (names are unique across the packages): name -> dotted path
# under shared ("engine.pipeline"), as the doc names a module by its name alone.
MODULES = {path.stem: ".".join(path.relative_to(SHARED).with_suffix("").parts)
           for path in SHARED.rglob("*.py") if path.stem != "__init__"}

_CODE = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+(?:\.[\w-]+)*\.(?:py|json|bicep|md))\b")
_UPPER = re.compile(r"(?<!\w)([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b")
_DOTTED = re.compile(r"(?<![\w.])([A-Za-z_]\w*)((?:\.(?:[A-Za-z_]\w*|\*))+)")
_CLASS = re.compile(r"[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+")  # CamelCase: `Date` (a header) is no class
_SEP = r"(?:,\s*|\s+and\s+|\s+or\s+)"
_RUN = rf"((?:`\w+`{_SEP})*`\w+`)"  # `a`, `b` and `c`
# "the `sync` event", "the telemetry events `sync`, `deferred` and `watch`", "its `syncCompleted` and
# `syncFailed` notifications": a name or a run of names before or after its kind.
_EVENTS = (re.compile(rf"{_RUN}\s+events?\b"), re.compile(rf"\btelemetry\s+events?\s+{_RUN}"))
_FIELDS = (re.compile(rf"{_RUN}\s+fields?\b"), re.compile(rf"\btelemetry\s+fields?\s+{_RUN}"))
_NOTIFICATIONS = (re.compile(rf"{_RUN}\s+notifications?\b"), re.compile(rf"\bnotifications?\s+{_RUN}"))


@cache
def _tree(module: str) -> ast.Module:
    return ast.parse(_source(module))


def _source(module: str) -> str:
    return (SHARED / f"{MODULES[module].replace('.', '/')}.py").read_text()


@cache
def classes() -> dict[str, tuple[str, list[str]]]:
    """Every class defined at the top level of a shared module: name -> (module, base names)."""
    found = {}
    for module in sorted(MODULES):
        for node in _tree(module).body:
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases]
                found[node.name] = (module, bases)
    return found


def app_errors() -> set[str]:
    """AppError and every class that derives from it, in any shared module."""
    errors = {"AppError"}
    while True:
        more = {name for name, (_, bases) in classes().items() if errors & set(bases)} - errors
        if not more:
            return errors
        errors |= more


@cache
def app_settings() -> set[str]:
    """The settings the code reads (settings.DEFAULTS, and the names settings.py reads from the
    environment itself) and the app settings the Bicep sets (infra/main.bicep, infra/app/api.bicep)."""
    read = set(re.findall(r"""["']([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)["']""", _source("settings")))
    bicep = {name for path in (ROOT / "infra" / "main.bicep", ROOT / "infra" / "app" / "api.bicep")
             for name in re.findall(r"^\s*([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+):", path.read_text(), re.M)}
    return set(DEFAULTS) | read | bicep


def constants() -> set[str]:
    """Module-level names of the shared modules (TARGET_COOLDOWNS, NUMERIC_SETTINGS, ...)."""
    names = set()
    for module in MODULES:
        for node in _tree(module).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _resolve(owner: object, parts: list[str]) -> bool:
    for part in parts:
        if part == "*":
            return True  # `targets.*.sync`: any of them
        if not hasattr(owner, part):
            # An instance attribute set in a dataclass or __init__ is no class attribute: look in its source.
            annotations = getattr(owner, "__annotations__", {})
            return part in annotations or bool(isinstance(owner, type) and re.search(
                rf"\bself\.{re.escape(part)}\s*[:=]", _source(owner.__module__.split('.')[-1])))
        owner = getattr(owner, part)
    return True


def _named(patterns: tuple[re.Pattern[str], ...], text: str) -> set[str]:
    return {name for pattern in patterns for run in pattern.findall(text) for name in re.findall(r"`(\w+)`", run)}


def references(text: str) -> dict[str, set[str]]:
    """What ``text`` names, by kind."""
    code = _CODE.findall(text)
    mermaid = re.findall(r"```mermaid\n(.*?)```", text, re.S)
    spans = code + mermaid
    paths = set(_PATH.findall(text))
    dotted = set()
    for span in spans:
        for head, tail in _DOTTED.findall(re.sub(_PATH, " ", span)):
            if head in MODULES or head in classes():
                dotted.add(head + tail)
    return {
        "modules": {p for p in paths if p.endswith(".py")},
        "files": {p for p in paths if not p.endswith(".py")},
        "settings": {n for n in _UPPER.findall(text) if n not in constants()},
        "constants": {n for n in _UPPER.findall(text) if n in constants()},
        "attributes": dotted,
        "classes": {s for s in code if _CLASS.fullmatch(s)},
        "events": _named(_EVENTS, text),
        "fields": _named(_FIELDS, text),
        "notifications": _named(_NOTIFICATIONS, text),
    }


def _file_exists(path: str) -> bool:
    if "/" not in path and path.endswith(".py") and path[:-3] in MODULES:
        return True  # a module by its name (`pipeline.py`): names are unique across the packages
    return any((base / path).is_file() for base in (ROOT, SHARED, ROOT / "docs"))


def problems(text: str) -> list[str]:
    """Everything ``text`` names that the code does not have."""
    refs = references(text)
    found = []
    found += [f"no module {m}" for m in sorted(refs["modules"]) if not _file_exists(m)]
    found += [f"no file {f}" for f in sorted(refs["files"]) if not _file_exists(f)]
    found += [f"unknown setting {s}" for s in sorted(refs["settings"]) if s not in app_settings()]
    for name in sorted(refs["attributes"]):
        head, *parts = name.split(".")
        owner: object = (importlib.import_module(f"shared.{MODULES[head]}") if head in MODULES
                         else getattr(importlib.import_module(f"shared.{MODULES[classes()[head][0]]}"), head))
        if not _resolve(owner, parts):
            found.append(f"no {name}")
    found += [f"no class {c}" for c in sorted(refs["classes"]) if c not in classes()]
    found += [f"unknown telemetry event {e!r}" for e in sorted(refs["events"]) if e not in telemetry.EVENTS]
    found += [f"unknown telemetry field {f!r}" for f in sorted(refs["fields"]) if f not in telemetry.FIELDS]
    found += [f"unknown notification {n!r}" for n in sorted(refs["notifications"]) if n not in notify.EVENTS]
    return found


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC.read_text(), re.S | re.M)
    assert match, title
    return match.group(1)


def test_the_architecture_doc_names_only_what_exists():
    assert problems(DOC.read_text()) == []


def test_the_check_finds_enough_of_every_kind_of_reference():
    refs = references(DOC.read_text())
    minimum = {"modules": 30, "files": 7, "settings": 8, "constants": 2, "attributes": 40, "classes": 15,
               "events": len(telemetry.EVENTS), "fields": 2, "notifications": 3}
    assert {kind: len(refs[kind]) >= least for kind, least in minimum.items()} == dict.fromkeys(minimum, True), {
        kind: sorted(refs[kind]) for kind in minimum}


def test_the_diagram_draws_the_modules_a_call_goes_through():
    diagram = re.search(r"```mermaid\n(.*?)```", DOC.read_text(), re.S)
    assert diagram
    drawn = set(re.findall(r"(\w+)\.py", diagram.group(1)))
    assert {"function_app", "routes", "errors", "handlers", "messages", "process", "service", "pipeline", "decisions", "recording",
            "deferred", "follow", "status", "importjob", "importclaim", "targets", "graph", "state", "storage",
            "ids", "redact", "customers", "registry", "retention"} <= drawn


def test_the_collaborators_table_gives_each_collaborator_what_its_constructor_takes():
    """The table of the service's collaborators is drawn from the code: each row's class takes
    exactly the arguments the row names, in that order; and the service builds every one of them."""
    import inspect

    rows = re.findall(r"^\| `([\w()]+)` \| `(\w+)\.(\w+)` \| (.+) \|$", _section("The service and its collaborators"), re.M)
    assert len(rows) >= 7
    assembly = _source("service") + _source("ondemand")
    for attribute, module, name, given in rows:
        cls = getattr(importlib.import_module(f"shared.{MODULES[module]}"), name)
        taken = list(inspect.signature(cls.__init__).parameters)[1:]
        assert re.findall(r"`(\w+)`", given) == taken, name
        assert f"{name}(" in assembly, f"the assembly does not build {name}"
        assert attribute.endswith("()") or f"self.{attribute} = {name}(" in assembly, attribute


def test_the_callables_the_doc_names_are_the_ones_the_service_gives(make_service):
    """The doc's "the callables among them" is what a built service holds: each callable a
    collaborator was given is the named method of the named collaborator."""
    svc = make_service()
    given = {
        "Recorder notify": (svc.recorder._notify, svc.notices.send),
        "Recorder remember": (svc.recorder._remember, svc.pipeline.memory.remember),
        "Deferrals target": (svc.deferred.target, svc.targets.named),
        "Deferrals notify": (svc.deferred.moves._notify, svc.notices.send),
        "Follower sync": (svc.follower.sync, svc.pipeline.sync),
        "Follower repair_jobs": (svc.follower.repair_jobs, svc.jobs.repair),
        "JobRepairs": (svc.jobs.repairs, (svc.onboarding.repair, svc.devices.repair)),
        "Follower sweep": (svc.follower.sweep, svc.retention.sweep),
        "onboarding sync_at": (svc.onboarding.sync_at, svc.deferred.sync_at),
        "onboarding target": (svc.onboarding.target, svc.targets.named),
    }
    assert {what: held == expected for what, (held, expected) in given.items()} == dict.fromkeys(given, True)
    assert svc.pipeline.recorder is svc.recorder and svc.pipeline.deferred is svc.deferred
    assert svc.follower.recorder is svc.recorder and svc.follower.deferred is svc.deferred
    text = _section("The service and its collaborators")
    for named in ("`notify` is `notify.ServiceNotifier.send`", "`remember` is\n`pipeline.RefusalMemory.remember`",
                  "`target` is `targets.Targets.named`", "`sync` is `SyncPipeline.sync`", "`sync_at` is `Deferrals.sync_at`",
                  "`sweep` is `Retention.sweep`", "`repair_jobs` is `JobRepairs.repair`"):
        assert named in text, named


def test_the_error_list_names_every_app_error():
    named = {name.split(".")[-1] for name in _CODE.findall(_section("Errors"))}
    assert app_errors() - named == set()
    assert len(app_errors()) >= 15


def test_every_telemetry_event_is_named():
    assert set(telemetry.EVENTS) <= references(DOC.read_text())["events"]


def test_the_check_reports_a_made_up_name_of_every_kind():
    made_up = (
        "`shared/nosuch.py` and `nosuch.py`; `docs/nosuch.md`, `connector/nosuch.swagger.json`; `NO_SUCH_SETTING`; `decisions.no_such_rule`, "
        "`pipeline.SyncPipeline._no_such_step`; `NoSuchError`; the `debug` event; the telemetry fields `unit` and "
        "`accessToken`; the `syncExploded` notification"
    )
    assert problems(made_up) == [
        "no module nosuch.py", "no module shared/nosuch.py", "no file connector/nosuch.swagger.json", "no file docs/nosuch.md", "unknown setting NO_SUCH_SETTING",
        "no decisions.no_such_rule", "no pipeline.SyncPipeline._no_such_step", "no class NoSuchError",
        "unknown telemetry event 'debug'", "unknown telemetry field 'accessToken'", "unknown notification 'syncExploded'",
    ]
    real = "`shared/common/ids.py`, `IMPORT_STEP_CLAIM_SECONDS`, `storage.read_change_write`, `StepLost`, the `sync` event"
    assert problems(real) == []
