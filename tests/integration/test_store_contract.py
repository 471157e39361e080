"""The event store's contract, run against SQLite and a real PostgreSQL started by the fixtures."""

import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError
from support.store import write_v1_gadget
from support.upcasting import _define

from aggregates.errors import ConfigError, IdempotencyKeyReusedError
from aggregates.host import Host
from kernel.bootstrap.migrations import migrate_all
from kernel.commands import CommandService
from kernel.settings import Settings
from kernel.store.application import (
    KernelApplication,
    PlatformApplication,
    open_application,
    store_env,
)
from kernel.store.idempotency import IdempotencyRecord
from tests.unit.kernel.test_commands import ClaimCapacity, RegisterHost, claim, register


def new_host(name: str | None = None, cores: int = 8) -> Host:
    return Host.register(name=name or f"h-{uuid4().hex[:8]}", uri="test:///default",
                         zone_id=uuid4(), pod_id=uuid4(), cluster_id=uuid4(),
                         cpu_cores=cores, cpu_mhz=2000, memory_mib=8192)


class StoreContract:
    """Every store adapter must pass these; subclasses provide `settings`."""

    @pytest.fixture
    def settings(self) -> Settings:
        raise NotImplementedError

    @pytest.fixture
    def app(self, settings: Settings) -> Iterator[KernelApplication]:
        migrate_all(settings)
        app = open_application(PlatformApplication, settings)
        yield app
        app.close()

    def second(self, settings: Settings) -> KernelApplication:
        """Another process's view of the same store."""
        return open_application(PlatformApplication, settings)

    def test_unmigrated_store_is_refused_with_advice(self, settings: Settings) -> None:
        with pytest.raises(ConfigError, match="run `cloudkernel migrate` first"):
            open_application(PlatformApplication, settings)

    def test_migrate_is_repeatable(self, settings: Settings) -> None:
        assert migrate_all(settings) == migrate_all(settings)

    def test_round_trip_and_positions_in_order(self, app: KernelApplication) -> None:
        hosts = [new_host() for _ in range(5)]
        hosts[0].claim(uuid4(), uuid4(), 2, 512)
        recordings = app.save(*hosts)
        positions = [r.notification.id for r in recordings]
        assert positions == sorted(positions) and len(set(positions)) == 6
        for h in hosts:
            assert app.repository.get(h.id) == h
        notes = app.recorder.select_notifications(start=None, limit=100)
        assert [n.id for n in notes] == positions
        assert app.recorder.max_notification_id() == positions[-1]

    def test_small_and_large_batches_keep_log_order(self, app: KernelApplication) -> None:
        batches = [[new_host() for _ in range(n)] for n in (50, 3, 1, 16, 15, 200)]
        saved: list[tuple[int, object]] = []
        for batch in batches:
            recordings = app.save(*batch)
            saved += [(r.notification.id, r.domain_event.originator_id) for r in recordings]
        positions = [p for p, _ in saved]
        assert positions == sorted(positions) and len(set(positions)) == len(positions) == 285
        notes = app.recorder.select_notifications(start=None, limit=1000)
        assert [(n.id, n.originator_id) for n in notes] == saved
        for batch in batches:
            for h in batch:
                assert app.repository.get(h.id) == h

    def test_multi_aggregate_save_is_atomic(self, app: KernelApplication,
                                            settings: Settings) -> None:
        host = new_host()
        app.save(host)
        stale = app.repository.get(host.id)
        other = self.second(settings)
        try:
            fresh = other.repository.get(host.id)
            fresh.claim(uuid4(), uuid4(), 1, 1)
            other.save(fresh)
        finally:
            other.close()
        stale.claim(uuid4(), uuid4(), 1, 1)
        bystander = new_host()
        head = app.recorder.max_notification_id()
        with pytest.raises(IntegrityError):
            app.save(bystander, stale)
        assert app.recorder.max_notification_id() == head
        assert bystander.id not in app.repository

    def test_two_writers_one_conflict_no_lost_event(self, app: KernelApplication,
                                                    settings: Settings) -> None:
        host = new_host(cores=64)
        app.save(host)
        other = self.second(settings)
        barrier = threading.Barrier(2)
        outcomes: dict[str, str] = {}

        def writer(name: str, application: KernelApplication) -> None:
            mine = application.repository.get(host.id)
            mine.claim(uuid4(), uuid4(), 1, 1)
            barrier.wait()
            try:
                application.save(mine)
                outcomes[name] = "saved"
            except IntegrityError:
                outcomes[name] = "conflict"

        threads = [threading.Thread(target=writer, args=(n, a))
                   for n, a in (("a", app), ("b", other))]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        finally:
            other.close()
        assert sorted(outcomes.values()) == ["conflict", "saved"]
        stored = app.repository.get(host.id)
        assert stored.version == 2 and stored.used_cpu_cores == 1
        assert len(app.recorder.select_events(host.id)) == 2

    def test_idempotency_key_is_recorded_with_the_events(self, app: KernelApplication) -> None:
        record = IdempotencyRecord("k-1", b"fp", b'{"ok":1}')
        app.save(new_host(), idempotency=record)
        assert app.lookup_idempotency("k-1") == record
        head = app.recorder.max_notification_id()
        with pytest.raises(IntegrityError):
            app.save(new_host(), idempotency=record)
        assert app.recorder.max_notification_id() == head
        assert app.lookup_idempotency("nope") is None

    def test_idempotent_commands(self, app: KernelApplication) -> None:
        service = CommandService(app, {RegisterHost: register, ClaimCapacity: claim})
        first = service.execute(RegisterHost(name="h1", cpu_cores=4), idempotency_key="x")
        head = app.recorder.max_notification_id()
        again = service.execute(RegisterHost(name="h1", cpu_cores=4), idempotency_key="x")
        assert again.replayed and bytes(again.result) == bytes(first.result)
        with pytest.raises(IdempotencyKeyReusedError):
            service.execute(RegisterHost(name="h1", cpu_cores=5), idempotency_key="x")
        assert app.recorder.max_notification_id() == head

    def test_concurrent_same_key_commands_have_one_effect(self, app: KernelApplication,
                                                         settings: Settings) -> None:
        services = [CommandService(a, {RegisterHost: register})
                    for a in (app, self.second(settings))]
        barrier = threading.Barrier(2)
        results: list[bytes] = []

        def run(service: CommandService) -> None:
            barrier.wait()
            out = service.execute(RegisterHost(name="same", cpu_cores=2),
                                  idempotency_key="race")
            results.append(bytes(out.result))

        threads = [threading.Thread(target=run, args=(s,)) for s in services]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        services[1].app.close()
        assert len(results) == 2 and results[0] == results[1]
        assert len(app.recorder.select_notifications(start=None, limit=10)) == 1

    def test_upcasting_on_this_store(self, settings: Settings) -> None:
        migrate_all(settings)  # creates the SQLite data folder or the PostgreSQL schema
        env = store_env(settings, "upcast", create_table=True)
        gadget_id = write_v1_gadget(env)
        _define("v2")

        class App(KernelApplication):
            name = "upcast"

        app = App(env=env)
        try:
            gadget = app.repository.get(gadget_id)
            assert (gadget.color, gadget.size, gadget.currency) == ("grey", 1, "EUR")
            assert gadget.price == Decimal("9.99")
        finally:
            app.close()


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def settings(self, tmp_path: Path) -> Settings:
        return Settings(data_dir=tmp_path / "data")


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def settings(self, pg_dsn: str) -> Settings:
        return Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=2)

    def test_schema_setting_is_honoured(self, pg_dsn: str) -> None:
        settings = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_schema="ck")
        migrate_all(settings)
        app = open_application(PlatformApplication, settings)
        try:
            app.save(new_host())
        finally:
            app.close()
        import psycopg

        with psycopg.connect(pg_dsn) as conn:
            n = conn.execute("SELECT count(*) FROM ck.platform_events").fetchone()
        assert n == (1,)

    def test_killing_postgres_mid_stream_loses_no_acknowledged_event(
            self, controllable_postgres: object, pg_dsn: str) -> None:
        """Saves run while the postmaster is SIGKILLed and restarted: every save that returned
        is in the log, each batch is whole or absent, and positions have no duplicates."""
        server = controllable_postgres
        settings = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=1)
        migrate_all(settings)
        app = open_application(PlatformApplication, settings)
        acknowledged: list[list[Host]] = []
        failed: list[list[Host]] = []
        stop = threading.Event()

        def write() -> None:
            while not stop.is_set():
                batch = [new_host() for _ in range(20)]
                try:
                    app.save(*batch)
                    acknowledged.append(batch)
                except Exception:
                    failed.append(batch)

        t = threading.Thread(target=write)
        t.start()
        try:
            while len(acknowledged) < 5:
                stop.wait(0.01)
            server.kill()  # type: ignore[attr-defined]
            stop.wait(0.5)
            server.start()  # type: ignore[attr-defined]
            count = len(acknowledged)
            while len(acknowledged) < count + 5 and t.is_alive():
                stop.wait(0.05)
        finally:
            stop.set()
            t.join(60)
        try:
            assert len(acknowledged) >= 10
            for batch in acknowledged:
                for h in batch:
                    assert h.id in app.repository
            for batch in failed:  # a batch that failed is absent or, if its ack was lost, whole
                present = [h.id in app.repository for h in batch]
                assert all(present) or not any(present)
            ids = [n.id for n in app.recorder.select_notifications(start=None, limit=100000)]
            assert len(ids) == len(set(ids)) and ids == sorted(ids)
        finally:
            app.close()
