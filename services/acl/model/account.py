"""AclAccount: a tenant that owns resources, in one domain, with its own resource limits.

Accounts are known by name platform-wide, because resources name their owner by account name.
"""

from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from services.acl.model.domain import AclDomain
from services.acl.model.rules import require_acl_name, require_limits


class AclAccount(PlatformAggregate):
    """An account of a domain."""

    TOPIC = "acl_account"
    KIND = "account"

    class Event(PlatformAggregate.Event):
        """Base of AclAccount events."""

        TOPIC = "acl_account.Event"

    class Created(Event, PlatformAggregate.Created):
        """The account was created in its domain."""

        TOPIC = "acl_account.Created"
        name: str
        domain_path: str

    class LimitsSet(Event):
        """The account's resource limits were replaced (absent: unlimited)."""

        TOPIC = "acl_account.LimitsSet"
        limits: dict[str, int]

    @staticmethod
    def create_id(name: str) -> UUID:
        """Accounts are known by name."""
        return natural_id("acl_account", name)

    @event(Created)
    def __init__(self, name: str, domain_path: str) -> None:
        self.name, self.domain_path = name, domain_path
        self.limits: dict[str, int] = {}

    @classmethod
    def create(cls, *, name: str, domain: AclDomain) -> "AclAccount":
        """A new account in `domain`."""
        require_acl_name("account", name)
        return cls(name=name, domain_path=domain.path)

    def set_limits(self, limits: dict[str, object]) -> None:
        """Replace the account's limits."""
        checked = require_limits(limits)
        if checked != self.limits:
            self._limits_set(checked)

    @event(LimitsSet)
    def _limits_set(self, limits: dict[str, int]) -> None:
        self.limits = dict(limits)
