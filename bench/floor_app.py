"""The floor under any app built on the libraries this project is fixed to (azure-identity,
azure-data-tables, requests): the same first sync with none of the app's own code. One state read,
one managed-identity token, one POST to Graph, nothing checked or recorded. Run by bench/run.py's
cold start beside the app and the SDK way, so that the ratio the libraries alone allow is measured
in the same run. Prints {"seconds", "maxrss_kb", "worker_kb", "status"}."""
import json
import os
import sys
import time

import azure.functions  # noqa: F401  the Functions worker has this loaded before it loads any app

STARTED = time.perf_counter()
WORKER_KB = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS:")))

import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient
from azure.identity import ManagedIdentityCredential

base = os.environ["GRAPH_BASE_URL"]
table = TableClient.from_connection_string(os.environ["AzureWebJobsStorage"], os.environ["SYNC_STATE_TABLE"])
try:  # the decision read every contender makes
    table.get_entity("autopilot", "state")
except ResourceNotFoundError:
    pass
token = ManagedIdentityCredential().get_token(f"{base}/.default").token
answer = requests.post(f"{base}/beta/deviceManagement/windowsAutopilotSettings/sync",
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
print(json.dumps({
    "seconds": time.perf_counter() - STARTED,
    "maxrss_kb": int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))),
    "worker_kb": WORKER_KB,
    "status": answer.status_code,
}))
sys.exit(0)
