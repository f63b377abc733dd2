"""What of a URL may be shown: one function for every log record, history row and HTTP answer.

A URL's user-info (``https://user:password@host``, even with ``/ ? #`` in the password), its query
(a Power Automate trigger's ``sig``, a SAS token, an operation's token) and its path parameters
(``/hook;sig=...``) are credentials; its scheme, host, port and path are
what an operator needs to tell which endpoint failed. ``redact_url`` keeps those only, and
``redact_text`` does it to every URL inside free text (an exception's message, urllib3's
``with url: /path?query``). The one URL that keeps its query is the poll ``Location`` handed to the
caller who started an operation (shared/api/routes.py): it is built for that answer and passes no log.

``install_log_redaction`` applies ``redact_text`` to every log record of this app and of the HTTP
libraries it uses (message, arguments, and the formatted exception), before any handler sees it.
"""
from __future__ import annotations

import logging
import re
import threading
import traceback
from typing import Any

# scheme:// and the rest of the URL's token: it ends at whitespace, a quote, < or >, or a
# backslash (in JSON text a backslash escapes the quote that closes the string).
_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]{0,15}://)([^\s\"'<>\\]*)")
# A bare path with a query where a URL stands alone in text, as urllib3 writes it
# ("Max retries exceeded with url: /notify?sig=..."); a path after a space or a quote.
_PATH_QUERY = re.compile(r"(?:(?<=[\s'\"(=])|^)(/[^\s?#\"'<>\\]*)[?#][^\s\"'<>)\\]*")
# The loggers whose records may carry a URL: the app's own, and the libraries that log requests.
REDACTED_LOGGERS = ("shared", "function_app", "intune_sync", "urllib3", "requests", "azure", "msal")


def redact_url(url: str) -> str:
    """``url`` (one URL, such as a setting's value) without its user-info, query, fragment and path
    parameters: ``scheme://host[:port]/path``. Being one URL, its user-info runs to its last ``@``
    whatever the password holds, a space or a quote too."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        before, _, after = rest.rpartition("@")
        marker = _MARKER if _marked(before) or re.search(r"[\s\"'<>\\]", before) else ""
        return _redact(f"{scheme}://{marker}{after}")
    return _redact(url)


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted: each URL ends at whitespace, a quote, ``<``, ``>``
    or a backslash, and loses its user-info (to its last ``@``), query, fragment and path
    parameters; a bare path (``/x?sig=...``) loses its query."""
    if "/" not in text:  # no URL and no path: the common case costs one scan
        return text
    return _redact(text)


def _redact(text: str) -> str:
    return _PATH_QUERY.sub(r"\1", _URL.sub(_keep_host_and_path, text))


_MARKER = "***@"  # where text before a URL's host was dropped that was not plainly user-info


def _marked(before: str) -> bool:
    """Whether the text dropped before a URL's last ``@`` needs the marker: it held what ends an
    authority (so the host that remains may not be the one the URL named), or it is the marker."""
    return before == _MARKER[:-1] or re.search(r"[/?#]", before) is not None


def _keep_host_and_path(match: re.Match[str]) -> str:
    """The URL's scheme, host, port and path. Its user-info runs to the token's last ``@``: a
    password may hold ``/ ? #`` unencoded (``https://u:sec/ret@host``), which no parser reads as
    user-info, so whatever precedes that ``@`` is dropped. Where that text held a ``/ ? #`` as well
    (``https://host/users/a@b.example``), what was dropped is marked, so that the host that remains
    is not taken for the one the URL named: losing a piece of a logged URL is better than leaking."""
    scheme, rest = match.group(1), match.group(2)
    before, at, rest = rest.rpartition("@")
    marker = _MARKER if at and _marked(before) else ""
    # The query and fragment (signatures, tokens) and path parameters (/hook;sig=..., or the rest
    # of a connection string after its TableEndpoint=...;): dropped with all that follows them.
    return f"{scheme}{marker}{re.split(r'[?#;]', rest, maxsplit=1)[0]}"


class _Redacting:
    """A log record factory that redacts the records of REDACTED_LOGGERS, wrapping whichever
    factory was in place (the Functions worker's, a test's)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.inner(*args, **kwargs)
        if record.name.split(".")[0] in REDACTED_LOGGERS:
            _redact_record(record)
        return record


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it itself, untouched
        return
    record.msg, record.args = redact_text(message), ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        # Formatted now, so that handlers use this text rather than format the exception again.
        record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))


_install_lock = threading.Lock()


def install_log_redaction() -> None:
    """Redact every later record of REDACTED_LOGGERS; once per process, whoever calls it."""
    with _install_lock:
        if not isinstance(logging.getLogRecordFactory(), _Redacting):
            logging.setLogRecordFactory(_Redacting(logging.getLogRecordFactory()))
