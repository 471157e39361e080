"""counter: a test subsystem whose side effect lives in its own table, keyed by step id.

`counter.add {name, amount, hold_after}` records the effect once per step id
(`INSERT ... ON CONFLICT (step_id) DO NOTHING`) and moves the named total only when that row
was new, in the same transaction. Every execution, including redeliveries, is logged in
`counter_runs`. A test reads the three tables (`read_counter`) and shows each step's effect
applied exactly once while the step itself ran more than once. `hold_after` sleeps after the
commit on the first delivery only, which gives a test a window to kill the worker between the
effect and its outcome; the redelivery then answers at once.

Configuration (the dict given to the factory): `path` (an SQLite file, shared by the worker
processes of one machine) or `dsn` (PostgreSQL). The factory does no I/O; `open()` connects
and creates the tables.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

import msgspec

from aggregates.errors import ConfigError
from subsystems.base import StepContext, SubsystemBase, action

__all__ = ["Counter", "CounterReport", "make_counter", "read_counter"]

_TABLES = (
    "CREATE TABLE IF NOT EXISTS counter_effects (step_id TEXT PRIMARY KEY, "
    "operation_id TEXT NOT NULL, name TEXT NOT NULL, amount BIGINT NOT NULL, "
    "applied INTEGER NOT NULL DEFAULT 1)",
    "CREATE TABLE IF NOT EXISTS counter_totals (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counter_runs (step_id TEXT NOT NULL, attempt INTEGER NOT NULL, "
    "delivery INTEGER NOT NULL)",
)
_RUN = "INSERT INTO counter_runs (step_id, attempt, delivery) VALUES ({p}, {p}, {p})"
_EFFECT = ("INSERT INTO counter_effects (step_id, operation_id, name, amount) "
           "VALUES ({p}, {p}, {p}, {p}) ON CONFLICT (step_id) DO NOTHING RETURNING step_id")
_TOTAL = ("INSERT INTO counter_totals (name, value) VALUES ({p}, {p}) ON CONFLICT (name) "
          "DO UPDATE SET value = counter_totals.value + excluded.value")
_READ_TOTAL = "SELECT value FROM counter_totals WHERE name = {p}"
_PG_MIGRATION_LOCK = 0x636B_636F_756E_7472  # "ckcountr": two workers may migrate at once


class CounterArgs(msgspec.Struct, frozen=True, kw_only=True):
    """Add `amount` to the total `name`, once per step id."""

    name: str = "default"
    amount: int = 1
    hold_after: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0


class Counted(msgspec.Struct, frozen=True, kw_only=True):
    """The total after this step, and whether this execution applied the effect."""

    name: str
    total: int
    applied_now: bool


@dataclass(frozen=True)
class CounterReport:
    """What the counter tables hold: effects and runs per step id, and the totals."""

    applied: dict[str, int]
    runs: dict[str, int]
    totals: dict[str, int]


class _Store(Protocol):
    def migrate(self) -> None: ...
    def apply(self, ctx: StepContext, args: CounterArgs) -> tuple[int, bool]: ...
    def report(self) -> CounterReport: ...
    def close(self) -> None: ...


class Counter(SubsystemBase):
    """Counts, exactly once per step id."""

    name = "counter"
    version = "1.0"

    def __init__(self, *, path: str | None = None, dsn: str | None = None) -> None:
        """Remember where the tables are; nothing is opened yet."""
        self.path, self.dsn = path, dsn
        self._store: _Store | None = None

    def open(self) -> None:
        """Connect and create the tables."""
        self._store = _open_store(self.path, self.dsn)

    def close(self) -> None:
        """Close the connection pool, if any."""
        if self._store is not None:
            self._store.close()
            self._store = None

    @action()
    def add(self, ctx: StepContext, args: CounterArgs) -> Counted:
        """Apply the effect once per step id, then hold `hold_after` s on a first delivery."""
        if self._store is None:
            raise ConfigError("counter subsystem is not open")
        total, applied_now = self._store.apply(ctx, args)
        if args.hold_after and ctx.delivery == 1:
            time.sleep(args.hold_after)
        return Counted(name=args.name, total=total, applied_now=applied_now)


def make_counter(config: Mapping[str, Any]) -> Counter:
    """Entry point factory of `counter`: config `path` (SQLite) or `dsn` (PostgreSQL)."""
    unknown = sorted(set(config) - {"path", "dsn"})
    if unknown:
        raise ConfigError(f"counter: unknown config keys {unknown}; expected 'path' or 'dsn'")
    for key in ("path", "dsn"):
        if key in config and not (isinstance(config[key], str) and config[key]):
            raise ConfigError(f"counter: config {key!r} must be a non-empty string")
    if "path" in config and "dsn" in config:
        raise ConfigError("counter: give config 'path' (SQLite) or 'dsn' (PostgreSQL), not both")
    return Counter(path=config.get("path"), dsn=config.get("dsn"))


def read_counter(*, path: str | None = None, dsn: str | None = None) -> CounterReport:
    """Read the counter tables (for tests and inspection)."""
    store = _open_store(path, dsn)
    try:
        return store.report()
    finally:
        store.close()


def _open_store(path: str | None, dsn: str | None) -> _Store:
    store: _Store
    if dsn:
        store = _PostgresStore(dsn)
    elif path:
        store = _SqliteStore(Path(path))
    else:
        raise ConfigError("counter: set config 'path' (SQLite file) or 'dsn' (PostgreSQL) "
                          "with --config-json")
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


def _report(rows: Iterator[tuple[str, int, int]]) -> CounterReport:
    report = CounterReport(applied={}, runs={}, totals={})
    for table, key, value in rows:
        getattr(report, table)[str(key)] = int(value)
    return report


_REPORT = ("SELECT 'applied', step_id, SUM(applied) FROM counter_effects GROUP BY step_id "
           "UNION ALL SELECT 'runs', step_id, COUNT(*) FROM counter_runs GROUP BY step_id "
           "UNION ALL SELECT 'totals', name, value FROM counter_totals")


class _SqliteStore:
    """One short connection per call: the file is shared by threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def migrate(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        with self._tx() as conn:
            for ddl in _TABLES:
                conn.execute(ddl)

    def apply(self, ctx: StepContext, args: CounterArgs) -> tuple[int, bool]:
        p = "?"
        with self._tx() as conn:
            conn.execute(_RUN.format(p=p), (str(ctx.step_id), ctx.attempt, ctx.delivery))
            new = conn.execute(_EFFECT.format(p=p), (str(ctx.step_id), str(ctx.operation_id),
                                                     args.name, args.amount)).fetchone()
            if new is not None:
                conn.execute(_TOTAL.format(p=p), (args.name, args.amount))
            row = conn.execute(_READ_TOTAL.format(p=p), (args.name,)).fetchone()
        return (int(row[0]) if row else 0), new is not None

    def report(self) -> CounterReport:
        with self._tx() as conn:
            return _report(iter(conn.execute(_REPORT).fetchall()))

    def close(self) -> None:
        pass


class _PostgresStore:
    """A small psycopg pool; the tables go to the DSN's default schema."""

    def __init__(self, dsn: str) -> None:
        from psycopg_pool import ConnectionPool

        self.pool = ConnectionPool(dsn, min_size=1, max_size=8, open=True, timeout=30)

    def migrate(self) -> None:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_MIGRATION_LOCK,))
            for ddl in _TABLES:
                conn.execute(ddl)

    def apply(self, ctx: StepContext, args: CounterArgs) -> tuple[int, bool]:
        p = "%s"
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(_RUN.format(p=p), (str(ctx.step_id), ctx.attempt, ctx.delivery))
            new = conn.execute(_EFFECT.format(p=p), (str(ctx.step_id), str(ctx.operation_id),
                                                     args.name, args.amount)).fetchone()
            if new is not None:
                conn.execute(_TOTAL.format(p=p), (args.name, args.amount))
            row = conn.execute(_READ_TOTAL.format(p=p), (args.name,)).fetchone()
        return (int(row[0]) if row else 0), new is not None

    def report(self) -> CounterReport:
        with self.pool.connection() as conn:
            return _report(iter(conn.execute(_REPORT).fetchall()))

    def close(self) -> None:
        self.pool.close()
