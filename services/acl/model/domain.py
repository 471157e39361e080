"""AclDomain: a node of the domain tree; accounts live in domains, limits apply per subtree.

Domains are known by path (`ROOT/eng/web`), so creating one twice is refused by the store.
"""

from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import ValidationError
from services.acl.model.rules import ROOT_DOMAIN, require_acl_name, require_limits


class AclDomain(PlatformAggregate):
    """A domain of the ACL tree; ROOT has no parent."""

    TOPIC = "acl_domain"
    KIND = "domain"

    class Event(PlatformAggregate.Event):
        """Base of AclDomain events."""

        TOPIC = "acl_domain.Event"

    class Created(Event, PlatformAggregate.Created):
        """The domain was created under its parent."""

        TOPIC = "acl_domain.Created"
        name: str
        path: str
        parent_path: str | None

    class LimitsSet(Event):
        """The domain's resource limits were replaced (absent: unlimited)."""

        TOPIC = "acl_domain.LimitsSet"
        limits: dict[str, int]

    @staticmethod
    def create_id(path: str) -> UUID:
        """Domains are known by path."""
        return natural_id("acl_domain", path)

    @event(Created)
    def __init__(self, name: str, path: str, parent_path: str | None) -> None:
        self.name, self.path, self.parent_path = name, path, parent_path
        self.limits: dict[str, int] = {}

    @classmethod
    def create_root(cls) -> "AclDomain":
        """The ROOT domain."""
        return cls(name=ROOT_DOMAIN, path=ROOT_DOMAIN, parent_path=None)

    @classmethod
    def create(cls, *, name: str, parent: "AclDomain") -> "AclDomain":
        """A child domain of `parent`."""
        require_acl_name("domain", name)
        path = f"{parent.path}/{name}"
        if len(path) > 500:
            raise ValidationError(f"domain path {path[:80]}... is longer than 500 characters")
        return cls(name=name, path=path, parent_path=parent.path)

    def ancestry(self) -> tuple[str, ...]:
        """This domain's path and its ancestors' paths, nearest first."""
        parts = self.path.split("/")
        return tuple("/".join(parts[:i]) for i in range(len(parts), 0, -1))

    def contains(self, path: str) -> bool:
        """Whether the domain with `path` is this domain or below it."""
        return path == self.path or path.startswith(self.path + "/")

    def set_limits(self, limits: dict[str, object]) -> None:
        """Replace the domain's limits."""
        checked = require_limits(limits)
        if checked != self.limits:
            self._limits_set(checked)

    @event(LimitsSet)
    def _limits_set(self, limits: dict[str, int]) -> None:
        self.limits = dict(limits)
