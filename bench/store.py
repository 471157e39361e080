"""Event store throughput on PostgreSQL: the library's default path vs cloudkernel's, vs raw COPY.

Usage:
    .venv/bin/python bench/store.py [--dsn postgresql://...] [--events 20000] [--repeats 3]

Without --dsn it starts a throwaway PostgreSQL cluster (fsync on) like the tests do. Every
figure is a median over the repeats, measured in this one run, so ratios are comparable.
"""

import argparse
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from eventsourcing.application import Application

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from aggregates.host import Host  # noqa: E402
from kernel.settings import Settings  # noqa: E402
from kernel.store.application import KernelApplication, postgres_env, store_env  # noqa: E402


class StockApp(Application[uuid.UUID]):
    """The library as it comes: JSONTranscoder and the stock PostgreSQL recorder."""

    name = "stock"


class LeanApp(KernelApplication):
    """cloudkernel's path: msgspec mapper and the bulk-array recorder."""

    name = "lean"


def make_hosts(n: int) -> list[Host]:
    """n fresh hosts, one Registered event each (a realistic ~450-byte event)."""
    zone, pod, cluster = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    return [
        Host.register(name=f"host-{uuid.uuid4().hex}", uri="qemu+ssh://root@10.0.0.1/system",
                      zone_id=zone, pod_id=pod, cluster_id=cluster, cpu_cores=32,
                      cpu_mhz=2400, memory_mib=262144, cpu_overprovisioning=2.0,
                      tags=("ssd", "gpu"))
        for _ in range(n)
    ]


def time_saves(app: Application[uuid.UUID], events: int, per_save: int) -> float:
    """Events per second for saving `events` new aggregates, `per_save` in each save()."""
    hosts = make_hosts(events)
    batches = [hosts[i:i + per_save] for i in range(0, events, per_save)]
    start = time.perf_counter()
    for batch in batches:
        app.save(*batch)
    return events / (time.perf_counter() - start)


def time_copy(dsn: str, events: int) -> float:
    """Rows per second for COPY of the same stored rows into a plain table."""
    rows = [_row(e) for h in make_hosts(events) for e in h.collect_events()]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute("CREATE TABLE bench_copy (originator_id uuid, originator_version int8, "
                     "topic text, state bytea)")
        start = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur, cur.copy(
            "COPY bench_copy FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["uuid", "int8", "text", "bytea"])
            for row in rows:
                copy.write_row(row)
        return events / (time.perf_counter() - start)


_lean_mapper: Any = None


def _row(event: Any) -> tuple[Any, ...]:
    global _lean_mapper
    if _lean_mapper is None:
        from kernel.store.mapper import MsgspecMapper

        _lean_mapper = MsgspecMapper()
    s = _lean_mapper.to_stored_event(event)
    return (s.originator_id, s.originator_version, s.topic, s.state)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a private PostgreSQL cluster for the run (the tests' fixture class)."""
    from fixtures.postgres import PostgresServer, create_database, with_dbname

    server = PostgresServer()
    try:
        server.start()
        yield with_dbname(server.dsn, create_database(server.dsn, prefix="bench_"))
    finally:
        server.destroy()


def median_of(repeats: int, fn: Callable[[], float]) -> float:
    """Median of `repeats` runs of fn."""
    return statistics.median(fn() for _ in range(repeats))


def main() -> int:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: start a throwaway cluster)")
    parser.add_argument("--events", type=int, default=20000, help="events per batched case")
    parser.add_argument("--single", type=int, default=2000, help="events for 1-per-save cases")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        dsn = args.dsn or stack.enter_context(throwaway_postgres())
        settings = Settings(store="postgres", postgres_dsn=dsn, postgres_pool_size=2)
        stock_env = {**postgres_env(settings), "CREATE_TABLE": "y"}
        stock = StockApp(env=stock_env)
        lean = LeanApp(env=store_env(settings, LeanApp.name, create_table=True))
        stack.callback(stock.close)
        stack.callback(lean.close)
        results: list[tuple[str, float, float]] = []
        for per_save, n in ((1, args.single), (100, args.events)):
            s = median_of(args.repeats, lambda n=n, p=per_save: time_saves(stock, n, p))
            le = median_of(args.repeats, lambda n=n, p=per_save: time_saves(lean, n, p))
            results.append((f"{per_save} aggregate(s) per save", s, le))
        copy = median_of(args.repeats, lambda: time_copy(dsn, args.events))
    print(f"PostgreSQL event store, events/s (median of {args.repeats}; fsync on)")
    print(f"{'case':<28}{'library default':>18}{'cloudkernel':>14}{'ratio':>8}")
    for name, s, le in results:
        print(f"{name:<28}{s:>18,.0f}{le:>14,.0f}{le / s:>7.1f}x")
    print(f"{'raw COPY (binary), 1 txn':<28}{copy:>18,.0f}{'':>14}")
    print("goal: batched >= 25,000 events/s and >= 2x the library default")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
