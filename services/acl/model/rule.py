"""AclRule: an allow or deny command pattern for a role or for an account; deny wins.

Rules are known by what they say (target, effect, pattern), so a rule is added once.
"""

from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import ValidationError
from services.acl.model.rules import require_acl_name, require_pattern, require_role

TARGET_KINDS = ("role", "account")
EFFECTS = ("allow", "deny")


class AclRule(PlatformAggregate):
    """One command rule."""

    TOPIC = "acl_rule"
    KIND = "rule"

    class Event(PlatformAggregate.Event):
        """Base of AclRule events."""

        TOPIC = "acl_rule.Event"

    class Created(Event, PlatformAggregate.Created):
        """The rule was added."""

        TOPIC = "acl_rule.Created"
        target_kind: str
        target: str
        effect: str
        pattern: str

    class Removed(Event):
        """The rule was removed."""

        TOPIC = "acl_rule.Removed"

    @staticmethod
    def create_id(target_kind: str, target: str, effect: str, pattern: str) -> UUID:
        """Rules are known by what they say."""
        return natural_id("acl_rule", target_kind, target, effect, pattern)

    @event(Created)
    def __init__(self, target_kind: str, target: str, effect: str, pattern: str) -> None:
        self.target_kind, self.target = target_kind, target
        self.effect, self.pattern = effect, pattern
        self.removed = False

    @classmethod
    def add(cls, *, target_kind: str, target: str, effect: str, pattern: str) -> "AclRule":
        """A new rule, validated."""
        if target_kind not in TARGET_KINDS:
            raise ValidationError(f"a rule applies to a role or an account, got {target_kind!r}")
        if target_kind == "role":
            require_role(target)
        else:
            require_acl_name("account", target)
        if effect not in EFFECTS:
            raise ValidationError(f"a rule's effect is allow or deny, got {effect!r}")
        require_pattern(pattern)
        return cls(target_kind=target_kind, target=target, effect=effect, pattern=pattern)

    def remove(self) -> None:
        """Remove the rule (idempotent)."""
        if not self.removed:
            self._removed()

    @event(Removed)
    def _removed(self) -> None:
        self.removed = True
