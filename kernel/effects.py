"""Step effects: how the kernel turns step outcomes into entity changes, and binds arguments.

A subsystem decides and performs; the kernel records. For each step kind
(`<subsystem>.<action>`, forward or compensation) an `Effect` may:

* `bind` the arguments of an attempt at dispatch, from the entities' current state (a host's
  URI once the VM is placed, the volumes' paths...). The bound arguments are recorded in the
  `StepDispatched` event, so the log holds exactly what each attempt was sent.
* apply a success: record what the step did on the entities (a capacity claim, an IP, a
  defined domain). The aggregates validate: a refusal (the IP was taken meanwhile, the host is
  full) turns the attempt into a failure, retryable if the refusal says so, and the operation
  retries or compensates as for any failed step.
* apply a failure: record what a failed attempt means for the entities (a host to avoid).

Effects run on an `EffectScope` and validate before they change anything, so a refused effect
leaves the batch's aggregates exactly as they were (the scope checks it).

`OperationEffects.finished` runs when an operation ends (Succeeded, RolledBack, Failed,
Cancelled), in the same transaction, to settle its entities (a VM that could not be deployed).
It may return new operations to accept (a deploy retried on another host).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from aggregates.errors import KernelError, NotFoundError
from aggregates.operation import Operation
from aggregates.step_run import Phase, StepRun
from kernel.operation_commands import StartOperation
from kernel.unit_of_work import UnitOfWork

A = TypeVar("A")
R = TypeVar("R")


class Refusal(KernelError):
    """An effect refused a step's outcome; `retryable` says whether another attempt may fit.

    `then`, if given, records what the refusal itself teaches (a host to avoid) on a fresh
    scope: the refused effect's own changes are dropped, these are kept.
    """

    code = "refused"

    def __init__(self, message: str, *, retryable: bool, code: str | None = None,
                 then: "Callable[[EffectScope], None] | None" = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.then = then
        if code:
            self.code = code


class EffectScope:
    """The aggregates an effect reads and changes, and the new ones it makes.

    Effects change the batch's own aggregates (copying them was most of a deploy's kernel
    time: a host's or a pool's claims grow with every VM). So an effect validates before it
    changes anything: every aggregate method refuses before recording, and an effect that
    changes two aggregates checks both first. If an effect refuses after changing one, the
    batch cannot be trusted: `EffectMutatedError` stops it, and it runs again on fresh copies.
    New aggregates (`add`) join the batch only when the effect is accepted.
    """

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        self._seen: dict[UUID, tuple[Aggregate, int]] = {}
        self._new: dict[UUID, Aggregate] = {}

    def get(self, aggregate_id: UUID, kind: type[A] | None = None) -> A:
        """The aggregate, to change (NotFoundError if missing, or not of `kind`)."""
        found = self._new.get(aggregate_id)
        if found is None:
            found = self.uow.get(aggregate_id)
            if aggregate_id not in self._seen:
                self._seen[aggregate_id] = (found, len(found.pending_events))
        if kind is not None and not isinstance(found, kind):
            raise NotFoundError(f"no {kind.__name__} {aggregate_id}")
        return found  # type: ignore[return-value]

    def peek(self, aggregate_id: UUID, kind: type[A] | None = None) -> A:
        """The aggregate, only to read (for binding arguments)."""
        found = self._new.get(aggregate_id) or self.uow.get(aggregate_id)
        if kind is not None and not isinstance(found, kind):
            raise NotFoundError(f"no {kind.__name__} {aggregate_id}")
        return found  # type: ignore[return-value]

    def add(self, aggregate: Aggregate) -> None:
        """A new aggregate, saved with the batch if the effect is accepted."""
        self._new[aggregate.id] = aggregate

    def merge(self) -> None:
        """The effect was accepted: its new aggregates join the batch."""
        for aggregate in self._new.values():
            self.uow.add(aggregate)

    def check_unchanged(self, why: BaseException) -> None:
        """After a refusal: raise EffectMutatedError if anything was changed first."""
        changed = [a for a, n in self._seen.values() if len(a.pending_events) != n]
        if changed:
            raise EffectMutatedError(
                f"an effect refused ({why}) after changing {[str(a.id) for a in changed]}; "
                "effects must validate before they change anything") from why


class EffectMutatedError(IntegrityError):
    """An effect changed an aggregate and then refused: the batch is applied again afresh."""


@dataclass(frozen=True)
class StepContext:
    """What an effect knows about the step whose outcome (or dispatch) it handles."""

    operation: Operation
    run: StepRun
    attempt: int
    now: datetime

    @property
    def kind(self) -> str:
        """`<subsystem>.<action>`."""
        return f"{self.run.subsystem}.{self.run.action}"

    @property
    def compensating(self) -> bool:
        """Whether this is a compensation (undoing a forward step)."""
        return self.run.phase is Phase.COMPENSATION

    def plan_args(self, type_: type[A]) -> A:
        """The arguments in the plan, decoded."""
        return msgspec.json.decode(self.run.args, type=type_)

    def bound_args(self, type_: type[A]) -> A:
        """The arguments this attempt was dispatched with (bound, else the plan's)."""
        last = self.run.attempts[-1] if self.run.attempts else None
        raw = self.run.args if last is None or last.args is None else last.args
        return msgspec.json.decode(raw, type=type_)

    def result_of(self, step_id: UUID, type_: type[R]) -> R:
        """The result of an earlier step of the same operation that succeeded."""
        raw = self.operation.result_of(step_id)
        if raw is None:
            raise NotFoundError(f"step {step_id} of operation {self.operation.id} has no result")
        return msgspec.json.decode(raw, type=type_)


class Effect(Protocol):
    """What the kernel does around one step kind; every method is optional in `BaseEffect`."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        """The arguments of this attempt, or None for the plan's."""
        ...

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        """Record a success on the entities; raise Refusal (or a KernelError) to refuse it."""
        ...

    def failed(self, scope: EffectScope, ctx: StepContext, error_code: str,
               message: str) -> None:
        """Record a failed attempt on the entities."""
        ...


class BaseEffect:
    """An effect that binds nothing and records nothing; override what a step kind needs."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        """The plan's arguments."""
        return None

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        """Nothing to record."""

    def failed(self, scope: EffectScope, ctx: StepContext, error_code: str,
               message: str) -> None:
        """Nothing to record."""


class OperationEffects(Protocol):
    """What the kernel does when an operation of one kind ends."""

    def finished(self, scope: EffectScope, operation: Operation,
                 now: datetime) -> list[StartOperation]:
        """Settle the operation's entities; return follow-up operations to accept."""
        ...


@dataclass(frozen=True)
class Effects:
    """The effects of every step kind and operation kind the kernel knows."""

    steps: Mapping[str, Effect] = field(default_factory=dict)
    operations: Mapping[str, OperationEffects] = field(default_factory=dict)

    def __or__(self, other: "Effects") -> "Effects":
        """Both sets. A step kind in both is a mistake (a step has one effect); an operation
        kind in both runs both `finished` hooks, this set's first (a VM migration settles its
        claims, then a host's maintenance counts it)."""
        twice = set(self.steps) & set(other.steps)
        if twice:
            raise ValueError(f"effects declared twice: {sorted(twice)}")
        operations = dict(self.operations)
        for kind, hook in other.operations.items():
            operations[kind] = hook if kind not in operations else \
                AllOf.of(operations[kind], hook)
        return Effects({**self.steps, **other.steps}, operations)


@dataclass(frozen=True)
class AllOf:
    """Several `finished` hooks of one operation kind, run in order on the same scope; the
    follow-up operations of each, in that order."""

    hooks: tuple[OperationEffects, ...]

    @classmethod
    def of(cls, *hooks: OperationEffects) -> "AllOf":
        """The hooks in order, nested AllOf flattened."""
        flat: list[OperationEffects] = []
        for hook in hooks:
            flat.extend(hook.hooks if isinstance(hook, AllOf) else (hook,))
        return cls(tuple(flat))

    def finished(self, scope: EffectScope, operation: Operation,
                 now: datetime) -> list[StartOperation]:
        """Every hook's settling, and their follow-ups."""
        return [spec for hook in self.hooks for spec in hook.finished(scope, operation, now)]


NO_EFFECTS = Effects()


_encoder = msgspec.json.Encoder()


def encode(args: Any) -> msgspec.Raw:
    """Bound arguments as the JSON the worker decodes."""
    return msgspec.Raw(_encoder.encode(args))


def step_effect(effects: Effects, op: Operation, run: StepRun) -> Effect | None:
    """A step's effect: one declared for its operation kind (`<op kind>:<subsystem>.<action>`,
    for a step kind that means something else there) first, else the step kind's own."""
    kind = f"{run.subsystem}.{run.action}"
    scoped = effects.steps.get(f"{op.kind}:{kind}")
    return scoped if scoped is not None else effects.steps.get(kind)


# --------------------------------------------------------------------------- applying effects
# The engine calls these inside a batch; each runs the effect on a scope and merges it only
# when the effect accepted.


def bound_args(effects: Effects, uow: UnitOfWork, op: Operation, run: StepRun,
               attempt: int, now: datetime) -> msgspec.Raw | None:
    """The arguments to dispatch `run` with (None: the plan's); KernelError if unbindable."""
    effect = step_effect(effects, op, run)
    if effect is None:
        return None
    bound = effect.bind(EffectScope(uow), StepContext(op, run, attempt, now))
    return None if bound is None else encode(bound)


def accept_success(effects: Effects, uow: UnitOfWork, op: Operation, run: StepRun,
                   attempt: int, result: msgspec.Raw, now: datetime) -> Refusal | None:
    """Record a success's effect; the refusal instead (the batch unchanged) if refused."""
    effect = step_effect(effects, op, run)
    if effect is None:
        return None
    scope = EffectScope(uow)
    ctx = StepContext(op, run, attempt, now)
    try:
        effect.succeeded(scope, ctx, result)
    except Refusal as e:
        scope.check_unchanged(e)
        if e.then is not None:
            lesson = EffectScope(uow)
            e.then(lesson)
            lesson.merge()
        return e
    except KernelError as e:  # a domain rule refused it: another attempt cannot do better
        scope.check_unchanged(e)
        return Refusal(str(e), retryable=False, code=e.code)
    scope.merge()
    return None


def record_failure(effects: Effects, uow: UnitOfWork, op: Operation, run: StepRun,
                   attempt: int, error_code: str, message: str, now: datetime) -> None:
    """Record a failed attempt's effect on the entities."""
    effect = step_effect(effects, op, run)
    if effect is None:
        return
    scope = EffectScope(uow)
    effect.failed(scope, StepContext(op, run, attempt, now), error_code, message)
    scope.merge()


def settle(effects: Effects, uow: UnitOfWork, op: Operation,
           now: datetime) -> list[StartOperation]:
    """Run the operation kind's `finished`; the follow-up operations it asks for."""
    handler = effects.operations.get(op.kind)
    if handler is None:
        return []
    scope = EffectScope(uow)
    follow_ups = handler.finished(scope, op, now)
    scope.merge()
    return follow_ups
