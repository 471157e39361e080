"""Operation plans: a DAG of steps, each with its retry policy, deadline and compensation.

Plan types are frozen msgspec Structs stored inside `Operation` events. A step's arguments
are kept as the JSON of their msgspec Struct (`msgspec.Raw`), so a plan never depends on the
argument classes: only the subsystem that performs the step decodes them.

Every runnable unit has its own id: a forward step its `step_id`, its compensation the id
`compensation_id(step_id)` derives from it, so that workers, idempotent by step id, never
confuse the two.
"""

import hashlib
import math
import re
from collections.abc import Iterable
from typing import Any, TypeVar
from uuid import UUID, uuid4, uuid5

import msgspec

from aggregates.errors import ValidationError

T = TypeVar("T")

# subsystem and action become NATS subject tokens: steps.<subsystem>.<action>
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_ATTEMPTS_LIMIT = 1000
DEFAULT_DEADLINE_SECONDS = 300.0
MAX_START_AFTER_SECONDS = 30 * 24 * 3600.0  # a month


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How often and how late a failed step is tried again.

    After attempt n fails retryably, the next waits `min(max_delay, initial_delay *
    multiplier ** (n - 1))` seconds, scaled by a jitter factor in `[1 - jitter, 1 + jitter]`
    (and capped at `max_delay` again). The factor comes from a hash of the step id and the
    attempt, so a replay computes the same wait. Codes in `non_retryable` fail for good.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.1
    non_retryable: tuple[str, ...] = ()

    def base_delay(self, attempt: int) -> float:
        """The wait after attempt `attempt` failed, before jitter."""
        try:
            raw = self.initial_delay * self.multiplier ** (attempt - 1)
        except OverflowError:
            return self.max_delay
        return min(self.max_delay, raw)

    def delay(self, step_id: UUID, attempt: int) -> float:
        """The jittered wait, in seconds, after attempt `attempt` of the step failed."""
        digest = hashlib.blake2b(step_id.bytes + attempt.to_bytes(4, "big"), digest_size=8)
        unit = int.from_bytes(digest.digest(), "big") / 2**64  # uniform in [0, 1)
        return min(self.max_delay, self.base_delay(attempt) * (1 + self.jitter * (2 * unit - 1)))

    def retries(self, error_code: str, retryable: bool, attempt: int) -> bool:
        """Whether a failure with this code on this attempt is tried again."""
        return retryable and error_code not in self.non_retryable \
            and attempt < self.max_attempts


DEFAULT_RETRY = RetryPolicy()


class Compensation(msgspec.Struct, frozen=True, kw_only=True):
    """The step that undoes a forward step when its operation is rolled back."""

    subsystem: str
    action: str
    args: msgspec.Raw
    retry: RetryPolicy = DEFAULT_RETRY
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS

    @classmethod
    def of(cls, args: msgspec.Struct, *, subsystem: str | None = None,
           action: str | None = None, retry: RetryPolicy = DEFAULT_RETRY,
           deadline_seconds: float = DEFAULT_DEADLINE_SECONDS) -> "Compensation":
        """A compensation whose arguments are a Struct; subsystem and action default to
        its tag `<subsystem>.<action>`."""
        subsystem, action = _route(args, subsystem, action)
        return cls(subsystem=subsystem, action=action, args=encode_args(args), retry=retry,
                   deadline_seconds=deadline_seconds)

    def decode_args(self, type: type[T]) -> T:
        """The arguments decoded as `type`."""
        return msgspec.json.decode(self.args, type=type)


class PlannedStep(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a plan: what to run where, after which steps, how to retry and undo it."""

    step_id: UUID
    subsystem: str
    action: str
    args: msgspec.Raw
    depends_on: tuple[UUID, ...] = ()
    retry: RetryPolicy = DEFAULT_RETRY
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
    compensation: Compensation | None = None
    # Not dispatched before this many seconds after the operation started (an expunge delay).
    start_after_seconds: float = 0.0
    # Its effect cannot be undone (a domain powered off, a file deleted): once it has been
    # dispatched, the operation goes on to its end and a cancel is refused.
    irreversible: bool = False

    @classmethod
    def of(cls, args: msgspec.Struct, *, step_id: UUID | None = None,
           subsystem: str | None = None, action: str | None = None,
           depends_on: Iterable[UUID] = (), retry: RetryPolicy = DEFAULT_RETRY,
           deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
           compensation: Compensation | None = None) -> "PlannedStep":
        """A step whose arguments are a Struct; subsystem and action default to its tag
        `<subsystem>.<action>`, the id to a random one."""
        subsystem, action = _route(args, subsystem, action)
        return cls(step_id=step_id or uuid4(), subsystem=subsystem, action=action,
                   args=encode_args(args), depends_on=tuple(depends_on), retry=retry,
                   deadline_seconds=deadline_seconds, compensation=compensation)

    @property
    def compensation_id(self) -> UUID | None:
        """The id of this step's compensation, if it has one."""
        return None if self.compensation is None else compensation_id(self.step_id)

    def decode_args(self, type: type[T]) -> T:
        """The arguments decoded as `type`."""
        return msgspec.json.decode(self.args, type=type)


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """A DAG of steps. Its order is the order ready steps are listed in."""

    steps: tuple[PlannedStep, ...]


def compensation_id(step_id: UUID) -> UUID:
    """The id of the compensation of forward step `step_id` (derived, so never stored)."""
    return uuid5(step_id, "compensation")


def encode_args(args: msgspec.Struct) -> msgspec.Raw:
    """A Struct's JSON, as a plan stores it."""
    return msgspec.Raw(msgspec.json.encode(args))


def _route(args: msgspec.Struct, subsystem: str | None, action: str | None) -> tuple[str, str]:
    tag = type(args).__struct_config__.tag
    if (subsystem is None or action is None) and isinstance(tag, str) and "." in tag:
        tag_subsystem, _, tag_action = tag.partition(".")
        subsystem, action = subsystem or tag_subsystem, action or tag_action
    if subsystem is None or action is None:
        raise ValidationError(f"{type(args).__name__}: give subsystem and action, or tag the "
                              "Struct '<subsystem>.<action>'")
    return subsystem, action


# --------------------------------------------------------------------------- validation


def validate_plan(plan: Plan) -> None:
    """Raise ValidationError, naming the step and field, unless the plan is a sane DAG."""
    if not isinstance(plan, Plan):
        raise ValidationError(f"plan must be a Plan, got {type(plan).__name__}")
    if not plan.steps:
        raise ValidationError("plan: steps must not be empty")
    ids: set[UUID] = set()
    for step in plan.steps:
        if not isinstance(step, PlannedStep):
            raise ValidationError(f"plan: every step must be a PlannedStep, got "
                                  f"{type(step).__name__}")
        where = f"plan step {step.step_id}"
        if step.step_id in ids:
            raise ValidationError(f"{where}: step_id is used twice")
        ids.add(step.step_id)
        _check_unit(where, step.subsystem, step.action, step.args, step.retry,
                    step.deadline_seconds)
        if not 0 <= step.start_after_seconds <= MAX_START_AFTER_SECONDS:
            raise ValidationError(f"{where}: start_after_seconds must be 0 to "
                                  f"{MAX_START_AFTER_SECONDS}, got {step.start_after_seconds}")
        if len(set(step.depends_on)) != len(step.depends_on):
            raise ValidationError(f"{where}: depends_on names a step twice")
        if step.step_id in step.depends_on:
            raise ValidationError(f"{where}: depends_on names the step itself")
        if step.compensation is not None:
            _check_unit(f"{where}: compensation", step.compensation.subsystem,
                        step.compensation.action, step.compensation.args,
                        step.compensation.retry, step.compensation.deadline_seconds)
    for step in plan.steps:
        for dependency in step.depends_on:
            if dependency not in ids:
                raise ValidationError(f"plan step {step.step_id}: depends_on names unknown "
                                      f"step {dependency}")
        if step.compensation is not None and compensation_id(step.step_id) in ids:
            raise ValidationError(f"plan step {step.step_id}: its compensation id is used "
                                  "as a step_id")
    _check_acyclic(plan)


def _check_unit(where: str, subsystem: str, action: str, args: msgspec.Raw,
                retry: RetryPolicy, deadline_seconds: float) -> None:
    for field, value in (("subsystem", subsystem), ("action", action)):
        if not isinstance(value, str) or not _TOKEN.match(value):
            raise ValidationError(f"{where}: {field} must be 1-64 letters, digits, '_' or "
                                  f"'-', got {value!r}")
    if not isinstance(args, msgspec.Raw):
        raise ValidationError(f"{where}: args must be msgspec.Raw JSON")
    require_json(where, "args", args)
    _require_number(where, "deadline_seconds", deadline_seconds, low=0.0, open_low=True)
    _check_retry(where, retry)


def _check_retry(where: str, retry: RetryPolicy) -> None:
    attempts = retry.max_attempts
    if isinstance(attempts, bool) or not isinstance(attempts, int) \
            or not 1 <= attempts <= MAX_ATTEMPTS_LIMIT:
        raise ValidationError(f"{where}: retry.max_attempts must be an integer in 1.."
                              f"{MAX_ATTEMPTS_LIMIT}, got {attempts!r}")
    _require_number(where, "retry.initial_delay", retry.initial_delay, low=0.0)
    _require_number(where, "retry.multiplier", retry.multiplier, low=1.0)
    _require_number(where, "retry.max_delay", retry.max_delay, low=retry.initial_delay)
    _require_number(where, "retry.jitter", retry.jitter, low=0.0, high=1.0)
    for code in retry.non_retryable:
        if not isinstance(code, str) or not code:
            raise ValidationError(f"{where}: retry.non_retryable codes must be non-empty "
                                  f"text, got {code!r}")


def _require_number(where: str, field: str, value: Any, *, low: float,
                    high: float = math.inf, open_low: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int | float) \
        and math.isfinite(value) and (value > low if open_low else value >= low) \
        and value <= high
    if not ok:
        bounds = f"> {low}" if open_low else f">= {low}"
        if high != math.inf:
            bounds += f" and <= {high}"
        raise ValidationError(f"{where}: {field} must be a finite number {bounds}, "
                              f"got {value!r}")


def require_json(where: str, field: str, value: msgspec.Raw) -> None:
    """Raw JSON must be one well-formed value: it is embedded verbatim in stored events."""
    try:
        msgspec.json.decode(value)
    except msgspec.DecodeError as e:
        raise ValidationError(f"{where}: {field} is not valid JSON ({e})") from e


def _check_acyclic(plan: Plan) -> None:
    deps = {step.step_id: step.depends_on for step in plan.steps}
    remaining = dict.fromkeys(deps)  # ordered like the plan
    while remaining:
        free = [sid for sid in remaining if not any(d in remaining for d in deps[sid])]
        if not free:
            # every step left depends on another step left: walk until a step repeats
            path, node = [], next(iter(remaining))
            while node not in path:
                path.append(node)
                node = next(d for d in deps[node] if d in remaining)
            cycle = [*path[path.index(node):], node]
            raise ValidationError(f"plan step {node}: depends_on forms a cycle "
                                  f"{' -> '.join(map(str, cycle))}")
        for sid in free:
            del remaining[sid]
