"""address.allocate, address.release and publicrange.create on the in-memory store, and the
inventory's public ranges: allocations are distinct even when two commands race on the
pool's version, releases are refused twice and never free a reallocated address, exhaustion
and unknown zones are refused clearly, a refused command writes nothing, and loading an
inventory twice adds nothing twice."""

from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.errors import CapacityError, DomainRuleError, NotFoundError, ValidationError
from aggregates.public_address import AddressState, PublicAddress
from aggregates.public_address_pool import PublicAddressPool
from aggregates.zone import Zone
from kernel.cloud import addresses
from kernel.cloud.addresses import (
    ADDRESS_HANDLERS,
    AddressAllocation,
    AllocateAddress,
    CreatePublicRange,
    PoolCache,
    PublicRangeAdded,
    ReleaseAddress,
)
from kernel.commands import CommandService
from kernel.inventory.loader import (
    InventoryResult,
    LoadInventory,
    handle_load_inventory,
    load_inventory_file,
)
from kernel.inventory.spec import InventoryError, parse_inventory_text
from kernel.store.testing import scratch_application

INVENTORY = """
[[zones]]
name = "zone-1"

[[public_ranges]]
name = "doc-3"
zone = "zone-1"
cidr = "203.0.113.0/24"
gateway = "203.0.113.1"
first = "203.0.113.10"
last = "203.0.113.12"
"""
MORE = """
[[public_ranges]]
name = "doc-2"
zone = "zone-1"
cidr = "198.51.100.0/24"
gateway = "198.51.100.1"
first = "198.51.100.20"
last = "198.51.100.20"
"""


class World:
    """A command service with the inventory and address handlers."""

    def __init__(self) -> None:
        self.service = CommandService(scratch_application(), {
            LoadInventory: handle_load_inventory, **ADDRESS_HANDLERS})
        self.zone_id = Zone.create_id("zone-1")

    def run(self, command: Any, key: str | None = None) -> Any:
        return self.service.execute(command, idempotency_key=key or f"k-{uuid4()}",
                                    actor="alice")

    def load(self, text: str, name: str = "inv.toml") -> InventoryResult:
        inventory, _ = parse_inventory_text(text, name)
        out = self.run(LoadInventory(source=name, inventory=inventory))
        return out.decode(InventoryResult)  # type: ignore[no-any-return]

    def allocate(self, account: str = "acme", **extra: Any) -> AddressAllocation:
        out = self.run(AllocateAddress(zone_id=self.zone_id, account=account, **extra))
        return out.decode(AddressAllocation)  # type: ignore[no-any-return]

    def release(self, address_id: UUID, key: str | None = None) -> AddressAllocation:
        out = self.run(ReleaseAddress(address_id=address_id), key=key)
        return out.decode(AddressAllocation)  # type: ignore[no-any-return]

    def head(self) -> int:
        return self.service.app.recorder.max_notification_id() or 0

    def pool(self) -> PublicAddressPool:
        found: PublicAddressPool = self.service.app.repository.get(
            PublicAddressPool.create_id(self.zone_id))
        return found


@pytest.fixture
def world() -> World:
    w = World()
    w.load(INVENTORY)
    return w


def test_inventory_ranges_load_once_and_a_changed_range_is_refused(tmp_path: Path) -> None:
    w = World()
    first = w.load(INVENTORY)
    assert first.registered["zones"] == ["zone-1"]
    assert first.registered["public_ranges"] == ["doc-3"]
    head = w.head()
    # the same content from another source: nothing new; that file again: a replay
    path = tmp_path / "inv.toml"
    path.write_text(INVENTORY)
    _, again = load_inventory_file(w.service, path)
    assert again.registered["public_ranges"] == [] and w.head() == head  # nothing new
    assert again.unchanged["public_ranges"] == ["doc-3"]
    _, replayed = load_inventory_file(w.service, path)
    assert replayed == again
    head = w.head()
    # another file listing the same zone and range, and one more range: only that is new
    more = w.load(INVENTORY + MORE, "more.toml")
    assert more.registered["public_ranges"] == ["doc-2"]
    assert more.unchanged["public_ranges"] == ["doc-3"]
    assert [r.name for r in w.pool().ranges] == ["doc-3", "doc-2"] and w.pool().size == 4
    assert w.head() == head + 1  # one RangeAdded event
    changed = INVENTORY.replace('last = "203.0.113.12"', 'last = "203.0.113.13"')
    head = w.head()
    with pytest.raises(InventoryError, match=r"already registered as 203\.0\.113\.0/24"):
        w.load(changed, "changed.toml")
    overlap = INVENTORY + MORE.replace('"doc-2"', '"other"')
    with pytest.raises(InventoryError, match=r"public_ranges\[1\].*overlaps range doc-2"):
        w.load(overlap, "overlap.toml")
    assert w.head() == head


def test_an_inventory_range_is_checked_with_its_line(tmp_path: Path) -> None:
    w = World()
    path = tmp_path / "bad.toml"
    path.write_text(INVENTORY.replace('gateway = "203.0.113.1"', 'gateway = "203.0.113.11"'))
    with pytest.raises(InventoryError, match=r"bad.toml:9: public_ranges\[0\].gateway: .*"
                                             "the gateway 203.0.113.11 is inside"):
        load_inventory_file(w.service, path)
    path.write_text(INVENTORY.replace('zone = "zone-1"', 'zone = "zone-9"'))
    with pytest.raises(InventoryError, match="zone 'zone-9' is not among"):
        load_inventory_file(w.service, path)
    assert w.head() == 0


def test_allocate_release_and_reallocate(world: World) -> None:
    a = world.allocate(purpose="web")
    assert (a.address, a.account, a.purpose, a.state) == ("203.0.113.10", "acme", "web",
                                                          "Allocated")
    held: PublicAddress = world.service.app.repository.get(a.address_id)
    assert (held.account, held.address, held.state) == ("acme", a.address,
                                                        AddressState.ALLOCATED)
    b, c = world.allocate("globex"), world.allocate()
    assert [b.address, c.address] == ["203.0.113.11", "203.0.113.12"]
    head = world.head()
    with pytest.raises(CapacityError, match="all 3 addresses are allocated"):
        world.allocate()
    assert world.head() == head
    key = "release-b"
    released = world.release(b.address_id, key=key)
    assert (released.state, released.address) == ("Released", "203.0.113.11")
    assert world.release(b.address_id, key=key) == released  # a retry replays
    head = world.head()
    with pytest.raises(DomainRuleError, match="already released"):
        world.release(b.address_id)  # a fresh release of a released allocation
    assert world.head() == head
    d = world.allocate("initech")
    assert d.address == "203.0.113.11" and d.address_id != b.address_id
    with pytest.raises(DomainRuleError, match="already released"):
        world.release(b.address_id)  # never frees the address d holds now
    assert world.pool().holder_of("203.0.113.11") == d.address_id


def test_refusals_name_the_problem_and_write_nothing(world: World) -> None:
    head = world.head()
    with pytest.raises(NotFoundError, match="no zone"):
        world.run(AllocateAddress(zone_id=uuid4(), account="acme"))
    with pytest.raises(NotFoundError, match="no public address allocation"):
        world.release(uuid4())
    with pytest.raises(ValidationError, match="account"):
        world.allocate(" ")
    with pytest.raises(ValidationError, match="purpose"):
        world.allocate(purpose="x" * 300)
    bare = Zone.create(name="zone-2")
    world.service.app.save(bare)
    head = world.head()
    with pytest.raises(DomainRuleError, match="zone zone-2 has no public address range"):
        world.run(AllocateAddress(zone_id=bare.id, account="acme"))
    assert world.head() == head


def test_publicrange_create_makes_the_pool_and_refuses_overlaps(world: World) -> None:
    bare = Zone.create(name="zone-2")
    world.service.app.save(bare)
    added = world.run(CreatePublicRange(
        zone_id=bare.id, name="r1", cidr="192.0.2.0/24", gateway="192.0.2.1",
        first="192.0.2.100", last="192.0.2.199")).decode(PublicRangeAdded)
    assert (added.pool_size, added.pool_free) == (100, 100)
    assert added.pool_id == PublicAddressPool.create_id(bare.id)
    got = world.run(AllocateAddress(zone_id=bare.id, account="acme")).decode(AddressAllocation)
    assert got.address == "192.0.2.100"
    head = world.head()
    with pytest.raises(DomainRuleError, match="overlaps range r1"):
        world.run(CreatePublicRange(zone_id=bare.id, name="r2", cidr="192.0.2.0/24",
                                    gateway="192.0.2.1", first="192.0.2.150",
                                    last="192.0.2.160"))
    with pytest.raises(ValidationError, match="not a usable address"):
        world.run(CreatePublicRange(zone_id=bare.id, name="r3", cidr="192.0.2.0/24",
                                    gateway="192.0.2.1", first="192.0.2.0",
                                    last="192.0.2.5"))
    with pytest.raises(NotFoundError):
        world.run(CreatePublicRange(zone_id=uuid4(), name="r4", cidr="192.0.2.0/24",
                                    gateway="192.0.2.1", first="192.0.2.2",
                                    last="192.0.2.5"))
    assert world.head() == head


def test_two_allocations_racing_on_the_pool_get_different_addresses(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second command read the pool before the first one saved: its save loses the race
    on the pool's version, it runs again and takes the next address."""
    real = addresses.handle_allocate
    calls: list[str] = []

    def racing(app: Any, command: AllocateAddress) -> Any:
        changed, result = real(app, command)
        calls.append(result.address)
        if len(calls) == 1:  # the other client saves first, from the same pool version
            world.service.execute(AllocateAddress(zone_id=world.zone_id, account="globex"),
                                  idempotency_key="other", actor="bob")
        return changed, result

    world.service.handlers[AllocateAddress] = racing
    mine = world.allocate()
    others = {world.pool().address_of(i) for i in world.pool().addresses} - {mine.address}
    assert calls == ["203.0.113.10", "203.0.113.10", "203.0.113.11"]
    assert mine.address == "203.0.113.11" and others == {"203.0.113.10"}
    assert world.pool().allocated_count == 2
    stored = [n for n in world.service.app.recorder.select_notifications(start=1, limit=1000)
              if n.topic == PublicAddress.Allocated.TOPIC]
    assert len(stored) == 2  # the losing run recorded nothing
    assert msgspec.json.decode(stored[-1].state)["account"] == "acme"


def test_the_example_ranges_load_after_the_sample_inventory() -> None:
    from kernel.bootstrap import SAMPLE_INVENTORY

    w = World()
    load_inventory_file(w.service, SAMPLE_INVENTORY)
    example = SAMPLE_INVENTORY.parent / "inventory-public-addresses.toml"
    _, result = load_inventory_file(w.service, example)
    assert result.registered["public_ranges"] == ["public-a", "public-b"]
    assert result.unchanged["zones"] == ["zone-1"]
    assert w.pool().size == 2 * 241
    assert w.allocate().address == "203.0.113.10"


def test_the_pool_cache_follows_writers_elsewhere_and_holds_only_what_the_log_holds(
        world: World) -> None:
    """The handlers read pools through a cache brought up to date from the log: a pool
    changed by another process (here, saved around the cache) is seen, and a refused
    command's change never reaches the cache."""
    first = world.allocate()
    assert first.address == "203.0.113.10"
    elsewhere = world.pool()  # read from the store, as another process would
    other = elsewhere.allocate(uuid4(), "globex")
    world.service.app.save(elsewhere)
    assert other == "203.0.113.11"
    with pytest.raises(ValidationError):  # the pool picked .12 in its copy, then refused
        world.allocate(purpose="x" * 300)
    assert world.allocate().address == "203.0.113.12"
    fresh = PoolCache()
    assert fresh.get(world.service.app, uuid4()) is None
    cached = fresh.get(world.service.app, world.zone_id)
    assert cached is not None and cached.allocated_count == 3
    cached.release(first.address_id)  # a caller's copy: the cache keeps the log's state
    again = fresh.get(world.service.app, world.zone_id)
    assert again is not None and again.allocated_count == 3 and not again.pending_events
