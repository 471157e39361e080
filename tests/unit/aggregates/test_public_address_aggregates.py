"""PublicAddressPool and PublicAddress: range checks, one holder per address, exhaustion,
release then reuse (oldest released first), replay through the store, and allocation that
costs one event and one held entry whatever the range's size."""

from collections import deque
from ipaddress import IPv4Address
from uuid import uuid4

import pytest

from aggregates.errors import CapacityError, DomainRuleError, ValidationError
from aggregates.public_address import AddressState, PublicAddress
from aggregates.public_address_pool import PublicAddressPool, PublicRange
from kernel.store.testing import roundtrip

DOC = dict(name="doc-3", cidr="203.0.113.0/24", gateway="203.0.113.1", first="203.0.113.10",
           last="203.0.113.12")


def pool_with(**ranges: dict[str, str]) -> PublicAddressPool:
    pool = PublicAddressPool.create(zone_id=uuid4())
    for name, fields in ranges.items():
        pool.add_range(**{**fields, "name": name})
    return pool


def test_one_pool_per_zone_and_a_range_is_checked() -> None:
    zone = uuid4()
    pool = PublicAddressPool.create(zone_id=zone)
    assert pool.id == PublicAddressPool.create_id(zone) != PublicAddressPool.create_id(uuid4())
    added = pool.add_range(**DOC)
    assert added == PublicRange("doc-3", "203.0.113.0/24", "203.0.113.1", "203.0.113.10",
                                "203.0.113.12")
    assert (pool.size, pool.free_count, pool.allocated_count) == (3, 3, 0)
    bad = [
        dict(cidr="203.0.113.1/24"),  # host bits set
        dict(cidr="2001:db8::/64"),  # not IPv4
        dict(first="198.51.100.10"),  # outside the CIDR
        dict(first="203.0.113.0"),  # the network address
        dict(last="203.0.113.255"),  # the broadcast address
        dict(first="203.0.113.20", last="203.0.113.10"),  # reversed
        dict(gateway="203.0.113.11"),  # gateway inside the range
        dict(gateway="198.51.100.1"),  # gateway outside the CIDR
        dict(first="nope"),
        dict(name=" spaced "),
    ]
    fresh = PublicAddressPool.create(zone_id=zone)
    for change in bad:
        with pytest.raises(ValidationError):
            fresh.add_range(**{**DOC, **change})
    assert fresh.ranges == [] and len(fresh.pending_events) == 1


def test_ranges_of_a_zone_never_overlap_nor_share_a_name() -> None:
    pool = pool_with(a=DOC)
    with pytest.raises(DomainRuleError, match="overlaps range a"):
        pool.add_range(**{**DOC, "name": "b", "first": "203.0.113.12",
                          "last": "203.0.113.40"})
    with pytest.raises(DomainRuleError, match="named 'a' exists"):
        pool.add_range(**{**DOC, "name": "a", "first": "203.0.113.100", "last": "203.0.113.101"})
    pool.add_range(**{**DOC, "name": "b", "first": "203.0.113.13", "last": "203.0.113.13"})
    assert pool.size == 4


def test_an_address_goes_to_one_allocation_until_the_pool_is_exhausted() -> None:
    pool = pool_with(a=DOC)
    ids = [uuid4() for _ in range(3)]
    got = [pool.allocate(i, "acme") for i in ids]
    assert got == ["203.0.113.10", "203.0.113.11", "203.0.113.12"]
    assert [pool.holder_of(a) for a in got] == ids
    assert len(set(got)) == 3 and pool.free_count == 0
    version = pool.version
    with pytest.raises(CapacityError, match="all 3 addresses are allocated"):
        pool.allocate(uuid4(), "acme")
    with pytest.raises(DomainRuleError, match="already holds"):
        pool.allocate(ids[0], "acme")
    with pytest.raises(ValidationError):
        pool.allocate(uuid4(), "")
    assert pool.version == version  # a refusal records nothing


def test_a_pool_without_ranges_refuses_clearly() -> None:
    pool = PublicAddressPool.create(zone_id=uuid4())
    with pytest.raises(DomainRuleError, match="no public address range"):
        pool.allocate(uuid4(), "acme")


def test_release_then_reallocate_oldest_released_first_never_a_held_one() -> None:
    pool = pool_with(a=DOC)
    a, b, c = uuid4(), uuid4(), uuid4()
    for i in (a, b, c):
        pool.allocate(i, "acme")
    assert pool.release(b) == "203.0.113.11"
    assert pool.release(a) == "203.0.113.10"
    with pytest.raises(DomainRuleError, match="holds no address"):
        pool.release(a)  # released already
    with pytest.raises(DomainRuleError, match="holds no address"):
        pool.release(uuid4())
    d, e = uuid4(), uuid4()
    assert pool.allocate(d, "globex") == "203.0.113.11"  # the oldest released
    assert pool.allocate(e, "globex") == "203.0.113.10"
    assert pool.free_count == 0
    with pytest.raises(CapacityError):
        pool.allocate(uuid4(), "globex")
    pool.release(d)
    assert pool.allocate(uuid4(), "globex") == "203.0.113.11"


def test_fresh_addresses_come_before_released_ones_across_ranges() -> None:
    pool = pool_with(a={**DOC, "first": "203.0.113.10", "last": "203.0.113.10"})
    first = uuid4()
    assert pool.allocate(first, "acme") == "203.0.113.10"
    pool.release(first)
    # a range added later, below the first: its fresh addresses go before the released one
    pool.add_range(name="b", cidr="198.51.100.0/24", gateway="198.51.100.1",
                   first="198.51.100.5", last="198.51.100.6")
    got = [pool.allocate(uuid4(), "acme") for _ in range(3)]
    assert got == ["198.51.100.5", "198.51.100.6", "203.0.113.10"]
    with pytest.raises(CapacityError):
        pool.allocate(uuid4(), "acme")


def test_the_pool_replays_to_the_same_state_through_the_store() -> None:
    pool = pool_with(a=DOC)
    ids = [uuid4() for _ in range(3)]
    for i in ids:
        pool.allocate(i, "acme")
    pool.release(ids[1])
    pool.release(ids[0])
    loaded = roundtrip(pool)
    assert loaded.ranges == pool.ranges
    assert loaded.holders == pool.holders and loaded.addresses == pool.addresses
    assert loaded.next_address() == pool.next_address() == "203.0.113.11"
    assert loaded.allocate(uuid4(), "acme") == "203.0.113.11"
    assert loaded.allocate(uuid4(), "acme") == "203.0.113.10"


def test_allocation_is_one_event_and_one_entry_whatever_the_range_size() -> None:
    """A /16 range: the pool never lists its free addresses; each allocation adds exactly one
    event and one held entry, and a release one event and one queued entry."""
    pool = pool_with(big=dict(cidr="10.200.0.0/16", gateway="10.200.0.1",
                              first="10.200.0.2", last="10.200.255.254"))
    assert pool.size == 65533
    base_events = len(pool.pending_events)

    def entries() -> int:  # everything the pool's state holds, container by container
        state = [v for k, v in vars(pool).items() if not k.startswith("_pending")]
        assert sum(isinstance(v, list | dict | set | deque) for v in state) == 5
        return sum(len(v) for v in state if isinstance(v, list | dict | set | deque))
    n = 5000
    ids = [uuid4() for _ in range(n)]
    for k, i in enumerate(ids, start=1):
        pool.allocate(i, "acme")
        assert len(pool.pending_events) == base_events + k
        assert len(pool.holders) == len(pool.addresses) == k
        assert entries() == 1 + 2 * k  # the range, and the address both ways
    assert pool.address_of(ids[-1]) == str(IPv4Address("10.200.0.2") + n - 1)
    for k, i in enumerate(ids[:100], start=1):
        pool.release(i)
        assert len(pool._released) == len(pool._free) == k
        assert entries() == 1 + 2 * (n - k) + 2 * k
    assert pool.free_count == 65533 - n + 100


def test_an_allocation_records_its_owner_and_is_released_once() -> None:
    zone, pool_id, address_id = uuid4(), uuid4(), uuid4()
    held = PublicAddress.allocate(id=address_id, zone_id=zone, pool_id=pool_id,
                                  address="203.0.113.10", account="acme", purpose="web")
    assert (held.id, held.account, held.purpose, held.state) == (
        address_id, "acme", "web", AddressState.ALLOCATED)
    held.release()
    assert held.state is AddressState.RELEASED
    with pytest.raises(DomainRuleError, match="already released"):
        held.release()
    loaded = roundtrip(held)
    assert (loaded.state, loaded.account, loaded.address) == (
        AddressState.RELEASED, "acme", "203.0.113.10")
    for bad in (dict(account=""), dict(purpose="x" * 201), dict(purpose="a\nb")):
        with pytest.raises(ValidationError):
            PublicAddress.allocate(**{**dict(id=uuid4(), zone_id=zone, pool_id=pool_id,
                                             address="203.0.113.11", account="acme"),
                                      **bad})  # type: ignore[arg-type]


def test_a_clone_changes_apart_from_its_original() -> None:
    pool = pool_with(a=DOC)
    held = uuid4()
    pool.allocate(held, "acme")
    saved = roundtrip(pool)
    twin = saved.clone()
    twin.release(held)
    twin.allocate(uuid4(), "acme")
    twin.add_range(name="b", cidr="198.51.100.0/24", gateway="198.51.100.1",
                   first="198.51.100.2", last="198.51.100.2")
    assert (saved.allocated_count, saved.size, saved.version) == (1, 3, 3)
    assert saved.address_of(held) == "203.0.113.10" and not saved.pending_events
    assert saved.next_address() == "203.0.113.11"
    assert (twin.allocated_count, twin.size, twin.version) == (1, 4, 6)
    assert len(twin.pending_events) == 3
