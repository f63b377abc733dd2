"""Start and stop a real Azurite (npm package ``azurite``: blob, queue and table services) for
tests and local runs."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, the same in every Azurite).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def azurite_binary() -> str:
    local = ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if not found:
        raise RuntimeError("azurite not found: run `npm ci` in the repository root (scripts/test.sh does)")
    return found


class PortInUse(RuntimeError):
    """Something already listens on a port Azurite was to use (the caller names what the port is for)."""

    def __init__(self, port: int):
        super().__init__(f"port {port} is already in use (another Azurite?); stop it or use --random-ports")
        self.port = port


class PortRace(PortInUse):
    """A port this Azurite picked itself was taken before Azurite bound it: pick again."""


class Azurite:
    def __init__(self, port: int | None = None, location: str | None = None, queue_port: int | None = None, blob_port: int | None = None,
                 tls: tuple[str, str] | None = None):
        """``tls``: (certificate, key) PEM files: every service speaks HTTPS only, with that certificate
        (emulators/tls.py issues one; clients must trust its CA)."""
        self.tls = tls
        # Ports picked here may be taken by another process before Azurite binds them (parallel
        # test workers do this); start() then picks them again. Ports given are kept as given.
        self._picked = {name for name, given in (("port", port), ("queue_port", queue_port), ("blob_port", blob_port)) if not given}
        self.port = port or free_port()  # the table service's
        self.queue_port = queue_port or free_port()
        self.blob_port = blob_port or free_port()
        self.location = location
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def _owns(self, port: int) -> bool:
        return any(getattr(self, name) == port for name in self._picked)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def table_endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.scheme}://127.0.0.1:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint={self.scheme}://127.0.0.1:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint={self.table_endpoint};"
        )

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.port, self.queue_port, self.blob_port

    def start(self, timeout: float = 30.0, attempts: int = 5) -> Azurite:
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except PortRace:
                if attempt == attempts - 1:
                    raise
                for name in self._picked:
                    setattr(self, name, free_port())
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> Azurite:
        # Something already listening would answer our readiness probe and silently take over.
        for port in self.ports:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    raise PortRace(port) if self._owns(port) else PortInUse(port)
        args = [azurite_binary(), "--tableHost", "127.0.0.1", "--tablePort", str(self.port),
                "--queueHost", "127.0.0.1", "--queuePort", str(self.queue_port),
                "--blobHost", "127.0.0.1", "--blobPort", str(self.blob_port),
                "--disableTelemetry", "--silent", "--skipApiVersionCheck"]
        if self.tls:
            args += ["--cert", str(self.tls[0]), "--key", str(self.tls[1])]
        if self.location:
            Path(self.location).mkdir(parents=True, exist_ok=True)
            args += ["--location", self.location]
        else:
            # A throwaway folder rather than --inMemoryPersistence, so that a test can stop
            # Azurite and start it again on the same data (a restart loses nothing).
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="azurite-")
            args += ["--location", self._tmp.name]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                if "EADDRINUSE" in err and self._picked:
                    raise PortRace(0)
                raise RuntimeError(f"Azurite exited with {self.process.returncode}: {err[-2000:]}")
            try:
                for port in self.ports:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        pass
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Azurite did not listen on port {self.port} within {timeout}s")

    def stop(self) -> None:
        """Stop the server; its data stays for a later start()."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # Azurite saves its data on SIGINT, not SIGTERM
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        """Stop the server and delete its data."""
        self.stop()
        if self._tmp:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    a = Azurite(port=10002, queue_port=10001, blob_port=10000).start()
    print(a.connection_string)
    a.process.wait()  # type: ignore[union-attr]
