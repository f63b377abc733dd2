"""Identifiers, in one place: how a GUID (a tenant, item, operation or import job id) is checked
before it reaches a URL, a table key or a setting, and how the app makes new ids.

Ids that only ever come from us and never go to Graph (lease owners, pending sync ids, step
owners) are random hex; ids that callers see and send back (operations, import jobs) are GUIDs.
"""
from __future__ import annotations

import re
import uuid

from .errors import InvalidItemId

_GUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def parse_guid(value: str) -> str:
    """Accept only a canonical GUID; returns it lower-case. Anything else never reaches a URL."""
    try:
        parsed = uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidItemId(f"{value!r} is not a GUID") from None
    canonical = str(parsed)
    if value.lower() != canonical:  # refuse braces, urn: prefixes, missing dashes
        raise InvalidItemId(f"{value!r} is not a GUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
    return canonical


def is_guid(value: str) -> bool:
    """Whether ``value`` is a GUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (any case)."""
    return _GUID.fullmatch(value) is not None


def new_guid() -> str:
    """A new id that callers see and send back: an operation's, an import job's."""
    return str(uuid.uuid4())


def new_hex_id() -> str:
    """A new id that stays inside the app: a lease owner, a pending sync, a step's claim."""
    return uuid.uuid4().hex
