"""Public addresses: `address.allocate`, `address.release` and `publicrange.create`.

None of them starts an operation: each changes the zone's `PublicAddressPool` (and the
allocation's `PublicAddress`) in one save. Two concurrent allocations pick the same address
from the same pool version; the second save loses the race on the pool's version, runs again
(`kernel.commands`) and picks the next address. A release names the allocation, never the
address, so a late or repeated release can never free the address once it went to someone
else; releasing a released allocation is refused. A refused command writes nothing.

A zone's pool records an event per allocation and release, so reading it by replaying its
whole history would make each command cost as much as every earlier one. `PoolCache` keeps
each pool as the log has it, per application, and brings it up to date on every read with
only the events past its version (a writer elsewhere is seen, and a stale copy loses its save
on the version and runs again); the handler changes a copy, so the cache only ever holds what
the log holds.
"""

import threading
import weakref
from collections.abc import Sequence
from typing import Any, ClassVar
from uuid import UUID, uuid4

import msgspec
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

from aggregates.errors import DomainRuleError, NotFoundError
from aggregates.public_address import PublicAddress
from aggregates.public_address_pool import PublicAddressPool
from aggregates.zone import Zone
from kernel.commands import Command
from kernel.store.application import KernelApplication

# Every allocation and release changes the zone's one pool: as many may race on it as the
# gateways run commands at once (32 threads each), and a loser runs again on the new state.
POOL_RETRIES = 32


class AllocateAddress(Command, frozen=True, kw_only=True, tag="address.allocate"):
    """Allocate the next free public address of a zone to an account (optionally saying what
    it is for); the answer names the address and the allocation's id."""

    waits_for_busy_entities: ClassVar[bool] = False
    conflict_retries: ClassVar[int | None] = POOL_RETRIES

    zone_id: UUID
    account: str
    purpose: str | None = None


class ReleaseAddress(Command, frozen=True, kw_only=True, tag="address.release"):
    """Release a public address allocation; its address goes back to the zone's pool."""

    waits_for_busy_entities: ClassVar[bool] = False
    conflict_retries: ClassVar[int | None] = POOL_RETRIES

    address_id: UUID


class CreatePublicRange(Command, frozen=True, kw_only=True, tag="publicrange.create"):
    """Add a range of public addresses (`first`..`last` inside `cidr`, routed by `gateway`)
    to a zone (root admins)."""

    waits_for_busy_entities: ClassVar[bool] = False
    conflict_retries: ClassVar[int | None] = POOL_RETRIES

    zone_id: UUID
    name: str
    cidr: str
    gateway: str
    first: str
    last: str


class AddressAllocation(msgspec.Struct, frozen=True, kw_only=True):
    """An allocation: its id, the address, the zone and the owning account."""

    address_id: UUID
    address: str
    zone_id: UUID
    account: str
    purpose: str | None = None
    state: str = "Allocated"


class PublicRangeAdded(msgspec.Struct, frozen=True, kw_only=True):
    """A range added to a zone's pool, and the pool's size afterwards."""

    pool_id: UUID
    zone_id: UUID
    name: str
    cidr: str
    gateway: str
    first: str
    last: str
    pool_size: int
    pool_free: int


def _get(app: KernelApplication, aggregate_id: UUID) -> Any:
    try:
        return app.repository.get(aggregate_id)
    except AggregateNotFoundError:
        return None


def _zone(app: KernelApplication, zone_id: UUID) -> Zone:
    zone = _get(app, zone_id)
    if not isinstance(zone, Zone):
        raise NotFoundError(f"no zone {zone_id}", field="zone_id")
    return zone


class PoolCache:
    """The zones' pools as the log has them, per application; `get` answers a copy brought
    up to date with the events past the cached version."""

    def __init__(self) -> None:
        self._pools: weakref.WeakKeyDictionary[KernelApplication,
                                               dict[UUID, PublicAddressPool]] = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, app: KernelApplication, zone_id: UUID) -> PublicAddressPool | None:
        """The zone's pool as the log has it now (a copy of the caller's), if it has one."""
        pool_id = PublicAddressPool.create_id(zone_id)
        with self._lock:
            cached = self._pools.get(app, {}).get(pool_id)
        if cached is None:
            found = _get(app, pool_id)
            if not isinstance(found, PublicAddressPool):
                return None
            pool = found
        else:
            pool = cached.clone()
            for later in app.events.get(pool_id, gt=cached.version):
                later.mutate(pool)  # type: ignore[attr-defined]
        with self._lock:
            pools = self._pools.setdefault(app, {})
            known = pools.get(pool_id)
            if known is None or known.version < pool.version:
                pools[pool_id] = pool.clone()
        return pool


def zone_pool(app: KernelApplication, zone_id: UUID,
              cache: PoolCache | None = None) -> PublicAddressPool | None:
    """The zone's public address pool, if it has one (read through `cache` when given)."""
    if cache is not None:
        return cache.get(app, zone_id)
    pool = _get(app, PublicAddressPool.create_id(zone_id))
    return pool if isinstance(pool, PublicAddressPool) else None


_POOLS = PoolCache()


def handle_allocate(app: KernelApplication, command: AllocateAddress,
                    pools: PoolCache = _POOLS
                    ) -> tuple[Sequence[Aggregate], AddressAllocation]:
    """address.allocate: the pool picks the address, the allocation records its owner."""
    zone = _zone(app, command.zone_id)
    pool = zone_pool(app, zone.id, pools)
    if pool is None or not pool.ranges:
        raise DomainRuleError(f"zone {zone.name} has no public address range")
    address_id = uuid4()
    address = pool.allocate(address_id, command.account)
    allocation = PublicAddress.allocate(id=address_id, zone_id=zone.id, pool_id=pool.id,
                                        address=address, account=command.account,
                                        purpose=command.purpose)
    return [pool, allocation], AddressAllocation(
        address_id=address_id, address=address, zone_id=zone.id, account=command.account,
        purpose=command.purpose)


def handle_release(app: KernelApplication, command: ReleaseAddress,
                   pools: PoolCache = _POOLS
                   ) -> tuple[Sequence[Aggregate], AddressAllocation]:
    """address.release: the allocation ends and the pool takes its address back."""
    allocation = _get(app, command.address_id)
    if not isinstance(allocation, PublicAddress):
        raise NotFoundError(f"no public address allocation {command.address_id}",
                            field="address_id")
    allocation.release()
    pool = zone_pool(app, allocation.zone_id, pools)
    if pool is None or pool.id != allocation.pool_id:
        raise DomainRuleError(f"public address {allocation.address}: its zone's pool is gone")
    pool.release(allocation.id)
    return [pool, allocation], AddressAllocation(
        address_id=allocation.id, address=allocation.address, zone_id=allocation.zone_id,
        account=allocation.account, purpose=allocation.purpose, state=allocation.state.value)


def handle_create_range(app: KernelApplication, command: CreatePublicRange,
                        pools: PoolCache = _POOLS
                        ) -> tuple[Sequence[Aggregate], PublicRangeAdded]:
    """publicrange.create: add a range to the zone's pool (made with its first range)."""
    zone = _zone(app, command.zone_id)
    pool = zone_pool(app, zone.id, pools) or PublicAddressPool.create(zone_id=zone.id)
    added = pool.add_range(name=command.name, cidr=command.cidr, gateway=command.gateway,
                           first=command.first, last=command.last)
    return [pool], PublicRangeAdded(
        pool_id=pool.id, zone_id=zone.id, name=added.name, cidr=added.cidr,
        gateway=added.gateway, first=added.first, last=added.last, pool_size=pool.size,
        pool_free=pool.free_count)


ADDRESS_HANDLERS: dict[type, Any] = {
    AllocateAddress: handle_allocate,
    ReleaseAddress: handle_release,
    CreatePublicRange: handle_create_range,
}

ADDRESS_COMMANDS: tuple[type[Command], ...] = (AllocateAddress, ReleaseAddress,
                                               CreatePublicRange)
