"""PublicAddress: one allocation of a zone's public address to an account.

The address itself is held in the zone's `PublicAddressPool`, which refuses a double
allocation; this aggregate is the allocation as its owner sees it: its account (who owns it,
for access control and limits), what it is for, and whether it was released. It is written
in the same transaction as the pool's event, so the two never disagree. Each allocation has
its own id: releasing one can never free the same address allocated again later to someone
else.
"""

from enum import Enum
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate
from aggregates.errors import DomainRuleError, ValidationError
from aggregates.validation import require_name

MAX_PURPOSE = 200


class AddressState(Enum):
    """Where an allocation is in its life."""

    ALLOCATED = "Allocated"
    RELEASED = "Released"


class PublicAddress(PlatformAggregate):
    """A public address allocated to an account, until it is released."""

    TOPIC = "public_address"
    KIND = "public address"

    class Event(PlatformAggregate.Event):
        """Base of PublicAddress events."""

        TOPIC = "public_address.Event"

    class Allocated(Event, PlatformAggregate.Created):
        """An address of the zone's pool was allocated to an account."""

        TOPIC = "public_address.Allocated"
        zone_id: UUID
        pool_id: UUID
        address: str
        account: str
        purpose: str | None

    class Released(Event):
        """The allocation was released; its address went back to the pool."""

        TOPIC = "public_address.Released"

    @event(Allocated)
    def __init__(self, zone_id: UUID, pool_id: UUID, address: str, account: str,
                 purpose: str | None) -> None:
        self.zone_id, self.pool_id, self.address = zone_id, pool_id, address
        self.account, self.purpose = account, purpose
        self.state = AddressState.ALLOCATED

    @classmethod
    def allocate(cls, *, id: UUID, zone_id: UUID, pool_id: UUID, address: str, account: str,
                 purpose: str | None = None) -> "PublicAddress":
        """The allocation `id` of `address` (picked by the pool) to `account`."""
        require_name(f"public address {address}: account", account)
        if purpose is not None and (not isinstance(purpose, str) or len(purpose) > MAX_PURPOSE
                                    or not purpose.isprintable()):
            raise ValidationError(f"public address {address}: purpose must be printable text "
                                  f"of at most {MAX_PURPOSE} characters", field="purpose")
        allocated: PublicAddress = cls._create(
            cls.Allocated, id=id, zone_id=zone_id, pool_id=pool_id, address=address,
            account=account, purpose=purpose)
        return allocated

    def release(self) -> None:
        """Release the allocation; one released already is refused."""
        if self.state is not AddressState.ALLOCATED:
            raise DomainRuleError(f"public address {self.address} ({self.id}) was already "
                                  "released")
        self._released()

    @event(Released)
    def _released(self) -> None:
        self.state = AddressState.RELEASED
