"""Partition leases and the fence on a real PostgreSQL (kernel.leases): shares, expiry by the
database's clock, clean give-up, and a deposed owner's write refused in its transaction."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import msgspec
import psycopg
import pytest

from aggregates.plan import Plan, PlannedStep, RetryPolicy
from kernel.leases import FencedError, LeaseTable
from kernel.operation_commands import StartOperation
from kernel.operations import OperationEngine
from kernel.partitions import Ownership
from kernel.settings import Settings
from kernel.store.application import PlatformApplication, open_application
from kernel.store.migrate import migrate
from kernel.unit_of_work import UnitOfWork

pytestmark = pytest.mark.integration

PERIOD = 1.0


@pytest.fixture
def table(pg_dsn: str) -> Iterator[LeaseTable]:
    t = LeaseTable(pg_dsn, "public", partitions=8, period=PERIOD)
    t.create()
    yield t
    t.close()


def owners(table: LeaseTable) -> dict[int, str | None]:
    return {row.partition: row.owner for row in table.leases()}


def test_one_kernel_takes_every_partition_and_a_second_gets_half(table: LeaseTable) -> None:
    first = table.tick("k1", {})
    assert sorted(first.taken) == list(range(8)) and set(first.taken.values()) == {1}
    assert table.tick("k1", first.taken).taken == {}  # renewed, nothing more to take
    joined = table.tick("k2", {})  # k1 holds all: k2 is alive, but nothing is free yet
    assert joined.taken == {} and joined.live == 2
    gives = table.tick("k1", first.taken)
    assert gives.released == {4, 5, 6, 7} and not gives.lost
    table.release("k1", {p: first.taken[p] for p in gives.released})
    took = table.tick("k2", {})
    assert sorted(took.taken) == [4, 5, 6, 7] and set(took.taken.values()) == {2}
    assert owners(table) == {**dict.fromkeys(range(4), "k1"), **dict.fromkeys(range(4, 8), "k2")}
    assert {m.name for m in table.members() if m.alive} == {"k1", "k2"}


def test_a_silent_kernel_loses_its_partitions_after_one_period(table: LeaseTable) -> None:
    held = table.tick("k1", {}).taken
    table.tick("k2", {})
    assert table.tick("k2", {}).taken == {}  # k1's leases are live
    time.sleep(PERIOD + 0.2)
    took = table.tick("k2", {})
    assert sorted(took.taken) == list(range(8)) and set(took.taken.values()) == {2}
    back = table.tick("k1", held)  # k1 wakes up: its renewal finds every epoch moved
    assert back.lost == set(range(8)) and back.taken == {}


def test_a_clean_stop_hands_everything_over_at_once(table: LeaseTable) -> None:
    held = table.tick("k1", {}).taken
    table.tick("k2", {})
    table.release("k1", held)
    table.leave("k1")
    assert sorted(table.tick("k2", {}).taken) == list(range(8))


def test_more_partitions_may_be_added_never_fewer(pg_dsn: str, table: LeaseTable) -> None:
    more = LeaseTable(pg_dsn, "public", partitions=12, period=PERIOD)
    more.create()
    assert len(more.leases()) == 12
    fewer = LeaseTable(pg_dsn, "public", partitions=4, period=PERIOD)
    with pytest.raises(ValueError, match="12 partitions"):
        fewer.create()
    for t in (more, fewer):
        t.close()


@pytest.fixture
def engines(pg_dsn: str) -> Iterator[tuple[OperationEngine, OperationEngine, LeaseTable]]:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, kernel_partitions=2,
                        lease_seconds=PERIOD)
    migrate(settings)
    apps = [open_application(PlatformApplication, settings) for _ in range(2)]
    table = LeaseTable(pg_dsn, "public", partitions=2, period=PERIOD)
    engines = []
    for name, app in zip(("k1", "k2"), apps, strict=True):
        engine = OperationEngine(app)
        engine.ownership = Ownership(name, 2)
        engines.append(engine)
    yield engines[0], engines[1], table
    table.close()
    for app in apps:
        app.close()


def _reconcile_once(engine: OperationEngine) -> int:
    """A duty batch (as the reconciler's) that writes a new operation: the fence guards it."""
    step = PlannedStep(step_id=uuid.uuid4(), subsystem="counter", action="add",
                       args=msgspec.Raw(b"{}"), retry=RetryPolicy(max_attempts=1),
                       deadline_seconds=5.0)

    def work(uow: UnitOfWork, now: datetime) -> int:
        engine.start_in(uow, StartOperation(kind="test.noop", plan=Plan(steps=(step,))), now)
        return 1
    return engine.run_batch(work).applied


def test_a_deposed_kernel_cannot_write_and_a_live_one_can(
        engines: tuple[OperationEngine, OperationEngine, LeaseTable]) -> None:
    k1, k2, table = engines
    assert k1.ownership is not None and k2.ownership is not None
    k1.ownership.take(table.tick("k1", {}).taken)
    assert _reconcile_once(k1) == 1
    head = k1.app.recorder.max_notification_id()
    # k1 freezes past its lease; k2 takes everything (epochs move)
    time.sleep(PERIOD + 0.2)
    k2.ownership.take(table.tick("k2", {}).taken)
    # k1 still believes it holds partition 0: the store refuses its write
    with pytest.raises(FencedError, match="fenced"):
        _reconcile_once(k1)
    assert k1.app.recorder.max_notification_id() == head
    assert _reconcile_once(k2) == 1


def test_a_takeover_waits_for_the_write_in_flight(
        engines: tuple[OperationEngine, OperationEngine, LeaseTable], pg_dsn: str) -> None:
    # a writer holding the lease row shared (its fence) keeps a taker off it until it
    # commits: the write is in the log before the new owner reads it
    k1, _k2, table = engines
    assert k1.ownership is not None
    held = table.tick("k1", {}).taken
    with psycopg.connect(pg_dsn) as writer:
        writer.execute("SELECT kernel_fence('k1', ARRAY[0], ARRAY[%s]::bigint[])", (held[0],))
        time.sleep(PERIOD + 0.2)  # expired, but the writer's transaction is still open
        took: dict[int, int] = {}

        def take() -> None:
            took.update(table_k2.tick("k2", {}).taken)

        table_k2 = LeaseTable(pg_dsn, "public", partitions=2, period=PERIOD)
        t = threading.Thread(target=take)
        t.start()
        t.join(0.5)
        assert 0 not in took  # skipped while locked (SKIP LOCKED), partition 1 taken
        writer.commit()
        t.join(5)
        took.update(table_k2.tick("k2", took).taken)
        assert 0 in took
        table_k2.close()
    with pytest.raises(FencedError):
        k1.ownership.take(held)
        _reconcile_once(k1)


def test_an_operation_belongs_to_one_partition_for_good() -> None:
    own = Ownership("k", 16)
    ids = [uuid.uuid4() for _ in range(2000)]
    counts = [0] * 16
    for i in ids:
        counts[own.partition(i)] += 1
        assert own.partition(i) == own.partition(uuid.UUID(str(i)))
    assert min(counts) > 2000 / 16 / 2  # spread over every partition
    with pytest.raises(FencedError):
        own.fence(ids[:1])
    own.take({own.partition(ids[0]): 3})
    assert own.fence(ids[:1]).epochs == {own.partition(ids[0]): 3}
