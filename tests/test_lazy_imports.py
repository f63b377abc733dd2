"""A sync's cold start does not pay for onboarding or many tenants: loading the app (as the
Functions worker does) and answering a first sync imports none of their modules; their first
request imports them, and they work. Checked in a fresh process, on ``sys.modules``, so that a
module-level import added anywhere on the sync path shows here (bench/RESULTS.md, cold start)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from typing import Any

from conftest import ROOT

# Autopilot onboarding (import jobs, their steps and store, the Autopilot API, the body parser),
# many tenants (the registry and the fan-out) and bulk device sync (its jobs, steps, store and parser).
ONBOARDING_AND_TENANTS = ("shared.onboarding.rules", "shared.onboarding.devices", "shared.onboarding.imports", "shared.onboarding.importjob", "shared.onboarding.importsteps",
                          "shared.onboarding.importclaim", "shared.onboarding.autopilotapi", "shared.tenancy.registry", "shared.tenancy.customers",
                          "shared.devicesync", "shared.devicesync.selector", "shared.devicesync.syncjobs",
                          "shared.devicesync.syncsteps", "shared.devicesync.syncstore",
                          "shared.clients.signingkeys")  # and Entra callers' keys (CALLER_AUTH=entra only)

CHILD = r"""
import json, sys
import azure.functions as func  # the worker has it loaded before it loads any app

sys.path.insert(0, sys.argv[1])
import function_app

functions = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}
function = functions.__getitem__

loaded = sorted(m for m in sys.modules if m.startswith("shared"))
answer = function("sync_target")(func.HttpRequest("POST", "http://localhost:7071/api/sync/autopilot", headers={}, params={},
                                                  route_params={"target": "autopilot"}, body=b""))
synced = sorted(m for m in sys.modules if m.startswith("shared"))
body = json.dumps({"devices": json.loads(sys.argv[2])}).encode()
started = function("autopilot_import")(func.HttpRequest("POST", "http://localhost:7071/api/autopilot/devices",
                                                        headers={"Content-Type": "application/json"}, params={},
                                                        route_params={}, body=body))
print(json.dumps({"loaded": loaded, "synced": synced, "status": answer.status_code,
                  "outcome": json.loads(answer.get_body())["outcome"], "importStatus": started.status_code,
                  "importState": json.loads(started.get_body()).get("status"),
                  "afterImport": sorted(m for m in sys.modules if m.startswith("shared"))}))
"""


def run_child(env: dict[str, str]) -> dict[str, Any]:
    device = {"serialNumber": "SN0001", "hardwareIdentifier": base64.b64encode(bytes(range(256)) * 16).decode()}
    child_env = {k: v for k, v in os.environ.items() if k not in ("MULTI_TENANT_CLIENT_ID",)} | env
    run = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), json.dumps([device])], env=child_env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def test_loading_the_app_and_a_first_sync_import_nothing_of_onboarding_or_tenants(env, graph):
    result = run_child(env)
    assert (result["status"], result["outcome"]) == (202, "started")  # a real, granted first sync
    assert "shared.api.routes" in result["loaded"] and "shared.assembly.service" in result["loaded"]
    for phase in ("loaded", "synced"):
        assert [m for m in ONBOARDING_AND_TENANTS if m in result[phase]] == [], phase
    # Their first request imports them, and the service it was built for runs the job.
    assert (result["importStatus"], result["importState"]) == (202, "running")
    assert {"shared.onboarding.importjob", "shared.onboarding.imports", "shared.onboarding.devices", "shared.onboarding.rules"} <= set(result["afterImport"])
    assert "shared.tenancy.customers" not in result["afterImport"]  # not even then: multi-tenant mode is off
