"""The audit trail's speed: seal, verify and replay over a large log, beside the raw read rate.

Usage:
    .venv/bin/python bench/audit.py [--events 1000000] [--every 1000] [--per-save 500]

It starts a throwaway PostgreSQL, migrates it, writes --events events (one `Host.Registered`
each, --per-save aggregates per save) into the platform application, and prints, from one run:
  * the raw limit: `select_notifications` rows/s paging over the whole log (pages of 10,000);
  * seal: `Sealer.seal_once` events/s over the whole log (a checkpoint every --every events,
    as `audit seal` does by default), with a fresh Ed25519 key from `audit keygen`'s code;
  * verify: `verify_store` (what `audit verify` runs) events/s, and its ratio to the raw read;
  * replay: `ProjectionRunner.rebuild` of the audit index (reads every event) and the hosts
    model into a scratch SQLite folder, as `audit replay` folds them, events/s.
Goal (issue 8): verify >= 50% of the raw read rate.
"""

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from aggregates.host import Host  # noqa: E402
from kernel.bootstrap import open_platform  # noqa: E402
from kernel.bootstrap.migrations import migrate_all  # noqa: E402
from kernel.settings import Settings  # noqa: E402

PAGE = 10_000


def hosts(n: int) -> list[Host]:
    """n fresh hosts, one Registered event each."""
    zone, pod, cluster = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    return [Host.register(name=f"h-{uuid.uuid4().hex}", uri="qemu+ssh://root@10.0.0.1/system",
                          zone_id=zone, pod_id=pod, cluster_id=cluster, cpu_cores=32,
                          cpu_mhz=2400, memory_mib=262144) for _ in range(n)]


def write_log(app: Any, events: int, per_save: int) -> float:
    """Seconds to save `events` events, `per_save` aggregates in each save()."""
    start = time.perf_counter()
    left = events
    while left > 0:
        n = min(per_save, left)
        app.save(*hosts(n))
        left -= n
    return time.perf_counter() - start


def read_rate(app: Any) -> tuple[int, float]:
    """Raw `select_notifications` over the whole log, pages of 10,000: (rows, rows/s)."""
    start, position, read = time.perf_counter(), 0, 0
    while True:
        notes = app.recorder.select_notifications(position, limit=PAGE,
                                                  inclusive_of_start=False)
        if not notes:
            break
        read += len(notes)
        position = notes[-1].id
    return read, read / (time.perf_counter() - start)


def seal_rate(app: Any, audit_dir: Path, every: int) -> tuple[int, float]:
    """Key generation (not timed), then one `seal_once` of the whole log: (checkpoints, ev/s)."""
    from gateways.audit.keys import PRIVATE_NAME, generate_keys, load_private_key
    from gateways.audit.seal import Sealer

    generate_keys(audit_dir)
    key = load_private_key(audit_dir / PRIVATE_NAME)
    start = time.perf_counter()
    sealer = Sealer(app, audit_dir, key, every=every)
    made = sealer.seal_once()
    elapsed = time.perf_counter() - start
    return len(made), sealer.tree.size / elapsed


def verify_rate(app: Any, audit_dir: Path) -> tuple[Any, float]:
    """`audit verify`'s check of the whole log: (report, events/s of the store)."""
    from gateways.audit.keys import PUBLIC_NAME, load_public_key
    from gateways.audit.verify import verify_store

    public = load_public_key(audit_dir / PUBLIC_NAME)
    start = time.perf_counter()
    report = verify_store(app, audit_dir, public)
    elapsed = time.perf_counter() - start
    return report, report.store_events / elapsed


def replay_rate(app: Any, name: str, scratch_dir: Path) -> tuple[int, float]:
    """Fold the whole log into a scratch SQLite copy of read model `name`: (events, ev/s)."""
    from projections.catalog import MODELS
    from projections.runner import ProjectionRunner
    from projections.views import open_view

    scratch = Settings(data_dir=scratch_dir / name, store="sqlite")
    view = open_view(MODELS[name], scratch, create_table=True)
    try:
        report = ProjectionRunner(app, view).rebuild()
    finally:
        view.close()
    return report.events, report.events_per_second


def main() -> int:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--per-save", type=int, default=500, help="aggregates per save()")
    parser.add_argument("--every", type=int, default=1000, help="events per checkpoint")
    parser.add_argument("--models", nargs="*", default=["audit", "hosts"],
                        help="read models to replay (default: audit hosts)")
    args = parser.parse_args()
    from fixtures.postgres import PostgresServer, create_database, with_dbname

    pg = PostgresServer()
    work = Path(tempfile.mkdtemp(prefix="ck-bench-audit-"))
    try:
        pg.start()
        dsn = with_dbname(pg.dsn, create_database(pg.dsn, prefix="bench_"))
        settings = Settings(store="postgres", postgres_dsn=dsn, postgres_pool_size=2,
                            data_dir=work / "data")
        migrate_all(settings)
        platform = open_platform(settings)
        app = platform.app
        try:
            write_s = write_log(app, args.events, args.per_save)
            print(f"wrote {args.events:,} events in {write_s:.1f} s "
                  f"({args.events / write_s:,.0f} events/s)", flush=True)
            count, reads = read_rate(app)
            checkpoints, seals = seal_rate(app, work / "audit", args.every)
            report, verifies = verify_rate(app, work / "audit")
            replays = {name: replay_rate(app, name, work / "replay") for name in args.models}
        finally:
            platform.close()
    finally:
        pg.destroy()
        shutil.rmtree(work, ignore_errors=True)
    print(f"Audit trail on PostgreSQL, one run, log of {count:,} events")
    print(f"{'raw select_notifications read (pages 10k)':<46}{reads:>12,.0f} events/s")
    print(f"{'seal (whole log, checkpoint every ' + str(args.every) + ')':<46}{seals:>12,.0f}"
          f" events/s  ({seals / reads:.0%} of the raw read; {checkpoints:,} checkpoints)")
    print(f"{'verify (audit verify)':<46}{verifies:>12,.0f} events/s  "
          f"({verifies / reads:.0%} of the raw read; {'clean' if report.clean else 'NOT CLEAN'})")
    for name, (events, rate) in replays.items():
        print(f"{'replay: ' + name + ' model (scratch SQLite)':<46}{rate:>12,.0f} events/s  "
              f"({rate / reads:.0%} of the raw read; {events:,} events)")
    ok = verifies >= 0.5 * reads
    print(f"goal: verify >= 50% of raw read: {'met' if ok else 'NOT met'} "
          f"({verifies / reads:.0%})")
    if not report.clean:
        for line in report.lines():
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
