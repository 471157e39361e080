"""Partition leases in PostgreSQL: which kernel works which operations, fenced by an epoch.

Work is split into a fixed number of partitions (`kernel_partitions`, 16 by default); an
operation belongs to partition `operation_id.int % partitions`, for its whole life, whatever
entities, zones or hosts it touches: an operation that spans zones (a migration) still has one
owner, the kernel holding its partition. A fixed count, rather than one partition per zone,
spreads the work over the live kernels however many zones there are (one, often), and an
operation's partition never changes.

Each partition has a row: its owner, an epoch and an expiry set by the database's clock
(`clock_timestamp()`, never a kernel's: a kernel's clock may be skewed; only the interval a
kernel waits between renewals is its own, and it renews three times per lease period). A
kernel, on each tick (`LeaseTable.tick`):

- beats its member row (alive for one lease period);
- renews the partitions it holds, at their epoch: a partition another kernel took meanwhile
  (its epoch moved) is lost;
- gives up those above its fair share (`ceil(partitions / live kernels)`), cleanly (owner
  cleared, expired now), so that a kernel that joins gets work within a tick;
- takes free or expired partitions up to its share; taking one raises its epoch.

The fence: every transaction a kernel commits for partitions calls `kernel_fence(owner,
partitions, epochs)` first, in the same transaction. It locks those lease rows (FOR SHARE)
and raises `FencedError`'s SQLSTATE unless each is held by that owner at that epoch and not
expired by the database's clock. A taker's UPDATE of a lease row waits for the writers that
hold it shared, so a write either committed while its owner held the lease (and the new
owner, which reads the log after taking it, sees it) or fails.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import psycopg
from psycopg import sql

from aggregates.errors import KernelError

__all__ = ["FENCED_SQLSTATE", "Fence", "FencedError", "LeaseRow", "LeaseTable", "MemberRow",
           "TickResult", "kernel_name", "partition_of"]

FENCED_SQLSTATE = "CKF01"


class FencedError(KernelError):
    """A kernel wrote for a partition it no longer holds (at that epoch): nothing was saved."""

    code = "fenced"


def partition_of(entity_id: UUID, partitions: int) -> int:
    """The partition an operation (by its id) belongs to."""
    return entity_id.int % partitions


def kernel_name() -> str:
    """A name for this kernel process: host, pid and a random part (a restart is new)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Fence:
    """What a transaction must still hold to commit: these partitions at these epochs."""

    owner: str
    epochs: Mapping[int, int]

    def arguments(self) -> tuple[str, list[int], list[int]]:
        """The `kernel_fence` call's arguments."""
        parts = sorted(self.epochs)
        return self.owner, parts, [self.epochs[p] for p in parts]


@dataclass(frozen=True)
class LeaseRow:
    """One partition's lease as the table holds it (ages by the database's clock)."""

    partition: int
    owner: str | None
    epoch: int
    expires_in: float  # seconds; negative: expired
    held_for: float  # seconds since its owner took it


@dataclass(frozen=True)
class MemberRow:
    """A kernel that beat recently (or whose beat has lapsed: `alive` False)."""

    name: str
    started_at: datetime
    seen_ago: float
    alive: bool


@dataclass
class TickResult:
    """What a tick changed: partitions taken (with their new epoch), lost and given up."""

    taken: dict[int, int] = field(default_factory=dict)
    lost: set[int] = field(default_factory=set)
    released: set[int] = field(default_factory=set)
    live: int = 1


class LeaseTable:
    """The lease and member tables of one schema, through one autocommit connection."""

    def __init__(self, dsn: str, schema: str, *, partitions: int = 16,
                 period: float = 5.0, connect_timeout: int = 5) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        self.dsn, self.schema, self.partitions, self.period = dsn, schema, partitions, period
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection | None = None
        s = sql.Identifier(schema)
        self._leases = sql.SQL("{}.kernel_leases").format(s)
        self._members = sql.SQL("{}.kernel_members").format(s)
        self._fence_fn = sql.SQL("{}.kernel_fence").format(s)

    # ------------------------------------------------------------------ schema

    def create(self) -> None:
        """Create the tables, the partitions' rows and the fence function (idempotent). More
        partitions than before are added; fewer are refused (operations would move)."""
        with self._connect() as conn:
            conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (partition int PRIMARY KEY, owner text, "
                "epoch bigint NOT NULL DEFAULT 0, expires_at timestamptz NOT NULL DEFAULT "
                "'epoch', taken_at timestamptz)").format(self._leases))
            conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, started_at timestamptz "
                "NOT NULL DEFAULT clock_timestamp(), seen_at timestamptz NOT NULL, "
                "expires_at timestamptz NOT NULL)").format(self._members))
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self._leases)
                               ).fetchone()
            existing = int(row[0]) if row else 0
            if existing > self.partitions:
                raise ValueError(f"kernel_partitions: the store has {existing} partitions; "
                                 f"{self.partitions} would move operations between them")
            conn.execute(sql.SQL(
                "INSERT INTO {} (partition) SELECT generate_series(0, %s - 1) "
                "ON CONFLICT DO NOTHING").format(self._leases), (self.partitions,))
            conn.execute(sql.SQL("""
                CREATE OR REPLACE FUNCTION {fn}(who text, parts int[], epochs bigint[])
                RETURNS void LANGUAGE plpgsql AS $$
                DECLARE held int;
                BEGIN
                    SELECT count(*) INTO held FROM (
                        SELECT 1 FROM {leases} l
                        JOIN unnest(parts, epochs) AS w(p, e)
                          ON l.partition = w.p AND l.epoch = w.e
                        WHERE l.owner = who AND l.expires_at > clock_timestamp()
                        FOR SHARE OF l) AS h;
                    IF held <> cardinality(parts) THEN
                        RAISE EXCEPTION 'fenced: % does not hold partitions % at epochs %',
                            who, parts, epochs USING ERRCODE = {code};
                    END IF;
                END $$""").format(fn=self._fence_fn, leases=self._leases,
                                  code=sql.Literal(FENCED_SQLSTATE)))

    def fence_statement(self) -> sql.Composed:
        """The statement a fenced transaction runs first (arguments: `Fence.arguments`)."""
        return sql.SQL("SELECT {}(%s, %s::int[], %s::bigint[])").format(self._fence_fn)

    # ------------------------------------------------------------------ the kernel's tick

    def tick(self, owner: str, held: Mapping[int, int]) -> TickResult:
        """Beat, renew what `owner` holds, give up its excess and take up to its share."""
        interval = _interval(self.period)
        result = TickResult()
        with self._connect() as conn:
            conn.execute(sql.SQL(
                "INSERT INTO {} (name, seen_at, expires_at) VALUES (%s, clock_timestamp(), "
                "clock_timestamp() + %s) ON CONFLICT (name) DO UPDATE SET seen_at = "
                "excluded.seen_at, expires_at = excluded.expires_at").format(self._members),
                (owner, interval))
            kept: dict[int, int] = {}
            if held:
                parts = sorted(held)
                rows = conn.execute(sql.SQL(
                    "UPDATE {} l SET expires_at = clock_timestamp() + %s FROM "
                    "unnest(%s::int[], %s::bigint[]) AS w(p, e) WHERE l.partition = w.p AND "
                    "l.epoch = w.e AND l.owner = %s RETURNING l.partition, l.epoch"
                ).format(self._leases), (interval, parts, [held[p] for p in parts], owner)
                ).fetchall()
                kept = {int(p): int(e) for p, e in rows}
                result.lost = set(held) - set(kept)
            live_row = conn.execute(sql.SQL(
                "SELECT count(*) FROM {} WHERE expires_at > clock_timestamp()"
            ).format(self._members)).fetchone()
            result.live = max(1, int(live_row[0]) if live_row else 1)
            share = math.ceil(self.partitions / result.live)
            if len(kept) > share:
                # the highest first: partition 0 (the reconciler's) moves last
                extra = sorted(kept, reverse=True)[:len(kept) - share]
                result.released = set(extra)
            want = share - len(kept)
            if want > 0:
                rows = conn.execute(sql.SQL(
                    "UPDATE {l} SET owner = %s, epoch = epoch + 1, expires_at = "
                    "clock_timestamp() + %s, taken_at = clock_timestamp() WHERE partition IN "
                    "(SELECT partition FROM {l} WHERE owner IS NULL OR expires_at < "
                    "clock_timestamp() ORDER BY partition LIMIT %s FOR UPDATE SKIP LOCKED) "
                    "RETURNING partition, epoch").format(l=self._leases),
                    (owner, interval, want)).fetchall()
                result.taken = {int(p): int(e) for p, e in rows}
        return result

    def release(self, owner: str, leases: Mapping[int, int]) -> None:
        """Give partitions up at once (a clean stop, or more than a fair share): another
        kernel may take them on its next tick."""
        if not leases:
            return
        parts = sorted(leases)
        with self._connect() as conn:
            conn.execute(sql.SQL(
                "UPDATE {} l SET owner = NULL, expires_at = clock_timestamp() FROM "
                "unnest(%s::int[], %s::bigint[]) AS w(p, e) WHERE l.partition = w.p AND "
                "l.epoch = w.e AND l.owner = %s").format(self._leases),
                (parts, [leases[p] for p in parts], owner))

    def leave(self, owner: str) -> None:
        """Drop the member row (a clean stop): the others' shares grow at once."""
        with self._connect() as conn:
            conn.execute(sql.SQL("DELETE FROM {} WHERE name = %s").format(self._members),
                         (owner,))

    # ------------------------------------------------------------------ reading

    def leases(self) -> list[LeaseRow]:
        """Every partition's lease."""
        with self._connect() as conn:
            rows = conn.execute(sql.SQL(
                "SELECT partition, owner, epoch, "
                "extract(epoch FROM expires_at - clock_timestamp())::float8, "
                "coalesce(extract(epoch FROM clock_timestamp() - taken_at), 0)::float8 "
                "FROM {} ORDER BY partition").format(self._leases)).fetchall()
        return [LeaseRow(partition=int(p), owner=o, epoch=int(e),
                         expires_in=_finite(x), held_for=float(h))
                for p, o, e, x, h in rows]

    def members(self) -> list[MemberRow]:
        """Every kernel that has a member row."""
        with self._connect() as conn:
            rows = conn.execute(sql.SQL(
                "SELECT name, started_at, extract(epoch FROM clock_timestamp() - seen_at)"
                "::float8, expires_at > clock_timestamp() FROM {} ORDER BY name"
            ).format(self._members)).fetchall()
        return [MemberRow(name=n, started_at=s, seen_ago=float(a), alive=bool(v))
                for n, s, a, v in rows]

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[psycopg.Connection]:
        """The table's autocommit connection, opened on first use and again after it broke
        (a restarted server): a failed statement closes it, so the next call reconnects."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self.dsn, autocommit=True,
                                   connect_timeout=self.connect_timeout)
            self._conn = conn
        try:
            yield conn
        except psycopg.Error:
            self.close()
            raise


def _interval(seconds: float) -> str:
    return f"{seconds:.3f} seconds"


def _finite(value: float | None) -> float:
    return float("-inf") if value is None or math.isnan(value) else float(value)


def held_fence(owner: str, held: Mapping[int, int], partitions: Iterable[int]) -> Fence:
    """The fence for `partitions` at the epochs `held` records (each must be held)."""
    return Fence(owner, {p: held[p] for p in partitions})
