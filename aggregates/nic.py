"""Nic: a VM's network interface on one network, with its MAC and (once reserved) address.

NICs have random ids; `Nic.allocate(..., id=...)` takes the id when a command has already
chosen it. Allocated -> Reserved -> Released, and a Released NIC may be reserved again (the
VM starts again). The network decides which address is free (`Network.allocate_ip`); the
NIC records the address it was given.
"""

import re
from enum import Enum
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate
from aggregates.errors import ValidationError
from aggregates.validation import ipv4_address, require_non_negative

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class NicState(Enum):
    """Whether the NIC holds an address."""

    ALLOCATED = "Allocated"
    RESERVED = "Reserved"
    RELEASED = "Released"


_S = NicState


class Nic(PlatformAggregate):
    """A network interface of a VM on one network."""

    TOPIC = "nic"
    KIND = "nic"

    class Event(PlatformAggregate.Event):
        """Base of Nic events."""

        TOPIC = "nic.Event"

    class Allocated(Event, PlatformAggregate.Created):
        """The NIC was allocated for a VM on a network."""

        TOPIC = "nic.Allocated"
        vm_id: UUID
        network_id: UUID
        mac: str
        device_id: int
        is_default: bool

    class Reserved(Event):
        """The NIC was given an address."""

        TOPIC = "nic.Reserved"
        ip: str

    class Released(Event):
        """The NIC gave its address back."""

        TOPIC = "nic.Released"

    @event(Allocated)
    def __init__(self, vm_id: UUID, network_id: UUID, mac: str, device_id: int,
                 is_default: bool) -> None:
        self.vm_id, self.network_id = vm_id, network_id
        self.mac, self.device_id, self.is_default = mac, device_id, is_default
        self.ip: str | None = None
        self.state = NicState.ALLOCATED

    @classmethod
    def allocate(cls, *, vm_id: UUID, network_id: UUID, mac: str, device_id: int,
                 is_default: bool = False, id: UUID | None = None) -> "Nic":
        """Validate and allocate a NIC; `mac` must be a unicast MAC address."""
        normalized = mac.lower() if isinstance(mac, str) else ""
        if not _MAC.match(normalized) or int(normalized[:2], 16) & 1:
            raise ValidationError(f"nic: {mac!r} is not a unicast MAC address")
        require_non_negative("nic", "device_id", device_id)
        created: Nic = cls._create(cls.Allocated, id=id, vm_id=vm_id, network_id=network_id,
                                   mac=normalized, device_id=device_id,
                                   is_default=bool(is_default))
        return created

    def reserve(self, ip: str) -> None:
        """Record the address the network handed to this NIC."""
        self._require({_S.ALLOCATED, _S.RELEASED}, "reserve an address")
        self._reserved(str(ipv4_address(f"nic {self.id}", "ip", ip)))

    @event(Reserved)
    def _reserved(self, ip: str) -> None:
        self.ip, self.state = ip, NicState.RESERVED

    def release(self) -> None:
        """Give the address back (the caller releases it on the network too)."""
        self._require({_S.ALLOCATED, _S.RESERVED}, "release")
        self._released()

    @event(Released)
    def _released(self) -> None:
        self.ip, self.state = None, NicState.RELEASED
