"""Shared fixtures: real servers (PostgreSQL, nats-server, libvirt test hosts) started by the tests.

Integration tests never use the machine's own PostgreSQL or NATS services. Every server started
here is stopped here, also when a test fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # `fixtures` must import whatever pytest's import mode
    sys.path.insert(0, str(TESTS_DIR))

from fixtures import (  # noqa: E402
    ExternalPostgres,
    PostgresServer,
    create_database,
    drop_database,
    with_dbname,
    write_test_host,
)
from fixtures.nats_cluster import NatsCluster  # noqa: E402
from fixtures.processes import reap_dead_children  # noqa: E402

from gateways.stream.embedded import EmbeddedNatsServer  # noqa: E402

EXTERNAL_POSTGRES_ENV = "CLOUDKERNEL_TEST_POSTGRES_DSN"
INTEGRATION_DIR = TESTS_DIR / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration as `integration`."""
    for item in items:
        if Path(item.path).is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Reap dead children, and report live ones, once every fixture is torn down."""
    leaked = reap_dead_children()
    if leaked:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"child processes left behind by the tests: {leaked}"
        if reporter is not None:
            reporter.write_line(message, yellow=True)
        else:
            print(message, file=sys.stderr)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | ExternalPostgres]:
    """A throwaway PostgreSQL cluster for the session, or the server named by the env DSN."""
    external = os.environ.get(EXTERNAL_POSTGRES_ENV)
    if external:
        yield ExternalPostgres(external)
        return
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def controllable_postgres(postgres_server: PostgresServer | ExternalPostgres) -> PostgresServer:
    """The session server, for tests that stop or kill it; skipped on an external server."""
    if not isinstance(postgres_server, PostgresServer):  # ExternalPostgres
        pytest.skip(f"{EXTERNAL_POSTGRES_ENV} is set: the external server cannot be killed")
    return postgres_server


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer | ExternalPostgres) -> Iterator[str]:
    """DSN of a fresh, empty database, dropped after the test."""
    postgres_server.ensure_running()
    name = create_database(postgres_server.dsn)
    try:
        yield with_dbname(postgres_server.dsn, name)
    finally:
        postgres_server.ensure_running()  # a test may have left it killed
        drop_database(postgres_server.dsn, name)


# --------------------------------------------------------------------------- NATS


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNatsServer]:
    """A running nats-server with JetStream and monitoring, private to the test."""
    server = EmbeddedNatsServer(tmp_path / "nats", server_name="ck-test", monitor_port=0)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: EmbeddedNatsServer) -> str:
    """Client URL of the test's nats-server."""
    return nats_server.url


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A 3-node NATS cluster on loopback (`sync_interval: always`), private to the test."""
    cluster = NatsCluster(tmp_path / "nats-cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- libvirt

LibvirtHostFactory = Callable[..., str]


@pytest.fixture
def libvirt_host_factory(tmp_path: Path) -> LibvirtHostFactory:
    """Make simulated hosts: `factory(name="host-1", cpus=8, memory_mib=16384, domains=())`."""
    hosts_dir = tmp_path / "libvirt"

    def make(name: str = "host-1", **kwargs: Any) -> str:
        return write_test_host(hosts_dir / f"{name}.xml", **kwargs)

    return make


@pytest.fixture
def libvirt_uri(libvirt_host_factory: LibvirtHostFactory) -> str:
    """`test:///...` URI of one simulated host (8 cpus, 16 GiB) with no domains."""
    return libvirt_host_factory()


# --------------------------------------------------------------------------- real libvirtd + qemu

QEMU_KVM_ENV = "CLOUDKERNEL_TEST_QEMU_KVM"


@pytest.fixture(scope="session")
def qemu_daemon() -> Iterator[Any]:
    """A private libvirtd + virtlogd (qemu driver) for the session; guests run under TCG
    unless CLOUDKERNEL_TEST_QEMU_KVM=1 (see fixtures/qemu_host.py)."""
    from fixtures.qemu_host import QemuHost

    host = QemuHost("ck-qemu-1", kvm=os.environ.get(QEMU_KVM_ENV) == "1")
    try:
        host.start()
        yield host
    finally:
        host.destroy()


@pytest.fixture
def qemu_host(qemu_daemon: Any) -> Iterator[Any]:
    """The session's libvirtd, which must hold no domain, network or pool volume after the
    test: what one left fails the test, and is removed so the next starts clean."""
    qemu_daemon.clean()
    yield qemu_daemon
    left = qemu_daemon.clean()
    if left:
        pytest.fail(f"the test left these in libvirt: {left}")


@pytest.fixture
def qemu_pair() -> Iterator[tuple[Any, Any]]:
    """Two more private libvirtds, two hosts to libvirt, their namespaces linked so that a
    live migration can go from one to the other (stopped after the test)."""
    from fixtures.qemu_host import QemuHost

    kvm = os.environ.get(QEMU_KVM_ENV) == "1"
    hosts = [QemuHost(f"ck-qemu-{n}", kvm=kvm, migration_address=f"10.254.0.{n}")
             for n in (2, 3)]
    try:
        for host in hosts:
            host.start()
        hosts[0].link(hosts[1])
        yield hosts[0], hosts[1]
    finally:
        for host in hosts:
            host.destroy()


@pytest.fixture(scope="session")
def guest_image() -> Any:
    """The tiny bootable guest (built once, cached between runs; support/guest_image.py)."""
    from support.guest_image import build_guest_image

    return build_guest_image()


# --------------------------------------------------------------------------- OpenLDAP (ACL)

LDAP_USERS = {"lara": "lara-secret", "leo": "leo-secret"}


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[Any]:
    """A throwaway slapd on loopback with users lara and leo (see LDAP_USERS)."""
    from fixtures.ldap import SlapdServer, find_slapd

    if find_slapd() is None:
        pytest.skip("slapd is not installed (scripts/install.sh installs slapd and ldap-utils)")
    server = SlapdServer(tmp_path / "slapd", LDAP_USERS)
    try:
        server.start()
        yield server
    finally:
        server.stop()
