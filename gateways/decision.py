"""The command decision every gateway makes, the same over HTTP and NATS.

Before a command runs, one path decides it: authenticate the credentials into a principal,
decode the body as the tag's command, find the account that owns its target, authorize the
principal for it, check the account's limits; then it runs once under its idempotency key,
scoped by the principal's actor. A transport keeps only its framing: where the credentials,
tag, body and key come from, and how the answer is encoded.

Another tenant's resource is answered as not found, as one that does not exist is, so that
the answer never tells which exist; access control refuses the command all the same, and so
audits the refusal. Every refusal has one vocabulary of stable codes (`error_code`): the
admin API answers them as HTTP statuses, the NATS intake in its reply.
"""

import functools
import logging
import re
import sqlite3
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
from eventsourcing.persistence import InterfaceError as StoreInterfaceError
from eventsourcing.persistence import OperationalError as StoreOperationalError

from aggregates.base import natural_id
from aggregates.errors import (
    ConflictError,
    DomainRuleError,
    ForbiddenError,
    IdempotencyKeyReusedError,
    KernelError,
    NotFoundError,
    UnauthenticatedError,
    ValidationError,
    clipped,
    shown,
)
from gateways.access import AUDITED_REFUSALS, audit_refused_command
from gateways.ownership import AccountLookup, names_target, owner_of
from kernel.bootstrap import CommandRunner
from kernel.commands import Command, CommandOutcome
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    AccessControl,
    Principal,
    SignedRequest,
)

log = logging.getLogger(__name__)

Catalog = Mapping[str, tuple[type[Command], CommandRunner]]
# (tag, command, owner) -> None, or ForbiddenError naming a limit the command would pass
QuotaCheck = Callable[[str, Command, str | None], None]


# Known refusals, most specific first; anything else is an `internal` error.
_CODES: tuple[tuple[type[KernelError], str], ...] = (
    (UnauthenticatedError, "unauthenticated"),
    (ForbiddenError, "forbidden"),
    (IdempotencyKeyReusedError, "idempotency_key_reused"),
    (NotFoundError, "not_found"),
    (ConflictError, "conflict"),
    (ValidationError, "invalid"),
    (DomainRuleError, "invalid"),
)


# How long a client should wait before it retries a request the store could not serve.
RETRY_AFTER_SECONDS = 5


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Why a command was refused: a stable code, a message, the input field at fault, the
    kernel's own detail, and (code `unavailable`) the seconds to wait before a retry."""

    code: str
    message: str
    field: str | None = None
    reason: str | None = None
    detail: dict[str, Any] | None = None
    retry_after: int | None = None


class MalformedError(Exception):
    """The request cannot be read as a command (bad body, wrong fields, missing header)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field  # the body field at fault, when one is


class UnknownCommandError(Exception):
    """No command has the subject's tag."""


@dataclass(frozen=True)
class BearerToken:
    """Credentials of `Authorization: Bearer <token>`: a token from the ACL service."""

    token: str


# What a request carries to say who sent it: a signature over it, or a bearer token.
Credentials = SignedRequest | BearerToken


def authenticate(access: AccessControl, credentials: Credentials) -> Principal:
    """The principal the credentials name; UnauthenticatedError otherwise."""
    if isinstance(credentials, BearerToken):
        return access.authenticate_bearer(credentials.token)
    return access.authenticate(credentials)


@dataclass(frozen=True)
class DecidedCommand:
    """A command that passed every check: it runs once per idempotency key and actor."""

    principal: Principal
    tag: str
    command: Command
    owner: str | None
    idempotency_key: str  # as the sender chose it
    runner: CommandRunner
    # told the reason when the platform refuses the command (AUDITED_REFUSALS), else None
    on_refused: Callable[[str], None] | None = None

    @property
    def scoped_key(self) -> str:
        """The key the command runs under."""
        # Scoped by actor: another principal's same key is another command, and never
        # replays (or reveals) this one's result.
        return f"{self.principal.actor}/{self.idempotency_key}"

    @property
    def correlation_id(self) -> uuid.UUID:
        """The id the command's events carry, the same on every retry."""
        return natural_id("command", self.scoped_key)

    def run(self) -> CommandOutcome:
        """Run it (blocking), or answer its first run's outcome again. A refusal is raised
        naming the command's field it concerns, when its message says which."""
        try:
            return self.runner(self.command, idempotency_key=self.scoped_key,
                               actor=self.principal.actor)
        except KernelError as e:
            if e.field is None:
                e.field = field_named(str(e), type(self.command).__struct_fields__)
            if self.on_refused is not None:
                self.on_refused(str(e))
            raise


@dataclass(frozen=True)
class CommandDecision:
    """The checks every command passes before it runs, the same for every gateway. Each
    gateway brings where it looks up the owning account and the limits (None: none)."""

    catalog: Catalog
    access: AccessControl
    owner_lookup: AccountLookup | None = None
    quota: QuotaCheck | None = None
    # built once per catalog (command_decoders) and shared: a decision is cheap to make
    decoders: Mapping[str, msgspec.json.Decoder[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.decoders:
            object.__setattr__(self, "decoders", command_decoders(self.catalog))

    def authenticate(self, credentials: Credentials) -> Principal:
        """The principal the credentials name; UnauthenticatedError otherwise."""
        return authenticate(self.access, credentials)

    def decide(self, principal: Principal, tag: str, body: bytes,
               idempotency_key: str) -> DecidedCommand:
        """Decode, authorize and check the limits of command `tag` sent by `principal`; the
        command ready to run, or the refusal raised (nothing has run)."""
        if tag not in self.catalog:
            raise UnknownCommandError(f"unknown command {tag[:100]!r}; known: "
                                      f"{', '.join(sorted(self.catalog))}")
        type_, runner = self.catalog[tag]
        command = decode_command(tag, type_, self.decoders[tag], body)
        owner = None if self.owner_lookup is None else owner_of(command, self.owner_lookup)
        self.authorize(principal, tag, command, owner)
        if self.quota is not None:
            self.quota(tag, command, owner)
        on_refused = functools.partial(audit_refused_command, self.access, principal, tag) \
            if tag in AUDITED_REFUSALS else None
        return DecidedCommand(principal, tag, command, owner, idempotency_key, runner,
                              on_refused)

    def authorize(self, principal: Principal, tag: str, command: Command,
                  owner: str | None) -> None:
        """Return if the principal may send the command, on a resource of `owner`. A resource
        it may not see, another tenant's or one that does not exist, is NotFoundError after
        access control refused (and so audited) the command."""
        # One decision, with the owner: "no owner" means a command on no account's resource,
        # which only a platform-wide principal may send, so it is never asked before the
        # owner is known (a tenant's command on its own VM would be refused).
        missing = owner is None and self.owner_lookup is not None and names_target(command)
        if owner is None and not missing:
            self.access.authorize(principal, tag, owner=None)
            return
        visible = self.access.visible_accounts(principal)
        if visible is None or (owner is not None and owner in visible):
            self.access.authorize(principal, tag, owner=owner)
            return
        # Another tenant's resource and a missing one get the same answer, so that it never
        # tells which exist; access control refuses (and audits) the command all the same.
        hidden = NotFoundError(f"{tag}: no such resource among the accounts "
                               f"{principal.actor} may see")
        try:
            self.access.authorize(principal, tag, owner=owner)
        except ForbiddenError:
            raise hidden from None
        if not missing:
            raise hidden
        # allowed on no owner: the command itself answers that its target does not exist


def command_decoders(catalog: Catalog) -> dict[str, msgspec.json.Decoder[Any]]:
    """A decoder for each command of the catalog, by tag."""
    return {tag: msgspec.json.Decoder(type_) for tag, (type_, _runner) in catalog.items()}


_any_json = msgspec.json.Decoder()
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_NAMED = re.compile(r"(?:missing required|unknown) field `([^`]{1,100})`")


def msgspec_field(e: msgspec.ValidationError) -> str | None:
    """The path of the body field msgspec's error names (`plan.steps[0].args`), if any."""
    text = str(e)
    at = _AT.search(text)
    path = at.group(1) if at else ""
    named = _NAMED.search(text)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or None


_LEADING_PATH = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_]+|\[[0-9]+\])*): ")
_QUOTED_VALUE = re.compile(r"'[^']*'|\"[^\"]*\"")
IDEMPOTENCY_KEY_FIELD = "idempotency_key"


def field_named(message: str, fields: tuple[str, ...]) -> str | None:
    """The field of a command a kernel refusal's message is about: its leading `field:` or
    `field.path:`, else the first of the command's field names it mentions outside quotes
    (`volume v: size_bytes must be...`, `vm name must be...`); None when it names none."""
    lead = _LEADING_PATH.match(message)
    if lead and lead.group(1) == IDEMPOTENCY_KEY_FIELD:
        return IDEMPOTENCY_KEY_HEADER
    if lead and lead.group(1) in fields:
        return lead.group(1) + lead.group(2)
    text = _QUOTED_VALUE.sub("''", message)  # a value the client sent names no field
    named = ((m.start(), f) for f in fields
             for m in [re.search(rf"(?<![\w.]){re.escape(f)}(?!\w)", text)] if m)
    return min(named, default=(0, None))[1]


def decode_command(tag: str, type_: type[Command], decoder: msgspec.json.Decoder[Any],
                   body: bytes) -> Command:
    """The body as command `tag` (a JSON object of its fields); MalformedError naming why."""
    fields = ", ".join(type_.__struct_fields__)
    try:
        raw = _any_json.decode(body)
    except msgspec.DecodeError as e:
        raise MalformedError(f"body is not JSON ({e}); send an object of {tag}'s fields: "
                             f"{fields}") from None
    if b"\\u0000" in body:  # JSON holds a NUL only escaped; most bodies skip the walk
        _refuse_nul(raw)
    if not isinstance(raw, dict):
        raise MalformedError(f"body must be a JSON object of {tag}'s fields ({fields}), "
                             f"got {type(raw).__name__}")
    if "command" in raw and raw["command"] != tag:
        raise MalformedError(f"body field command is {shown(raw['command'])} but the subject "
                             f"names {tag!r}", field="command")
    unknown = sorted(set(raw) - set(type_.__struct_fields__) - {"command"})
    if unknown:
        raise MalformedError(f"unknown field {', '.join(map(shown, unknown[:5]))} for {tag} "
                             f"(fields: {fields})", field=unknown[0][:100])
    try:
        command: Command = decoder.decode(body)
    except msgspec.ValidationError as e:
        if "got `float`" not in str(e):
            raise MalformedError(f"{tag}: {e}", field=msgspec_field(e)) from None
        try:  # JSON does not tell 3 from 3.0: an integral number is an integer
            command = decoder.decode(_encode_json(integral_as_int(raw)))
        except msgspec.ValidationError as again:
            raise MalformedError(f"{tag}: {again}", field=msgspec_field(again)) from None
    return command


_encode_json = msgspec.json.Encoder().encode


def integral_as_int(value: Any) -> Any:
    """A decoded JSON value with every integral number (`3.0`, `1e3`) as an int: JSON (and
    JSON Schema's `integer`) does not tell them apart, msgspec's strict int fields do."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 63:
        return int(value)
    if isinstance(value, dict):
        return {k: integral_as_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral_as_int(v) for v in value]
    return value


def _nul_field(value: Any, path: str = "") -> str | None:
    """The path of the first string (or key) in a decoded JSON value holding a NUL, as
    msgspec names paths (`operations[2].plan.steps[0].action`)."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        where = f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}" if path else str(k)
        if isinstance(k, str) and "\x00" in k:
            return where
        found = _nul_field(v, where)
        if found is not None:
            return found
    return None


def _refuse_nul(raw: Any) -> None:
    """Refuse a NUL character in any string of the body: PostgreSQL text cannot hold one,
    so it would stop the read models that fold the command's events."""
    field = _nul_field(raw)
    if field is not None:
        raise MalformedError(f"{shown(field)[1:-1]} must not contain NUL characters (\\u0000)",
                             field=field[:200])


def _causes(e: BaseException) -> list[BaseException]:
    """`e` and what it wraps (its causes and contexts), outermost first."""
    chain: list[BaseException] = []
    seen: BaseException | None = e
    while seen is not None and seen not in chain and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def store_unavailable(e: BaseException) -> bool:
    """Whether `e` says the event store (or a read model's database) cannot be reached or
    serve now, so the same request may succeed later: PostgreSQL restarting or down, a
    connection lost, the pool without a connection, SQLite busy. Schema errors, constraint
    violations and bugs are not."""
    for cause in _causes(e):
        if isinstance(cause, sqlite3.OperationalError):
            text = str(cause)
            return "locked" in text or "busy" in text
        if isinstance(cause, psycopg.OperationalError | psycopg.InterfaceError):
            return True
    return any(isinstance(c, StoreOperationalError | StoreInterfaceError) for c in _causes(e))


def error_code(e: BaseException) -> str:
    """The stable code of a refusal: malformed, unknown_command, a KernelError's,
    unavailable (the store cannot serve now; retry), or internal."""
    if isinstance(e, MalformedError):
        return "malformed"
    if isinstance(e, UnknownCommandError):
        return "unknown_command"
    code = next((c for t, c in _CODES if isinstance(e, t)), "internal")
    if code == "internal" and store_unavailable(e):
        return "unavailable"
    return code


def _printable(text: str) -> str:
    return text if text.isprintable() else shown(text)


def refusal(e: BaseException, *, where: str, key_id: str = "-",
            idempotency_key: str | None = None) -> ErrorBody:
    """The error body a gateway answers for `e`. Internal errors are logged with a reference
    and never shown (their message may hold SQL or paths); a store that cannot serve now is
    `unavailable`, logged in one line; a refusal's message is clipped, so that a huge value
    a client sent is neither echoed whole nor logged whole. `idempotency_key`: the key a
    command ran under (a retry with it is safe), None for a read."""
    code = error_code(e)
    reason = detail = field = retry_after = None
    if code == "internal":
        ref = uuid.uuid4()
        log.error("%s failed (reference %s)", where[:140], ref, exc_info=e)
        message = f"internal error (reference {ref}); the command may be retried with the " \
                  "same idempotency key"
    elif code == "unavailable":
        cause = _causes(e)[-1]  # the driver's own error, innermost
        log.warning("%s unavailable: the store cannot serve now (%s: %s) [key %s]",
                    where[:140], type(cause).__name__, clipped(str(cause), 200).strip(),
                    _printable(key_id[:64]))
        retry_after = RETRY_AFTER_SECONDS
        if idempotency_key is None:
            message = (f"the event store cannot be reached now; nothing was changed: retry "
                       f"in {retry_after} s")
        else:
            message = (f"the event store cannot be reached now, so the command was not "
                       f"applied (or, had the store failed while committing it, was applied "
                       f"once): retry in {retry_after} s with the same idempotency key "
                       f"({clipped(idempotency_key, 130)}), which applies it at most once")
    else:
        message = clipped(str(e))
        if isinstance(e, MalformedError):
            field = e.field
        if isinstance(e, KernelError):
            field = e.field
            extra = {k: v for k, v in e.to_dict().items() if k not in ("code", "message")}
            reason, detail = e.code, extra or None
        log.info("%s refused (%s): %s [key %s]", where[:140], code, message,
                 _printable(key_id[:64]))
    return ErrorBody(code=code, message=message, field=field, reason=reason, detail=detail,
                     retry_after=retry_after)
