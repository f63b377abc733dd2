"""Graph JSON batching (``POST /{version}/$batch``): up to 20 requests in one round trip, each
answered on its own (status, headers, body), in the order sent.

Inner requests are built by our code from validated input only, and checked here as
GraphClient checks a direct request: a path of plain segments (and ``microsoft.graph.<type>``
casts), query options from a fixed list, each value matching its pattern (the same patterns as
GraphClient's own query check). The batch itself is one POST: a caller that took write budget for
its inner writes sends it ``claimed``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from ..common import GraphUnavailable, UnsafeGraphPath, parse_retry_after, utcnow
from .safety import INNER_PATH, safe_query

if TYPE_CHECKING:
    from .graph import GraphClient

MAX_BATCH = 20  # Graph's limit of requests in one batch


@dataclass(frozen=True)
class BatchRequest:
    """One request of a batch: ``path`` relative to the version (``/deviceManagement/...``)."""

    id: str
    method: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        if not INNER_PATH.match(self.path):
            raise UnsafeGraphPath(f"refusing to batch a request with an unsafe path: {self.path!r}")
        for name, value in self.params.items():
            if not safe_query(name, value):
                raise UnsafeGraphPath(f"refusing to batch a request with an unsafe query option: {name}={value!r}")
        query = urlencode(dict(self.params), quote_via=quote, safe="$,'") if self.params else ""
        return {"id": self.id, "method": self.method, "url": self.path + (f"?{query}" if query else "")}


@dataclass(frozen=True)
class BatchAnswer:
    """One inner answer: its status, headers and body as Graph gave them."""

    id: str
    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def retry_after_seconds(self) -> float | None:
        found = {k.lower(): v for k, v in self.headers.items()}.get("retry-after")
        return parse_retry_after(str(found) if found is not None else None, utcnow())

    @property
    def error_code(self) -> str:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("code") or "") if isinstance(error, dict) else ""

    @property
    def error_message(self) -> str:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("message") or "")[:500] if isinstance(error, dict) else ""


def send_batch(graph: GraphClient, requests: Sequence[BatchRequest], *, version: str = "v1.0", claimed: bool = False,
               once: bool = False, deadline: float | None = None) -> list[BatchAnswer]:
    """Send up to MAX_BATCH requests as one batch; their answers in the order of ``requests``.
    A batch Graph did not answer 200 raises (GraphUnavailable for a 429 or 5xx, with Graph's
    Retry-After); an inner request Graph did not answer is reported as a 503."""
    if not 1 <= len(requests) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH} requests, not {len(requests)}")
    body = {"requests": [r.to_json() for r in requests]}
    response = graph.request("POST", f"/{version}/$batch", json=body, deadline=deadline, once=once, claimed=claimed)
    response.raise_for_status("a $batch request")
    answers = response.body.get("responses") if isinstance(response.body, dict) else None
    if not isinstance(answers, list):
        raise GraphUnavailable("Graph answered a $batch request without its responses",
                               client_request_id=response.client_request_id)
    by_id = {str(a.get("id")): a for a in answers if isinstance(a, dict)}
    found = []
    for request in requests:
        answer = by_id.get(request.id)
        if answer is None:
            found.append(BatchAnswer(request.id, 503))
            continue
        headers = answer.get("headers") if isinstance(answer.get("headers"), dict) else {}
        status = answer.get("status")
        found.append(BatchAnswer(request.id, status if isinstance(status, int) else 503, answer.get("body"), headers or {}))
    return found
