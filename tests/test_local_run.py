"""The README's local-run command shows a first sync end to end (on free ports here)."""
import subprocess
import sys

import pytest
import requests
from conftest import ROOT


def test_the_local_run_shows_a_started_sync_then_a_cooldown():
    run = subprocess.run(
        [sys.executable, "-m", "emulators.local", "--once", "--random-ports"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    started, cooldown = run.stdout.index("HTTP 202"), run.stdout.index("HTTP 429")
    assert started < cooldown and '"outcome": "started"' in run.stdout


def test_the_local_run_prints_a_line_per_invocation_and_reset_grants_the_next_sync(tmp_path):
    """Serving (not --once): the timers run on their schedules (here the watcher every 2 s), each
    HTTP call, timer tick and telemetry event is a line as it happens, and POST /admin/reset makes
    the next sync a granted one."""
    import os
    import re
    import threading
    import time

    import requests

    env = {**os.environ, "SYNC_WATCH_SCHEDULE": "*/2 * * * * *", "SYNC_SCHEDULE": "0 0 0 1 1 *", "SYNC_TARGETS": "autopilot"}
    # Its own Azurite data: the checkout's .azurite/ is the developer's local run.
    proc = subprocess.Popen([sys.executable, "-m", "emulators.local", "--random-ports", "--state", str(tmp_path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()

    def wait_for(pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(lines) if re.search(pattern, line)), None)
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(lines)}")

    try:
        base = wait_for(r"^App API").split()[-1].removesuffix("/api")
        wait_for(r"Serving on")
        assert requests.post(f"{base}/admin/reset", timeout=30).json()["reset"] is True
        wait_for(r"POST /admin/reset -> 200 \(\d+ ms\)")
        assert requests.post(f"{base}/api/sync/autopilot", timeout=30).status_code == 202
        wait_for(r"POST /api/sync/autopilot -> 202 \(\d+ ms\)")
        wait_for(r"sync +autopilot +started: Graph 204 in \d+ ms, by http")
        wait_for(r"timer sync_watch \(\d+ ms\)")  # on its schedule
        requests.post(f"{base}/admin/functions/sync_timer", timeout=30)  # the sync timer now, as Core Tools allows
        wait_for(r"sync +autopilot +scheduled: no Graph call, by timer; fires at ")  # inside the cooldown
        wait_for(r"timer +tick: 1 scheduled")
        wait_for(r"timer sync_timer \(admin API\) \(\d+ ms\)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- one run per state folder, a port taken, nothing left behind ---------------------------------

PORT_NAMES = ("app", "graph", "identity", "entra", "table", "queue", "blob")


class Serving:
    """A local run serving (not --once), its output collected line by line as it comes."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        import os
        import threading

        self.proc = subprocess.Popen([sys.executable, "-m", "emulators.local", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        import re
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(self.lines) if re.search(pattern, line)), None)
            if found:
                return found
            if self.proc.poll() is not None:  # ended: only what it printed last can still match
                time.sleep(0.2)  # the reader thread's last lines
                found = next((line for line in list(self.lines) if re.search(pattern, line)), None)
                if found:
                    return found
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.lines)}")

    @property
    def api(self) -> str:
        return self.wait_for(r"^App API").split()[-1]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def processes_naming(text: str) -> list[str]:
    """The command lines of running processes that contain ``text`` (e.g. an Azurite's port)."""
    from pathlib import Path

    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        line = " ".join(a.decode(errors="replace") for a in args)
        if text in line:
            found.append(line)
    return found


def free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:  # all held at once, so that no two are the same
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.parametrize("taken", PORT_NAMES)
def test_a_port_already_taken_is_named_with_the_way_out_and_nothing_started_survives(taken):
    import socket

    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    with socket.socket() as other:  # another program listening there
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", ports[taken]))
        other.listen()
        run = subprocess.run([sys.executable, "-m", "emulators.local", "--once", "--multi-tenant",
                              *(f"--port={name}={port}" for name, port in ports.items())],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"port {ports[taken]} (" in run.stderr and "--random-ports" in run.stderr and f"--port {taken}=" in run.stderr
    assert "Traceback" not in run.stderr
    # Azurite starts first: for a port taken after it, it was started and must have been stopped.
    assert processes_naming(f"--tablePort {ports['table']} ") == []


def test_a_second_run_on_the_same_state_folder_is_refused_naming_the_first_and_another_folder_works(tmp_path):
    first = Serving("--random-ports", "--state", str(tmp_path / "a"))
    try:
        first.wait_for("Serving on")
        table_port = first.wait_for(r"^Azurite tables").split(":")[-1].split("/")[0]
        second = subprocess.run([sys.executable, "-m", "emulators.local", "--random-ports", "--state", str(tmp_path / "a")],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"pid {first.proc.pid}" in second.stderr and f"already serving {first.api}" in second.stderr
        assert "--state DIR" in second.stderr and "Traceback" not in second.stderr
        other = Serving("--random-ports", "--state", str(tmp_path / "b"))
        try:
            other.wait_for("Serving on")
            assert requests.get(f"{other.api}/health", timeout=30).status_code == 200
            assert requests.get(f"{first.api}/health", timeout=30).status_code == 200  # both serve, each its own
        finally:
            other.stop()
    finally:
        first.stop()
    assert processes_naming(f"--tablePort {table_port} ") == []  # its Azurite went with it
    again = Serving("--random-ports", "--state", str(tmp_path / "a"))  # the lock went with the process
    try:
        again.wait_for("Serving on")
    finally:
        again.stop()


# --- the local run shows the real thing quickly -------------------------------------------------


def first_status(stdout: str) -> dict:
    import json

    start = stdout.index("/sync/status\nHTTP 200\n")
    return json.JSONDecoder().raw_decode(stdout[stdout.index("{", start):])[0]


def test_the_first_screen_rates_the_local_tenant_healthy_for_every_target():
    import os

    from shared.engine.targets import TARGETS

    run = subprocess.run([sys.executable, "-m", "emulators.local", "--once", "--random-ports"], cwd=ROOT,
                         env={**os.environ, "SYNC_TARGETS": ",".join(TARGETS)}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    status = first_status(run.stdout)
    assert {t["target"]: t["health"] for t in status["targets"]} == dict.fromkeys(TARGETS, "healthy")
    assert status["health"] == "healthy"


def test_a_csv_imported_after_a_reset_ends_in_about_a_minute_and_the_run_says_which_timings_it_set(tmp_path):
    import base64
    import time

    run = Serving("--random-ports", "--state", str(tmp_path))
    try:
        run.wait_for("Serving on")
        settings = run.wait_for(r"IMPORT_POLL_SECONDS=\d+, IMPORT_SYNC_DELAY_SECONDS=\d+")
        assert "sync window" in settings and "/admin/reset" in settings  # why an import may wait, and the way out
        base = run.api.removesuffix("/api")
        assert requests.post(f"{base}/admin/reset", timeout=30).json()["reset"] is True  # the first screen's window
        hash_ = base64.b64encode(bytes(range(256)) * 16).decode()
        csv = "Device Serial Number,Windows Product ID,Hardware Hash\r\nLOCAL-1,," + hash_ + "\r\n"
        started = time.monotonic()
        answer = requests.post(f"{run.api}/autopilot/devices", data=csv, headers={"Content-Type": "text/csv"}, timeout=30)
        assert answer.status_code == 202, answer.text
        location = answer.headers["Location"]
        while (poll := requests.get(location, timeout=30)).status_code == 202:
            assert time.monotonic() - started < 90, poll.json()  # Azure's defaults: over 5 minutes
            time.sleep(1)
        assert poll.status_code == 200 and poll.json()["counts"]["profileAssigned"] == 1, poll.json()
    finally:
        run.stop()


def test_multi_tenant_mode_checks_consent_against_the_entra_emulator_and_syncs_a_customer_tenant(tmp_path):
    consented, refused = "11111111-2222-3333-4444-555555555555", "22222222-3333-4444-5555-666666666666"
    run = Serving("--random-ports", "--multi-tenant", "--state", str(tmp_path))
    try:
        run.wait_for("Serving on")
        entra = run.wait_for(r"^Entra emulator").split()[2]
        for tenant in (consented, refused):
            put = requests.put(f"{run.api}/tenants/{tenant}", json={"displayName": f"Customer {tenant[:4]}"}, timeout=30)
            assert put.status_code == 201 and put.json()["consentUrl"].startswith(f"{entra}/{tenant}/adminconsent"), put.text
        assert requests.get(f"{run.api}/tenants/{consented}", timeout=60).json()["state"] == "consented"
        assert requests.get(f"{run.api}/tenants/{refused}", timeout=60).json()["state"] == "notConsented"
        assert requests.post(f"{run.api}/tenants/{consented}/sync/autopilot", timeout=60).json()["outcome"] == "started"
    finally:
        run.stop()


@pytest.mark.parametrize("taken_by", ["a listener", "a socket bound and not yet listening"])
def test_azurite_on_ports_it_picked_picks_again_when_one_is_taken_before_it_binds(taken_by):
    """Parallel test workers and local runs pick free ports at the same moment; a port taken
    between the pick and Azurite's bind (a listener answers the probe; a bound socket only makes
    Azurite exit with EADDRINUSE) is picked again instead of failing the run."""
    import socket

    from emulators.azurite import Azurite

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        if taken_by == "a listener":
            taken.listen()
        azurite = Azurite()
        azurite.queue_port = taken.getsockname()[1]
        with azurite:
            assert taken.getsockname()[1] not in azurite.ports
            with socket.create_connection(("127.0.0.1", azurite.queue_port), timeout=2):
                pass


def test_azurite_on_a_port_given_by_the_caller_that_is_taken_says_so():
    import socket

    from emulators.azurite import Azurite, PortInUse

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(PortInUse) as raised:
            Azurite(port=taken.getsockname()[1]).start()
        assert raised.value.port == taken.getsockname()[1]


def test_entra_mode_prints_a_token_command_whose_token_opens_the_api_and_nothing_opens_it_without(tmp_path):
    run = Serving("--random-ports", "--entra", "--state", str(tmp_path))
    try:
        run.wait_for("Serving on")
        command = run.wait_for(r"^\$ TOKEN=\$\(curl").removeprefix("$ ").strip()
        got = subprocess.run(["bash", "-c", f"{command} && printf %s \"$TOKEN\""], capture_output=True, text=True, timeout=60)
        token = got.stdout.strip()
        assert got.returncode == 0 and token.count(".") == 2, got.stderr
        assert requests.get(f"{run.api}/sync/status", timeout=30).status_code == 401
        assert requests.get(f"{run.api}/sync/status", headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200
    finally:
        run.stop()
