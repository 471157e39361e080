"""The command intake: integrators' signed commands from NATS, each run once per idempotency key.

An integrator sends a core NATS request to `cloudkernel.commands.<tag>` (for example
`cloudkernel.commands.operation.cancel`). The body is a JSON object of the command's fields,
the headers carry `Idempotency-Key` and either the signature (`kernel.contracts.access`) or
`Authorization: Bearer <token>`, a token from the ACL service (its login, or a service's SigV4
check), which sends the command as the token's user. The reply is JSON:

    {"ok": true, "command": ..., "idempotency_key": ..., "replayed": ..., "positions": [...],
     "correlation_id": ..., "result": ...}
    {"ok": false, "error": {"code": ..., "message": ..., "field"?: ..., "retry_after"?: ...}}
                                                    (and header Cloudkernel-Error)

A refusal names the body field or header at fault in `field` when it concerns one. While the
event store cannot be reached (PostgreSQL restarting, say) the reply is `unavailable` with
`retry_after` seconds (and header Retry-After): nothing is known to have been applied, and a
retry with the same Idempotency-Key applies the command at most once.

The command's events carry the reply's correlation id, and the relay publishes them. Every
check (headers, signature, the command, the principal's rights, the body) happens before the
command runs, so a refused request writes nothing: the checks are `gateways.decision`'s, the
same as the admin API's (another tenant's resource is `not_found` on both); this module only
frames them in NATS messages. Requests are decided and run in a bounded
thread pool, because the core is synchronous; the event loop only moves bytes.
"""

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec
from nats.aio.msg import Msg

from aggregates.errors import UnauthenticatedError, shown
from gateways.decision import (
    BearerToken,
    Catalog,
    CommandDecision,
    Credentials,
    ErrorBody,
    MalformedError,
    QuotaCheck,
    command_decoders,
    refusal,
)
from gateways.metrics import PROCESS
from gateways.ownership import AccountLookup
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SCHEME,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AccessControl,
    SignedRequest,
)
from kernel.contracts.events import CORRELATION_ID
from kernel.contracts.requests import Answer, answer_requests

log = logging.getLogger(__name__)

COMMANDS_PREFIX = "cloudkernel.commands."
QUEUE_GROUP = "cloudkernel-intake"
ERROR_HEADER = "Cloudkernel-Error"
RETRY_AFTER_HEADER = "Retry-After"
AUTHORIZATION_HEADER = "Authorization"
SIGNED_HEADERS = (KEY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)


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


_encoder = msgspec.json.Encoder()


def _refuse_control_characters(headers: Mapping[str, str]) -> None:
    """Refuse a header holding a control character (NUL, a line feed, DEL...): no header
    the intake reads may hold one, and one would otherwise reach the log."""
    for name, value in headers.items():
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise MalformedError(f"header {shown(name)[1:-1]} must not contain control "
                                 "characters (NUL, line breaks, DEL...)", field=name[:100])


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
    # the limits a command must not pass (gateways.quotas.quota_check); None: none here
    quota: QuotaCheck | None = None
    drain_timeout: float = 30.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stats: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._decoders = command_decoders(self.catalog)
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="intake")
        PROCESS.add(self, "cloudkernel_intake_requests", "counter",
                    "Commands the NATS intake answered, by outcome (ok or the refusal's code).",
                    ("outcome",), lambda i: [((k,), n) for k, n in sorted(i.stats.items())])

    @property
    def decision(self) -> CommandDecision:
        """The command decision with this intake's owner lookup and limits (made on each
        request: `quota` may be set after the intake is made, once the read models run)."""
        return CommandDecision(self.catalog, self.access, owner_lookup=self.owner_lookup,
                               quota=self.quota, decoders=self._decoders)

    # ------------------------------------------------------------------ the NATS framing

    def handle(self, subject: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Check, run and answer one request; never raises."""
        try:
            _refuse_control_characters(headers)
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
                                 "choice, the same when you retry the same command",
                                 field=IDEMPOTENCY_KEY_HEADER)
        decision = self.decision
        principal = decision.authenticate(self._credentials(subject, headers, key, body))
        decided = decision.decide(principal, tag, body, key)
        outcome = decided.run()
        data = _encoder.encode(CommandReply(
            command=outcome.command, idempotency_key=key, replayed=outcome.replayed,
            positions=outcome.positions, correlation_id=decided.correlation_id,
            result=outcome.result))
        log.debug("intake: %s by %s (key %s): %s", tag, principal.actor, principal.key_id,
                  "replayed" if outcome.replayed else f"{len(outcome.positions)} events")
        return Reply(data, {CORRELATION_ID: str(decided.correlation_id)})

    def _credentials(self, subject: str, headers: Mapping[str, str], key: str,
                     body: bytes) -> Credentials:
        """A bearer token (`Authorization: Bearer <token>`), or the signature headers."""
        authorization = headers.get(AUTHORIZATION_HEADER.lower())
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise UnauthenticatedError(f"header {AUTHORIZATION_HEADER} must be 'Bearer "
                                           "<token>' (a token from the ACL service's login)")
            if any(h.lower() in headers for h in SIGNED_HEADERS):
                raise UnauthenticatedError(f"send either {AUTHORIZATION_HEADER}: Bearer or the "
                                           f"{SCHEME} headers, not both")
            return BearerToken(token.strip())
        return SignedRequest(
            subject=subject, idempotency_key=key, body=body,
            key_id=headers.get(KEY_ID_HEADER.lower(), ""),
            timestamp=headers.get(TIMESTAMP_HEADER.lower(), ""),
            signature=headers.get(SIGNATURE_HEADER.lower(), ""))

    def _refusal(self, e: Exception, subject: str, headers: Mapping[str, str]) -> Reply:
        lower = {k.lower(): v for k, v in headers.items()}
        body = refusal(e, where=f"intake: {subject[:140]}",
                       key_id=lower.get(KEY_ID_HEADER.lower(), "-"),
                       idempotency_key=lower.get(IDEMPOTENCY_KEY_HEADER.lower()))
        data = _encoder.encode(ErrorReply(error=body))
        reply_headers = {ERROR_HEADER: body.code}
        if body.retry_after is not None:
            reply_headers[RETRY_AFTER_HEADER] = str(body.retry_after)
        return Reply(data, reply_headers, error=body.code)

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
