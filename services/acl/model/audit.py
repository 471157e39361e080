"""AccessDenial: one refused request, recorded so that auditors see every denial.

Each denial is its own one-event aggregate, so recording one never contends with another.
"""

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate


class AccessDenial(PlatformAggregate):
    """A request the ACL refused."""

    TOPIC = "acl_audit"
    KIND = "access denial"

    class Event(PlatformAggregate.Event):
        """Base of AccessDenial events."""

        TOPIC = "acl_audit.Event"

    class AccessDenied(Event, PlatformAggregate.Created):
        """A principal was refused a command (or a signed request was refused)."""

        TOPIC = "acl_audit.AccessDenied"
        principal: str
        key_id: str
        command: str
        owner: str | None
        reason: str

    @event(AccessDenied)
    def __init__(self, principal: str, key_id: str, command: str, owner: str | None,
                 reason: str) -> None:
        self.principal, self.key_id, self.command = principal, key_id, command
        self.owner, self.reason = owner, reason
