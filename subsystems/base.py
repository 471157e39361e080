"""The plugin contract: a subsystem performs steps; it knows nothing of NATS or asyncio.

A subsystem is an instance with its drivers injected (a libvirt connection, a database pool),
built by a factory from a plain configuration dict. It has a `name` (the `<subsystem>` of the
step kind `<subsystem>.<action>`), a `version`, and its actions. Each action has a name, the
msgspec type of its arguments, and a synchronous handler:

    handler(ctx: StepContext, args: ArgsStruct) -> msgspec.Struct | Mapping | None

The return value is the step's result; it is encoded to JSON into `StepOutcome.result`. A
handler that cannot perform the step raises `StepFailedError(message, retryable=..., code=...)`.
Any other exception is a bug in the plugin; the runtime reports it as a retryable failure.

Handlers run in a worker thread, several at a time, so a plugin must be thread-safe.

**Steps are idempotent by step id.** JetStream delivers at least once: the same step id (and
even the same attempt) can arrive again after a worker crash, a lost ack or a kernel retry,
possibly on another worker while the first one is still running. A plugin must make a repeated
step id harmless, for example by keying its side effect on `ctx.step_id` (`INSERT ... ON
CONFLICT (step_id) DO NOTHING`), or by checking the real state first ("the domain is already
defined") and returning the same result.

`open()` acquires resources before the first step and `close()` releases them; a factory
itself does no I/O, so that plugins can be listed without being able to run.

A plugin that needs the platform's state (the planner's capacity index, the guru's address
index) folds the platform's log into an index of its own. It never opens the store: the
process that runs it does, and injects a `PlatformLog` (config key `log`).
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, runtime_checkable
from uuid import UUID

import msgspec

from aggregates.errors import ConfigError

__all__ = [
    "Action",
    "Handler",
    "NoAnswer",
    "PlatformLog",
    "Result",
    "StepContext",
    "Subsystem",
    "SubsystemBase",
    "action",
    "action_table",
    "check_token",
    "settle_step",
    "step_settlers",
]

Result = msgspec.Struct | Mapping[str, Any] | None
Handler = Callable[["StepContext", Any], Result]
F = TypeVar("F", bound=Callable[..., Any])

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_MARK = "__cloudkernel_action__"


class NoAnswer(Exception):
    """Raised by a handler to end the step without any outcome (test plugins only).

    The runtime acks the step message and publishes nothing, exactly as if the worker's
    result had been lost; the kernel then sees the step's deadline pass. Real plugins must
    not use it: a failure is reported with StepFailedError.
    """


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a handler knows about the step attempt it performs."""

    step_id: UUID
    operation_id: UUID
    attempt: int
    subsystem: str
    action: str
    deadline_at: datetime | None = None
    compensation: bool = False
    delivery: int = 1  # how often the transport delivered this attempt; >1 means a redelivery

    @property
    def kind(self) -> str:
        """`<subsystem>.<action>`."""
        return f"{self.subsystem}.{self.action}"

    def seconds_left(self, now: datetime | None = None) -> float | None:
        """Seconds until the deadline (negative once passed), or None without a deadline."""
        if self.deadline_at is None:
            return None
        now = now or datetime.now(UTC)
        return (as_utc(self.deadline_at) - now).total_seconds()


@dataclass(frozen=True, slots=True)
class Action:
    """One action of a subsystem: its name, its argument type and its handler."""

    name: str
    args_type: Any
    handler: Handler
    description: str = ""


@runtime_checkable
class PlatformLog(Protocol):
    """The platform's event log, read only, as the process that runs a plugin injects it.

    Positions are the store's notification ids, handed out in commit order: once `head()`
    shows a position, every lower one is committed.
    """

    def head(self) -> int:
        """The newest position (0 while the log is empty)."""
        ...

    def read(self, after: int, limit: int, *, topics: Sequence[str] = (),
             stop: int | None = None) -> list[tuple[int, Any]]:
        """Up to `limit` `(position, domain event)` pairs after `after`, in log order: of
        `topics` only (every topic when empty), and none past `stop` when it is given."""
        ...


@runtime_checkable
class Subsystem(Protocol):
    """What the registry and the runtime need from a plugin instance."""

    name: str
    version: str

    def actions(self) -> Sequence[Action]:
        """The actions this subsystem performs."""
        ...

    def open(self) -> None:
        """Acquire drivers and resources before the first step."""
        ...

    def close(self) -> None:
        """Release what `open()` acquired."""
        ...


def action(name: str | None = None, args: Any = None) -> Callable[[F], F]:
    """Mark a method of a SubsystemBase as an action.

    `name` defaults to the method name; `args` defaults to the annotation of the handler's
    second parameter (`def define(self, ctx: StepContext, args: DefineArgs)`).
    """

    def mark(method: F) -> F:
        setattr(method, _MARK, (name or method.__name__, args))
        return method

    return mark


class SubsystemBase:
    """Convenience base: actions are the methods marked with `@action`; open/close do nothing."""

    name: str = ""
    version: str = "0"

    def actions(self) -> Sequence[Action]:
        """Collect the `@action` methods, bound to this instance."""
        found = []
        for attr in dir(type(self)):
            method = getattr(type(self), attr, None)
            mark = getattr(method, _MARK, None)
            if mark is None or method is None:
                continue
            name, args_type = mark
            bound = getattr(self, attr)
            found.append(Action(
                name=name,
                args_type=args_type if args_type is not None else _second_param_type(method),
                handler=bound,
                description=(inspect.getdoc(method) or "").split("\n", 1)[0],
            ))
        return found

    def open(self) -> None:
        """Nothing to acquire."""

    def close(self) -> None:
        """Nothing to release."""


step_settlers: list[Callable[[], None]] = []
"""What runs after every step's handler, in the step's thread, before its outcome is published:
a driver that keeps state away from where it acts makes it durable there (the simulated hosts'
write-through, `subsystems.libvirt.connections.keep_simulated_hosts`). An outcome is therefore
never published for a change a kill of the process could still lose."""


def settle_step() -> None:
    """Run every settler; the first to raise stops the rest (the step is then not settled)."""
    for settle in list(step_settlers):
        settle()


def action_table(subsystem: Subsystem) -> dict[str, Action]:
    """The subsystem's actions by name, validated; ConfigError names the offending plugin."""
    check_token(subsystem.name, f"subsystem name of {type(subsystem).__qualname__}")
    table: dict[str, Action] = {}
    for act in subsystem.actions():
        check_token(act.name, f"action name in subsystem {subsystem.name!r}")
        if act.name in table:
            raise ConfigError(f"subsystem {subsystem.name!r} declares action {act.name!r} twice")
        try:
            msgspec.json.Decoder(act.args_type)
        except TypeError as e:
            raise ConfigError(f"step kind {subsystem.name}.{act.name}: argument type "
                              f"{act.args_type!r} is not a msgspec type ({e})") from e
        table[act.name] = act
    return table


def check_token(value: object, what: str) -> str:
    """A subsystem or action name must be one NATS subject token: letters, digits, _ and -."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ConfigError(f"{what} must be letters, digits, '_' or '-', got {value!r}")
    return value


def as_utc(moment: datetime) -> datetime:
    """A naive datetime on the wire is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _second_param_type(method: Callable[..., Any]) -> Any:
    """The annotation of `args` in `def handler(self, ctx, args)`."""
    params = list(inspect.signature(method).parameters)
    if len(params) != 3:
        raise ConfigError(f"action {method.__qualname__} must take (self, ctx, args)")
    hints = typing.get_type_hints(method)
    if params[2] not in hints:
        raise ConfigError(f"action {method.__qualname__}: annotate `{params[2]}` with the "
                          "argument Struct or pass @action(args=...)")
    return hints[params[2]]
