"""A step's claim on its import job, renewed while the step works (a heartbeat).

A step claims the job row (``stepOwner``, ``stepUntil``, If-Match) for IMPORT_STEP_CLAIM_SECONDS,
and a background thread renews it every IMPORT_STEP_HEARTBEAT_SECONDS (If-Match again). So a step
that dies (its process killed, its instance gone) loses the job within one claim and another
delivery takes over (shared/onboarding/importjob.py sends that delivery when it claims), while a slow step
keeps it. Before each Graph call the step asks ``held()``: a claim not renewed in time (the process
froze, storage failed, another delivery took it) stops the step before its next Graph write.
Renewal ends after RENEW_FOR, under the host's 5-minute functionTimeout: a step the host gave up
on lets its claim lapse.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from ..common import AppError
from .imports import ImportJob, ImportStore

log = logging.getLogger(__name__)

RENEW_FOR = timedelta(minutes=4, seconds=30)


class StepClaim:
    """The claim of one step on its job; renewed in the background from construction until ``stop``."""

    def __init__(self, store: ImportStore, job: ImportJob, clock: Callable[[], datetime], length: timedelta,
                 every: float):
        self._store, self._clock, self._length, self._every = store, clock, length, every
        self._spare = timedelta(seconds=every / 2)  # a call starts only with half a heartbeat of claim left
        self._job, self._lost = job, False
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"import-claim-{job.id}", daemon=True)
        self._thread.start()

    def held(self) -> bool:
        """Whether the step may make its next Graph call: the claim is ours, and stays so a while."""
        with self._lock:
            until = self._job.step_until
            return not self._lost and until is not None and self._clock() < until - self._spare

    def confirmed(self) -> bool:
        """held(), and the job row still names this step (read from the table: before an import)."""
        current = self._store.job(self._job.id)
        return (self.held() and current is not None and current.step_owner == self._job.step_owner
                and current.step == self._job.step)

    def stop(self) -> ImportJob | None:
        """Stop renewing. The job row as last written (for the step's last If-Match write), or
        None when the claim was lost."""
        self._stopped.set()
        self._thread.join()
        return self._job if self.held() else None

    def _beat(self) -> None:
        end = time.monotonic() + RENEW_FOR.total_seconds()
        while not self._stopped.wait(self._every) and time.monotonic() < end:
            if not self._renew():
                return

    def _renew(self) -> bool:
        if not self.held():  # too late (the process froze): another delivery may hold the job now
            with self._lock:
                self._lost = True
            return False
        with self._lock:
            current = self._job
        try:
            renewed = self._store.update(replace(current, step_until=self._clock() + self._length))
        except AppError as exc:  # storage unavailable: try at the next beat; the claim lapses if it lasts
            log.warning("import %s: the step's claim was not renewed: %s", current.id, exc.message)
            return True
        with self._lock:
            if renewed is None:  # the row changed: another delivery took the job
                self._lost = True
                return False
            self._job = renewed
        return True
