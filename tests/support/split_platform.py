"""The platform as the separate processes the CLI offers, on one PostgreSQL and one NATS:
`cloudkernel kernel`, `intake`, `api`, `relay`, `projections run` and one `worker` per
subsystem, each with its own interpreter, caches and libvirt connections. Commands reach it
as an integrator's signed NATS requests or as an admin's signed HTTP calls."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import nats
from fixtures.processes import free_port
from nats.aio.client import Client

from gateways.access import ApiKey
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from kernel.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "gateways.cli.main"]
COMMANDS_PREFIX = "cloudkernel.commands."


class Part:
    """One `cloudkernel ...` process, its output in a log file of its own."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path,
                 ready: str) -> None:
        self.name, self.ready_line = name, ready
        self.args, self.env, self.logs = args, env, logs
        self.log_path = logs / f"{name}.log"
        self._out: IO[str] = self.log_path.open("w")
        self.metrics_port = free_port()  # each process serves its own /metrics
        self.kills = 0
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*CLI, *self.args], cwd=self.logs, text=True, stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**self.env, "CLOUDKERNEL_METRICS_PORT": str(self.metrics_port)})

    def kill(self) -> None:
        """SIGKILL it (a machine lost): it writes nothing more, cleans nothing up."""
        self.proc.kill()
        self.proc.wait(10)
        self.kills += 1
        self._out.write("\n--- SIGKILL (test) ---\n")
        self._out.flush()

    def restart(self, deadline: float) -> None:
        """Start it again (its log goes on in the same file) and wait until it serves."""
        assert self.proc.poll() is not None, f"{self.name} still runs"
        start = self.log_path.stat().st_size
        self.proc = self._spawn()
        self.wait_ready(deadline, after=start)

    def pause(self) -> None:
        """SIGSTOP: frozen, as a process the machine stopped scheduling (a GC pause, a VM
        migration of the machine): its connections stay open, its timers stop."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        self.proc.send_signal(signal.SIGCONT)

    def metrics(self) -> str:
        """What its /metrics serves now."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as r:
            return str(r.read().decode())

    def wait_ready(self, deadline: float, *, after: int = 0) -> None:
        """Until its log shows (past byte `after`) the line it prints when it serves; fails
        if it exits first."""
        while time.monotonic() < deadline:
            if self.ready_line in self.log_path.read_text(errors="replace")[after:]:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.name} did not start (exit {self.proc.poll()}):\n"
                             f"{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        """The last lines it wrote."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def grep(self, *needles: str) -> list[str]:
        """Its log lines holding any of these."""
        return [line for line in self.log_path.read_text(errors="replace").splitlines()
                if any(n in line for n in needles)]

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 30 s; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        return int(self.proc.returncode)


@dataclass
class SplitPlatform:
    """The running processes, with what a client needs to reach them."""

    settings: Settings
    nats_url: str
    api_url: str
    key: ApiKey
    parts: list[Part] = field(default_factory=list)
    nats_cluster: Any = None  # the NatsCluster it runs on, if not a single node
    narrow_key: ApiKey | None = None  # an integrator key that may send vm.start only
    api_urls: list[str] = field(default_factory=list)  # more APIs than the first
    pg_server: Any = None  # the private PostgreSQL it runs on (None: an external one)

    def part(self, name: str) -> Part:
        """The process named `name`."""
        return next(p for p in self.parts if p.name == name)

    def dead(self) -> list[str]:
        """The processes that exited, with their log's end."""
        return [f"{p.name} exited {p.proc.returncode}:\n{p.tail()}"
                for p in self.parts if p.proc.poll() is not None]

    def stop(self) -> None:
        """Stop every process, the workers first."""
        for part in reversed(self.parts):
            part.stop()


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `cloudkernel` process on these settings (this tree's code)."""
    # cloudkernel refuses CLOUDKERNEL_* variables it does not know (the tests' own among them)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKERNEL_")}
    env.update({"PYTHONPATH": str(ROOT), "CLOUDKERNEL_STORE": settings.store,
                "CLOUDKERNEL_POSTGRES_DSN": settings.postgres_dsn,
                "CLOUDKERNEL_NATS_URLS": ",".join(settings.nats_urls),
                "CLOUDKERNEL_DATA_DIR": str(settings.data_dir), **extra})
    return env


# The workers whose hosts' state is not in their process: on libvirt's test driver a host
# lives in the process that opened it, so two hypervisor, storage, network element or
# snapshot workers would each see a host of their own.
STATELESS_WORKERS = ("planner", "networkguru")


def start_split_platform(settings: Settings, key: ApiKey, subsystems: list[str], *,
                         api_port: int, logs: Path, observe_interval: float = 2.0,
                         env: dict[str, str] | None = None,
                         twice: bool = False) -> SplitPlatform:
    """Start every process and wait until each serves; stops them all if one does not.
    `env`: more settings for every process (CLOUDKERNEL_NATS_REPLICAS, say). `twice`: two
    of each process but the workers of test-driver hosts: kernels (sharing the partitions by
    leases), relays, projection runners, intakes, APIs (the second on the next port) and the
    STATELESS_WORKERS."""
    logs.mkdir(parents=True, exist_ok=True)
    env = process_env(settings, CLOUDKERNEL_API_PORT=str(api_port),
                      CLOUDKERNEL_OBSERVE_INTERVAL_SECONDS=str(observe_interval),
                      CLOUDKERNEL_POSTGRES_POOL_SIZE="3", **(env or {}))
    platform = SplitPlatform(settings, settings.nats_urls[0], f"http://127.0.0.1:{api_port}",
                             key)
    if twice:
        platform.api_urls.append(f"http://127.0.0.1:{api_port + 1}")
    specs = [("kernel", ["kernel"], "unfinished operations recovered"),
             ("relay", ["relay"], ""),
             ("projections", ["projections", "run"], "projections running"),
             ("intake", ["intake"], "intake serving"),
             ("api", ["api"], "admin API at")]
    for name in subsystems:
        # the hypervisor worker also reports its hosts' domains, as `up` does
        observe = ["--observe", "all"] if name == "hypervisor" else []
        specs.append((f"worker-{name}", ["worker", "--subsystem", name, "--concurrency", "8",
                                         *observe], " serves "))
    if twice:
        specs += [(f"{name}-2", args, ready) for name, args, ready in specs
                  if name in ("kernel", "relay", "projections", "intake", "api")
                  or name.removeprefix("worker-") in STATELESS_WORKERS]
    try:
        for name, args, ready in specs:
            own = {**env, "CLOUDKERNEL_API_PORT": str(api_port + 1)} if name == "api-2" else env
            platform.parts.append(Part(name, args, own, logs, ready))
        deadline = time.monotonic() + 90
        for part in platform.parts:
            part.wait_ready(deadline)
    except BaseException:
        platform.stop()
        raise
    return platform


@dataclass
class Reply:
    """What a command got: accepted (with its operation, if any) or refused with a code."""

    channel: str
    ok: bool
    code: str = ""
    message: str = ""
    operation_id: str | None = None
    replayed: bool = False
    result: Any = None


class Senders:
    """Signed commands through the intake (NATS) and through the admin API (HTTP)."""

    def __init__(self, platform: SplitPlatform, nc: Client,
                 http: list[aiohttp.ClientSession]) -> None:
        self.platform, self.nc, self.apis = platform, nc, http
        self._next_api = 0
        self.retries = 0  # how many times a command without an answer is sent again
        self.retried = 0

    @classmethod
    async def open(cls, platform: SplitPlatform) -> "Senders":
        """Connect to NATS (any node of a cluster) and open an HTTP session."""
        nc = await nats.connect(list(platform.settings.nats_urls), connect_timeout=5,
                                max_reconnect_attempts=-1)
        return cls(platform, nc, [aiohttp.ClientSession(url)
                                  for url in (platform.api_url, *platform.api_urls)])

    async def close(self) -> None:
        """Close both connections."""
        for http in self.apis:
            await http.close()
        await self.nc.close()

    def _headers(self, subject: str, idem: str, body: bytes,
                 key: ApiKey | None = None) -> dict[str, str]:
        ts = str(int(time.time()))
        key = key or self.platform.key
        return {IDEMPOTENCY_KEY_HEADER: idem, KEY_ID_HEADER: key.id, TIMESTAMP_HEADER: ts,
                SIGNATURE_HEADER: sign(key.secret, timestamp=ts, subject=subject,
                                       idempotency_key=idem, body=body)}

    async def send(self, channel: str, tag: str, body: dict[str, Any] | bytes, idem: str,
                   timeout: float = 60, key: ApiKey | None = None) -> Reply:
        """Send through `channel` ("intake" or "api") and decode the answer; a command that
        gets no answer, or `unavailable` (the store out of reach), is sent again with its
        idempotency key, `retries` times, as a client does when the connection broke under it
        or the server said to come back. Through the API, each try goes to the next API (the
        APIs in turn): a client whose API is gone tries another."""
        self._next_api += 1  # the APIs in turn
        api = self._next_api
        for _ in range(self.retries):
            try:
                reply = await self._send(channel, tag, body, idem, timeout, key, api)
            except (TimeoutError, nats.errors.Error, aiohttp.ClientError):
                self.retried += 1
                api += 1
                await asyncio.sleep(1)
                continue
            if reply.code not in ("unavailable", "http-503"):
                return reply
            self.retried += 1  # the store is out of reach a moment: as asked, again later
            api += 1
            await asyncio.sleep(1)
        return await self._send(channel, tag, body, idem, timeout, key, api)

    async def _send(self, channel: str, tag: str, body: dict[str, Any] | bytes, idem: str,
                    timeout: float, key: ApiKey | None, api: int = 0) -> Reply:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        if channel == "intake":
            subject = COMMANDS_PREFIX + tag
            msg = await self.nc.request(subject, data, timeout=timeout,
                                        headers=self._headers(subject, idem, data, key))
            reply = json.loads(msg.data)
            if not reply["ok"]:
                return Reply(channel, False, reply["error"]["code"], reply["error"]["message"])
            result = reply["result"]
            op = result.get("operation_id") if isinstance(result, dict) else None
            return Reply(channel, True, operation_id=op, replayed=reply["replayed"],
                         result=result)
        path = f"/v1/commands/{tag}"
        headers = {"Content-Type": "application/json",
                   **self._headers(f"POST {path}", idem, data, key)}
        http = self.apis[api % len(self.apis)]
        async with http.post(path, data=data, headers=headers,
                                  timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            answer = await r.json()
            if r.status >= 500:
                return Reply(channel, False, f"http-{r.status}", json.dumps(answer))
            if r.status >= 400:
                error = answer["error"]
                return Reply(channel, False, error["code"], error["message"])
            return Reply(channel, True, operation_id=answer.get("operation_id"),
                         replayed=answer["replayed"], result=answer["result"])


def run(coro: Any) -> Any:
    """Run a coroutine to its end in a fresh loop."""
    return asyncio.run(coro)
