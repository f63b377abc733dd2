"""host.json's settings are chosen on purpose; these say why, and fail if a change breaks the reason."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from shared.onboarding.importclaim import RENEW_FOR

HOST = json.loads((Path(__file__).resolve().parent.parent / "host.json").read_text())
QUEUES = HOST["extensions"]["queues"]


def span(text: str) -> timedelta:
    hours, minutes, seconds = (int(part) for part in text.split(":"))
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def test_an_empty_queue_is_polled_often_enough_for_a_deferred_sync_to_fire_on_time():
    # The default (1 minute) would fire a pending sync up to a minute after its window ends.
    assert span(QUEUES["maxPollingInterval"]) <= timedelta(seconds=2)


def test_queue_concurrency_per_instance_stays_within_the_extensions_limits():
    # Tenant syncs wait on Graph, not the CPU: a full batch per instance; at most 32 (the extension's maximum).
    assert 8 <= QUEUES["batchSize"] <= 32 and QUEUES["newBatchThreshold"] <= QUEUES["batchSize"]


def test_a_failed_message_is_retried_soon_and_poisoned_after_five_tries():
    assert span(QUEUES["visibilityTimeout"]) <= timedelta(seconds=30) and QUEUES["maxDequeueCount"] == 5


def test_an_import_step_stops_renewing_its_claim_before_the_host_cuts_its_invocation_off():
    # A step the host cut off at functionTimeout must not keep holding the job: its heartbeat ends first.
    assert span(HOST["functionTimeout"]) > RENEW_FOR


def test_traces_are_not_sampled_so_no_telemetry_record_is_dropped():
    """The app's telemetry (shared/common/telemetry.py) is traces; the failure alert and the workbook
    count them, so Application Insights' adaptive sampling must not drop any (docs/monitoring.md
    has the volume this costs)."""
    sampling = HOST["logging"]["applicationInsights"]["samplingSettings"]
    assert "Trace" in sampling["excludedTypes"].split(";")
