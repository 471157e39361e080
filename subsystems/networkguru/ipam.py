"""IP, VLAN and MAC proposals: pure functions over what an index says is taken.

Every proposal scans from a start point derived from a hash of the requester (the NIC for an
address or MAC, the network for a VLAN), wrapping around once. So a redelivered step proposes
the same value, and two NICs allocating at once on one network start at different places
instead of both asking for the lowest free address.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

__all__ = [
    "MAC_ATTEMPTS",
    "AddressPlan",
    "propose_mac",
    "propose_vlan",
    "seed_of",
]

MAC_ATTEMPTS = 64  # 40 random bits per try: needing more than one try is already rare


def seed_of(*parts: bytes) -> int:
    """A 64-bit number derived from the parts (stable across processes and versions)."""
    digest = hashlib.blake2b(b"\x00".join(parts), digest_size=8, person=b"ck-ipam")
    return int.from_bytes(digest.digest(), "big")


@dataclass(frozen=True)
class AddressPlan:
    """Which addresses of a network may be handed out: inside the CIDR, not the network or
    broadcast address, not the gateway, not in a reserved range."""

    network: IPv4Network
    first: int  # lowest usable address
    last: int  # highest usable address
    excluded: tuple[tuple[int, int], ...]  # merged, sorted, clipped to first..last

    @classmethod
    def of(cls, cidr: str, gateway: str,
           reserved_ranges: Iterable[tuple[str, str]] = ()) -> AddressPlan:
        """The plan of a network as `Network` records it."""
        network = IPv4Network(cidr)
        first, last = int(network.network_address) + 1, int(network.broadcast_address) - 1
        raw = [(int(IPv4Address(gateway)), int(IPv4Address(gateway)))]
        raw += [(int(IPv4Address(a)), int(IPv4Address(b))) for a, b in reserved_ranges]
        clipped = [(max(a, first), min(b, last)) for a, b in raw]
        return cls(network, first, last, _merge(r for r in clipped if r[0] <= r[1]))

    @property
    def usable_count(self) -> int:
        """How many addresses may ever be handed out."""
        return (self.last - self.first + 1) - sum(b - a + 1 for a, b in self.excluded)

    def is_usable(self, address: int) -> bool:
        """Whether the address may be handed out at all (taken or not)."""
        return self.first <= address <= self.last and self._range_of(address) is None

    def propose(self, taken: Collection[int], seed: int) -> str | None:
        """A usable address not in `taken`, scanning from a point chosen by `seed`; None
        when every usable address is taken."""
        if self.usable_count - sum(1 for a in taken if self.is_usable(a)) <= 0:
            return None
        size = self.last - self.first + 1
        start = self.first + seed % size
        for address in self._scan(start):
            if address not in taken:
                return str(IPv4Address(address))
        return None  # unreachable while the count above is right; kept as a guard

    def _scan(self, start: int) -> Iterator[int]:
        """Usable addresses from `start` to `last`, then from `first` to before `start`."""
        for low, high in ((start, self.last), (self.first, start - 1)):
            address = low
            while address <= high:
                skip = self._range_of(address)
                if skip is not None:
                    address = skip[1] + 1
                    continue
                yield address
                address += 1

    def _range_of(self, address: int) -> tuple[int, int] | None:
        for low, high in self.excluded:
            if low <= address <= high:
                return (low, high)
            if low > address:
                break
        return None


def propose_vlan(first: int, last: int, taken: Collection[int], seed: int) -> int | None:
    """A VLAN of `first..last` not in `taken`, scanning from a point chosen by `seed`."""
    size = last - first + 1
    if size <= 0:
        return None
    start = first + seed % size
    for offset in range(size):
        vlan = first + (start - first + offset) % size
        if vlan not in taken:
            return vlan
    return None


def propose_mac(seed: bytes, taken: Collection[str], prefix: int = 0x02) -> str | None:
    """A locally administered unicast MAC `02:xx:xx:xx:xx:xx` not in `taken`.

    The 40 bits after the prefix octet come from a hash of `seed` and a try counter, so one
    NIC is always offered the same first MAC, and two NICs collide with odds of 2**-40.
    """
    for attempt in range(MAC_ATTEMPTS):
        bits = seed_of(seed, attempt.to_bytes(2, "big")) >> 24  # 40 bits
        octets = [prefix] + [(bits >> shift) & 0xFF for shift in (32, 24, 16, 8, 0)]
        mac = ":".join(f"{o:02x}" for o in octets)
        if mac not in taken:
            return mac
    return None


def _merge(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)
