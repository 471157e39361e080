"""Builders shared by the operation tests: tiny plans, a fixed clock, and result helpers."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest

from aggregates.errors import InvalidTransitionError
from aggregates.operation import Operation
from aggregates.plan import Compensation, Plan, PlannedStep, RetryPolicy

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
OK = msgspec.Raw(b'{"ok":true}')
# no jitter, so retry times are exact: 1 s, 2 s, 4 s ... capped at 10 s
EXACT = RetryPolicy(max_attempts=3, initial_delay=1.0, multiplier=2.0, max_delay=10.0,
                    jitter=0.0, non_retryable=("fatal",))


class Run(msgspec.Struct, frozen=True, tag="test.run"):
    """Arguments of a test step."""

    name: str


class Undo(msgspec.Struct, frozen=True, tag="test.undo"):
    """Arguments of a test compensation."""

    name: str


def at(seconds: float) -> datetime:
    """T0 plus some seconds."""
    return T0 + timedelta(seconds=seconds)


def step(name: str, *depends_on: PlannedStep, compensate: bool = True,
         retry: RetryPolicy = EXACT, deadline: float = 30.0,
         compensation_retry: RetryPolicy = EXACT) -> PlannedStep:
    """A step named `name` (in its args), compensated by `Undo(name)` unless told not to."""
    comp = Compensation.of(Undo(name), retry=compensation_retry) if compensate else None
    return PlannedStep.of(Run(name), depends_on=[d.step_id for d in depends_on],
                          retry=retry, deadline_seconds=deadline, compensation=comp)


def accepted(*steps: PlannedStep, entities: tuple[UUID, ...] = ()) -> Operation:
    """An accepted operation over these steps."""
    return Operation.accept(kind="test.op", plan=Plan(steps=steps), now=T0,
                            entity_ids=entities)


def running(*steps: PlannedStep) -> Operation:
    """A started operation over these steps."""
    op = accepted(*steps)
    op.start(T0)
    return op


def succeed(op: Operation, step_id: UUID, now: datetime = T0,
            result: msgspec.Raw = OK) -> None:
    """Dispatch the step's next attempt and report success."""
    attempt = op.dispatch(step_id, now).attempt
    assert op.record_success(step_id, attempt, result, now)


def fail(op: Operation, step_id: UUID, now: datetime = T0, code: str = "fatal",
         retryable: bool = True) -> int:
    """Dispatch the step's next attempt and report a failure; the attempt number."""
    attempt = op.dispatch(step_id, now).attempt
    assert op.record_failure(step_id, attempt, code, f"{code} on attempt {attempt}",
                             retryable, now)
    return attempt


def names(op: Operation, ids: Any) -> list[str]:
    """The step names (from their args) of these run ids."""
    return [msgspec.json.decode(op.step(i).args, type=dict)["name"] for i in ids]


@contextmanager
def unchanged(op: Operation) -> Iterator[None]:
    """Assert the block records no event."""
    version, pending = op.version, len(op.pending_events)
    yield
    assert op.version == version and len(op.pending_events) == pending


def refused(op: Operation, call: Any, action: str) -> InvalidTransitionError:
    """Call, expect InvalidTransitionError naming the operation, its state and the action,
    and no change."""
    state = op.state
    with unchanged(op), pytest.raises(InvalidTransitionError) as info:
        call()
    message = str(info.value)
    assert "operation" in message and str(op.id) in message
    assert state.value in message and action in message
    assert info.value.state is state
    return info.value
