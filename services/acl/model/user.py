"""AclUser: a person or service in an account, with one role.

No password hash is ever in an event: `PasswordSet` only says that one was set; the hash
lives in the ACL service's private credentials file.
"""

from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import ValidationError
from services.acl.model.account import AclAccount
from services.acl.model.rules import ROLE_ROOT_ADMIN, require_role, require_username


class AclUser(PlatformAggregate):
    """A user of an account: root_admin, domain_admin or user."""

    TOPIC = "acl_user"
    KIND = "user"

    class Event(PlatformAggregate.Event):
        """Base of AclUser events."""

        TOPIC = "acl_user.Event"

    class Created(Event, PlatformAggregate.Created):
        """The user was created in its account."""

        TOPIC = "acl_user.Created"
        username: str
        account: str
        domain_path: str
        role: str
        source: str

    class PasswordSet(Event):
        """A local password was set (its hash is not in the log)."""

        TOPIC = "acl_user.PasswordSet"

    class Disabled(Event):
        """The user may no longer sign in or use its keys."""

        TOPIC = "acl_user.Disabled"

    @staticmethod
    def create_id(username: str) -> UUID:
        """Users are known by name."""
        return natural_id("acl_user", username)

    @event(Created)
    def __init__(self, username: str, account: str, domain_path: str, role: str,
                 source: str) -> None:
        self.username, self.account, self.domain_path = username, account, domain_path
        self.role, self.source = role, source
        self.has_password = False
        self.disabled = False

    @classmethod
    def create(cls, *, username: str, account: AclAccount, role: str,
               source: str = "local") -> "AclUser":
        """A new user of `account`; a root admin must belong to an account of ROOT."""
        require_username(username)
        require_role(role)
        if source not in ("local", "ldap"):
            raise ValidationError(f"user source must be local or ldap, got {source!r}")
        if role == ROLE_ROOT_ADMIN and account.domain_path != "ROOT":
            raise ValidationError(f"a root_admin must belong to an account of the ROOT domain; "
                                  f"account {account.name} is in {account.domain_path}")
        return cls(username=username, account=account.name, domain_path=account.domain_path,
                   role=role, source=source)

    def password_set(self) -> None:
        """Record that the user's local password changed."""
        if self.disabled:
            raise ValidationError(f"user {self.username} is disabled")
        self._password_set()

    @event(PasswordSet)
    def _password_set(self) -> None:
        self.has_password = True

    def disable(self) -> None:
        """Disable the user (idempotent)."""
        if not self.disabled:
            self._disabled()

    @event(Disabled)
    def _disabled(self) -> None:
        self.disabled = True
