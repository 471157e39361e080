"""VlanPool and MacPool: ranges, uniqueness, idempotent repeats, releases, the store."""

from uuid import uuid4

import pytest

from aggregates.errors import DomainRuleError, ValidationError
from aggregates.mac_pool import MacPool, normalize_guest_mac
from aggregates.vlan_pool import VlanPool
from kernel.store.testing import roundtrip


def test_vlan_pool_is_one_per_zone_with_an_ordered_range() -> None:
    zone = uuid4()
    pool = VlanPool.create(zone_id=zone, first=100, last=199)
    assert pool.id == VlanPool.create_id(zone) != VlanPool.create_id(uuid4())
    assert (pool.size, pool.free_count) == (100, 100)
    for first, last in ((0, 10), (10, 4095), (20, 10), (True, 5)):
        with pytest.raises(ValidationError):
            VlanPool.create(zone_id=zone, first=first, last=last)


def test_vlan_pool_gives_a_vlan_to_one_network_only() -> None:
    pool = VlanPool.create(zone_id=uuid4(), first=10, last=12)
    a, b = uuid4(), uuid4()
    pool.allocate(a, 10)
    version = pool.version
    pool.allocate(a, 10)  # a repeated step result records nothing
    assert pool.version == version
    with pytest.raises(DomainRuleError, match="held by network"):
        pool.allocate(b, 10)
    with pytest.raises(DomainRuleError, match="already holds"):
        pool.allocate(a, 11)
    with pytest.raises(ValidationError, match="outside"):
        pool.allocate(b, 13)
    with pytest.raises(ValidationError):
        pool.allocate(b, 5000)
    assert pool.version == version
    pool.allocate(b, 12)
    assert (pool.vlan_of(a), pool.vlan_of(b), pool.free_count) == (10, 12, 1)
    assert not pool.is_free(10) and pool.is_free(11) and not pool.is_free(13)
    assert pool.release(a) == 10
    with pytest.raises(DomainRuleError, match="holds no vlan"):
        pool.release(a)
    pool.allocate(uuid4(), 10)
    loaded = roundtrip(pool)
    assert loaded.holders == pool.holders and loaded.allocations == pool.allocations


def test_guest_macs_are_locally_administered_unicast() -> None:
    assert normalize_guest_mac("t", "52:54:00:AB:CD:EF") == "52:54:00:ab:cd:ef"
    assert normalize_guest_mac("t", "02:00:00:00:00:01") == "02:00:00:00:00:01"
    for bad in ("00:16:3e:00:00:01", "03:00:00:00:00:01", "52:54:00:00:00", "zz:00:00:00:00:00",
                "52-54-00-00-00-01", 7):
        with pytest.raises(ValidationError):
            normalize_guest_mac("t", bad)  # type: ignore[arg-type]


def test_mac_pool_gives_a_mac_to_one_nic_only() -> None:
    zone = uuid4()
    pool = MacPool.create(zone_id=zone)
    assert pool.id == MacPool.create_id(zone)
    a, b = uuid4(), uuid4()
    assert pool.allocate(a, "02:AA:00:00:00:01") == "02:aa:00:00:00:01"
    version = pool.version
    pool.allocate(a, "02:aa:00:00:00:01")
    assert pool.version == version
    with pytest.raises(DomainRuleError, match="held by nic"):
        pool.allocate(b, "02:aa:00:00:00:01")
    with pytest.raises(DomainRuleError, match="already holds"):
        pool.allocate(a, "02:aa:00:00:00:02")
    assert pool.version == version
    assert pool.holder_of("02:AA:00:00:00:01") == a and pool.mac_of(b) is None
    assert pool.release(a) == "02:aa:00:00:00:01"
    with pytest.raises(DomainRuleError, match="holds no MAC"):
        pool.release(a)
    pool.allocate(b, "02:aa:00:00:00:01")  # free again once released
    assert roundtrip(pool).holders == {"02:aa:00:00:00:01": b}
