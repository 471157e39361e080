"""Network: only table transitions happen; an address is never handed out twice, outside
the CIDR, on the gateway or in a reserved range; the store agrees with the live network."""

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from uuid import UUID, uuid4

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from aggregates.errors import (
    CapacityError,
    DomainRuleError,
    InvalidTransitionError,
    ValidationError,
)
from aggregates.network import GuestNetworkType, Network, NetworkState

from ._support import MACHINE_SETTINGS, assert_roundtrips, attempt

S = NetworkState
BASE = IPv4Network("10.20.30.0/24")
# CloudStack's network state machine, written down independently of network.py:
# action -> (states it may start from, state it lands in)
TABLE: dict[str, tuple[frozenset[NetworkState], NetworkState]] = {
    "implement": (frozenset({S.ALLOCATED, S.SHUTDOWN}), S.IMPLEMENTING),
    "implemented": (frozenset({S.IMPLEMENTING}), S.IMPLEMENTED),
    "implementation_failed": (frozenset({S.IMPLEMENTING}), S.ALLOCATED),
    "shutdown": (frozenset({S.IMPLEMENTED}), S.SHUTDOWN),
    "destroy": (frozenset({S.ALLOCATED, S.SHUTDOWN}), S.DESTROYED),
}


class NetworkMachine(RuleBasedStateMachine):
    """One small network: life-cycle moves, address allocations and releases."""

    network: Network

    def __init__(self) -> None:
        super().__init__()
        self.state = S.ALLOCATED
        self.allocated: dict[str, UUID] = {}

    @initialize(data=st.data())
    def create(self, data: st.DataObject) -> None:
        """A small network with a random gateway, reserved ranges and type."""
        prefix = data.draw(st.integers(26, 30), label="prefix")
        cidr = next(BASE.subnets(new_prefix=prefix))
        hosts = list(cidr.hosts())
        gateway = data.draw(st.sampled_from(hosts), label="gateway")
        ranges = []
        for _ in range(data.draw(st.integers(0, 2), label="reserved ranges")):
            first = data.draw(st.integers(0, cidr.num_addresses - 1), label="first")
            last = data.draw(st.integers(first, cidr.num_addresses - 1), label="last")
            ranges.append((str(cidr[first]), str(cidr[last])))
        shared = data.draw(st.booleans(), label="shared")
        self.fixed_vlan = 77 if shared else None
        self.vlan = self.fixed_vlan
        self.network = Network.create(
            name=f"net-{uuid4().hex}", zone_id=uuid4(), cidr=str(cidr), gateway=str(gateway),
            network_type=GuestNetworkType.SHARED if shared else GuestNetworkType.ISOLATED,
            vlan=self.fixed_vlan, reserved_ranges=tuple(ranges))
        self.cidr, self.gateway = cidr, gateway
        self.reserved = [(IPv4Address(a), IPv4Address(b)) for a, b in ranges]

    def _assignable(self) -> list[IPv4Address]:
        """Every address that may still be handed out, lowest first (by brute force)."""
        return [ip for ip in self.cidr.hosts()
                if ip != self.gateway and str(ip) not in self.allocated
                and not any(a <= ip <= b for a, b in self.reserved)]

    # life cycle

    def _call(self, action: str, vlan: int | None) -> Callable[[], None]:
        """The network command or result report that performs `action`."""
        network = self.network
        if action == "implemented":
            return lambda: network.implemented(vlan)
        if action == "implementation_failed":
            return lambda: network.implementation_failed("no vnet")
        return getattr(network, action)  # type: ignore[no-any-return]

    def _move(self, action: str, vlan: int | None) -> None:
        sources, target = TABLE[action]
        expected: type[Exception] | None = None
        if self.state not in sources:
            expected = InvalidTransitionError
        elif (action == "destroy" and self.allocated) or (
                action == "implemented" and self.fixed_vlan not in (None, vlan)
                and vlan is not None):
            expected = DomainRuleError
        attempt(self.network, self._call(action, vlan), expected)
        if expected is None:
            self.state = target
            if action == "implemented" and vlan is not None:
                self.vlan = vlan
            elif action in ("shutdown", "implementation_failed"):
                self.vlan = self.fixed_vlan

    @rule(data=st.data(), vlan=st.sampled_from([None, 77, 100]))
    def progress(self, data: st.DataObject, vlan: int | None) -> None:
        """A move the model allows (when there is one)."""
        allowed = [a for a, (sources, _) in TABLE.items() if self.state in sources] or ["destroy"]
        turn = self.network.version % len(allowed)
        self._move(data.draw(st.sampled_from(allowed[turn:] + allowed[:turn])), vlan)

    @rule(action=st.sampled_from(list(TABLE)), vlan=st.sampled_from([None, 77, 100]))
    def anything(self, action: str, vlan: int | None) -> None:
        """Any move, often refused."""
        self._move(action, vlan)

    # addresses

    @rule(data=st.data(), how=st.sampled_from(["lowest", "asked", "garbage", "same nic"]))
    def allocate_ip(self, data: st.DataObject, how: str) -> None:
        """Ask for the lowest free, a chosen, a malformed address, or a second one."""
        nic = uuid4()
        ip: str | None = None
        if how == "same nic" and self.allocated:
            nic = data.draw(st.sampled_from(sorted(self.allocated.values())))
        elif how == "asked":
            ip = str(BASE[data.draw(st.integers(0, 255), label="address")])
        elif how == "garbage":
            ip = data.draw(st.sampled_from(["10.20.30.256", "", "fe80::1", "ten"]))
        free = self._assignable()
        expected: type[Exception] | None = None
        if self.state is S.DESTROYED:
            expected = InvalidTransitionError
        elif nic in self.allocated.values():
            expected = DomainRuleError
        elif ip is None:
            expected = None if free else CapacityError
        elif how == "garbage" or IPv4Address(ip) not in set(self.cidr.hosts()):
            expected = ValidationError
        elif IPv4Address(ip) not in free:
            expected = DomainRuleError
        got = attempt(self.network, lambda: self.network.allocate_ip(nic, ip), expected)
        if expected is None:
            assert got == (ip or str(free[0]))
            self.allocated[got] = nic

    @rule(data=st.data(), known=st.booleans())
    def release_ip(self, data: st.DataObject, known: bool) -> None:
        """Give back a held address, or one that is not held (refused)."""
        if known and self.allocated:
            ip = data.draw(st.sampled_from(sorted(self.allocated)))
            attempt(self.network, lambda: self.network.release_ip(ip), None)
            del self.allocated[ip]
        else:
            ip = str(BASE[data.draw(st.integers(0, 255))])
            if ip not in self.allocated:
                attempt(self.network, lambda: self.network.release_ip(ip), DomainRuleError)

    @precondition(lambda self: hasattr(self, "network"))
    @rule()
    def save_and_reload(self) -> None:
        """The network read back from the store equals the live one."""
        assert_roundtrips(self.network)

    @invariant()
    def refuses_what_the_table_forbids(self) -> None:
        """Every life-cycle move the table does not allow from here is refused."""
        if hasattr(self, "network"):
            for action, (sources, _) in TABLE.items():
                if self.state not in sources:
                    attempt(self.network, self._call(action, None), InvalidTransitionError)

    @invariant()
    def matches_model(self) -> None:
        """State, VLAN and allocations are what the model expects."""
        if hasattr(self, "network"):
            assert self.network.state is self.state and self.network.vlan == self.vlan
            assert self.network.allocated_ips == self.allocated

    @invariant()
    def addresses_are_sound(self) -> None:
        """No address twice, none outside the CIDR, on the gateway or reserved."""
        if not hasattr(self, "network"):
            return
        network = self.network
        owners = list(network.allocated_ips.values())
        assert len(set(owners)) == len(owners), "a NIC holds two addresses"
        for text in network.allocated_ips:
            ip = IPv4Address(text)
            assert ip in self.cidr and ip not in (self.cidr.network_address,
                                                  self.cidr.broadcast_address)
            assert ip != self.gateway
            assert not any(a <= ip <= b for a, b in self.reserved)
        assert network.free_ip_count == len(self._assignable()) >= 0

    def teardown(self) -> None:
        """The final network still round-trips through the store."""
        if hasattr(self, "network"):
            assert_roundtrips(self.network)


TestNetworkMachine = NetworkMachine.TestCase
TestNetworkMachine.settings = MACHINE_SETTINGS
