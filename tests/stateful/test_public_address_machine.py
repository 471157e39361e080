"""A zone's public address pool under any sequence of range additions, allocations and
releases, against a plain model: a list of every address of the ranges in the order the
cursor walks them, and a queue of released addresses, oldest first.

Checked at every step: an address has at most one holder and lies in one of the ranges; the
pool hands out exactly the address the model predicts (fresh ones first, then the oldest
released), refuses exhaustion with CapacityError, an overlap or an unknown release with
DomainRuleError, and a refusal changes nothing; counts add up; and the pool read back from
the store equals the live one and picks the same next address.
"""

from collections import deque
from ipaddress import IPv4Address
from uuid import UUID

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from aggregates.errors import CapacityError, DomainRuleError
from aggregates.public_address_pool import PublicAddressPool
from kernel.store.testing import scratch_application

from ._support import MACHINE_SETTINGS, attempt

# small candidate ranges, some overlapping, in two documentation networks
CANDIDATES = [
    ("a", "203.0.113.0/24", "203.0.113.1", 10, 12),
    ("b", "203.0.113.0/24", "203.0.113.1", 12, 14),  # overlaps a
    ("c", "203.0.113.0/24", "203.0.113.1", 20, 20),
    ("d", "198.51.100.0/24", "198.51.100.1", 5, 7),
    ("e", "198.51.100.0/24", "198.51.100.1", 2, 6),  # overlaps d
]


def _ip(cidr: str, host: int) -> str:
    return str(IPv4Address(cidr.split("/")[0]) + host)


class PublicAddressMachine(RuleBasedStateMachine):
    """One pool, its model, and the allocations made so far."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = PublicAddressPool.create(zone_id=UUID(int=7))
        self.order: list[str] = []  # every address of the ranges, in cursor order
        self.fresh = 0  # how many of `order` were ever handed out
        self.released: deque[str] = deque()
        self.held: dict[UUID, str] = {}
        self.ids = 0
        self.app = scratch_application()  # fixed ids: a store of its own per example

    def teardown(self) -> None:
        self.app.close()

    def _new_id(self) -> UUID:
        self.ids += 1
        return UUID(int=1000 + self.ids)

    @rule(which=st.integers(0, len(CANDIDATES) - 1))
    def add_range(self, which: int) -> None:
        name, cidr, gateway, first, last = CANDIDATES[which]
        addresses = [_ip(cidr, h) for h in range(first, last + 1)]
        taken = {a for r in self.pool.ranges
                 for a in (str(IPv4Address(r.low + i)) for i in range(r.size))}
        clash = self.pool.range_named(name) is not None or bool(taken & set(addresses))
        attempt(self.pool, lambda: self.pool.add_range(
            name=name, cidr=cidr, gateway=gateway, first=addresses[0], last=addresses[-1]),
            DomainRuleError if clash else None)
        if not clash:
            self.order += addresses

    @rule(account=st.sampled_from(["acme", "globex"]))
    def allocate(self, account: str) -> None:
        address_id = self._new_id()
        if self.fresh < len(self.order):
            expected: str | None = self.order[self.fresh]
        else:
            expected = self.released[0] if self.released else None
        if expected is None:
            error = DomainRuleError if not self.pool.ranges else CapacityError
            attempt(self.pool, lambda: self.pool.allocate(address_id, account), error)
            return
        got = attempt(self.pool, lambda: self.pool.allocate(address_id, account), None)
        assert got == expected
        if self.fresh < len(self.order):
            self.fresh += 1
        else:
            self.released.popleft()
        self.held[address_id] = got

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        choices = [*self.held, UUID(int=999)]
        address_id = data.draw(st.sampled_from(choices), label="allocation")
        if address_id not in self.held:
            attempt(self.pool, lambda: self.pool.release(address_id), DomainRuleError)
            return
        got = attempt(self.pool, lambda: self.pool.release(address_id), None)
        assert got == self.held.pop(address_id)
        self.released.append(got)

    @invariant()
    def one_holder_per_address_inside_the_ranges(self) -> None:
        assert len(self.pool.holders) == len(set(self.pool.holders)) == len(self.held)
        assert {str(IPv4Address(a)) for a in self.pool.holders} == set(self.held.values())
        assert {self.pool.address_of(i) for i in self.held} == set(self.held.values())
        for address in self.held.values():
            n = int(IPv4Address(address))
            assert sum(r.low <= n <= r.high for r in self.pool.ranges) == 1
        assert self.pool.size == len(self.order)
        assert self.pool.free_count == len(self.order) - len(self.held)

    @invariant()
    def the_store_replays_the_same_pool(self) -> None:
        if self.ids % 5:
            return  # every few steps: a roundtrip saves and replays
        self.app.save(self.pool)
        loaded: PublicAddressPool = self.app.repository.get(self.pool.id)
        assert loaded.ranges == self.pool.ranges
        assert loaded.holders == self.pool.holders
        assert loaded.next_address() == self.pool.next_address()
        self.pool = loaded


PublicAddressMachine.TestCase.settings = MACHINE_SETTINGS
TestPublicAddressMachine = PublicAddressMachine.TestCase
