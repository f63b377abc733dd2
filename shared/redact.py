"""What of a URL may be shown: one function for every log record, history row and HTTP answer.

A URL's user-info (``https://user:password@host``) and its query (a Power Automate trigger's
``sig``, a SAS token, an operation's token) are credentials; its scheme, host, port and path are
what an operator needs to tell which endpoint failed. ``redact_url`` keeps those only, and
``redact_text`` does it to every URL inside free text (an exception's message, urllib3's
``with url: /path?query``). The one URL that keeps its query is the poll ``Location`` handed to the
caller who started an operation (shared/api.py): it is built for that answer and passes no log.

``install_log_redaction`` applies ``redact_text`` to every log record of this app and of the HTTP
libraries it uses (message, arguments, and the formatted exception), before any handler sees it.
"""
from __future__ import annotations

import logging
import re
import threading
import traceback
from typing import Any

# scheme://authority, then the path, then an optional query and fragment.
# A backslash ends it too: in JSON text it escapes the quote that closes the string.
_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]{0,15}://)([^\s/?#\"'<>\\]*)([^\s?#\"'<>\\]*)([?#][^\s\"'<>\\]*)?")
# A bare path with a query where a URL stands alone in text, as urllib3 writes it
# ("Max retries exceeded with url: /notify?sig=..."); a path after a space or a quote.
_PATH_QUERY = re.compile(r"(?:(?<=[\s'\"(=])|^)(/[^\s?#\"'<>\\]*)[?#][^\s\"'<>)\\]*")
# The loggers whose records may carry a URL: the app's own, and the libraries that log requests.
REDACTED_LOGGERS = ("shared", "function_app", "intune_sync", "urllib3", "requests", "azure", "msal")


def redact_url(url: str) -> str:
    """``url`` without its user-info, query and fragment: ``scheme://host[:port]/path``."""
    return _PATH_QUERY.sub(r"\1", _URL.sub(_keep_host_and_path, url))


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (redact_url)."""
    if "/" not in text:  # no URL and no path: the common case costs one scan
        return text
    return redact_url(text)


def _keep_host_and_path(match: re.Match[str]) -> str:
    scheme, authority, path = match.group(1), match.group(2), match.group(3)
    return f"{scheme}{authority.rpartition('@')[2]}{path}"


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
