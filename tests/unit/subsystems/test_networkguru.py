"""NetworkGuru: IPAM, VLAN and MAC proposals from its index of the log, and every action."""

from ipaddress import IPv4Address
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.errors import ConfigError, DomainRuleError, StepFailedError
from aggregates.mac_pool import MacPool
from aggregates.network import GuestNetworkType, Network
from aggregates.vlan_pool import VlanPool
from kernel.platform_log import ApplicationLog
from kernel.steps.network import (
    AllocateNic,
    DesignNetwork,
    ImplementNetwork,
    ReleaseNic,
    ReserveNic,
    ShutdownNetwork,
    libvirt_network_name,
)
from kernel.store.testing import scratch_application
from subsystems.base import StepContext, action_table
from subsystems.networkguru import NetworkGuru, make_networkguru
from subsystems.networkguru.ipam import AddressPlan, propose_mac, propose_vlan, seed_of
from subsystems.registry import load_registry
from tests.support.event_log import EventLog

ZONE = uuid4()


def ctx(action: str) -> StepContext:
    """A first delivery of a networkguru step."""
    return StepContext(step_id=uuid4(), operation_id=uuid4(), attempt=1,
                       subsystem="networkguru", action=action)


@pytest.fixture
def log() -> EventLog:
    """The platform log, with the zone's VLAN (100-103) and MAC pools."""
    events = EventLog()
    events.record(VlanPool.create(zone_id=ZONE, first=100, last=103), MacPool.create(zone_id=ZONE))
    return events


@pytest.fixture
def guru(log: EventLog) -> NetworkGuru:
    """An open guru following the whole log."""
    plugin = NetworkGuru(log.view())
    plugin.open()
    return plugin


def network(log: EventLog, cidr: str = "10.0.0.0/29", gateway: str = "10.0.0.1",
            reserved: tuple[tuple[str, str], ...] = (), name: str | None = None,
            shared_vlan: int | None = None) -> Network:
    """A network in the log."""
    net = Network.create(name=name or f"n-{uuid4().hex[:8]}", zone_id=ZONE, cidr=cidr,
                         gateway=gateway, reserved_ranges=reserved, vlan=shared_vlan,
                         network_type=GuestNetworkType.SHARED if shared_vlan
                         else GuestNetworkType.ISOLATED)
    log.record(net)
    return net


def failure(call: object) -> StepFailedError:
    """Run `call()`; it must fail for good; return the error."""
    with pytest.raises(StepFailedError) as info:
        call()  # type: ignore[operator]
    assert info.value.retryable is False
    return info.value


# --------------------------------------------------------------------------- IPAM


def test_address_plan_excludes_network_broadcast_gateway_and_reserved() -> None:
    plan = AddressPlan.of("10.0.0.0/28", "10.0.0.1", [("10.0.0.5", "10.0.0.7"),
                                                      ("10.0.0.6", "10.0.0.9")])
    usable = [str(IPv4Address(a)) for a in range(int(IPv4Address("10.0.0.0")),
                                                  int(IPv4Address("10.0.0.16")))
              if plan.is_usable(a)]
    assert usable == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.10", "10.0.0.11",
                      "10.0.0.12", "10.0.0.13", "10.0.0.14"]
    assert plan.usable_count == 8
    proposals = {plan.propose(set(), seed) for seed in range(200)}
    assert proposals == set(usable)  # every seed lands on a usable address, and all are hit


def test_proposals_fill_the_network_then_report_none() -> None:
    plan = AddressPlan.of("192.168.1.0/29", "192.168.1.6", [("192.168.1.1", "192.168.1.1")])
    taken: set[int] = set()
    for n in range(plan.usable_count):
        ip = plan.propose(taken, seed_of(str(n).encode()))
        assert ip is not None and int(IPv4Address(ip)) not in taken
        taken.add(int(IPv4Address(ip)))
    assert {str(IPv4Address(a)) for a in taken} == {"192.168.1.2", "192.168.1.3",
                                                     "192.168.1.4", "192.168.1.5"}
    assert plan.propose(taken, 7) is None


def test_vlan_and_mac_proposals_are_deterministic_and_skip_taken() -> None:
    assert propose_vlan(10, 12, {10, 11}, 0) == 12
    assert propose_vlan(10, 12, {10, 11, 12}, 5) is None
    assert propose_vlan(10, 12, set(), 4) == 11  # start at 10 + 4 % 3
    nic = uuid4().bytes
    first = propose_mac(nic, set())
    assert first is not None and first == propose_mac(nic, set())
    assert first.startswith("02:") and int(first[:2], 16) & 0b11 == 0b10
    second = propose_mac(nic, {first})
    assert second not in (None, first)
    assert len({propose_mac(uuid4().bytes, set()) for _ in range(500)}) == 500


# --------------------------------------------------------------------------- actions


def test_allocate_skips_gateway_reserved_and_taken_then_runs_out(
        log: EventLog, guru: NetworkGuru) -> None:
    net = network(log, reserved=(("10.0.0.5", "10.0.0.6"),))  # usable: .2 .3 .4
    given = []
    for _ in range(3):
        nic = uuid4()
        got = guru.allocate(ctx("allocate"), AllocateNic(network_id=net.id, nic_id=nic))
        assert got.ip not in given and not got.ip_recorded and got.zone_id == ZONE
        net.allocate_ip(nic, got.ip)  # the kernel records it; the aggregate agrees
        log.record(net)
        given.append(got.ip)
    assert sorted(given) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    error = failure(lambda: guru.allocate(ctx("allocate"),
                                          AllocateNic(network_id=net.id, nic_id=uuid4())))
    assert error.code == "no_free_ip"


def test_allocate_repeats_what_is_recorded_for_the_nic(log: EventLog, guru: NetworkGuru) -> None:
    net = network(log)
    pool = _log_pool(log)
    nic = uuid4()
    args = AllocateNic(network_id=net.id, nic_id=nic)
    first = guru.allocate(ctx("allocate"), args)
    assert guru.allocate(ctx("allocate"), args) == first  # deterministic per NIC
    net.allocate_ip(nic, first.ip)
    pool.allocate(nic, first.mac)
    log.record(net, pool)
    again = guru.allocate(ctx("allocate"), args)
    assert (again.ip, again.mac, again.ip_recorded, again.mac_recorded) == (
        first.ip, first.mac, True, True)


def test_a_requested_address_or_mac_is_checked(log: EventLog, guru: NetworkGuru) -> None:
    net = network(log)
    holder = uuid4()
    net.allocate_ip(holder, "10.0.0.3")
    pool = _log_pool(log)
    pool.allocate(holder, "52:54:00:00:00:01")
    log.record(net, pool)
    nic = uuid4()

    def allocate(**kw: str) -> object:
        return guru.allocate(ctx("allocate"), AllocateNic(network_id=net.id, nic_id=nic, **kw))

    assert failure(lambda: allocate(requested_ip="10.0.0.3")).code == "ip_taken"
    for unusable in ("10.0.0.1", "10.0.0.0", "10.0.0.7", "10.0.1.2", "nonsense"):
        assert failure(lambda u=unusable: allocate(requested_ip=u)).code == "ip_unavailable"
    assert failure(lambda: allocate(requested_mac="52:54:00:00:00:01")).code == "mac_taken"
    assert failure(lambda: allocate(requested_mac="00:16:3e:00:00:01")).code == \
        "mac_unavailable"  # a vendor (globally administered) MAC
    got = guru.allocate(ctx("allocate"), AllocateNic(
        network_id=net.id, nic_id=nic, requested_ip="10.0.0.4", requested_mac="52:54:00:AA:00:02"))
    assert (got.ip, got.mac) == ("10.0.0.4", "52:54:00:aa:00:02")


def test_a_stale_proposal_is_refused_by_the_aggregate_and_the_retry_moves_on(
        log: EventLog) -> None:
    net = network(log, cidr="10.0.0.0/30")  # one usable address: .2
    stale = NetworkGuru(log.view(visible=log.head))
    stale.open()
    fresh = NetworkGuru(log.view())
    fresh.open()
    a, b = uuid4(), uuid4()
    proposal_a = fresh.allocate(ctx("allocate"), AllocateNic(network_id=net.id, nic_id=a))
    net.allocate_ip(a, proposal_a.ip)
    log.record(net)
    proposal_b = stale.allocate(ctx("allocate"), AllocateNic(network_id=net.id, nic_id=b))
    assert proposal_b.ip == proposal_a.ip  # the stale index does not know .2 is taken
    with pytest.raises(DomainRuleError):
        net.allocate_ip(b, proposal_b.ip)
    error = failure(lambda: fresh.allocate(ctx("allocate"),
                                           AllocateNic(network_id=net.id, nic_id=b)))
    assert error.code == "no_free_ip"


def test_implement_takes_a_vlan_from_the_zone_pool_and_shutdown_gives_it_back(
        log: EventLog, guru: NetworkGuru) -> None:
    pool = _vlan_pool(log)
    vlans: list[int | None] = []
    nets = [network(log) for _ in range(4)]
    for net in nets:
        got = guru.implement(ctx("implement"), ImplementNetwork(network_id=net.id))
        assert got.pooled and got.zone_id == ZONE and got.vlan not in vlans
        assert guru.implement(ctx("implement"), ImplementNetwork(network_id=net.id)) == got
        pool.allocate(net.id, got.vlan)  # type: ignore[arg-type]
        net.implement()
        net.implemented(got.vlan)
        log.record(pool, net)
        vlans.append(got.vlan)
    assert sorted(v or 0 for v in vlans) == [100, 101, 102, 103]
    assert guru.implement(ctx("implement"), ImplementNetwork(network_id=nets[0].id)).vlan == \
        vlans[0]  # a repeated step answers the VLAN the network holds
    extra = network(log)
    assert failure(lambda: guru.implement(ctx("implement"), ImplementNetwork(
        network_id=extra.id))).code == "no_free_vlan"
    released = guru.shutdown(ctx("shutdown"), ShutdownNetwork(network_id=nets[2].id))
    assert released.vlan == vlans[2]
    pool.release(nets[2].id)
    nets[2].shutdown()
    log.record(pool, nets[2])
    assert guru.shutdown(ctx("shutdown"), ShutdownNetwork(network_id=nets[2].id)).vlan is None
    assert guru.implement(ctx("implement"), ImplementNetwork(network_id=extra.id)).vlan == \
        vlans[2]


def test_shared_networks_keep_their_vlan_and_need_no_pool(guru: NetworkGuru) -> None:
    log = EventLog()
    plugin = NetworkGuru(log.view())
    plugin.open()
    shared = network(log, shared_vlan=42)
    got = plugin.implement(ctx("implement"), ImplementNetwork(network_id=shared.id))
    assert (got.vlan, got.pooled) == (42, False)
    isolated = network(log)
    assert failure(lambda: plugin.implement(ctx("implement"), ImplementNetwork(
        network_id=isolated.id))).code == "no_vlan_pool"
    assert failure(lambda: plugin.implement(ctx("implement"), ImplementNetwork(
        network_id=uuid4()))).code == "unknown_network"


def test_reserve_describes_the_recorded_nic_and_release_gives_it_back(
        log: EventLog, guru: NetworkGuru) -> None:
    net = network(log, cidr="10.1.0.0/24", gateway="10.1.0.254")
    pool = _log_pool(log)
    nic = uuid4()
    assert failure(lambda: guru.reserve(ctx("reserve"), ReserveNic(
        network_id=net.id, nic_id=nic))).code == "not_allocated"
    net.allocate_ip(nic, "10.1.0.7")
    pool.allocate(nic, "02:00:00:00:00:07")
    log.record(net, pool)
    profile = guru.reserve(ctx("reserve"), ReserveNic(network_id=net.id, nic_id=nic))
    assert (profile.ip, profile.mac, profile.netmask, profile.gateway, profile.broadcast_uri,
            profile.libvirt_network) == ("10.1.0.7", "02:00:00:00:00:07", "255.255.255.0",
                                         "10.1.0.254", "vlan://untagged",
                                         libvirt_network_name(net.id))
    released = guru.release(ctx("release"), ReleaseNic(network_id=net.id, nic_id=nic,
                                                       release_mac=True))
    assert (released.ip, released.mac) == ("10.1.0.7", "02:00:00:00:00:07")
    net.release_ip("10.1.0.7")
    pool.release(nic)
    log.record(net, pool)
    again = guru.release(ctx("release"), ReleaseNic(network_id=net.id, nic_id=nic,
                                                    release_mac=True))
    assert (again.ip, again.mac) == (None, None)


def test_design_normalizes_and_refuses(log: EventLog, guru: NetworkGuru) -> None:
    design = guru.design(ctx("design"), DesignNetwork(
        zone_id=ZONE, name="web", cidr="10.9.0.0/24",
        reserved_ranges=(("10.9.0.20", "10.9.0.29"), ("10.9.0.10", "10.9.0.20")),
        zone_guest_cidr="10.0.0.0/8"))
    assert (design.gateway, design.netmask, design.reserved_ranges, design.usable_ips,
            design.network_id) == ("10.9.0.1", "255.255.255.0", (("10.9.0.10", "10.9.0.29"),),
                                   253 - 20, Network.create_id(ZONE, "web"))
    network(log, cidr="172.16.0.0/16", gateway="172.16.0.1", shared_vlan=7)
    bad = [
        DesignNetwork(zone_id=ZONE, name="a", cidr="10.9.0.5/24"),
        DesignNetwork(zone_id=ZONE, name="a", cidr="10.9.0.0/24", gateway="10.9.1.1"),
        DesignNetwork(zone_id=ZONE, name="a", cidr="10.9.0.0/31"),
        DesignNetwork(zone_id=ZONE, name="a", cidr="10.9.0.0/24", vlan=5),
        DesignNetwork(zone_id=ZONE, name="a", cidr="192.168.0.0/24",
                      zone_guest_cidr="10.0.0.0/8"),
        DesignNetwork(zone_id=ZONE, name="a", cidr="172.16.5.0/24", network_type="Shared"),
        DesignNetwork(zone_id=ZONE, name="a", cidr="10.9.0.0/30",
                      reserved_ranges=(("10.9.0.2", "10.9.0.2"),)),
    ]
    for args in bad:
        assert failure(lambda a=args: guru.design(ctx("design"), a)).code == "invalid_design"


def test_the_guru_is_a_plugin_and_follows_a_real_store() -> None:
    assert sorted(action_table(NetworkGuru(EventLog().view()))) == [
        "allocate", "design", "implement", "release", "reserve", "shutdown"]
    registry = load_registry(["networkguru"], {"networkguru": {}})
    assert registry.handler_of("networkguru.allocate") is not None
    with pytest.raises(ConfigError, match="unknown config keys"):
        make_networkguru({"nope": "1"})
    with pytest.raises(ConfigError, match="process that runs the guru injects"):
        make_networkguru({"store": "sqlite"})
    with pytest.raises(ConfigError, match="must be a PlatformLog"):
        make_networkguru({"log": "sqlite"})
    with pytest.raises(ConfigError, match="no platform log to follow"):
        make_networkguru({}).open()
    with pytest.raises(ConfigError, match="not open"):
        NetworkGuru(EventLog().view()).implement(
            ctx("implement"), ImplementNetwork(network_id=uuid4()))
    app = scratch_application()  # an in-memory store, injected as the worker injects its log
    guru = make_networkguru({"log": ApplicationLog(app)})
    guru.open()
    net = Network.create(name="stored", zone_id=ZONE, cidr="10.2.0.0/30", gateway="10.2.0.1")
    app.save(net)
    nic = uuid4()
    got = guru.allocate(ctx("allocate"), AllocateNic(network_id=net.id, nic_id=nic))
    assert got.ip == "10.2.0.2"
    net.allocate_ip(nic, got.ip)
    app.save(net)
    assert failure(lambda: guru.allocate(ctx("allocate"), AllocateNic(
        network_id=net.id, nic_id=uuid4()))).code == "no_free_ip"
    assert guru.index.position == app.recorder.max_notification_id()
    guru.close()


def test_results_encode_as_json(log: EventLog, guru: NetworkGuru) -> None:
    net = network(log)
    got = guru.allocate(ctx("allocate"), AllocateNic(network_id=net.id, nic_id=uuid4()))
    decoded = msgspec.json.decode(msgspec.json.encode(got))
    assert decoded["ip"] == got.ip and UUID(decoded["network_id"]) == net.id


def _log_pool(log: EventLog) -> MacPool:
    """The zone's MacPool as the log has it (rebuilt from its events)."""
    events = [e for e in log.events if isinstance(e, MacPool.Event)]
    pool = None
    for e in events:
        pool = e.mutate(pool)
    assert isinstance(pool, MacPool)
    return pool


def _vlan_pool(log: EventLog) -> VlanPool:
    """The zone's VlanPool as the log has it."""
    pool = None
    for e in log.events:
        if isinstance(e, VlanPool.Event):
            pool = e.mutate(pool)
    assert isinstance(pool, VlanPool)
    return pool
