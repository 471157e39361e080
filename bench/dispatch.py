"""Step dispatch, end to end: log -> JetStream -> worker processes -> outcomes -> PostgreSQL.

Usage:
    .venv/bin/python bench/dispatch.py [--steps 20000] [--workers 1 2 4]

It starts a throwaway PostgreSQL and a nats-server, runs the kernel (dispatcher, result applier,
timers) in this process and `cloudkernel worker --subsystem echo` as separate processes, and
prints, from one run:
  * sustained steps/s with 1, 2 and 4 worker processes (operations of 10 parallel echo steps,
    submitted in bulk; timed from the first submission until every operation succeeded);
  * p50/p99 step latency (StepDispatched -> StepSucceeded, as recorded in the log) at half the
    2-worker rate;
  * the transport limit: a bare nats-py loop of publish -> fetch -> ack -> publish result ->
    fetch -> ack, with no database;
  * the naive design: the same engine saving each result in its own transaction.
"""

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from nats.js.api import RetentionPolicy, StorageType, StreamConfig  # noqa: E402

from aggregates.plan import Plan, PlannedStep, RetryPolicy  # noqa: E402
from gateways.stream.embedded import EmbeddedNatsServer  # noqa: E402
from gateways.stream.kernel_runner import KernelRunner  # noqa: E402
from kernel.bootstrap.migrations import migrate_all  # noqa: E402
from kernel.contracts.connection import connect  # noqa: E402
from kernel.dispatch_feed import DispatchFeed  # noqa: E402
from kernel.operation_commands import StartOperation  # noqa: E402
from kernel.operations import OperationEngine  # noqa: E402
from kernel.settings import Settings  # noqa: E402
from kernel.store.application import PlatformApplication, open_application  # noqa: E402

STEPS_PER_OP = 10
OPS_PER_SUBMIT = 100
ECHO = msgspec.json.encode({"message": "x"})


# ---------------------------------------------------------------------- infrastructure

@contextlib.contextmanager
def infrastructure() -> Iterator[tuple[Any, str]]:
    """A throwaway PostgreSQL server and a nats-server."""
    from fixtures.postgres import PostgresServer

    pg = PostgresServer()
    tmp = tempfile.mkdtemp(prefix="ck-bench-")
    nats_server = EmbeddedNatsServer(Path(tmp) / "nats")
    try:
        pg.start()
        url = nats_server.start()
        yield pg, url
    finally:
        nats_server.stop()
        pg.destroy()


def fresh_settings(pg: Any, url: str) -> Settings:
    from fixtures.postgres import create_database, with_dbname

    dsn = with_dbname(pg.dsn, create_database(pg.dsn, prefix="bench_"))
    settings = Settings(store="postgres", postgres_dsn=dsn, nats_urls=(url,),
                        postgres_pool_size=4)
    migrate_all(settings)
    return settings


@contextlib.contextmanager
def workers(url: str, count: int, concurrency: int = 32) -> Iterator[None]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLOUDKERNEL_LOG_LEVEL": "warning"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "gateways.cli.main", "worker", "--subsystem", "echo",
         "--nats-url", url, "--concurrency", str(concurrency)],
        env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL)
        for _ in range(count)]
    try:
        time.sleep(1.0)
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


class Kernel:
    """The kernel loops in a background thread of this process."""

    def __init__(self, settings: Settings, *, group_commit: bool = True):
        self.app = open_application(PlatformApplication, settings)
        self.engine = OperationEngine(self.app, group_commit=group_commit)
        self.runner = KernelRunner(self.engine, DispatchFeed(self.app), settings.nats_urls)
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.error: BaseException | None = None

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.runner.run(self._stop))
        except BaseException as e:
            self.error = e
            raise

    def __enter__(self) -> "Kernel":
        self._thread.start()
        time.sleep(0.5)
        return self

    def check(self) -> None:
        """Raise if the kernel thread died."""
        if not self._thread.is_alive():
            raise RuntimeError(f"the kernel stopped: {self.error!r}")

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self.app.close()


def operation(steps: int) -> StartOperation:
    """One operation of `steps` independent echo steps."""
    return StartOperation(kind="bench.echo", plan=Plan(steps=tuple(
        PlannedStep(step_id=uuid.uuid4(), subsystem="echo", action="echo",
                    args=msgspec.Raw(ECHO), retry=RetryPolicy(max_attempts=5),
                    deadline_seconds=120.0)
        for _ in range(steps))))


def succeeded(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM platform_events "
                           "WHERE topic = 'operation.Succeeded'").fetchone()
    return int(row[0]) if row else 0


def wait_for(dsn: str, ops: int, timeout: float, kernel: "Kernel") -> None:
    deadline = time.monotonic() + timeout
    while succeeded(dsn) < ops:
        kernel.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {succeeded(dsn)}/{ops} operations finished")
        time.sleep(0.05)


# ---------------------------------------------------------------------- cases

def sustained(settings: Settings, total_steps: int, n_workers: int, *,
              group_commit: bool = True) -> float:
    """Steps per second, first submission to last success."""
    ops = total_steps // STEPS_PER_OP
    batches = [[operation(STEPS_PER_OP) for _ in range(OPS_PER_SUBMIT)]
               for _ in range(ops // OPS_PER_SUBMIT)]
    with workers(settings.nats_urls[0], n_workers), Kernel(settings,
                                                           group_commit=group_commit) as k:
        start = time.perf_counter()
        for batch in batches:
            k.engine.submit_many(batch, idempotency_key=f"bench-{uuid.uuid4()}")
        wait_for(settings.postgres_dsn, ops, timeout=600, kernel=k)
        return total_steps / (time.perf_counter() - start)


def latency_at(settings: Settings, rate: float, seconds: float = 5.0) -> tuple[float, float]:
    """p50 and p99 of dispatch-to-success, in ms, at `rate` steps/s with 2 workers."""
    tick = 0.05
    per_tick = max(1, round(rate * tick))
    with workers(settings.nats_urls[0], 2), Kernel(settings) as k:
        submitted = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            k.engine.submit_many([operation(1) for _ in range(per_tick)],
                                 idempotency_key=f"lat-{uuid.uuid4()}")
            submitted += per_tick
            next_at = start + (submitted / per_tick) * tick
            time.sleep(max(0.0, next_at - time.perf_counter()))
        wait_for(settings.postgres_dsn, submitted, timeout=120, kernel=k)
        app = k.app
        dispatched: dict[uuid.UUID, Any] = {}
        latencies: list[float] = []
        for note in app.recorder.select_notifications(
                start=None, limit=10_000_000,
                topics=("operation.StepDispatched", "operation.StepSucceeded")):
            event: Any = app.mapper.to_domain_event(note)
            if note.topic == "operation.StepDispatched":
                dispatched[event.step_id] = event.at
            else:
                latencies.append((event.at - dispatched[event.step_id]).total_seconds() * 1000)
    qs = statistics.quantiles(latencies, n=100)
    return qs[49], qs[98]


async def transport_limit(url: str, n: int, window: int = 256) -> float:
    """Bare nats-py: publish step, fetch+ack it, publish result, fetch+ack result."""
    nc = await connect([url], name="bench-transport")
    js = nc.jetstream(timeout=10)
    # Streams of its own, shaped like STEPS/RESULTS: a work-queue stream allows one consumer
    # per subject, and the kernel's RESULTS consumer takes every subject.
    for name in ("BARE_STEPS", "BARE_RESULTS"):
        await js.add_stream(StreamConfig(
            name=name, subjects=[f"{name.lower()}.>"], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, duplicate_window=600))
    steps = await js.pull_subscribe("bare_steps.>", durable="bare-worker", stream="BARE_STEPS")
    results = await js.pull_subscribe("bare_results.>", durable="bare-kernel",
                                      stream="BARE_RESULTS")
    payload = b"x" * 200
    done = 0

    async def produce() -> None:
        for start in range(0, n, window):
            await asyncio.gather(*(js.publish("bare_steps.echo.echo", payload,
                                              headers={"Nats-Msg-Id": f"s{i}"})
                                   for i in range(start, min(n, start + window))))

    async def work() -> None:
        handled = 0
        while handled < n:
            try:
                msgs = await steps.fetch(window, timeout=1)
            except TimeoutError:
                continue
            await asyncio.gather(*(js.publish("bare_results.echo", m.data,
                                              headers={"Nats-Msg-Id": f"r{handled + i}"})
                                   for i, m in enumerate(msgs)))
            await asyncio.gather(*(m.ack() for m in msgs))
            handled += len(msgs)

    async def collect() -> None:
        nonlocal done
        while done < n:
            try:
                msgs = await results.fetch(1000, timeout=1)
            except TimeoutError:
                continue
            await asyncio.gather(*(m.ack() for m in msgs))
            done += len(msgs)

    start = time.perf_counter()
    await asyncio.gather(produce(), work(), collect())
    elapsed = time.perf_counter() - start
    await nc.close()
    return n / elapsed


def main() -> int:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--naive-steps", type=int, default=4000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    with infrastructure() as (pg, url):
        transport = asyncio.run(transport_limit(url, args.steps))
        rates = {w: sustained(fresh_settings(pg, url), args.steps, w) for w in args.workers}
        base = rates.get(2, next(iter(rates.values())))
        p50, p99 = latency_at(fresh_settings(pg, url), base / 2)
        naive = sustained(fresh_settings(pg, url), args.naive_steps, 2, group_commit=False)
    print("Step dispatch, end to end on PostgreSQL + nats-server (one run, 2-core machine)")
    print(f"{'case':<44}{'steps/s':>10}")
    for w, r in rates.items():
        print(f"{f'engine, {w} worker process(es)':<44}{r:>10,.0f}")
    print(f"{'transport limit (bare nats-py loop, no DB)':<44}{transport:>10,.0f}")
    print(f"{'naive engine (one save per result), 2 workers':<44}{naive:>10,.0f}")
    best = max(rates.values())
    print(f"best engine / transport limit: {best / transport:.0%}   "
          f"best engine / naive: {best / naive:.1f}x")
    print(f"latency at {base / 2:,.0f} steps/s (half the 2-worker rate): "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print("goals: >= 2,000 steps/s, >= 40% of the transport limit, >= 5x the naive design")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
