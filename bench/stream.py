"""The Events Framework's speed: the relay from the PostgreSQL log to the JetStream EVENTS stream.

Usage:
    .venv/bin/python bench/stream.py [--events 50000]

It starts a throwaway PostgreSQL and a nats-server and prints, from one run:
  * relay catch-up: events/s to publish a log of --events events into an empty stream;
  * relay lag p50/p99 at a steady 1,000 events/s (commit of the save -> message received by a
    consumer of EVENTS);
  * projection rebuild events/s, for the hosts read model (every event of the log is a host
    event) and the audit index (one row per event), median of 3 rebuilds each;
  * the raw limits beside them: `select_notifications` read rate, and JetStream publish rate
    (windows of 256 with Msg-Id, no relay, no database).
"""

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import nats  # noqa: E402

from aggregates.host import Host  # noqa: E402
from gateways.stream.embedded import EmbeddedNatsServer  # noqa: E402
from gateways.stream.relay import EventRelay  # noqa: E402
from kernel.bootstrap.migrations import migrate_all  # noqa: E402
from kernel.contracts.events import EVENTS_STREAM  # noqa: E402
from kernel.event_feed import EventFeed  # noqa: E402
from kernel.settings import Settings  # noqa: E402
from kernel.store.application import PlatformApplication, open_application  # noqa: E402


def hosts(n: int) -> list[Host]:
    zone, pod, cluster = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    return [Host.register(name=f"h-{uuid.uuid4().hex}", uri="qemu+ssh://root@10.0.0.1/system",
                          zone_id=zone, pod_id=pod, cluster_id=cluster, cpu_cores=32,
                          cpu_mhz=2400, memory_mib=262144) for _ in range(n)]


def fresh_app(pg: Any) -> tuple[Any, Settings]:
    from fixtures.postgres import create_database, with_dbname

    dsn = with_dbname(pg.dsn, create_database(pg.dsn, prefix="bench_"))
    settings = Settings(store="postgres", postgres_dsn=dsn, postgres_pool_size=2)
    migrate_all(settings)
    return open_application(PlatformApplication, settings), settings


async def fresh_stream(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    with contextlib.suppress(Exception):  # not there yet
        await js.delete_stream(EVENTS_STREAM)
    await nc.close()


async def catch_up(app: Any, url: str, events: int) -> float:
    """Events/s for the relay to publish an existing log."""
    await fresh_stream(url)
    relay = EventRelay(EventFeed(app), [url])
    stop = asyncio.Event()
    start = time.perf_counter()
    task = asyncio.create_task(relay.run(stop))
    while relay.published < events:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    stop.set()
    await task
    return events / elapsed


async def lag(app: Any, url: str, rate: int = 1000, seconds: float = 10.0) -> tuple[float, float]:
    """p50/p99 ms from a save's commit to a consumer receiving the event, at `rate` events/s."""
    await fresh_stream(url)
    relay = EventRelay(EventFeed(app), [url])
    stop = asyncio.Event()
    relay_task = asyncio.create_task(relay.run(stop))
    await asyncio.sleep(0.5)
    saved_at: dict[int, float] = {}
    received_at: dict[int, float] = {}
    nc = await nats.connect(url)
    js = nc.jetstream()

    async def on_msg(msg: Any) -> None:
        received_at[int(msg.headers["Cloudkernel-Position"])] = time.perf_counter()

    await js.subscribe("cloudkernel.events.>", cb=on_msg, ordered_consumer=True,
                       stream=EVENTS_STREAM)
    per_tick, tick = max(1, rate // 100), 0.01

    def write() -> None:  # a steady writer in its own thread, as another process would be
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < seconds:
            for r in app.save(*hosts(per_tick)):
                saved_at[r.notification.id] = time.perf_counter()
            n += 1
            time.sleep(max(0.0, start + n * tick - time.perf_counter()))

    writer = threading.Thread(target=write)
    writer.start()
    while writer.is_alive():
        await asyncio.sleep(0.05)
    deadline = time.perf_counter() + 10
    while len(received_at) < len(saved_at) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await relay_task
    await nc.close()
    lags = [(received_at[p] - saved_at[p]) * 1000 for p in saved_at if p in received_at]
    qs = statistics.quantiles(lags, n=100)
    return qs[49], qs[98]


def rebuild_rate(app: Any, settings: Any, name: str, runs: int = 3) -> float:
    """Median events/s of `runs` rebuilds of projection `name` over the whole log."""
    from projections.catalog import MODELS
    from projections.runner import ProjectionRunner
    from projections.views import open_view

    view = open_view(MODELS[name], settings)
    try:
        runner = ProjectionRunner(app, view)
        rates = [runner.rebuild().events_per_second for _ in range(runs)]
    finally:
        view.close()
    return statistics.median(rates)


def read_rate(app: Any, events: int) -> float:
    """Raw `select_notifications` rows/s over the whole log, pages of 2,000."""
    start, position = time.perf_counter(), 0
    read = 0
    while read < events:
        notes = app.recorder.select_notifications(start=position, limit=2000,
                                                  inclusive_of_start=False)
        if not notes:
            break
        read += len(notes)
        position = notes[-1].id
    return read / (time.perf_counter() - start)


async def publish_rate(url: str, n: int, window: int = 256) -> float:
    """JetStream publishes/s with Msg-Id, windows of `window`, no database."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="RAW", subjects=["raw.>"])
    payload = b"x" * 450
    start = time.perf_counter()
    for i in range(0, n, window):
        await asyncio.gather(*(js.publish("raw.e", payload, headers={"Nats-Msg-Id": str(j)})
                               for j in range(i, min(n, i + window))))
    elapsed = time.perf_counter() - start
    await js.delete_stream("RAW")
    await nc.close()
    return n / elapsed


def main() -> int:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50000)
    args = parser.parse_args()
    from fixtures.postgres import PostgresServer

    pg = PostgresServer()
    nats_server = EmbeddedNatsServer(Path(tempfile.mkdtemp(prefix="ck-bench-")) / "nats")
    try:
        pg.start()
        url = nats_server.start()
        app, settings = fresh_app(pg)
        for _ in range(args.events // 100):
            app.save(*hosts(100))
        reads = statistics.median(read_rate(app, args.events) for _ in range(3))
        catch = asyncio.run(catch_up(app, url, args.events))
        rebuilds = {name: rebuild_rate(app, settings, name) for name in ("hosts", "audit")}
        app.close()
        lag_app, _ = fresh_app(pg)
        p50, p99 = asyncio.run(lag(lag_app, url))
        lag_app.close()
        raw_publish = asyncio.run(publish_rate(url, args.events))
    finally:
        nats_server.stop()
        pg.destroy()
    print("Events Framework on PostgreSQL + nats-server (one run, 2-core machine)")
    print(f"{'relay catch-up':<44}{catch:>12,.0f} events/s")
    print(f"{'  raw select_notifications read':<44}{reads:>12,.0f} rows/s")
    print(f"{'  raw JetStream publish (Msg-Id, window 256)':<44}{raw_publish:>12,.0f} msgs/s")
    for name, rate in rebuilds.items():
        print(f"{'projection rebuild: ' + name:<44}{rate:>12,.0f} events/s"
              f"  ({rate / reads:.0%} of the raw read)")
    print(f"relay lag at 1,000 events/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print("goals: catch-up >= 15,000 events/s, lag p99 <= 100 ms, rebuild >= 30,000 events/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
