"""Kernel failover and the cost of leases, from one run.

Usage:
    .venv/bin/python bench/failover.py [--kills 3] [--deploys 300]

It starts a throwaway PostgreSQL and a nats-server and prints:
  * failover: two `cloudkernel kernel` processes with the default settings (16 partitions,
    leases of 5 s) and echo workers under a steady trickle of one-step operations; the kernel
    holding partitions is SIGKILLed, several times (started again and shares restored between
    kills). Per kill: seconds until every partition it held is leased by the survivor, and
    until the first step of each of those partitions succeeds again (an outcome applied by
    the new owner). p50 and max over the kills, beside the goals (1.5 lease periods, 10 s);
  * deploys/s on PostgreSQL + nats-server + libvirt test-driver hosts (workers in processes
    of their own) with: one kernel without leases (the baseline: no fence), one kernel with
    leases (every write fenced), and two kernels sharing the partitions (the second one a
    `cloudkernel kernel` process). The fence's cost is the second against the first.
"""

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from aggregates.plan import Plan, PlannedStep, RetryPolicy  # noqa: E402
from gateways.stream.embedded import EmbeddedNatsServer  # noqa: E402
from kernel.bootstrap.migrations import migrate_all  # noqa: E402
from kernel.leases import LeaseTable, partition_of  # noqa: E402
from kernel.operation_commands import StartOperation  # noqa: E402
from kernel.operations import OperationEngine  # noqa: E402
from kernel.settings import Settings  # noqa: E402
from kernel.store.application import PlatformApplication, open_application  # noqa: E402

ECHO = msgspec.json.encode({"message": "x"})


def env_of(settings: Settings) -> dict[str, str]:
    """A `cloudkernel` process's environment on these settings, logging warnings only."""
    from support.split_platform import process_env

    return process_env(settings, CLOUDKERNEL_LOG_LEVEL="warning")


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "gateways.cli.main", *args], env=env,
                            cwd=log.parent, stdout=out, stderr=subprocess.STDOUT)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


# ---------------------------------------------------------------------- failover

def one_step() -> StartOperation:
    return StartOperation(kind="bench.echo", plan=Plan(steps=(PlannedStep(
        step_id=uuid.uuid4(), subsystem="echo", action="echo", args=msgspec.Raw(ECHO),
        retry=RetryPolicy(max_attempts=5), deadline_seconds=60.0),)))


class Trickle:
    """Submits a few one-step operations every 50 ms from a thread (a client's process)."""

    def __init__(self, settings: Settings, per_tick: int = 2) -> None:
        self.app = open_application(PlatformApplication, settings)
        self.engine = OperationEngine(self.app)
        self.per_tick, self._stop = per_tick, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.engine.submit_many([one_step() for _ in range(self.per_tick)],
                                        idempotency_key=f"trickle-{uuid.uuid4()}")
            except Exception as e:  # a busy moment: the next tick goes on
                print(f"  (trickle: {type(e).__name__}: {e})", file=sys.stderr)
            self._stop.wait(0.05)

    def __enter__(self) -> "Trickle":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def first_success_after(self, at: datetime, partitions: set[int], count: int,
                            timeout: float) -> dict[int, float]:
        """Per partition, seconds from `at` until an outcome of one of its operations was
        applied (a StepSucceeded recorded after `at`)."""
        found: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        position = 0
        while len(found) < len(partitions) and time.monotonic() < deadline:
            notes = self.app.recorder.select_notifications(
                start=position, limit=10_000, inclusive_of_start=False,
                topics=("operation.StepSucceeded",))
            for note in notes:
                op = uuid.UUID(str(note.originator_id))
                p = partition_of(op, count)
                if p in partitions and p not in found:
                    when = msgspec.json.decode(note.state)["timestamp"]
                    ts = datetime.fromisoformat(when.replace("Z", "+00:00"))
                    if ts > at:
                        found[p] = (ts - at).total_seconds()
            position = notes[-1].id if notes else position
            time.sleep(0.05)
        return found


def failover(settings: Settings, tmp: Path, kills: int) -> tuple[list[float], list[float]]:
    """Per kill: seconds until the lost partitions are leased again, and until the last
    of them moved again."""
    table = LeaseTable(settings.postgres_dsn, settings.postgres_schema,
                       partitions=settings.kernel_partitions, period=settings.lease_seconds)
    env = env_of(settings)
    workers = [spawn(["worker", "--subsystem", "echo", "--concurrency", "32"], env,
                     tmp / f"echo-{i}.log") for i in range(2)]
    kernels = {name: spawn(["kernel"], {**env, "CLOUDKERNEL_KERNEL_NAME": f"{name}-0"},
                           tmp / f"{name}.log") for name in ("a", "b")}
    leased, moved = [], []

    def owners() -> dict[int, str]:
        return {r.partition: (r.owner or "") for r in table.leases() if r.expires_in > 0}

    def wait_shared(timeout: float = 60) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = owners()
            held = [sum(1 for o in now.values() if o.startswith(f"{k}-")) for k in kernels]
            if len(now) == settings.kernel_partitions and min(held) > 0:
                return now
            time.sleep(0.1)
        raise TimeoutError("the kernels never shared the partitions")

    try:
        with Trickle(settings) as trickle:
            for i in range(kills):
                now = wait_shared()
                time.sleep(1.0)  # steady state
                victim = "ab"[i % 2]
                lost = {p for p, o in now.items() if o.startswith(f"{victim}-")}
                at = datetime.now(UTC)
                started = time.monotonic()
                kernels[victim].send_signal(signal.SIGKILL)
                kernels[victim].wait(10)
                while not all(o and not o.startswith(f"{victim}-")
                              for p, o in owners().items() if p in lost) \
                        or not lost <= set(owners()):
                    if time.monotonic() - started > 60:
                        raise TimeoutError("the partitions were never taken")
                    time.sleep(0.02)
                leased.append(time.monotonic() - started)
                firsts = trickle.first_success_after(at, lost, settings.kernel_partitions, 60)
                if len(firsts) < len(lost):
                    raise TimeoutError(f"partitions {sorted(lost - set(firsts))} never moved")
                moved.append(max(firsts.values()))
                print(f"  kill {i + 1} ({victim}, {len(lost)} partitions): leased again in "
                      f"{leased[-1]:.2f} s, every partition moving again in {moved[-1]:.2f} s")
                kernels[victim] = spawn(["kernel"], {**env, "CLOUDKERNEL_KERNEL_NAME":
                                                     f"{victim}-{i + 1}"},
                                        tmp / f"{victim}.log")
        trickle.app.close()
    finally:
        stop([*kernels.values(), *workers])
        table.close()
    return leased, moved


# ---------------------------------------------------------------------- deploys

def deploy_rates(settings: Settings, admin_dsn: str, tmp: Path, deploys: int,
                 rounds: int) -> dict[str, float]:
    """Median deploys/s over `rounds` (the cases interleaved) without leases, with leases
    (one kernel), and with two kernels."""
    from deploy import deploy_run
    from fixtures import write_test_host
    from support.cloud import write_inventory

    rates: dict[str, list[float]] = {}
    cases = (("1 kernel, no leases (baseline)", False, 0),
             ("1 kernel, leases and fence", True, 0),
             ("2 kernels sharing the partitions", True, 1))
    for n, (label, leases, extra) in enumerate([c for _ in range(rounds) for c in cases]):
        from fixtures.postgres import create_database, with_dbname

        dsn = with_dbname(admin_dsn, create_database(admin_dsn, prefix="bench_"))
        # a nats-server of its own: no step or outcome of the case before reaches this one
        nats_server = EmbeddedNatsServer(tmp / f"nats-{n}")
        case = Settings(store="postgres", postgres_dsn=dsn, nats_urls=(nats_server.start(),),
                        data_dir=tmp / f"data-{n}", postgres_pool_size=4)
        migrate_all(case)
        folder = tmp / f"deploy-{n}"
        uris = [write_test_host(folder / "hosts" / f"kvm-{i}.xml", cpus=512,
                                memory_mib=2**21) for i in range(8)]
        inventory = write_inventory(folder, uris, host_cores=512, host_memory_mib=2**21,
                                    vm_cores=1, vm_memory_mib=512)
        others = [spawn(["kernel"], env_of(case), tmp / f"kernel-extra-{n}.log")
                  for _ in range(extra)]
        try:
            run = asyncio.run(_deploy_run(deploy_run, case, inventory, deploys, leases,
                                          extra))
        finally:
            stop(others)
            nats_server.stop()
        rates.setdefault(label, []).append(run.rate)
        print(f"  {label:<36}{run.rate:>8.1f} deploys/s  ({run.failed} failed, kernel "
              f"process CPU {run.kernel_cpu_ms:.2f} ms/deploy)")
    medians = {label: statistics.median(r) for label, r in rates.items()}
    for label, median in medians.items():
        print(f"  median {label:<29}{median:>8.1f} deploys/s over {len(rates[label])} runs")
    return medians


async def _deploy_run(deploy_run: Any, settings: Settings, inventory: Path, deploys: int,
                      leases: bool, extra: int) -> Any:
    """bench/deploy.py's run (its kernel leasing, if asked), once the other kernels run."""
    if extra:
        await asyncio.to_thread(_wait_members, settings, extra)
    return await deploy_run(settings, inventory, deploys, False, False, 16, leases=leases)


def _wait_members(settings: Settings, count: int, timeout: float = 60) -> None:
    table = LeaseTable(settings.postgres_dsn, settings.postgres_schema)
    try:
        deadline = time.monotonic() + timeout
        while len([m for m in table.members() if m.alive]) < count:
            if time.monotonic() > deadline:
                raise TimeoutError("the extra kernel never joined")
            time.sleep(0.1)
    finally:
        table.close()


# ---------------------------------------------------------------------- main

@contextmanager
def infrastructure(tmp: Path) -> Iterator[tuple[Settings, str]]:
    from fixtures.postgres import PostgresServer, create_database, with_dbname

    pg = PostgresServer(settings={"max_connections": "200"})
    nats_server = EmbeddedNatsServer(tmp / "nats")
    try:
        pg.start()
        url = nats_server.start()
        dsn = with_dbname(pg.dsn, create_database(pg.dsn, prefix="bench_"))
        settings = Settings(store="postgres", postgres_dsn=dsn, nats_urls=(url,),
                            data_dir=tmp / "data", postgres_pool_size=4)
        migrate_all(settings)
        yield settings, pg.dsn
    finally:
        nats_server.stop()
        pg.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--deploys", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each deploy case")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ck-failover-"))
    with infrastructure(tmp) as (settings, admin_dsn):
        period = settings.lease_seconds
        print(f"kernel failover: 2 kernels, {settings.kernel_partitions} partitions, leases "
              f"of {period} s (the defaults), echo workers, a trickle of operations")
        leased, moved = failover(settings, tmp, args.kills)
        print(f"  leased again:   p50 {statistics.median(leased):.2f} s, max {max(leased):.2f} s"
              f"  ({max(leased) / period:.2f} lease periods at most)")
        print(f"  moving again:   p50 {statistics.median(moved):.2f} s, max {max(moved):.2f} s"
              f"  ({max(moved) / period:.2f} lease periods at most)")
        print(f"  goals: within 1.5 lease periods ({1.5 * period:.1f} s) and under 10 s")
        print(f"deploys end to end ({args.deploys} at once, 8 test-driver hosts, workers in "
              "processes of their own, 2 cores)")
        rates = deploy_rates(settings, admin_dsn, tmp, args.deploys, args.rounds)
    base, fenced, two = rates.values()
    print(f"  fence cost: {100 * (1 - fenced / base):+.1f}% of the 1-kernel rate "
          f"(goal: at most 10%); 2 kernels / 1 kernel with leases: {two / fenced:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
