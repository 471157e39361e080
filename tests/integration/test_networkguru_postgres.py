"""NetworkGuru on a real PostgreSQL platform log: it follows the log before every decision,
so after a proposal was recorded (or refused because another writer took the address first),
its next proposal skips what the log holds."""

from collections.abc import Iterator
from uuid import uuid4

import pytest

from aggregates.errors import DomainRuleError, StepFailedError
from aggregates.mac_pool import MacPool
from aggregates.network import Network
from aggregates.vlan_pool import VlanPool
from kernel.bootstrap.migrations import migrate_all
from kernel.bootstrap.plugins import plugin_configs
from kernel.settings import Settings
from kernel.steps.network import AllocateNic, ImplementNetwork
from kernel.store.application import KernelApplication, PlatformApplication, open_application
from subsystems.base import StepContext
from subsystems.networkguru import NetworkGuru, make_networkguru

ZONE = uuid4()


@pytest.fixture
def settings(pg_dsn: str) -> Settings:
    """A migrated PostgreSQL store."""
    settings = Settings(store="postgres", postgres_dsn=pg_dsn)
    migrate_all(settings)
    return settings


@pytest.fixture
def app(settings: Settings) -> Iterator[KernelApplication]:
    """The platform application, as the kernel writes it."""
    platform = open_application(PlatformApplication, settings)
    try:
        yield platform
    finally:
        platform.close()


@pytest.fixture
def guru(settings: Settings) -> Iterator[NetworkGuru]:
    """The guru as `cloudkernel worker` builds it: the platform log of its settings' store,
    opened by the worker, injected into the entry point's factory."""
    with plugin_configs(["networkguru"], {}, settings) as configs:
        plugin = make_networkguru(configs["networkguru"])
        plugin.open()
        try:
            yield plugin
        finally:
            plugin.close()


def ctx(action: str) -> StepContext:
    """A first delivery of a networkguru step."""
    return StepContext(step_id=uuid4(), operation_id=uuid4(), attempt=1,
                       subsystem="networkguru", action=action)


def test_proposals_skip_what_the_log_holds(app: KernelApplication, guru: NetworkGuru,
                                           settings: Settings) -> None:
    app.save(MacPool.create(zone_id=ZONE))
    network = Network.create(name="pg-net", zone_id=ZONE, cidr="10.60.0.0/29",
                             gateway="10.60.0.1", reserved_ranges=(("10.60.0.6", "10.60.0.6"),))
    app.save(network)  # usable: .2 .3 .4 .5
    a, b = uuid4(), uuid4()
    proposal = guru.allocate(ctx("allocate"), AllocateNic(network_id=network.id, nic_id=a))
    # another writer gives that address to nic b before the kernel records nic a's proposal
    other: Network = app.repository.get(network.id)
    other.allocate_ip(b, proposal.ip)
    app.save(other)
    latest: Network = app.repository.get(network.id)
    with pytest.raises(DomainRuleError):
        latest.allocate_ip(a, proposal.ip)  # the aggregate refuses; the kernel retries the step
    retry = guru.allocate(ctx("allocate"), AllocateNic(network_id=network.id, nic_id=a))
    assert retry.ip != proposal.ip
    recorded: Network = app.repository.get(network.id)
    recorded.allocate_ip(a, retry.ip)
    pool: MacPool = app.repository.get(MacPool.create_id(ZONE))
    pool.allocate(a, retry.mac)
    app.save(recorded, pool)
    given = {proposal.ip, retry.ip}
    while True:
        nic = uuid4()
        try:
            got = guru.allocate(ctx("allocate"), AllocateNic(network_id=network.id, nic_id=nic))
        except StepFailedError as e:
            assert (e.code, e.retryable) == ("no_free_ip", False)
            break
        assert got.ip not in given and got.mac != retry.mac
        current: Network = app.repository.get(network.id)
        current.allocate_ip(nic, got.ip)
        app.save(current)
        given.add(got.ip)
    assert given == {"10.60.0.2", "10.60.0.3", "10.60.0.4", "10.60.0.5"}
    assert guru.index.position == app.recorder.max_notification_id()
    # a second guru (another worker process) replays the log and repeats what is recorded
    with plugin_configs(["networkguru"], {}, settings) as configs:
        second = make_networkguru(configs["networkguru"])
        second.open()
        try:
            again = second.allocate(ctx("allocate"),
                                    AllocateNic(network_id=network.id, nic_id=a))
            assert (again.ip, again.mac, again.ip_recorded, again.mac_recorded) == (
                retry.ip, retry.mac, True, True)
        finally:
            second.close()


def test_vlans_come_from_the_zone_pool_in_the_log(app: KernelApplication,
                                                  guru: NetworkGuru) -> None:
    app.save(VlanPool.create(zone_id=ZONE, first=500, last=501))
    nets = [Network.create(name=f"v{i}", zone_id=ZONE, cidr=f"10.61.{i}.0/24",
                           gateway=f"10.61.{i}.1") for i in range(3)]
    app.save(*nets)
    vlans = []
    for net in nets[:2]:
        got = guru.implement(ctx("implement"), ImplementNetwork(network_id=net.id))
        pool: VlanPool = app.repository.get(VlanPool.create_id(ZONE))
        pool.allocate(net.id, got.vlan)  # type: ignore[arg-type]
        net.implement()
        net.implemented(got.vlan)
        app.save(pool, net)
        vlans.append(got.vlan)
    assert sorted(vlans) == [500, 501]  # type: ignore[type-var]
    with pytest.raises(StepFailedError) as info:
        guru.implement(ctx("implement"), ImplementNetwork(network_id=nets[2].id))
    assert info.value.code == "no_free_vlan"
