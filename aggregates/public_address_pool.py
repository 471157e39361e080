"""PublicAddressPool: a zone's public address ranges, and which allocation holds which address.

A zone has one pool (`PublicAddressPool.create_id(zone_id)`), made of named ranges
`first..last` inside a CIDR with a gateway; ranges of one zone never overlap. The pool owns
address uniqueness: an address is held by at most one allocation (`PublicAddress`), and two
commands that pick the same address race on the pool's version, so the loser runs again and
picks another.

Picking is O(1) amortized and the state never lists the free addresses of a range: a cursor
walks the ranges once, handing out addresses never allocated before; after the last one,
released addresses come back in the order they were released (oldest first, so an address
goes to a new owner as late as possible). The state grows by one entry per address held or
released, never by the size of a range.
"""

import copy
from collections import deque
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import CapacityError, DomainRuleError, ValidationError
from aggregates.validation import ipv4_address, ipv4_network, require_name


@dataclass(frozen=True)
class PublicRange:
    """A range of public addresses `first..last` inside `cidr`, routed through `gateway`."""

    name: str
    cidr: str
    gateway: str
    first: str
    last: str

    @property
    def low(self) -> int:
        """The first address as an integer."""
        return int(IPv4Address(self.first))

    @property
    def high(self) -> int:
        """The last address as an integer."""
        return int(IPv4Address(self.last))

    @property
    def size(self) -> int:
        """How many addresses the range holds."""
        return self.high - self.low + 1


def check_range(label: str, name: str, cidr: str, gateway: str, first: str,
                last: str) -> PublicRange:
    """A valid range in canonical form: IPv4, first..last usable addresses of the CIDR, the
    gateway a usable address of the CIDR outside the range. ValidationError otherwise."""
    require_name(f"{label}: range", name)
    network = ipv4_network(f"{label}: range {name}", cidr)
    gw = ipv4_address(f"{label}: range {name}", "gateway", gateway)
    low = ipv4_address(f"{label}: range {name}", "first", first)
    high = ipv4_address(f"{label}: range {name}", "last", last)
    for field, address in (("gateway", gw), ("first", low), ("last", high)):
        if not _usable(network, address):
            raise ValidationError(f"{label}: range {name}: {field} {address} is not a usable "
                                  f"address of {network}", field=field)
    if low > high:
        raise ValidationError(f"{label}: range {name}: first {low} is above last {high}",
                              field="first")
    if low <= gw <= high:
        raise ValidationError(f"{label}: range {name}: the gateway {gw} is inside "
                              f"{low}-{high}", field="gateway")
    return PublicRange(name, str(network), str(gw), str(low), str(high))


def _usable(network: IPv4Network, address: IPv4Address) -> bool:
    if address not in network:
        return False
    if network.prefixlen >= 31:
        return True  # RFC 3021: both addresses of a /31 are usable
    return address not in (network.network_address, network.broadcast_address)


class PublicAddressPool(PlatformAggregate):
    """A zone's public address ranges and the allocation that holds each address."""

    TOPIC = "public_address_pool"
    KIND = "public address pool"

    class Event(PlatformAggregate.Event):
        """Base of PublicAddressPool events."""

        TOPIC = "public_address_pool.Event"

    class Created(Event, PlatformAggregate.Created):
        """The zone's pool was created, without ranges yet."""

        TOPIC = "public_address_pool.Created"
        zone_id: UUID

    class RangeAdded(Event):
        """A range of public addresses was added to the zone."""

        TOPIC = "public_address_pool.RangeAdded"
        name: str
        cidr: str
        gateway: str
        first: str
        last: str

    class Allocated(Event):
        """An address was given to an allocation (a `PublicAddress`) of an account."""

        TOPIC = "public_address_pool.Allocated"
        address_id: UUID
        address: str
        account: str

    class Released(Event):
        """An allocation gave its address back."""

        TOPIC = "public_address_pool.Released"
        address_id: UUID
        address: str

    @staticmethod
    def create_id(zone_id: UUID) -> UUID:
        """One pool per zone."""
        return natural_id("public_address_pool", str(zone_id))

    @event(Created)
    def __init__(self, zone_id: UUID) -> None:
        self.zone_id = zone_id
        self.ranges: list[PublicRange] = []
        self.holders: dict[int, UUID] = {}  # address -> allocation id
        self.addresses: dict[UUID, int] = {}  # allocation id -> address
        # never-allocated addresses: ranges[_at].low + ... from _next on, then later ranges
        self._at, self._next = 0, 0
        # released addresses not taken again, oldest first; the head is always free
        self._released: deque[int] = deque()
        self._free: set[int] = set()

    @classmethod
    def create(cls, *, zone_id: UUID) -> "PublicAddressPool":
        """Create a zone's (empty) pool."""
        return cls(zone_id)

    def clone(self) -> "PublicAddressPool":
        """A copy to change apart from this one, without pending events: its containers are
        copied, their items (ints, UUIDs, frozen ranges) are shared, never changed."""
        twin = copy.copy(self)
        twin.ranges, twin.holders = list(self.ranges), dict(self.holders)
        twin.addresses, twin._free = dict(self.addresses), set(self._free)
        twin._released = deque(self._released)
        twin._pending_events = []
        return twin

    @property
    def label(self) -> str:
        """How errors name the pool."""
        return f"public addresses of zone {self.zone_id}"

    # ranges

    def range_named(self, name: str) -> PublicRange | None:
        """The range with this name, if any."""
        return next((r for r in self.ranges if r.name == name), None)

    def add_range(self, *, name: str, cidr: str, gateway: str, first: str,
                  last: str) -> PublicRange:
        """Validate and add a range; a name taken or an overlap with a range of the zone is
        refused."""
        added = check_range(self.label, name, cidr, gateway, first, last)
        if self.range_named(added.name) is not None:
            raise DomainRuleError(f"{self.label}: a range named {added.name!r} exists",
                                  field="name")
        for other in self.ranges:
            if added.low <= other.high and other.low <= added.high:
                raise DomainRuleError(f"{self.label}: range {added.name} "
                                      f"({added.first}-{added.last}) overlaps range "
                                      f"{other.name} ({other.first}-{other.last})")
        self._range_added(name=added.name, cidr=added.cidr, gateway=added.gateway,
                          first=added.first, last=added.last)
        return added

    @event(RangeAdded)
    def _range_added(self, name: str, cidr: str, gateway: str, first: str, last: str) -> None:
        self.ranges.append(PublicRange(name, cidr, gateway, first, last))
        if self._at == len(self.ranges) - 1:
            self._next = self.ranges[-1].low  # the cursor had passed every range: go on here

    # counts

    @property
    def size(self) -> int:
        """How many addresses the ranges hold."""
        return sum(r.size for r in self.ranges)

    @property
    def allocated_count(self) -> int:
        """How many addresses are held."""
        return len(self.holders)

    @property
    def free_count(self) -> int:
        """How many addresses can still be allocated."""
        return self.size - len(self.holders)

    def holder_of(self, address: str) -> UUID | None:
        """The allocation that holds `address`, if any."""
        return self.holders.get(int(ipv4_address(self.label, "address", address)))

    def address_of(self, address_id: UUID) -> str | None:
        """The address an allocation holds, if any."""
        held = self.addresses.get(address_id)
        return None if held is None else str(IPv4Address(held))

    # allocation

    def next_address(self) -> str | None:
        """The address the next allocation gets, None when every address is held."""
        if self._at < len(self.ranges):
            return str(IPv4Address(self._next))
        if self._released:
            return str(IPv4Address(self._released[0]))
        return None

    def allocate(self, address_id: UUID, account: str) -> str:
        """Give the next free address to a new allocation of `account`; return it."""
        require_name(f"{self.label}: account", account)
        if address_id in self.addresses:
            raise DomainRuleError(f"{self.label}: allocation {address_id} already holds "
                                  f"{self.address_of(address_id)}")
        chosen = self.next_address()
        if chosen is None:
            if not self.ranges:
                raise DomainRuleError(f"zone {self.zone_id} has no public address range")
            raise CapacityError(f"{self.label}: all {self.size} addresses are allocated")
        self._allocated(address_id=address_id, address=chosen, account=account)
        return chosen

    @event(Allocated)
    def _allocated(self, address_id: UUID, address: str, account: str) -> None:
        taken = int(IPv4Address(address))
        if self._at < len(self.ranges) and taken == self._next:
            self._next += 1
            self._settle()
        else:
            self._free.discard(taken)
            while self._released and self._released[0] not in self._free:
                self._released.popleft()
        self.holders[taken] = address_id
        self.addresses[address_id] = taken

    def release(self, address_id: UUID) -> str:
        """Take back the address an allocation holds and return it; an allocation that holds
        none (never, or no longer) is refused."""
        held = self.addresses.get(address_id)
        if held is None:
            raise DomainRuleError(f"{self.label}: allocation {address_id} holds no address")
        address = str(IPv4Address(held))
        self._released_event(address_id=address_id, address=address)
        return address

    @event(Released)
    def _released_event(self, address_id: UUID, address: str) -> None:
        freed = int(IPv4Address(address))
        del self.holders[freed]
        del self.addresses[address_id]
        self._free.add(freed)
        self._released.append(freed)

    def _settle(self) -> None:
        """Move the cursor past exhausted ranges (each range is passed once)."""
        while self._at < len(self.ranges) and self._next > self.ranges[self._at].high:
            self._at += 1
            if self._at < len(self.ranges):
                self._next = self.ranges[self._at].low
