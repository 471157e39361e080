"""ConsoleTicket: a short-lived, single-use ticket to a VM's console (issue 19).

The platform mints a ticket for a Running VM (`vm.console`) and the console service redeems
it once (`console.redeem`). The ticket records where the VM ran at mint time, who asked, the
kind of console and when it expires, and only the digest of the token's secret: a reader of
the platform's events cannot redeem it. A second redemption, a late one and one with the
wrong secret are refused, and a refusal writes nothing. Refusals never tell whether a ticket
(or its VM) exists: an unknown ticket and a wrong secret read the same.
"""

import hmac
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate
from aggregates.errors import DomainRuleError

NOT_VALID = "this console link is not valid"
ALREADY_USED = "this console link was already used; open a new one"
EXPIRED = "this console link has expired; open a new one"
MAX_NOTE = 200  # the longest origin or remote address recorded


class ConsoleTicketRefusedError(DomainRuleError):
    """A console ticket cannot be redeemed; the message is meant for the user."""

    code = "console_ticket_refused"


class ConsoleTicket(PlatformAggregate):
    """A ticket to one VM's console, redeemable once before it expires."""

    TOPIC = "console_ticket"
    KIND = "console ticket"

    class Event(PlatformAggregate.Event):
        """Base of ConsoleTicket events."""

        TOPIC = "console_ticket.Event"

    class Issued(Event, PlatformAggregate.Created):
        """A ticket was minted for the VM on the host it runs on (the secret's digest only)."""

        TOPIC = "console_ticket.Issued"
        vm_id: UUID
        host_id: UUID
        host_uri: str
        user: str
        account: str | None
        kind: str
        expires_at: datetime
        secret_digest: str

    class Redeemed(Event):
        """The ticket was redeemed (by the console service), from this origin and address."""

        TOPIC = "console_ticket.Redeemed"
        by: str
        origin: str | None
        remote: str | None

    @event(Issued)
    def __init__(self, vm_id: UUID, host_id: UUID, host_uri: str, user: str,
                 account: str | None, kind: str, expires_at: datetime,
                 secret_digest: str) -> None:
        self.vm_id, self.host_id, self.host_uri = vm_id, host_id, host_uri
        self.user, self.account, self.kind = user, account, kind
        self.expires_at, self.secret_digest = expires_at, secret_digest
        self.redeemed = False
        self.redeemed_by: str | None = None

    @classmethod
    def issue(cls, *, id: UUID, vm_id: UUID, host_id: UUID, host_uri: str, user: str,
              account: str | None, kind: str, expires_at: datetime,
              secret_digest: str) -> "ConsoleTicket":
        """A new ticket with this id (the token names it) and the digest of its secret."""
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        ticket: ConsoleTicket = cls._create(
            cls.Issued, id=id, vm_id=vm_id, host_id=host_id, host_uri=host_uri, user=user,
            account=account, kind=kind, expires_at=expires_at, secret_digest=secret_digest)
        return ticket

    def check(self, secret_digest: str, now: datetime) -> None:
        """Raise ConsoleTicketRefusedError unless a token with this digest may redeem the
        ticket now. The secret is checked first: without it one learns nothing more."""
        if not isinstance(secret_digest, str) or not hmac.compare_digest(
                secret_digest.encode(), self.secret_digest.encode()):
            raise ConsoleTicketRefusedError(NOT_VALID)
        if self.redeemed:
            raise ConsoleTicketRefusedError(ALREADY_USED)
        if now >= self.expires_at:
            raise ConsoleTicketRefusedError(EXPIRED)

    def redeem(self, secret_digest: str, now: datetime, *, by: str,
               origin: str | None = None, remote: str | None = None) -> None:
        """Record the one redemption, after `check`."""
        self.check(secret_digest, now)
        self._redeemed(by=by, origin=_note(origin), remote=_note(remote))

    @event(Redeemed)
    def _redeemed(self, by: str, origin: str | None, remote: str | None) -> None:
        self.redeemed, self.redeemed_by = True, by


def _note(value: Any) -> str | None:
    """A request detail as recorded: text, clipped, without control characters."""
    if not isinstance(value, str) or not value:
        return None
    return "".join(c if c.isprintable() else "?" for c in value[:MAX_NOTE])
