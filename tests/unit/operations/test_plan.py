"""Plans: validation names the step and field; backoff is exponential, capped and jittered."""

import math
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.errors import ValidationError
from aggregates.plan import (
    Compensation,
    Plan,
    PlannedStep,
    RetryPolicy,
    compensation_id,
    validate_plan,
)

from ._plans import EXACT, Run, Undo, step

ARGS = msgspec.Raw(b"{}")


def raw_step(step_id: UUID | None = None, **fields: Any) -> PlannedStep:
    """A step with valid defaults, overridden by `fields` (no validation on construction)."""
    values: dict[str, Any] = {"step_id": step_id or uuid4(), "subsystem": "echo",
                              "action": "run", "args": ARGS}
    values.update(fields)
    return PlannedStep(**values)


def refused(*steps: PlannedStep, match: str) -> ValidationError:
    with pytest.raises(ValidationError, match=match) as info:
        validate_plan(Plan(steps=steps))
    return info.value


def test_a_valid_dag_passes() -> None:
    a = step("a")
    b, c = step("b", a), step("c", a)
    validate_plan(Plan(steps=(step("d", b, c), b, c, a)))  # any order, if acyclic


def test_an_empty_plan_is_refused() -> None:
    refused(match="steps must not be empty")


def test_duplicate_step_ids_are_refused() -> None:
    sid = uuid4()
    error = refused(raw_step(sid), raw_step(sid), match="step_id is used twice")
    assert str(sid) in str(error)


def test_unknown_dependency_is_refused() -> None:
    a, ghost = raw_step(), uuid4()
    error = refused(a, raw_step(depends_on=(ghost,)), match="depends_on names unknown step")
    assert str(ghost) in str(error)


def test_self_and_repeated_dependencies_are_refused() -> None:
    sid = uuid4()
    refused(raw_step(sid, depends_on=(sid,)), match=f"{sid}: depends_on names the step itself")
    a = raw_step()
    refused(a, raw_step(depends_on=(a.step_id, a.step_id)), match="names a step twice")


def test_a_cycle_is_refused_and_named() -> None:
    a_id, b_id, c_id = uuid4(), uuid4(), uuid4()
    steps = (raw_step(a_id, depends_on=(c_id,)), raw_step(b_id, depends_on=(a_id,)),
             raw_step(c_id, depends_on=(b_id,)), raw_step(depends_on=(c_id,)))
    error = refused(*steps, match="depends_on forms a cycle")
    for sid in (a_id, b_id, c_id):
        assert str(sid) in str(error)


@pytest.mark.parametrize(("field", "value"), [
    ("subsystem", ""), ("subsystem", "a.b"), ("subsystem", "a b"), ("action", ""),
    ("action", "x>"), ("action", "*"),
])
def test_subsystem_and_action_must_be_subject_tokens(field: str, value: str) -> None:
    fields: dict[str, Any] = {field: value}
    s = raw_step(**fields)
    error = refused(s, match=f"{field} must be")
    assert str(s.step_id) in str(error)


def test_args_must_be_json() -> None:
    refused(raw_step(args=msgspec.Raw(b"{nope")), match="args is not valid JSON")
    refused(raw_step(args=msgspec.Raw(b"")), match="args is not valid JSON")


@pytest.mark.parametrize(("field", "value"), [
    ("max_attempts", 0), ("max_attempts", 1001), ("max_attempts", True),
    ("initial_delay", -1.0), ("initial_delay", math.nan), ("multiplier", 0.5),
    ("max_delay", 0.5), ("max_delay", math.inf), ("jitter", -0.1), ("jitter", 1.5),
])
def test_retry_policy_numbers_must_be_sane(field: str, value: Any) -> None:
    retry = RetryPolicy(**{field: value})
    refused(raw_step(retry=retry), match=f"retry.{field} must be")


def test_non_retryable_codes_must_be_text() -> None:
    refused(raw_step(retry=RetryPolicy(non_retryable=("",))), match="retry.non_retryable")


@pytest.mark.parametrize("value", [0, -5.0, math.inf])
def test_deadline_must_be_positive(value: float) -> None:
    refused(raw_step(deadline_seconds=value), match="deadline_seconds must be")


def test_the_compensation_is_validated_too() -> None:
    bad = Compensation(subsystem="", action="undo", args=ARGS)
    refused(raw_step(compensation=bad), match="compensation: subsystem must be")
    slow = Compensation(subsystem="echo", action="undo", args=ARGS,
                        retry=RetryPolicy(max_attempts=0))
    refused(raw_step(compensation=slow), match="compensation: retry.max_attempts")


def test_a_compensation_id_may_not_be_reused_as_a_step_id() -> None:
    a = raw_step(compensation=Compensation(subsystem="echo", action="undo", args=ARGS))
    refused(a, raw_step(compensation_id(a.step_id)), match="compensation id is used")


def test_steps_are_built_from_tagged_structs() -> None:
    s = PlannedStep.of(Run("web"), compensation=Compensation.of(Undo("web")))
    assert (s.subsystem, s.action) == ("test", "run")
    assert s.decode_args(Run) == Run("web")
    assert s.compensation is not None and s.compensation.action == "undo"
    assert s.compensation.decode_args(Undo) == Undo("web")
    assert s.compensation_id == compensation_id(s.step_id) != s.step_id
    assert PlannedStep.of(Run("x"), compensation=None).compensation_id is None


def test_untagged_structs_need_subsystem_and_action() -> None:
    class Plain(msgspec.Struct, frozen=True):
        n: int

    with pytest.raises(ValidationError, match="give subsystem and action"):
        PlannedStep.of(Plain(1))
    s = PlannedStep.of(Plain(1), subsystem="storage", action="create")
    assert s.decode_args(Plain) == Plain(1)


def test_a_plan_survives_json() -> None:
    a = step("a")
    plan = Plan(steps=(a, step("b", a, compensate=False)))
    assert msgspec.json.decode(msgspec.json.encode(plan), type=Plan) == plan


# --------------------------------------------------------------------------- backoff


def test_backoff_is_exponential_and_capped() -> None:
    assert [EXACT.base_delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert RetryPolicy(max_delay=30).base_delay(10_000) == 30  # no overflow


def test_jitter_stays_within_its_fraction_and_the_cap() -> None:
    policy = RetryPolicy(initial_delay=2, multiplier=3, max_delay=100, jitter=0.25)
    seen = set()
    for n in range(1, 8):
        base = policy.base_delay(n)
        for _ in range(50):
            delay = policy.delay(uuid4(), n)
            assert base * 0.75 <= delay <= min(100, base * 1.25)
            seen.add(round(delay / base, 2))
    assert len(seen) > 10  # it does spread


def test_jitter_is_deterministic_per_step_and_attempt() -> None:
    policy, sid = RetryPolicy(jitter=0.5), uuid4()
    assert policy.delay(sid, 2) == policy.delay(sid, 2)
    assert len({policy.delay(sid, 1), policy.delay(sid, 2), policy.delay(uuid4(), 1)}) == 3


def test_what_is_retried() -> None:
    assert EXACT.retries("busy", True, 1) and EXACT.retries("busy", True, 2)
    assert not EXACT.retries("busy", True, 3)  # attempts used up
    assert not EXACT.retries("busy", False, 1)  # the worker said so
    assert not EXACT.retries("fatal", True, 1)  # the plan said so
