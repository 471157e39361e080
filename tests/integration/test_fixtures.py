"""The integration fixtures start real servers, and tests can crash and restart them."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request

import libvirt
import nats
import psycopg
import pytest
from fixtures import LibvirtTestDomain, PostgresServer
from nats.js.api import StorageType, StreamConfig

from gateways.stream.embedded import EmbeddedNatsServer

# --------------------------------------------------------------------------- PostgreSQL


def test_pg_dsn_is_a_fresh_database_on_a_real_server(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        version, database = conn.execute("SELECT version(), current_database()").fetchone() or ()
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert str(version).startswith("PostgreSQL")
    assert str(database).startswith("ck_")
    assert tables == (0,)
    assert pg_dsn.startswith("postgresql://postgres@127.0.0.1:")


def test_postgres_is_not_the_machines_own_server(postgres_server: object) -> None:
    if isinstance(postgres_server, PostgresServer):
        assert postgres_server.port != 5432
        with psycopg.connect(postgres_server.dsn) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
            fsync = conn.execute("SHOW fsync").fetchone()
        assert row is not None and str(row[0]).startswith(str(postgres_server.base_dir))
        assert fsync == ("on",)


def test_postgres_survives_a_kill_with_committed_data(
    controllable_postgres: PostgresServer, pg_dsn: str
) -> None:
    server = controllable_postgres
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO ledger VALUES (1, 'committed before the crash')")
    in_flight = psycopg.connect(pg_dsn)
    in_flight.execute("INSERT INTO ledger VALUES (2, 'never committed')")
    old_pid = server.pid

    server.kill()

    assert not server.running
    with pytest.raises(psycopg.OperationalError):
        in_flight.execute("SELECT 1")
    in_flight.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_dsn, connect_timeout=2)

    server.start()

    assert server.pid != old_pid
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT id, note FROM ledger ORDER BY id").fetchall()
    assert rows == [(1, "committed before the crash")]


def test_postgres_restart_keeps_port_and_data(
    controllable_postgres: PostgresServer, pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    dsn_before = controllable_postgres.dsn

    controllable_postgres.restart()

    assert controllable_postgres.dsn == dsn_before
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]


# --------------------------------------------------------------------------- NATS


def test_nats_server_is_the_wheel_binary_with_jetstream(nats_server: EmbeddedNatsServer) -> None:
    assert nats_server.port != 4222
    assert nats_server.monitor_url is not None
    with urllib.request.urlopen(f"{nats_server.monitor_url}/varz", timeout=5) as response:
        varz = json.load(response)
    assert varz["server_name"] == "ck-test"
    assert varz["jetstream"]["config"]["store_dir"].startswith(str(nats_server.data_dir))
    assert nats_server.log_path.exists()


def test_jetstream_message_survives_a_kill_and_restart(nats_server: EmbeddedNatsServer) -> None:
    async def publish() -> int:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(
                StreamConfig(name="FIXTURE", subjects=["fixture.>"], storage=StorageType.FILE)
            )
            ack = await js.publish("fixture.hello", b"written before the crash")
            return ack.seq
        finally:
            await nc.close()

    async def read_back(seq: int) -> bytes:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("FIXTURE")
            assert info.state.messages == 1
            msg = await js.get_msg("FIXTURE", seq)
            assert msg.subject == "fixture.hello"
            return msg.data or b""
        finally:
            await nc.close()

    seq = asyncio.run(publish())
    url, pid = nats_server.url, nats_server.pid

    nats_server.kill()

    assert nats_server.pid is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", nats_server.port or 0), timeout=2)

    assert nats_server.start() == url
    assert nats_server.pid != pid
    assert asyncio.run(read_back(seq)) == b"written before the crash"


def test_nats_restart_keeps_port_and_context_manager_stops(tmp_path: object) -> None:
    with EmbeddedNatsServer(f"{tmp_path}/nats", server_name="ctx") as server:
        url = server.url
        assert server.restart() == url
        pid = server.pid
    assert pid is not None and not server.running


# --------------------------------------------------------------------------- libvirt


def test_libvirt_uri_is_a_simulated_host(libvirt_uri: str) -> None:
    conn = libvirt.open(libvirt_uri)
    try:
        model, memory_mib, cpus, *_ = conn.getInfo()
        assert (model, memory_mib, cpus) == ("x86_64", 16384, 8)
        assert conn.getType() == "TEST"
        assert conn.listAllDomains() == []
    finally:
        conn.close()


def test_libvirt_host_factory_makes_hosts_with_domains(libvirt_host_factory) -> None:  # type: ignore[no-untyped-def]
    uri = libvirt_host_factory(
        "host-2",
        cpus=4,
        memory_mib=8192,
        domains=[
            LibvirtTestDomain("web-1", vcpus=2, memory_mib=1024),
            LibvirtTestDomain("db-1", running=False),
        ],
    )
    conn = libvirt.open(uri)
    try:
        assert conn.getInfo()[1:3] == [8192, 4]
        domains = {d.name(): d for d in conn.listAllDomains()}
        assert set(domains) == {"web-1", "db-1"}
        state, max_kib, _, vcpus, _ = domains["web-1"].info()
        assert (state, max_kib, vcpus) == (libvirt.VIR_DOMAIN_RUNNING, 1024 * 1024, 2)
        assert domains["db-1"].info()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    finally:
        conn.close()
