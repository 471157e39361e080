"""No IP, MAC or VLAN is ever given twice: gurus propose from possibly stale indexes of the
log, the kernel records the proposals on the aggregates, and the aggregates refuse conflicts.

The model is the kernel's effect for a guru result: record on copies of the aggregates, and
replace them (append their events to the log) only when every aggregate accepted, as in one
transaction. Two gurus follow the log: each sees a prefix of it that lags behind by however
much the machine chooses, so one guru proposes what the other's proposal already took.
Release and shutdown are decided by a caught-up guru, as in the kernel, where what they give
back was committed before the step was dispatched.

Checked: a proposal is always a usable address of the CIDR (never the network, broadcast or
gateway address, never reserved), a locally administered MAC and a VLAN of the pool's range,
even from a stale index; a refusal is a DomainRuleError and changes nothing; a guru that is
caught up never proposes anything taken; and at every step no address, MAC or VLAN has two
holders, and a caught-up guru's index agrees with the aggregates.
"""

import copy
from ipaddress import IPv4Address, IPv4Network
from typing import Any
from uuid import UUID, uuid4

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from aggregates.errors import DomainRuleError, StepFailedError
from aggregates.mac_pool import MacPool
from aggregates.network import Network, NetworkState
from aggregates.vlan_pool import VlanPool
from kernel.steps.network import AllocateNic, ImplementNetwork, ReleaseNic, ShutdownNetwork
from subsystems.base import StepContext
from subsystems.networkguru import NetworkGuru
from tests.support.event_log import EventLog, LogView

from ._support import MACHINE_SETTINGS

BASE = IPv4Network("10.50.0.0/24")
VLANS = (200, 202)  # three VLANs for up to three networks: exhaustion happens
MACS = ("52:54:00:00:00:01", "52:54:00:00:00:02", "02:00:00:00:00:03")
ALLOWED_FAILURES = {"no_free_ip", "no_free_vlan", "ip_taken", "mac_taken", "network_not_usable"}


def ctx(action: str) -> StepContext:
    """A step context (the guru ignores it apart from typing)."""
    return StepContext(step_id=uuid4(), operation_id=uuid4(), attempt=1,
                       subsystem="networkguru", action=action)


class AllocationMachine(RuleBasedStateMachine):
    """One zone: a VLAN pool, a MAC pool, small networks, two lagging gurus."""

    def __init__(self) -> None:
        super().__init__()
        self.log = EventLog()
        # fixed ids: proposals hash them, and hypothesis needs runs to replay identically
        self.zone = UUID(int=1)
        self.nics = 0
        self.views: list[LogView] = []
        self.gurus: list[NetworkGuru] = []
        self.networks: list[Network] = []
        self.excluded: dict[UUID, set[IPv4Address]] = {}
        self.refusals = 0

    @initialize(data=st.data(), count=st.integers(1, 3))
    def create(self, data: st.DataObject, count: int) -> None:
        """Pools and `count` small networks with random gateways and reserved ranges."""
        self.vlan_pool = VlanPool.create(zone_id=self.zone, first=VLANS[0], last=VLANS[1])
        self.mac_pool = MacPool.create(zone_id=self.zone)
        self.log.record(self.vlan_pool, self.mac_pool)
        for n, cidr in zip(range(count), BASE.subnets(new_prefix=28), strict=False):
            hosts = list(cidr.hosts())
            gateway = data.draw(st.sampled_from(hosts), label="gateway")
            first = data.draw(st.integers(0, len(hosts) - 1), label="reserved from")
            last = data.draw(st.integers(first, min(first + 5, len(hosts) - 1)), label="to")
            reserved = ((str(hosts[first]), str(hosts[last])),) if data.draw(
                st.booleans(), label="reserve") else ()
            net = Network.create(name=f"n{n}", zone_id=self.zone, cidr=str(cidr),
                                 gateway=str(gateway), reserved_ranges=reserved)
            self.log.record(net)
            self.networks.append(net)
            excluded = {cidr.network_address, cidr.broadcast_address, gateway}
            for a, b in reserved:
                excluded |= {ip for ip in cidr if IPv4Address(a) <= ip <= IPv4Address(b)}
            self.excluded[net.id] = excluded
        for _ in range(2):
            view = self.log.view(visible=self.log.head)
            guru = NetworkGuru(view)
            guru.open()
            self.views.append(view)
            self.gurus.append(guru)
        self.fresh = NetworkGuru(self.log.view())
        self.fresh.open()

    # the log

    @rule(which=st.integers(0, 1), data=st.data())
    def follow(self, which: int, data: st.DataObject) -> None:
        """A guru's view moves forward, possibly not all the way to the head."""
        view = self.views[which]
        assert view.visible is not None
        view.visible = data.draw(st.integers(view.visible, self.log.head), label="visible")

    def _record(self, *aggregates: Any, apply: Any) -> bool:
        """Run `apply` on copies; replace the aggregates only if all accept (one save)."""
        copies = [copy.deepcopy(a) for a in aggregates]
        versions = [a.version for a in aggregates]
        try:
            apply(*copies)
        except DomainRuleError:
            self.refusals += 1
            assert [a.version for a in aggregates] == versions
            return False
        self.log.record(*copies)
        for original, updated in zip(aggregates, copies, strict=True):
            self._replace(original, updated)
        return True

    def _replace(self, original: Any, updated: Any) -> None:
        if original is self.vlan_pool:
            self.vlan_pool = updated
        elif original is self.mac_pool:
            self.mac_pool = updated
        else:
            self.networks[self.networks.index(original)] = updated

    def _fresh_view(self, which: int) -> bool:
        return self.views[which].visible == self.log.head

    # addresses and MACs

    @rule(which=st.integers(0, 1), n=st.integers(0, 2), data=st.data(),
          ask_ip=st.booleans(), ask_mac=st.booleans())
    def allocate(self, which: int, n: int, data: st.DataObject, ask_ip: bool,
                 ask_mac: bool) -> None:
        """A guru proposes for a new NIC (maybe the address or MAC asked for); record it."""
        net = self.networks[n % len(self.networks)]
        requested_ip = str(data.draw(st.sampled_from(list(net.network)), label="ip")) \
            if ask_ip else None
        requested_mac = data.draw(st.sampled_from(MACS), label="mac") if ask_mac else None
        fresh = self._fresh_view(which)
        self.nics += 1
        nic = UUID(int=1000 + self.nics)
        try:
            got = self.gurus[which].allocate(ctx("allocate"), AllocateNic(
                network_id=net.id, nic_id=nic, requested_ip=requested_ip,
                requested_mac=requested_mac))
        except StepFailedError as e:
            assert not e.retryable
            assert e.code in ALLOWED_FAILURES | {"ip_unavailable"}, e
            if e.code == "ip_unavailable":
                assert IPv4Address(requested_ip) in self.excluded[net.id]  # type: ignore[arg-type]
            if e.code == "no_free_ip" and fresh:
                assert net.free_ip_count == 0
            return
        address = IPv4Address(got.ip)
        assert address in net.network and address not in self.excluded[net.id]
        assert int(got.mac[:2], 16) & 0b11 == 0b10
        assert requested_ip in (None, got.ip) and requested_mac in (None, got.mac)
        held_ips, held_macs = dict(net.allocated_ips), dict(self.mac_pool.holders)
        accepted = self._record(net, self.mac_pool, apply=lambda n_, p: (
            n_.allocate_ip(nic, got.ip), p.allocate(nic, got.mac)))
        if fresh:
            assert accepted, "a caught-up guru proposed something taken"
        if accepted:
            assert got.ip not in held_ips and got.mac not in held_macs
        else:
            assert got.ip in held_ips or got.mac in held_macs

    @rule(n=st.integers(0, 2), data=st.data(), drop_mac=st.booleans())
    def release(self, n: int, data: st.DataObject, drop_mac: bool) -> None:
        """A NIC gives its address (and maybe its MAC) back."""
        net = self.networks[n % len(self.networks)]
        if not net.allocated_ips:
            return
        nic = data.draw(st.sampled_from(sorted(net.allocated_ips.values())), label="nic")
        got = self.fresh.release(ctx("release"), ReleaseNic(network_id=net.id, nic_id=nic,
                                                            release_mac=drop_mac))
        assert got.ip == net.nic_ip(nic)
        assert got.mac == (self.mac_pool.mac_of(nic) if drop_mac else None)

        def apply(n_: Network, p: MacPool) -> None:
            n_.release_ip(got.ip)  # type: ignore[arg-type]
            if got.mac is not None:
                p.release(nic)

        assert self._record(net, self.mac_pool, apply=apply)

    # VLANs

    @rule(which=st.integers(0, 1), n=st.integers(0, 2))
    def implement(self, which: int, n: int) -> None:
        """Implement a network with the VLAN a guru proposes."""
        net = self.networks[n % len(self.networks)]
        if net.state not in (NetworkState.ALLOCATED, NetworkState.SHUTDOWN):
            return
        fresh = self._fresh_view(which)
        try:
            got = self.gurus[which].implement(ctx("implement"),
                                              ImplementNetwork(network_id=net.id))
        except StepFailedError as e:
            assert e.code == "no_free_vlan" and not e.retryable
            if fresh:
                assert self.vlan_pool.free_count == 0
            return
        assert got.pooled and got.vlan is not None and VLANS[0] <= got.vlan <= VLANS[1]

        def apply(n_: Network, p: VlanPool) -> None:
            p.allocate(n_.id, got.vlan)  # type: ignore[arg-type]
            n_.implement()
            n_.implemented(got.vlan)

        accepted = self._record(net, self.vlan_pool, apply=apply)
        if fresh:
            assert accepted, "a caught-up guru proposed a taken VLAN"

    @precondition(lambda self: any(n.state is NetworkState.IMPLEMENTED for n in self.networks))
    @rule(data=st.data())
    def shutdown(self, data: st.DataObject) -> None:
        """Shut an implemented network down; its VLAN goes back to the pool."""
        which = data.draw(st.sampled_from([i for i, n in enumerate(self.networks)
                                           if n.state is NetworkState.IMPLEMENTED]))
        net = self.networks[which]
        got = self.fresh.shutdown(ctx("shutdown"), ShutdownNetwork(network_id=net.id))
        assert got.vlan == net.vlan == self.vlan_pool.vlan_of(net.id)

        def apply(n_: Network, p: VlanPool) -> None:
            p.release(n_.id)
            n_.shutdown()

        assert self._record(net, self.vlan_pool, apply=apply)

    # invariants

    @invariant()
    def nothing_has_two_holders(self) -> None:
        """Addresses, MACs and VLANs each have at most one holder, and only usable ones."""
        for net in self.networks:
            nics = list(net.allocated_ips.values())
            assert len(nics) == len(set(nics))
            for ip in net.allocated_ips:
                assert IPv4Address(ip) in net.network
                assert IPv4Address(ip) not in self.excluded[net.id]
        assert len(set(self.mac_pool.allocations.values())) == len(self.mac_pool.allocations)
        assert {v: k for k, v in self.mac_pool.holders.items()} == self.mac_pool.allocations
        assert {v: k for k, v in self.vlan_pool.holders.items()} == self.vlan_pool.allocations
        assert all(VLANS[0] <= v <= VLANS[1] for v in self.vlan_pool.holders)
        for net in self.networks:
            if net.state is NetworkState.IMPLEMENTED:
                assert self.vlan_pool.vlan_of(net.id) == net.vlan is not None

    @invariant()
    def a_caught_up_index_agrees_with_the_aggregates(self) -> None:
        """Replaying the log into a guru's index gives the aggregates' state."""
        if not self.gurus:
            return
        self.fresh.index.catch_up(self.log.view())
        index = self.fresh.index
        for net in self.networks:
            assert index.networks[net.id].ips == net.allocated_ips
        assert index.mac_pool(self.zone).holders == self.mac_pool.holders
        pool = index.vlan_pool(self.zone)
        assert pool is not None and pool.holders == self.vlan_pool.holders


AllocationMachine.TestCase.settings = MACHINE_SETTINGS
TestAllocation = AllocationMachine.TestCase
