"""A fault-injecting HTTP proxy, put in front of Azurite by the chaos tests.

Every request is forwarded to the upstream server as it came (Shared Key signatures cover the
path, not the host, so a storage client signs for the proxy exactly as for Azurite), unless a
fault matches it:

- ``fail``: answer 503 ServerBusy, as Table Storage does when it sheds load (nothing forwarded);
- ``drop``: close the connection without an answer (nothing forwarded), like a stopped Azurite;
- ``lose``: forward the request, then close the connection: the write landed, its answer is lost;
- ``busy``: forward the request, then answer 503 ServerBusy: the write landed, yet the client is
  told it did not, and retries it (a POST is retried on a 503, not on a lost connection).

Faults match on method and a piece of the path, for a number of requests or until cleared.
"""
from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .server import JsonHandler, Server

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class ProxyFault:
    action: str  # "fail", "drop", "lose" or "busy"
    method: str | None = None
    path_contains: str = ""
    times: int | None = None  # None: until cleared

    def matches(self, method: str, path: str) -> bool:
        return (self.method in (None, method)) and self.path_contains in path and (self.times is None or self.times > 0)


class FaultProxy(Server):
    def __init__(self, upstream: str, port: int = 0):
        super().__init__(_Handler, port)
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.lock = threading.Lock()
        self.faults: list[ProxyFault] = []
        self.seen: list[tuple[str, str, str]] = []  # (method, path, what happened)

    def add(self, action: str, method: str | None = None, path_contains: str = "", times: int | None = None) -> None:
        with self.lock:
            self.faults.append(ProxyFault(action, method, path_contains, times))

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def take(self, method: str, path: str) -> ProxyFault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None


class _Handler(JsonHandler):
    server: FaultProxy

    def dispatch(self) -> None:
        proxy = self.server
        body = self.read_body()
        fault = proxy.take(self.command, self.path)
        with proxy.lock:
            proxy.seen.append((self.command, self.path, fault.action if fault else "forwarded"))
        if fault and fault.action == "drop":
            self.close_connection = True
            return
        if fault and fault.action == "fail":
            self._busy()
            return
        status, headers, data = self._forward(body)
        if fault and fault.action == "lose":
            self.close_connection = True
            return
        if fault and fault.action == "busy":
            self._busy()
            return
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _busy(self) -> None:
        data = b'{"odata.error":{"code":"ServerBusy","message":{"lang":"en-US","value":"emulated outage"}}}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        proxy = self.server
        connection = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
        try:
            headers: dict[str, Any] = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()
