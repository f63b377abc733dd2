"""One fresh process: import the app and answer its first sync through the HTTP trigger, end to
end (token endpoint, table, Graph). Prints {"seconds", "maxrss_kb", "status", "outcome"}.
The app is this checkout's, or the one at BENCH_APP_ROOT (e.g. a worktree of an older commit)."""
import json
import os
import sys
import time
from pathlib import Path

import azure.functions as func  # the Functions worker has this loaded before it loads any app

STARTED = time.perf_counter()
# What the worker process holds before it loads any app (it has azure.functions loaded).
WORKER_KB = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS:")))
sys.path.insert(0, os.environ.get("BENCH_APP_ROOT") or str(Path(__file__).resolve().parent.parent))

import function_app

handler = next(f for f in function_app.app.get_functions() if f.get_function_name() == "sync_target").get_user_function()
response = handler(func.HttpRequest("POST", "http://localhost/api/sync/autopilot", headers={}, params={},
                                    route_params={"target": "autopilot"}, body=b""))
print(json.dumps({
    "seconds": time.perf_counter() - STARTED,
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
    "maxrss_kb": int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))),
    "worker_kb": WORKER_KB,
    "status": response.status_code,
    "outcome": json.loads(response.get_body())["outcome"],
}))
