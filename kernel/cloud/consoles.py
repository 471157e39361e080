"""Console tickets: `vm.console` mints one for a Running VM, `console.redeem` spends it.

Neither starts an operation, locks the VM or changes it: minting only reads the VM, its host
and the console service's registration, and writes a new `ConsoleTicket`. Redeeming is the
console service's (its key signs as `service:console`) or a root admin's; it records the one
redemption, so of two concurrent redemptions the second loses the race on the ticket's
version, runs again (`kernel.commands`) and is refused as already used. A refused command
writes nothing. The answer to minting carries the token; the log holds only its digest.
"""

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

from aggregates.base import current_audit
from aggregates.console_ticket import NOT_VALID, ConsoleTicket, ConsoleTicketRefusedError
from aggregates.errors import DomainRuleError, ForbiddenError, NotFoundError
from aggregates.host import Host
from aggregates.vm import VirtualMachine, VmState
from kernel.cloud.services import SERVICE_ACTOR_PREFIX, find_service
from kernel.commands import Command
from kernel.contracts.console import (
    TICKET_SECONDS,
    ConsoleRedemption,
    ConsoleTicketGrant,
    Kind,
    make_token,
    read_token,
)
from kernel.store.application import KernelApplication

CONSOLE_SERVICE = "console"
WEB_ENDPOINT = "web"
REDEEMER = SERVICE_ACTOR_PREFIX + CONSOLE_SERVICE
NOT_AVAILABLE = "the console service is not available"
NOT_RUNNING = "the VM is no longer running"
MOVED = "the VM has moved to another host; open a new console"

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The handlers' default clock."""
    return datetime.now(UTC)


class OpenConsole(Command, frozen=True, kw_only=True, tag="vm.console"):
    """Mint a single-use ticket to a Running VM's console (graphics, serial, screenshot or
    output); the answer carries the console service's URL with the token."""

    # Only reads the VM: it neither waits behind an operation on it nor locks it.
    waits_for_busy_entities: ClassVar[bool] = False

    vm_id: UUID
    kind: Kind = "graphics"


class RedeemConsole(Command, frozen=True, kw_only=True, tag="console.redeem"):
    """Redeem a console token once (the console service's command): whose console of which
    VM, on which host. `origin` and `remote` are the browser request's, for the audit."""

    waits_for_busy_entities: ClassVar[bool] = False

    token: str
    origin: str | None = None
    remote: str | None = None
    # The console service refused the request itself (a foreign Origin, too many sessions,
    # a link of another kind...) and says why: refused here in those words, so that the
    # refusal is audited as every refused redemption is; the ticket is not touched.
    refused: str | None = None


def _get(app: KernelApplication, aggregate_id: UUID) -> Any:
    try:
        return app.repository.get(aggregate_id)
    except AggregateNotFoundError:
        return None


def _running_vm(app: KernelApplication, vm_id: UUID) -> tuple[VirtualMachine, Host]:
    vm = _get(app, vm_id)
    if not isinstance(vm, VirtualMachine):
        raise NotFoundError(f"no vm {vm_id}")
    if vm.state is not VmState.RUNNING or vm.host_id is None:
        raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: a console needs a Running "
                              "VM on a host")
    host = _get(app, vm.host_id)
    if not isinstance(host, Host):
        raise DomainRuleError(f"vm {vm.name} runs on no known host")
    return vm, host


def console_base_url(app: KernelApplication) -> str:
    """The console service's web endpoint, if it is registered and enabled."""
    reg = find_service(app, CONSOLE_SERVICE)
    web = None if reg is None or not reg.enabled else reg.endpoints.get(WEB_ENDPOINT)
    if not web:
        raise DomainRuleError(NOT_AVAILABLE)
    return web.rstrip("/")


def mint_handler(clock: Clock = utcnow, ticket_seconds: float = TICKET_SECONDS) -> Any:
    """The handler of `vm.console`, with its clock and the tickets' lifetime."""

    def handle(app: KernelApplication,
               command: OpenConsole) -> tuple[Sequence[Aggregate], ConsoleTicketGrant]:
        vm, host = _running_vm(app, command.vm_id)
        base = console_base_url(app)
        ticket_id = uuid4()
        token, digest = make_token(ticket_id)
        expires_at = clock() + timedelta(seconds=ticket_seconds)
        ticket = ConsoleTicket.issue(
            id=ticket_id, vm_id=vm.id, host_id=host.id, host_uri=host.uri,
            user=current_audit().actor, account=vm.account, kind=command.kind,
            expires_at=expires_at, secret_digest=digest)
        return [ticket], ConsoleTicketGrant(
            ticket_id=ticket_id, vm_id=vm.id, kind=command.kind,
            url=f"{base}/{command.kind}?token={token}", token=token, expires_at=expires_at)

    handle.__doc__ = "vm.console: mint a ticket to a Running VM's console"
    return handle


def _redeemer() -> str:
    """The actor redeeming: another service than the console service may not."""
    actor = current_audit().actor
    if actor.startswith(SERVICE_ACTOR_PREFIX) and actor != REDEEMER:
        raise ForbiddenError(f"{actor} may not redeem console tickets: only {REDEEMER} may")
    return actor


def _reason(text: str) -> str:
    """A reason the console service gave, printable and at most 200 characters."""
    printable = "".join(c if c.isprintable() else "?" for c in text[:200])
    return printable or "refused by the console service"


def redeem_handler(clock: Clock = utcnow) -> Any:
    """The handler of `console.redeem`, with its clock."""

    def handle(app: KernelApplication,
               command: RedeemConsole) -> tuple[Sequence[Aggregate], ConsoleRedemption]:
        actor = _redeemer()
        if command.refused:
            raise ConsoleTicketRefusedError(_reason(command.refused))
        ticket_id, digest = read_token(command.token)
        ticket = _get(app, ticket_id)
        if not isinstance(ticket, ConsoleTicket):
            raise ConsoleTicketRefusedError(NOT_VALID)
        now = clock()
        ticket.check(digest, now)  # the secret before anything about the VM is told
        vm = _get(app, ticket.vm_id)
        if isinstance(vm, VirtualMachine) and vm.state is VmState.MIGRATING:
            raise ConsoleTicketRefusedError(MOVED)
        if not isinstance(vm, VirtualMachine) or vm.state is not VmState.RUNNING:
            raise ConsoleTicketRefusedError(NOT_RUNNING)
        if vm.host_id != ticket.host_id:
            raise ConsoleTicketRefusedError(MOVED)
        ticket.redeem(digest, now, by=actor, origin=command.origin, remote=command.remote)
        return [ticket], ConsoleRedemption(
            ticket_id=ticket.id, vm_id=ticket.vm_id, host_uri=ticket.host_uri,
            kind=ticket.kind,  # type: ignore[arg-type]  # issued from a Kind
            user=ticket.user, account=ticket.account, expires_at=ticket.expires_at)

    handle.__doc__ = "console.redeem: spend a console ticket once"
    return handle


def console_handlers(clock: Clock = utcnow,
                     ticket_seconds: float = TICKET_SECONDS) -> dict[type, Any]:
    """The console commands' handlers, for the platform's command service."""
    return {OpenConsole: mint_handler(clock, ticket_seconds),
            RedeemConsole: redeem_handler(clock)}


CONSOLE_COMMANDS: tuple[type[Command], ...] = (OpenConsole, RedeemConsole)
