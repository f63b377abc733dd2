"""The work of one device sync step on a claimed job (shared/devicesync/syncjobs.py claims it):

1. rows left ``sending`` by an earlier step that died: those its budget grant covered become
   ``queued`` (their call may have reached Graph: never sent again), the rest ``pending``;
2. a filter or group job first lists its devices, page by page, as many pages as the step's time
   allows (the resolve phase; the job row saved after the step names the next page);
3. then up to DEVICE_SYNC_STEP_DEVICES ``pending`` rows: each not yet looked up is looked up
   through $batch (not found, or synced within the job's minutes: final), and the rest are sent
   ``syncDevice`` in $batches of 20: each chunk's rows written ``sending`` under a ticket, then
   the budget taken under that ticket, then the $batch at once. A step waits for the budget only
   when the wait is shorter than ``PACE_SECONDS`` (what a message's re-delivery costs: visibility
   counts whole seconds and the host polls an idle queue every two); a longer wait ends the step, and the next one's message comes that much
   before the budget frees up (syncjobs.LEAD), sleeps the rest, and so takes the budget on time.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from ..clients import DEVICES, MAX_BATCH, BatchAnswer, BatchRequest, late, new_ticket, send_batch
from ..common import AppError, GraphUnavailable, parse_graph_time
from .selector import DEVICE_IDS, FILTER, SERIAL_NUMBERS
from .syncstore import (
    FAILED,
    NOT_FOUND,
    NOT_SUPPORTED,
    PENDING,
    QUEUED,
    SENDING,
    SKIPPED_RECENT,
    SYNC,
    DeviceRow,
    DeviceSyncJob,
    DeviceSyncStore,
)

if TYPE_CHECKING:
    from ..clients import GraphClient

SELECT = "id,deviceName,serialNumber,azureADDeviceId,lastSyncDateTime,operatingSystem"
MANAGED = "/deviceManagement/managedDevices"
PAGE = "999"
CHUNK = MAX_BATCH  # writes asked of the budget at once: one $batch, sent as soon as it is granted
STEP_SECONDS = 20.0  # a step stops starting new work after this long (the host allows minutes), or work_window()
PACE_SECONDS = 2.0  # a shorter wait for the budget is slept within the step; a longer one ends it
LATE_GRANTS = 3  # grants back too late to send (budget.late) a step drops before it ends


# Graph's answers to a listing that no retry can change: a filter it refuses, a group it does not know.
REFUSED_SELECTOR = frozenset({400, 404})


@dataclass
class StepOutcome:
    """What one step did: devices per new state, how long until the next step, 429s seen."""

    counts: Counter[str] = field(default_factory=Counter)
    wait: float = 0.0
    throttled: int = 0
    paced: float = 0.0  # seconds slept within the step waiting for the budget
    late: int = 0  # grants dropped: back too late to send (budget.late)

    def later(self, seconds: float) -> None:
        self.wait = max(self.wait, seconds)


class DeviceStep:
    """One step's work on job ``job`` (claimed by the caller), reading only the rows it works on."""

    def __init__(self, graph: GraphClient, store: DeviceSyncStore, job: DeviceSyncJob, now: datetime, step_devices: int,
                 work_seconds: float = STEP_SECONDS):
        self.graph, self.store, self.job, self.now = graph, store, job, now
        self.step_devices, self.work_seconds = step_devices, work_seconds
        self.outcome, self.started = StepOutcome(), time.monotonic()

    def run(self) -> DeviceSyncJob:
        """Do the step's share; the job as it should be saved (its phase, next page, count)."""
        self.recover()
        if self.job.phase != SYNC:
            # As many pages as the step's time allows. The sync waits for the next step: only the
            # job row saved with phase ``sync`` keeps a retried step from listing (and so resetting)
            # rows again.
            while self.job.phase != SYNC and self.time_left():
                self.job = self.resolve()
            return self.job
        rows = self.store.in_state(self.job.id, PENDING, self.step_devices)
        ready = self.look_up(rows)
        self.send(ready)
        return self.job

    def recover(self) -> None:
        """Rows an earlier step left ``sending`` (it died): the budget says which its grant covered."""
        left = self.store.in_state(self.job.id, SENDING, self.step_devices)
        granted = {t: self.graph.budget.granted_for(DEVICES, t) for t in {r.ticket for r in left if r.ticket}}
        self.save([recovered(r, granted.get(r.ticket) if r.ticket else None) for r in left])

    def time_left(self, after: float = 0.0) -> bool:
        return time.monotonic() + after - self.started < self.work_seconds

    def save(self, rows: list[DeviceRow]) -> None:
        if rows:
            rows = [replace(r, updated_at=self.now) if r.state == SENDING
                    else replace(r, updated_at=self.now, ticket=None, slot=None) for r in rows]
            self.store.save_devices(self.job.id, rows)
            self.outcome.counts.update(r.state for r in rows if r.state not in (PENDING, SENDING))

    # --- the resolve phase ---------------------------------------------------------------------

    def resolve(self) -> DeviceSyncJob:
        """One page of the filter's devices or the group's members, as device rows."""
        job = self.job
        params = dict(parse_qsl(urlsplit(job.next_link).query)) if job.next_link else None
        if job.kind == FILTER:
            query = params or {"$filter": str(job.filter), "$select": SELECT, "$top": PAGE}
            response = self.graph.request("GET", "/v1.0" + MANAGED, params=query)
            if response.status in REFUSED_SELECTOR:  # Graph refuses the filter: retrying cannot help
                return self.selector_refused(response.status, response.error_code, response.error_message)
            body = response.raise_for_status("listing managed devices").body
            body = body if isinstance(body, dict) else {}
            rows = [self.listed(job.device_count + i, d) for i, d in enumerate(body.get("value") or [])]
        else:
            query = params or {"$select": "deviceId", "$top": PAGE}
            path = f"/groups/{job.group_id}/transitiveMembers/microsoft.graph.device"
            [answer] = send_batch(self.graph, [BatchRequest("1", "GET", path, query)])
            if answer.status in REFUSED_SELECTOR:  # no such group (or Graph refuses the query): retrying cannot help
                return self.selector_refused(answer.status, answer.error_code, answer.error_message)
            if not answer.ok:
                raise GraphUnavailable(f"listing the group's devices: Graph answered {answer.status} "
                                       f"{answer.error_code}: {answer.error_message}", graph_status=answer.status)
            body = answer.body if isinstance(answer.body, dict) else {}
            rows = [DeviceRow(job.device_count + i, azure_ad_device_id=str(m.get("deviceId")))
                    for i, m in enumerate(m for m in body.get("value") or [] if m.get("deviceId"))]
        self.save(rows)
        link = body.get("@odata.nextLink")
        return replace(job, device_count=job.device_count + len(rows), next_link=link if isinstance(link, str) else None,
                       phase=job.phase if isinstance(link, str) else SYNC)

    def selector_refused(self, status: int, code: str | None, message: str | None) -> DeviceSyncJob:
        """Graph refused the job's filter or group: no more devices to list. The job goes on with
        the devices listed so far (none, if it was the first page) and says why in its message."""
        what = f"the filter {self.job.filter!r}" if self.job.kind == FILTER else f"the group {self.job.group_id}"
        return replace(self.job, next_link=None, phase=SYNC,
                       refused=f"Graph refused {what}: {status} {code or ''}: {(message or '')[:200]}".strip())

    def listed(self, index: int, device: dict[str, Any]) -> DeviceRow:
        row = DeviceRow(index, device_id=str(device.get("id")), resolved=True)
        return self.found(row, device)

    def found(self, row: DeviceRow, device: dict[str, Any]) -> DeviceRow:
        """The row with what Graph says of its device: skippedRecent if it synced within the job's minutes."""
        last = device.get("lastSyncDateTime")
        row = replace(row, device_id=str(device.get("id")), serial_number=device.get("serialNumber") or row.serial_number,
                      device_name=device.get("deviceName"), last_sync=last if isinstance(last, str) else None, resolved=True)
        synced = parse_graph_time(last)
        if self.job.skip_minutes and synced and synced >= self.now - timedelta(minutes=self.job.skip_minutes):
            return replace(row, state=SKIPPED_RECENT)
        return row

    # --- the sync phase: looking devices up ----------------------------------------------------

    def look_up(self, rows: list[DeviceRow]) -> list[DeviceRow]:
        """Each row not yet looked up, looked up (20 per $batch); those still to sync."""
        ready = [r for r in rows if r.resolved and r.state == PENDING]
        unresolved = [r for r in rows if not r.resolved]
        for start in range(0, len(unresolved), MAX_BATCH):
            chunk = unresolved[start:start + MAX_BATCH]
            answers = send_batch(self.graph, [lookup_request(self.job.kind, str(i), r) for i, r in enumerate(chunk)])
            looked = [self.looked_up(r, a) for r, a in zip(chunk, answers, strict=True)]
            self.save([r for r in looked if r.resolved or r.state != PENDING])
            ready += [r for r in looked if r.resolved and r.state == PENDING]
        return ready

    def looked_up(self, row: DeviceRow, answer: BatchAnswer) -> DeviceRow:
        if answer.status == 404:
            return replace(row, state=NOT_FOUND, error_code=answer.error_code, error_message=answer.error_message)
        if answer.status == 429 or answer.status >= 500:
            self.outcome.later(answer.retry_after_seconds or 1.0)
            return row  # looked up again by a later step
        if not answer.ok:
            return replace(row, state=FAILED, error_code=answer.error_code or str(answer.status),
                           error_message=answer.error_message)
        body = answer.body if isinstance(answer.body, dict) else {}
        device = body if "value" not in body else next(iter(body.get("value") or []), None)
        if not isinstance(device, dict) or not device.get("id"):
            return replace(row, state=NOT_FOUND, error_code="NotFound", error_message="no such managed device")
        return self.found(row, device)

    # --- the sync phase: sending ---------------------------------------------------------------

    def send(self, ready: list[DeviceRow]) -> None:
        """syncDevice in chunks of CHUNK: the rows written ``sending`` under a ticket, the budget
        taken under it, the granted rows sent at once (no table write between a grant and its
        writes: budget.SEND_SHARE need not cover one), the rest put back; a late grant is dropped
        (budget.late). Stops at a 429, a budget wait over PACE_SECONDS, or LATE_GRANTS late grants."""
        start = 0
        while start < len(ready) and self.time_left() and self.outcome.late < LATE_GRANTS:
            ticket = new_ticket(time.time())
            sending = [replace(r, state=SENDING, ticket=ticket, slot=i) for i, r in enumerate(ready[start:start + CHUNK])]
            self.save(sending)
            sent = 0
            try:
                granted = self.grant(len(sending), ticket)
                sent = 0 if granted < 0 else granted
                go_on = granted < 0 or (granted > 0 and self.send_chunk(sending[:sent]))
            finally:  # never sent (if this write is lost too, recover() tells them by the ticket)
                self.save([replace(r, state=PENDING) for r in sending[sent:]])
            if not go_on:
                return
            start += sent

    def grant(self, wanted: int, ticket: str) -> int:
        """Writes granted now under ``ticket`` (pacing a wait shorter than PACE_SECONDS); 0: the step
        ends, the next is due when the budget says; -1: the grant came back too late (dropped)."""
        while True:
            grant = self.graph.budget.take(DEVICES, wanted, bulk=True, ticket=ticket)
            if grant.count > 0 and late(grant, self.graph.budget.limits, time.time()):
                self.outcome.late += 1
                return -1
            if grant.count > 0:
                return grant.count
            if grant.wait_seconds <= PACE_SECONDS and self.time_left(after=grant.wait_seconds):
                time.sleep(grant.wait_seconds)
                self.outcome.paced += grant.wait_seconds
                continue
            self.outcome.later(max(grant.wait_seconds, 0.2))
            return 0

    def send_chunk(self, sending: list[DeviceRow]) -> bool:
        """Send rows already written ``sending``; False when Graph said to wait."""
        for start in range(0, len(sending), MAX_BATCH):
            batch = sending[start:start + MAX_BATCH]
            try:
                answers = send_batch(self.graph, [BatchRequest(str(i), "POST", f"{MANAGED}/{r.device_id}/syncDevice")
                                                  for i, r in enumerate(batch)], claimed=True, once=True)
            except AppError as exc:
                return self.batch_failed(exc, sending[start:])
            self.save([self.synced(r, a) for r, a in zip(batch, answers, strict=True)])
            if self.outcome.wait:  # an inner 429: the rest waits for the next step
                self.save([replace(r, state=PENDING) for r in sending[start + MAX_BATCH:]])
                return False
        return True

    def batch_failed(self, exc: AppError, unsent: list[DeviceRow]) -> bool:
        """A $batch without answers. Its rows stay ``sending`` (it may have been carried out) unless
        Graph refused the batch itself (429: nothing was done), the later batches' rows go back."""
        first, rest = unsent[:MAX_BATCH], unsent[MAX_BATCH:]
        refused = exc if isinstance(exc, GraphUnavailable) and exc.graph_status == 429 else None
        self.save([replace(r, state=PENDING) for r in (unsent if refused else rest)])
        if refused is None:
            raise exc
        self.outcome.throttled += len(first)
        self.graph.throttled(DEVICES, refused.retry_after_seconds)
        self.outcome.later(refused.retry_after_seconds or 1.0)
        return False

    def synced(self, row: DeviceRow, answer: BatchAnswer) -> DeviceRow:
        if answer.ok:
            return replace(row, state=QUEUED)
        if answer.status == 429:
            self.outcome.throttled += 1
            self.graph.throttled(DEVICES, answer.retry_after_seconds)
            self.outcome.later(answer.retry_after_seconds or 1.0)
            return replace(row, state=PENDING)
        state = NOT_FOUND if answer.status == 404 else NOT_SUPPORTED if answer.status == 400 else FAILED
        return replace(row, state=state, error_code=answer.error_code or str(answer.status),
                       error_message=answer.error_message)


def work_window(claim_seconds: float) -> float:
    """How long a step may start new work: STEP_SECONDS, or half its claim when the claim is
    shorter than twice that (DEVICE_SYNC_STEP_CLAIM_SECONDS can be 5 s). The other half covers its
    last $batch and saves: a step still working when its claim lapses would be taken over, and two
    steps of one job would then work at once."""
    return min(STEP_SECONDS, claim_seconds / 2)


def recovered(row: DeviceRow, granted: int | None) -> DeviceRow:
    """A row an earlier step left ``sending``: ``pending`` if its ticket's grant did not cover it
    (never sent), else ``queued`` (it may have reached Graph; also when the grant cannot be told:
    no ticket, or one too old: never twice)."""
    never_sent = granted is not None and (row.slot or 0) >= granted
    return replace(row, state=PENDING if never_sent else QUEUED, error_code=None, error_message=None)


def lookup_request(kind: str, request_id: str, row: DeviceRow) -> BatchRequest:
    """The read that finds a listed row's managed device: by id, by serial, or by Entra device id."""
    if kind == DEVICE_IDS:
        return BatchRequest(request_id, "GET", f"{MANAGED}/{row.device_id}", {"$select": SELECT})
    clause = (f"serialNumber eq '{row.serial_number}'" if kind == SERIAL_NUMBERS
              else f"azureADDeviceId eq '{row.azure_ad_device_id}'")
    return BatchRequest(request_id, "GET", MANAGED, {"$filter": clause, "$select": SELECT, "$top": "1"})
