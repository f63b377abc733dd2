"""The same first sync, written the common way: msgraph-beta-sdk (the Autopilot sync action
exists only in beta) plus azure-data-tables for the same state read. Run in its own virtual
environment by bench/run.py; never imported by the app.

    python sdk_app.py            # prints {"seconds": ..., "maxrss_kb": ..., "status": ...}
"""
import asyncio
import json
import os
import sys
import time

import azure.functions  # noqa: F401  the Functions worker has this loaded before it loads any app

STARTED = time.perf_counter()
# What the worker process holds before it loads any app (it has azure.functions loaded).
WORKER_KB = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS:")))

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient
from azure.identity import ManagedIdentityCredential
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from msgraph_beta import GraphRequestAdapter, GraphServiceClient


async def first_sync() -> str:
    base = os.environ["GRAPH_BASE_URL"]
    table = TableClient.from_connection_string(os.environ["AzureWebJobsStorage"], os.environ["SYNC_STATE_TABLE"])
    try:  # the decision read our app makes too
        table.get_entity("autopilot", "state")
    except ResourceNotFoundError:
        pass
    auth = AzureIdentityAuthenticationProvider(
        ManagedIdentityCredential(), scopes=[f"{base}/.default"], allowed_hosts=["127.0.0.1"]
    )
    adapter = GraphRequestAdapter(auth)
    adapter.base_url = f"{base}/beta"
    client = GraphServiceClient(request_adapter=adapter)
    try:
        await client.device_management.windows_autopilot_settings.sync.post()
        return "started"
    except Exception as exc:  # the SDK raises for 409/429
        return f"refused: {type(exc).__name__}"


status = asyncio.run(first_sync())
print(json.dumps({
    "seconds": time.perf_counter() - STARTED,
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
    "maxrss_kb": int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))),
    "worker_kb": WORKER_KB,
    "status": status,
}))
sys.exit(0)
