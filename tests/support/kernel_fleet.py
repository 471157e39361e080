"""Kernels and workers as processes a chaos test can kill, freeze and restart, with what it
asks of them: `cloudkernel cluster status --json` as an operator runs it, and a two-step
plan of counter steps whose effects are counted exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from support.split_platform import process_env

from aggregates.plan import Plan, PlannedStep, RetryPolicy
from kernel.settings import Settings

LEASE = 2.0  # seconds: short, so that the test's waits stay short; the bench uses the default
COUNTER = msgspec.json.encode({"name": "chaos", "amount": 1})


class Fleet:
    """Kernels and counter workers as processes that can be killed, frozen and restarted."""

    def __init__(self, tmp: Path, dsn: str, urls: list[str], *, replicas: int = 3) -> None:
        self.tmp, self.dsn = tmp, dsn
        self.env = process_env(Settings(store="postgres", postgres_dsn=dsn,
                                        nats_urls=tuple(urls), data_dir=tmp / "data"),
                               CLOUDKERNEL_NATS_REPLICAS=str(replicas),
                               CLOUDKERNEL_LEASE_SECONDS=str(LEASE))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.kills: Counter[str] = Counter()

    def command(self, name: str) -> list[str]:
        cli = [sys.executable, "-m", "gateways.cli.main"]
        if name.startswith("kernel"):
            return [*cli, "kernel"]
        return [*cli, "worker", "--subsystem", "counter", "--concurrency", "16",
                "--ack-wait", "2", "--config-json", json.dumps({"dsn": self.dsn})]

    def start(self, name: str, *, nats_urls: list[str] | None = None) -> None:
        """Start `name`; `nats_urls`: the NATS servers this process reaches (through a proxy,
        say), instead of the fleet's."""
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 (the process keeps it)
        env = {**self.env, "CLOUDKERNEL_KERNEL_NAME": f"{name}-{len(self.procs)}-{time.time():.0f}"}
        if nats_urls is not None:
            env["CLOUDKERNEL_NATS_URLS"] = ",".join(nats_urls)
        self.procs[name] = subprocess.Popen(self.command(name), env=env, cwd=self.tmp,
                                            stdout=log, stderr=subprocess.STDOUT)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)
        self.kills[name] += 1

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.procs[name].send_signal(sig)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.tmp.glob("*.log")))


def status(env: dict[str, str]) -> dict[str, Any]:
    """`cloudkernel cluster status --json`, in a process of its own."""
    out = subprocess.run([sys.executable, "-m", "gateways.cli.main", "cluster", "status",
                          "--json", "--timeout", "10"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode in (0, 3), out.stderr
    return dict(json.loads(out.stdout))


def holders(report: dict[str, Any]) -> dict[str, int]:
    """How many live partitions each kernel holds, by its fleet name (`kernel-a`: the
    process's kernel name starts with it)."""
    found: Counter[str] = Counter()
    for p in report["kernels"].get("partitions", []):
        if p["live"]:
            found["-".join(p["owner"].split("-")[:2])] += 1
    return dict(found)


def wait_for(check: Callable[[], Any], what: str, timeout: float, fleet: Fleet) -> float:
    """Seconds until `check()` is truthy; fails with the fleet's logs after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s\n{fleet.logs()}")


def plan() -> Plan:
    policy = RetryPolicy(max_attempts=30, initial_delay=0.2, multiplier=2.0, max_delay=2.0)
    a = PlannedStep(step_id=uuid.uuid4(), subsystem="counter", action="add",
                    args=msgspec.Raw(COUNTER), retry=policy, deadline_seconds=4.0)
    b = PlannedStep(step_id=uuid.uuid4(), subsystem="counter", action="add",
                    args=msgspec.Raw(COUNTER), retry=policy, deadline_seconds=4.0,
                    depends_on=(a.step_id,))
    return Plan(steps=(a, b))
