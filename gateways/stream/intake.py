"""The command intake: integrators' signed commands from NATS, each run once per idempotency key.

An integrator sends a core NATS request to `cloudkernel.commands.<tag>` (for example
`cloudkernel.commands.operation.cancel`). The body is a JSON object of the command's fields,
the headers carry `Idempotency-Key` and either the signature (`gateways.access`) or
`Authorization: Bearer <token>`, a token from the ACL service (its login, or a service's SigV4
check), which sends the command as the token's user. The reply is JSON:

    {"ok": true, "command": ..., "idempotency_key": ..., "replayed": ..., "positions": [...],
     "correlation_id": ..., "result": ...}
    {"ok": false, "error": {"code": ..., "message": ...}}     (and header Cloudkernel-Error)

The command's events carry the reply's correlation id, and the relay publishes them. Every
check (headers, signature, the command, the principal's rights, the body) happens before the
command runs, so a refused request writes nothing. Requests are decided and run in a bounded
thread pool, because the core is synchronous; the event loop only moves bytes.
"""

import asyncio
import logging
import re
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg

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
)
from gateways.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SCHEME,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AccessControl,
    Principal,
    SignedRequest,
)
from gateways.ownership import AccountLookup, owner_of
from gateways.stream.requests import Answer, answer_requests
from kernel.bootstrap import CommandRunner
from kernel.commands import Command
from kernel.event_feed import CORRELATION_ID

log = logging.getLogger(__name__)

COMMANDS_PREFIX = "cloudkernel.commands."
QUEUE_GROUP = "cloudkernel-intake"
ERROR_HEADER = "Cloudkernel-Error"
AUTHORIZATION_HEADER = "Authorization"
SIGNED_HEADERS = (KEY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
Catalog = Mapping[str, tuple[type[Command], CommandRunner]]

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


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Why a command was refused: a stable code, a message, and the kernel's own detail."""

    code: str
    message: str
    reason: str | None = None
    detail: dict[str, Any] | None = None


class ErrorReply(msgspec.Struct, kw_only=True):
    """The reply to a refused or failed command."""

    ok: bool = False
    error: ErrorBody


class CommandReply(msgspec.Struct, kw_only=True):
    """The reply to a command that ran (or ran before, under the same key)."""

    ok: bool = True
    command: str
    idempotency_key: str
    replayed: bool
    positions: tuple[int, ...]
    correlation_id: uuid.UUID
    result: msgspec.Raw


@dataclass(frozen=True)
class Reply:
    """A reply ready to publish."""

    data: bytes
    headers: dict[str, str]
    error: str | None = None


class MalformedError(Exception):
    """The request cannot be read as a command (bad body, wrong fields, missing header)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field  # the body field at fault, when one is


class UnknownCommandError(Exception):
    """No command has the subject's tag."""


_encoder = msgspec.json.Encoder()
_any_json = msgspec.json.Decoder()


# Threads that run commands. A command waits in the engine's group commit, so many threads
# cost little and make bigger batches (one transaction each).
DEFAULT_CONCURRENCY = 32

@dataclass
class CommandIntake:
    """Serves `cloudkernel.commands.>` until told to stop; `handle` is its synchronous core."""

    catalog: Catalog
    access: AccessControl
    servers: Sequence[str]
    concurrency: int = DEFAULT_CONCURRENCY
    max_in_flight: int = 256
    # where the account owning a command's target is found (None: no resource checks)
    owner_lookup: AccountLookup | None = None
    # (tag, command, owner) -> None, or raises ForbiddenError naming a limit the command
    # would pass (gateways.quotas.quota_check); None: no limits checked here
    quota: Callable[[str, Command, str | None], None] | None = None
    drain_timeout: float = 30.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stats: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._decoders = {tag: msgspec.json.Decoder(type_)
                          for tag, (type_, _run) in self.catalog.items()}
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="intake")

    # ------------------------------------------------------------------ the decision path

    def handle(self, subject: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Check, run and answer one request; never raises."""
        try:
            reply = self._handle(subject, {k.lower(): v for k, v in headers.items()}, body)
        except Exception as e:
            reply = self._refusal(e, subject, headers)
        self.stats[reply.error or "ok"] += 1
        return reply

    def _handle(self, subject: str, headers: Mapping[str, str], body: bytes) -> Reply:
        tag = subject.removeprefix(COMMANDS_PREFIX)
        key = headers.get(IDEMPOTENCY_KEY_HEADER.lower(), "")
        if not key.strip():
            raise MalformedError(f"header {IDEMPOTENCY_KEY_HEADER} is required: a key of your "
                                 "choice, the same when you retry the same command")
        principal = self._authenticate(subject, headers, key, body)
        if tag not in self.catalog:
            raise UnknownCommandError(f"unknown command {tag[:100]!r} on {subject[:140]}; known: "
                                      f"{', '.join(sorted(self.catalog))}")
        type_, run = self.catalog[tag]
        command = self._decode(tag, type_, body)
        owner = None if self.owner_lookup is None else owner_of(command, self.owner_lookup)
        # One decision, with the owner: "no owner" means a command on no account's resource,
        # which only a platform-wide principal may send, so it is never asked before the owner
        # is known (a tenant's command on its own VM would be refused).
        self.access.authorize(principal, tag, owner=owner)
        if self.quota is not None:
            self.quota(tag, command, owner)
        # Keys are scoped by actor: another principal's same key is another command, and
        # never replays (or reveals) this one's result.
        scoped = f"{principal.actor}/{key}"
        outcome = run(command, idempotency_key=scoped, actor=principal.actor)
        correlation_id = natural_id("command", scoped)
        data = _encoder.encode(CommandReply(
            command=outcome.command, idempotency_key=key, replayed=outcome.replayed,
            positions=outcome.positions, correlation_id=correlation_id, result=outcome.result))
        log.debug("intake: %s by %s (key %s): %s", tag, principal.actor, principal.key_id,
                  "replayed" if outcome.replayed else f"{len(outcome.positions)} events")
        return Reply(data, {CORRELATION_ID: str(correlation_id)})

    def _authenticate(self, subject: str, headers: Mapping[str, str], key: str,
                      body: bytes) -> Principal:
        """A bearer token's user (`Authorization: Bearer <token>`), or the key that signed."""
        authorization = headers.get(AUTHORIZATION_HEADER.lower())
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise UnauthenticatedError(f"header {AUTHORIZATION_HEADER} must be 'Bearer "
                                           "<token>' (a token from the ACL service's login)")
            if any(h.lower() in headers for h in SIGNED_HEADERS):
                raise UnauthenticatedError(f"send either {AUTHORIZATION_HEADER}: Bearer or the "
                                           f"{SCHEME} headers, not both")
            return self.access.authenticate_bearer(token.strip())
        return self.access.authenticate(SignedRequest(
            subject=subject, idempotency_key=key, body=body,
            key_id=headers.get(KEY_ID_HEADER.lower(), ""),
            timestamp=headers.get(TIMESTAMP_HEADER.lower(), ""),
            signature=headers.get(SIGNATURE_HEADER.lower(), "")))

    def _decode(self, tag: str, type_: type[Command], body: bytes) -> Command:
        return decode_command(tag, type_, self._decoders[tag], body)

    def _refusal(self, e: Exception, subject: str, headers: Mapping[str, str]) -> Reply:
        key_id = headers.get(KEY_ID_HEADER.lower(), headers.get(KEY_ID_HEADER, "-"))
        body = refusal(e, where=f"intake: {subject}", key_id=key_id)
        data = _encoder.encode(ErrorReply(error=body))
        return Reply(data, {ERROR_HEADER: body.code}, error=body.code)

    # ------------------------------------------------------------------ the NATS loop

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; then answer the requests in flight and close."""

        def answer(msg: Msg) -> Answer:
            reply = self.handle(msg.subject, msg.headers or {}, msg.data)
            return reply.data, reply.headers

        def failed(e: Exception, msg: Msg) -> Answer:
            reply = self._refusal(e, msg.subject, msg.headers or {})
            return reply.data, reply.headers

        def dropped(msg: Msg) -> None:
            self.stats["dropped"] += 1
            log.warning("intake: request on %s without a reply subject dropped (send it "
                        "as a request to get the result)", msg.subject[:140])

        log.info("intake: %d commands", len(self.catalog))
        await answer_requests(
            servers=self.servers, name="cloudkernel-intake", subjects=[COMMANDS_PREFIX + ">"],
            queue=QUEUE_GROUP, executor=self._executor, answer=answer, failed=failed,
            stop=stop, ready=self.ready, max_in_flight=self.max_in_flight,
            drain_timeout=self.drain_timeout, dropped=dropped)


# ---------------------------------------------------------------------- shared with the admin API

_FIELD_AT = re.compile(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*)")


def decode_command(tag: str, type_: type[Command], decoder: msgspec.json.Decoder[Any],
                   body: bytes) -> Command:
    """The body as command `tag` (a JSON object of its fields); MalformedError naming why."""
    fields = ", ".join(type_.__struct_fields__)
    try:
        raw = _any_json.decode(body)
    except msgspec.DecodeError as e:
        raise MalformedError(f"body is not JSON ({e}); send an object of {tag}'s fields: "
                             f"{fields}") from None
    if not isinstance(raw, dict):
        raise MalformedError(f"body must be a JSON object of {tag}'s fields ({fields}), "
                             f"got {type(raw).__name__}")
    if "command" in raw and raw["command"] != tag:
        raise MalformedError(f"body field command is {raw['command']!r} but the subject "
                             f"names {tag!r}", field="command")
    unknown = sorted(set(raw) - set(type_.__struct_fields__) - {"command"})
    if unknown:
        raise MalformedError(f"unknown field {', '.join(map(repr, unknown))} for {tag} "
                             f"(fields: {fields})", field=str(unknown[0]))
    try:
        command: Command = decoder.decode(body)
    except msgspec.ValidationError as e:
        at = _FIELD_AT.search(str(e))
        raise MalformedError(f"{tag}: {e}", field=at.group(1) if at else None) from None
    return command


def error_code(e: BaseException) -> str:
    """The stable code of a refusal: malformed, unknown_command, a KernelError's, or internal."""
    if isinstance(e, MalformedError):
        return "malformed"
    if isinstance(e, UnknownCommandError):
        return "unknown_command"
    return next((c for t, c in _CODES if isinstance(e, t)), "internal")


def refusal(e: BaseException, *, where: str, key_id: str = "-") -> ErrorBody:
    """The error body a gateway answers for `e`; internal errors are logged with a reference
    and never shown (their message may hold SQL or paths)."""
    code = error_code(e)
    reason = detail = None
    if code == "internal":
        ref = uuid.uuid4()
        log.error("%s failed (reference %s)", where[:140], ref, exc_info=e)
        message = f"internal error (reference {ref}); the command may be retried with the " \
                  "same idempotency key"
    else:
        message = str(e)
        if isinstance(e, KernelError):
            extra = {k: v for k, v in e.to_dict().items() if k not in ("code", "message")}
            reason, detail = e.code, extra or None
        log.info("%s refused (%s): %s [key %s]", where[:140], code, message, key_id[:64])
    return ErrorBody(code=code, message=message, reason=reason, detail=detail)
