"""A local stand-in for the Functions host's HTTP front, for machines without Core Tools.

It loads ``function_app.app`` the documented way (``app.get_functions()`` once per process),
serves each HTTP trigger on its route under ``/api`` (literal segments take precedence over
parameters, as in the real host), runs queue triggers against their storage queue, and invokes
timer functions through the host's admin API (``POST /admin/functions/{name}``) and, when asked
(``run_timers``, the local run), on their NCRONTAB schedules. With ``console`` it prints a line per
invocation, as Core Tools does. Like ``func start``, it reads ``local.settings.json`` and does
not enforce function keys unless given one (``--function-key``). With Core Tools installed,
``func start`` serves the same app unchanged.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import posixpath
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .server import JsonHandler, Server

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("funchost")


@dataclass(frozen=True)
class Route:
    name: str
    pattern: re.Pattern[str]
    precedence: tuple[int, ...]
    methods: frozenset[str]
    anonymous: bool
    handler: Callable[..., Any]


def _compile(template: str) -> tuple[re.Pattern[str], tuple[int, ...]]:
    parts, precedence = [], []
    for segment in template.strip("/").split("/"):
        param = re.fullmatch(r"\{\*?(\w+)(?::[^}]*)?\}", segment)
        if param:
            catch_all = segment.startswith("{*")
            parts.append(f"(?P<{param.group(1)}>{'.+' if catch_all else '[^/]+'})")
            precedence.append(2 if catch_all else 1)
        else:
            parts.append(re.escape(segment))
            precedence.append(0)
    return re.compile("^" + "/".join(parts) + "$", re.IGNORECASE), tuple(precedence)


@dataclass(frozen=True)
class TimerFunction:
    name: str
    schedule: str
    handler: Callable[..., Any]


def load_timers(functions: list[Any]) -> list[TimerFunction]:
    """The timer triggers of the app's ``get_functions()``, schedules resolved."""
    return [TimerFunction(fn.get_function_name(), _resolve(fn.get_trigger().schedule), fn.get_user_function())
            for fn in functions if type(fn.get_trigger()).__name__ == "TimerTrigger"]


class TimerRunner(threading.Thread):
    """What the host does for a timer trigger: run the function at each time its schedule names."""

    def __init__(self, function: TimerFunction, console: bool = False):
        super().__init__(name=f"timer-{function.name}", daemon=True)
        self.function, self.console = function, console
        self.stopping = threading.Event()

    def run(self) -> None:
        from datetime import UTC, datetime

        from azure.functions.timer import TimerRequest

        from .ncrontab import Schedule

        schedule = Schedule(self.function.schedule)
        while True:
            due = schedule.next_after(datetime.now(UTC))
            if self.stopping.wait(max(0.0, (due - datetime.now(UTC)).total_seconds())):
                return
            try:
                _invoke(f"timer {self.function.name}", self.console, self.function.handler, TimerRequest(past_due=False))
            except Exception:  # as the host does: the tick failed, the schedule goes on
                log.exception("timer %s failed", self.function.name)


def _invoke(what: str, console: bool, handler: Callable[..., Any], *args: Any,
            ending: Callable[[Any], str] = lambda _: "") -> Any:
    """Run a function; with ``console``, print one line saying how it went (``what``, then
    ``ending(result)``), followed by the events it logged."""
    if not console:
        return handler(*args)
    from . import console as out

    started, said = time.perf_counter(), [" failed"]
    with out.invocation(lambda: f"{what}{said[0]} ({(time.perf_counter() - started) * 1000:.0f} ms)"):
        try:
            result = handler(*args)
        except Exception as exc:
            said[0] = f" failed: {type(exc).__name__}: {exc}"
            raise
        said[0] = ending(result)
    return result


@dataclass(frozen=True)
class QueueFunction:
    name: str
    queue_name: str
    connection: str
    handler: Callable[..., Any]


def _resolve(value: str) -> str:
    """The host's %SETTING% binding expressions."""
    return re.sub(r"%(\w+)%", lambda m: os.environ.get(m.group(1), ""), value)


def load_routes(app: Any, functions: list[Any] | None = None) -> tuple[list[Route], dict[str, Callable[..., Any]], list[QueueFunction]]:
    """HTTP routes (most specific first), the other functions by name, and the queue triggers.
    ``functions``: the app's ``get_functions()`` when the caller already has them."""
    routes, others, queues = [], {}, []
    for fn in app.get_functions() if functions is None else functions:  # once per process, as documented
        trigger = fn.get_trigger()
        user_function = fn.get_user_function()
        if type(trigger).__name__ == "QueueTrigger":
            queues.append(QueueFunction(fn.get_function_name(), _resolve(trigger.queue_name), trigger.connection, user_function))
        if type(trigger).__name__ != "HttpTrigger":
            others[fn.get_function_name()] = user_function
            continue
        pattern, precedence = _compile(trigger.route or fn.get_function_name())
        methods = frozenset(str(getattr(m, "value", m)).upper() for m in (trigger.methods or ["GET", "POST"]))
        auth = str(getattr(trigger.auth_level, "value", trigger.auth_level) or "function").lower()
        routes.append(Route(fn.get_function_name(), pattern, precedence, methods, auth == "anonymous", user_function))
    routes.sort(key=lambda r: r.precedence)
    return routes, others, queues


class QueuePoller(threading.Thread):
    """What the host does for a queue trigger: take visible messages, run the function, delete
    the message on success; after five failed deliveries, move it to ``<queue>-poison``."""

    def __init__(self, function: QueueFunction, interval: float = 0.2, max_dequeue: int = 5, console: bool = False):
        super().__init__(name=f"queue-{function.name}", daemon=True)
        self.function, self.interval, self.max_dequeue, self.console = function, interval, max_dequeue, console
        self.stopping = threading.Event()

    def run(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

        connection = os.environ.get(self.function.connection, "")
        if "UseDevelopmentStorage=true" in connection.replace(" ", ""):
            from shared.common.settings import AZURITE_CONNECTION_STRING

            connection = AZURITE_CONNECTION_STRING
        if "QueueEndpoint=" not in connection and "AccountName=" not in connection:
            log.warning("queue trigger %s: the local host needs a storage connection string", self.function.name)
            return
        codecs = dict(message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy())
        queue = QueueClient.from_connection_string(connection, self.function.queue_name, **codecs)
        poison = QueueClient.from_connection_string(connection, self.function.queue_name + "-poison", **codecs)
        while not self.stopping.wait(self.interval):
            try:
                for message in queue.receive_messages(messages_per_page=16, visibility_timeout=60):
                    self.deliver(queue, poison, message)
            except ResourceNotFoundError:
                continue  # no queue yet: nothing has been deferred
            except Exception:
                log.exception("queue trigger %s: polling failed", self.function.name)

    def deliver(self, queue: Any, poison: Any, message: Any) -> None:
        import azure.functions as func

        try:
            _invoke(f"queue {self.function.name} (delivery {message.dequeue_count})", self.console, self.function.handler,
                    func.QueueMessage(id=message.id, body=message.content.encode(), pop_receipt=message.pop_receipt))
        except Exception:
            log.exception("queue trigger %s failed (delivery %s)", self.function.name, message.dequeue_count)
            if message.dequeue_count >= self.max_dequeue:
                from azure.core.exceptions import ResourceExistsError

                try:
                    poison.create_queue()
                except ResourceExistsError:
                    pass
                poison.send_message(message.content)
                queue.delete_message(message)
            return
        queue.delete_message(message)


def load_local_settings(path: Path = ROOT / "local.settings.json") -> None:
    """Like Core Tools: Values from local.settings.json become environment variables."""
    if path.exists():
        values = json.loads(path.read_text()).get("Values", {})
        for name, value in values.items():
            os.environ.setdefault(name, str(value))


class FunctionHost(Server):
    """``run_timers``: run timer functions on their schedules (the local run; tests invoke them).
    ``console``: print a line per invocation. ``admin``: extra ``POST /admin/<name>`` actions
    (the local run's ``reset``)."""

    def __init__(self, app: Any, port: int = 7071, function_key: str | None = None, *, run_timers: bool = False,
                 console: bool = False, admin: dict[str, Callable[[], Any]] | None = None):
        super().__init__(_Handler, port)
        functions = app.get_functions()  # once per process, as documented
        self.routes, self.others, queues = load_routes(app, functions)
        self.function_key = function_key
        self.console = console
        self.admin = admin or {}
        self.pollers = [QueuePoller(q, console=console) for q in queues]
        self.timers = [TimerRunner(t, console=console) for t in load_timers(functions)] if run_timers else []

    def start(self) -> FunctionHost:
        super().start()
        for worker in [*self.pollers, *self.timers]:
            worker.start()
        return self

    def stop(self) -> None:
        workers: list[QueuePoller | TimerRunner] = [*self.pollers, *self.timers]
        for worker in workers:
            worker.stopping.set()
        super().stop()


class _Handler(JsonHandler):
    server: FunctionHost

    def dispatch(self) -> None:
        import azure.functions as func

        raw = urlsplit(self.path)
        path = posixpath.normpath(raw.path) if raw.path not in ("", "/") else "/"  # drops dot segments, as Kestrel does
        body = self.read_body()
        if path.startswith("/admin/functions/") and self.command == "POST":
            return self.invoke_other(path.rsplit("/", 1)[-1])
        if path.startswith("/admin/") and path[len("/admin/"):] in self.server.admin and self.command == "POST":
            action = self.server.admin[path[len("/admin/"):]]
            return self.send_json(200, _invoke(f"POST {path}", self.server.console, action, ending=lambda _: " -> 200"))
        if not path.startswith("/api/"):
            return self.send_json(404, {"error": {"code": "NotFound", "message": "no such route"}})
        relative = path[len("/api/"):]
        allowed: set[str] = set()
        for route in self.server.routes:
            match = route.pattern.match(relative)
            if match:
                allowed |= route.methods
            if not match or self.command not in route.methods:
                continue
            query = dict(parse_qsl(raw.query, keep_blank_values=True))
            if not route.anonymous and self.server.function_key:
                given = self.headers.get("x-functions-key") or query.get("code")
                if given != self.server.function_key:
                    return self.send_json(401, {"error": {"code": "Unauthorized", "message": "missing or wrong function key"}})
            request = func.HttpRequest(
                method=self.command,
                url=f"http://{self.headers.get('Host', 'localhost')}{self.path}",
                headers={k: v for k, v in self.headers.items()},
                params=query,
                route_params={k: unquote(v) for k, v in match.groupdict().items()},
                body=body,
            )
            try:
                response = _invoke(f"{self.command} {raw.path}", self.server.console, route.handler, request,
                                   ending=lambda r: f" -> {r.status_code}")
            except Exception:  # as the host does: the function failed, the caller still gets an answer
                log.exception("function %s failed", route.name)
                return self.send_json(500, {"error": {"code": "InternalServerError", "message": "the function failed"}})
            headers = dict(response.headers)
            headers.setdefault("Content-Type", response.mimetype or "text/plain")
            data = response.get_body() or b""
            self.send_response(response.status_code)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return
        if allowed:  # as ASP.NET endpoint routing does for a method no route accepts
            return self.send_json(
                405, {"error": {"code": "MethodNotAllowed", "message": f"{self.command} is not allowed here"}},
                {"Allow": ", ".join(sorted(allowed))},
            )
        self.send_json(404, {"error": {"code": "NotFound", "message": "no such route"}})

    def invoke_other(self, name: str) -> None:
        """The host's admin API for running a non-HTTP function now (e.g. the timer)."""
        from azure.functions.timer import TimerRequest

        handler = self.server.others.get(name)
        if handler is None:
            return self.send_json(404, {"error": {"code": "NotFound", "message": f"no function {name}"}})
        _invoke(f"timer {name} (admin API)", self.server.console, handler, TimerRequest(past_due=False))
        self.send_json(202)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve function_app's HTTP triggers locally")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--function-key", default=None, help="require this key on function-level routes")
    args = parser.parse_args(argv)
    load_local_settings()
    sys.path.insert(0, str(ROOT))
    import function_app

    host = FunctionHost(function_app.app, port=args.port, function_key=args.function_key)
    for poller in host.pollers:
        poller.start()
    print(f"function host on {host.base_url}/api", flush=True)
    host.serve_forever()


if __name__ == "__main__":
    main()
