"""AclApiKey: a user's API key, limited to a scope of command patterns, that can expire.

The key's secret is never recorded: the ACL service derives it from its master key and the
key id, so the log can be published without it.
"""

import math
from datetime import datetime, timedelta
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import ValidationError
from services.acl.model.rules import require_pattern
from services.acl.model.user import AclUser

MAX_EXPIRY_DAYS = 36500


class AclApiKey(PlatformAggregate):
    """An API key of a user; scope () means every command the user's role allows."""

    TOPIC = "acl_key"
    KIND = "api key"

    class Event(PlatformAggregate.Event):
        """Base of AclApiKey events."""

        TOPIC = "acl_key.Event"

    class Created(Event, PlatformAggregate.Created):
        """The key was issued to a user."""

        TOPIC = "acl_key.Created"
        key_id: str
        username: str
        scope: tuple[str, ...]
        read_only: bool
        created_at: datetime
        expires_at: datetime | None

    class Revoked(Event):
        """The key was revoked for good."""

        TOPIC = "acl_key.Revoked"
        revoked_at: datetime

    @staticmethod
    def create_id(key_id: str) -> UUID:
        """Keys are known by key id."""
        return natural_id("acl_key", key_id)

    @event(Created)
    def __init__(self, key_id: str, username: str, scope: tuple[str, ...], read_only: bool,
                 created_at: datetime, expires_at: datetime | None) -> None:
        self.key_id, self.username = key_id, username
        self.scope, self.read_only = tuple(scope), read_only
        self.created_at, self.expires_at = created_at, expires_at
        self.revoked_at: datetime | None = None

    @classmethod
    def issue(cls, *, key_id: str, user: AclUser, scope: tuple[str, ...] = (),
              read_only: bool = False, expires_in_days: float | None = None,
              now: datetime) -> "AclApiKey":
        """A new key for an enabled user."""
        if user.disabled:
            raise ValidationError(f"user {user.username} is disabled: it gets no keys")
        scope = tuple(require_pattern(p) for p in scope)
        expires = None
        if expires_in_days is not None:
            if isinstance(expires_in_days, bool) or not isinstance(expires_in_days, int | float) \
                    or not math.isfinite(expires_in_days) \
                    or not 0 < expires_in_days <= MAX_EXPIRY_DAYS:
                raise ValidationError(f"expiry must be a number of days above 0 and at most "
                                      f"{MAX_EXPIRY_DAYS}, got {expires_in_days!r}")
            expires = now + timedelta(days=expires_in_days)
        return cls(key_id=key_id, username=user.username, scope=scope, read_only=read_only,
                   created_at=now, expires_at=expires)

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked."""
        return self.revoked_at is not None

    def status(self, now: datetime) -> str:
        """`active`, `revoked` or `expired`."""
        if self.revoked:
            return "revoked"
        return "expired" if self.expires_at is not None and self.expires_at <= now else "active"

    def revoke(self, now: datetime) -> bool:
        """Revoke the key; False if it already was."""
        if self.revoked:
            return False
        self._revoked(revoked_at=now)
        return True

    @event(Revoked)
    def _revoked(self, revoked_at: datetime) -> None:
        self.revoked_at = revoked_at
