"""Idempotent command execution.

Every mutating command carries an idempotency key. The key, a fingerprint of the command's
canonical payload and the command's result are written in the same transaction as its
events. The same key with the same payload returns the first result and writes nothing; the
same key with another payload is refused. A command that loses a race on an aggregate
version is re-run against the new state, a bounded number of times.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import msgspec
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from aggregates.base import audit_context, natural_id
from aggregates.errors import ConflictError, IdempotencyKeyReusedError, ValidationError
from kernel.store.application import KernelApplication
from kernel.store.idempotency import IdempotencyRecord, fingerprint

MAX_KEY_LENGTH = 200
CONFLICT_RETRIES = 3


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="command"):
    """Base of every mutating command; subclasses set a stable `tag`."""

    # A cloud command on entities another operation is changing waits for them, and is
    # planned when it gets them (`kernel.operations`). A command that intervenes in that
    # operation (cancel a host's maintenance) acts at once instead.
    waits_for_busy_entities: ClassVar[bool] = True
    # How many times a command that lost the race on an aggregate's version runs again. A
    # command on a shared, hot aggregate (a zone's address pool) may race every other one
    # the gateways run at once, so it may ask for more.
    conflict_retries: ClassVar[int | None] = None  # None: CONFLICT_RETRIES


class CommandOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What executing a command produced; `replayed` is true for a repeated key."""

    command: str
    idempotency_key: str
    result: msgspec.Raw
    positions: tuple[int, ...] = ()
    replayed: bool = False

    def decode(self, type_: type["R"]) -> "R":
        """The result, decoded into the handler's result type."""
        return msgspec.json.decode(self.result, type=type_)


R = TypeVar("R")
C = TypeVar("C", bound=Command)
# A handler reads what it needs from the application, calls aggregate methods, and returns
# the aggregates it changed plus a result (any msgspec-encodable value).
Handler = Callable[[KernelApplication, Any], tuple[Sequence[Aggregate], Any]]

_encoder = msgspec.json.Encoder()
_stored = msgspec.json.Decoder(dict[str, Any])


class CommandService:
    """Runs commands against one application, exactly once per idempotency key."""

    def __init__(self, app: KernelApplication, handlers: Mapping[type[Command], Handler]):
        self.app = app
        self.handlers = dict(handlers)

    def execute(
        self, command: Command, *, idempotency_key: str, actor: str = "system"
    ) -> CommandOutcome:
        """Run `command` once for this key; a repeat returns the first outcome unchanged."""
        _check_key(idempotency_key)
        handler = self.handlers.get(type(command))
        if handler is None:
            raise ValidationError(f"no handler for command {type(command).__name__}")
        tag = str(type(command).__struct_config__.tag)
        payload_fp = fingerprint(_encoder.encode(command))
        earlier = self._replay(idempotency_key, payload_fp, tag)
        if earlier is not None:
            return earlier
        retries = type(command).conflict_retries or CONFLICT_RETRIES
        for _attempt in range(retries):
            with audit_context(
                actor=actor,
                correlation_id=natural_id("command", idempotency_key),
                causation_id=f"command:{tag}:{idempotency_key}",
            ):
                changed, result = handler(self.app, command)
            result_bytes = _encoder.encode(result)
            stored = _encoder.encode({"command": tag, "result": msgspec.Raw(result_bytes)})
            record = IdempotencyRecord(idempotency_key, payload_fp, stored)
            try:
                recordings = self.app.save(*changed, idempotency=record)
            except IntegrityError:
                # Either the key was taken meanwhile (replay or refuse), or an aggregate
                # moved on under us (run the command again on the new state).
                earlier = self._replay(idempotency_key, payload_fp, tag)
                if earlier is not None:
                    return earlier
                continue
            return CommandOutcome(
                command=tag,
                idempotency_key=idempotency_key,
                result=msgspec.Raw(result_bytes),
                positions=tuple(r.notification.id for r in recordings),
            )
        raise ConflictError(
            f"command {tag} lost {retries} races for the same entities; retry it"
        )

    def execute_many(self, items: Sequence[tuple[Command, str, str]]) -> list[CommandOutcome]:
        """Run several commands (command, idempotency key, actor) and save them together, in one
        transaction with all their idempotency records (group commit).

        All or nothing: if any command is refused, or the save loses a race, this raises and
        saves nothing; the caller then runs them one by one. Replays answer as in `execute`.
        Handlers run one after another and may share aggregates (the engine gives them one
        unit of work), so each command's events are those its handler added.
        """
        outcomes: list[CommandOutcome | None] = [None] * len(items)
        pending: list[tuple[int, str, bytes, str]] = []
        keys: set[str] = set()
        for i, (command, key, _actor) in enumerate(items):
            _check_key(key)
            if type(command) not in self.handlers:
                raise ValidationError(f"no handler for command {type(command).__name__}")
            if key in keys:
                raise ConflictError(f"idempotency key {key!r} twice in one batch")
            keys.add(key)
            tag = str(type(command).__struct_config__.tag)
            payload_fp = fingerprint(_encoder.encode(command))
            outcomes[i] = self._replay(key, payload_fp, tag)
            if outcomes[i] is None:
                pending.append((i, key, payload_fp, tag))
        changed: dict[Any, Aggregate] = {}
        seen: dict[Any, int] = {}  # events of each aggregate already owned by a command
        owned: dict[int, list[tuple[Any, int]]] = {}
        records: list[IdempotencyRecord] = []
        results: dict[int, bytes] = {}
        for i, key, payload_fp, tag in pending:
            command, _key, actor = items[i]
            with audit_context(actor=actor, correlation_id=natural_id("command", key),
                               causation_id=f"command:{tag}:{key}"):
                aggregates, result = self.handlers[type(command)](self.app, command)
            mine: list[tuple[Any, int]] = []
            for agg in aggregates:
                changed[agg.id] = agg
                events = agg.pending_events[seen.get(agg.id, 0):]
                mine += [(e.originator_id, e.originator_version) for e in events]
                seen[agg.id] = len(agg.pending_events)
            owned[i] = mine
            results[i] = _encoder.encode(result)
            stored = _encoder.encode({"command": tag, "result": msgspec.Raw(results[i])})
            records.append(IdempotencyRecord(key, payload_fp, stored))
        if pending:
            recordings = self.app.save(*changed.values(), idempotency=records)
            position = {(r.domain_event.originator_id, r.domain_event.originator_version):
                        r.notification.id for r in recordings}
            for i, key, _fp, tag in pending:
                outcomes[i] = CommandOutcome(
                    command=tag, idempotency_key=key, result=msgspec.Raw(results[i]),
                    positions=tuple(sorted(position[e] for e in owned[i])))
        return [o for o in outcomes if o is not None]

    def _replay(self, key: str, payload_fp: bytes, tag: str) -> CommandOutcome | None:
        record = self.app.lookup_idempotency(key)
        if record is None:
            return None
        stored = _stored.decode(record.result)
        if record.fingerprint != payload_fp:
            raise IdempotencyKeyReusedError(
                f"idempotency key {key!r} was already used for a different "
                f"{stored.get('command', 'command')} payload; use a new key"
            )
        return CommandOutcome(
            command=str(stored.get("command", tag)),
            idempotency_key=key,
            result=msgspec.Raw(_encoder.encode(stored.get("result"))),
            replayed=True,
        )


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key.strip():
        raise ValidationError("idempotency_key: a non-empty key is required for every command")
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationError(f"idempotency_key: at most {MAX_KEY_LENGTH} characters")
    if not key.isprintable():
        raise ValidationError("idempotency_key: must be printable text")
