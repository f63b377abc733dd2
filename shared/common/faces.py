"""Package faces that cost nothing until used.

Each package's ``__init__.py`` names what it offers (``__all__``) and, for the type checker, where
each name lives; at run time a name is imported from its module on first use (PEP 562's module
``__getattr__``). So importing ``shared.clients`` for the Graph client does not also load
azure-identity and azure-data-tables, and the cold start of a sync pays only for the modules the
sync uses (bench/RESULTS.md, cold start), however many names a package offers.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def face(package: str, exports: Mapping[str, str]) -> Callable[[str], object]:
    """The module ``__getattr__`` of ``package``: ``exports`` maps each name it offers to the
    module (in the package) that defines it; a name that is the module's own is that module."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(f"{package}.{module}")
        return loaded if module == name else getattr(loaded, name)

    return __getattr__
