"""Network: creation rules, life cycle and address bookkeeping."""

from collections.abc import Callable
from uuid import uuid4

import pytest

from aggregates.base import audit_context
from aggregates.errors import (
    CapacityError,
    DomainRuleError,
    InvalidTransitionError,
    ValidationError,
)
from aggregates.network import GuestNetworkType, Network, NetworkState
from kernel.store.testing import roundtrip

Refused = Callable[..., InvalidTransitionError]
S = NetworkState

ACTIONS: dict[str, tuple[Callable[[Network], None], str, set[NetworkState], NetworkState]] = {
    "implement": (lambda n: n.implement(), "implement", {S.ALLOCATED, S.SHUTDOWN},
                  S.IMPLEMENTING),
    "implemented": (lambda n: n.implemented(100), "complete implementation",
                    {S.IMPLEMENTING}, S.IMPLEMENTED),
    "implementation_failed": (lambda n: n.implementation_failed("x"), "fail implementation",
                              {S.IMPLEMENTING}, S.ALLOCATED),
    "shutdown": (lambda n: n.shutdown(), "shut down", {S.IMPLEMENTED}, S.SHUTDOWN),
    "destroy": (lambda n: n.destroy(), "destroy", {S.ALLOCATED, S.SHUTDOWN}, S.DESTROYED),
}
PATHS: dict[NetworkState, list[str]] = {
    S.ALLOCATED: [],
    S.IMPLEMENTING: ["implement"],
    S.IMPLEMENTED: ["implement", "implemented"],
    S.SHUTDOWN: ["implement", "implemented", "shutdown"],
    S.DESTROYED: ["destroy"],
}


def make_network(**overrides: object) -> Network:
    """A valid isolated /24 network."""
    args: dict = {"name": f"net-{uuid4().hex[:8]}", "zone_id": uuid4(),
                  "cidr": "10.1.1.0/24", "gateway": "10.1.1.1"}
    args.update(overrides)
    return Network.create(**args)


def network_in(state: NetworkState) -> Network:
    """A network driven into `state` through allowed transitions."""
    network = make_network()
    for name in PATHS[state]:
        ACTIONS[name][0](network)
    assert network.state is state
    return network


@pytest.mark.parametrize("state", list(NetworkState))
@pytest.mark.parametrize("action", list(ACTIONS))
def test_transition_table(state: NetworkState, action: str, refused: Refused) -> None:
    call, text, sources, target = ACTIONS[action]
    network = network_in(state)
    if state in sources:
        call(network)
        assert network.state is target
    else:
        refused(network, lambda: call(network), text)


def test_create_defaults() -> None:
    zone = uuid4()
    network = make_network(name="guest", zone_id=zone)
    assert network.id == Network.create_id(zone, "guest")
    assert network.state is S.ALLOCATED and network.network_type is GuestNetworkType.ISOLATED
    assert network.vlan is None and network.free_ip_count == 253


@pytest.mark.parametrize("overrides", [
    {"name": ""},
    {"cidr": "10.1.1.5/24"},
    {"cidr": "fd00::/64", "gateway": "fd00::1"},
    {"cidr": "10.1.1.0/31", "gateway": "10.1.1.1"},
    {"gateway": "10.1.2.1"},
    {"gateway": "10.1.1.0"},
    {"gateway": "10.1.1.255"},
    {"vlan": 100},
    {"network_type": GuestNetworkType.SHARED, "vlan": 4095},
    {"reserved_ranges": (("10.1.1.20", "10.1.1.10"),)},
    {"reserved_ranges": (("10.1.1.20", "10.1.2.10"),)},
])
def test_bad_arguments_are_refused(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        make_network(**overrides)


def test_isolated_vlan_comes_and_goes_with_implementation() -> None:
    network = make_network()
    network.implement()
    with pytest.raises(ValidationError):
        network.implemented(0)
    network.implemented(321)
    assert network.vlan == 321
    network.shutdown()
    assert network.vlan is None
    network.implement()
    network.implementation_failed("no vnet")
    assert network.state is S.ALLOCATED and network.last_error == "no vnet"
    assert roundtrip(network) == network


def test_shared_vlan_is_fixed() -> None:
    network = make_network(network_type=GuestNetworkType.SHARED, vlan=50)
    network.implement()
    with pytest.raises(DomainRuleError):
        network.implemented(51)
    network.implemented()
    network.shutdown()
    assert network.vlan == 50


def test_addresses_skip_gateway_and_reserved_ranges() -> None:
    network = make_network(cidr="10.0.0.0/28", gateway="10.0.0.1",
                           reserved_ranges=(("10.0.0.2", "10.0.0.4"), ("10.0.0.3", "10.0.0.5"),
                                            ("10.0.0.14", "10.0.0.15")))
    assert network.free_ip_count == 14 - 1 - 4 - 1
    nics = [uuid4() for _ in range(9)]
    got = [network.allocate_ip(nic) for nic in nics[:8]]
    assert got == [f"10.0.0.{i}" for i in range(6, 14)]
    assert network.free_ip_count == 0
    with pytest.raises(CapacityError):
        network.allocate_ip(nics[8])
    network.release_ip("10.0.0.9")
    assert network.allocate_ip(nics[8]) == "10.0.0.9"
    assert network.nic_ip(nics[8]) == "10.0.0.9"
    assert roundtrip(network) == network


def test_asked_addresses_are_checked() -> None:
    network = make_network(reserved_ranges=(("10.1.1.2", "10.1.1.9"),))
    nic = uuid4()
    assert network.allocate_ip(nic, "10.1.1.50") == "10.1.1.50"
    with pytest.raises(DomainRuleError):
        network.allocate_ip(nic, "10.1.1.51")
    for bad in ("10.1.2.5", "10.1.1.0", "10.1.1.255", "nope"):
        with pytest.raises(ValidationError):
            network.allocate_ip(uuid4(), bad)
    for taken in ("10.1.1.1", "10.1.1.5", "10.1.1.50"):
        with pytest.raises(DomainRuleError):
            network.allocate_ip(uuid4(), taken)
    assert network.is_assignable("10.1.1.10") and not network.is_assignable("10.1.1.50")
    with pytest.raises(DomainRuleError):
        network.release_ip("10.1.1.51")


def test_destroy_needs_every_address_released(refused: Refused) -> None:
    network = make_network()
    network.allocate_ip(uuid4())
    with pytest.raises(DomainRuleError):
        network.destroy()
    network.release_ip("10.1.1.2")
    network.destroy()
    refused(network, lambda: network.allocate_ip(uuid4()), "allocate an address")


def test_audit_metadata_lands_on_events() -> None:
    correlation = uuid4()
    with audit_context("guru", correlation, "step-1"):
        network = make_network()
        network.allocate_ip(uuid4())
    assert {(e.actor, e.correlation_id) for e in network.pending_events} == {
        ("guru", correlation)}


def test_the_hosts_of_its_element_are_recorded_and_must_be_cleared_before_shutdown() -> None:
    network = network_in(S.IMPLEMENTED)
    first, second = sorted((uuid4(), uuid4()), key=str)
    network.element_implemented(second)
    network.element_implemented(first)
    version = network.version
    network.element_implemented(first)  # the same host again records nothing
    assert network.version == version and network.element_hosts == (first, second)
    with pytest.raises(DomainRuleError, match="still set up on hosts"):
        network.shutdown()
    network.element_shut_down(first)
    network.element_shut_down(first)  # gone already: nothing
    network.element_shut_down(second)
    assert network.element_hosts == ()
    network.shutdown()
    copy = roundtrip(network)
    assert (copy.state, copy.element_hosts) == (S.SHUTDOWN, ())
    destroyed = network_in(S.DESTROYED)
    with pytest.raises(InvalidTransitionError):
        destroyed.element_implemented(first)
