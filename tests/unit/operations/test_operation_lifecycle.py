"""Operation life cycle: accept, wait, start, cancel in every state, and the store agrees."""

from datetime import datetime
from uuid import uuid4

import msgspec
import pytest

from aggregates.base import audit_context
from aggregates.errors import InvalidTransitionError, NotFoundError, ValidationError
from aggregates.operation import TERMINAL_STATES, Operation, OperationState
from aggregates.plan import Plan
from aggregates.step_run import Phase, StepStatus
from kernel.store.testing import roundtrip

from ._plans import OK, T0, accepted, at, fail, refused, running, step, succeed, unchanged

S = OperationState


def test_accept_keeps_kind_plan_and_sorted_entities() -> None:
    a, b = step("a"), step("b", compensate=False)
    e1, e2 = uuid4(), uuid4()
    with audit_context("alice", correlation_id=uuid4()):
        op = accepted(a, b, entities=(e2, e1, e2))
    assert op.state is S.ACCEPTED and op.kind == "test.op"
    assert op.entity_ids == tuple(sorted((e1, e2)))
    assert op.plan == Plan(steps=(a, b)) and op.accepted_at == T0
    assert [r.step_id for r in op.forward_steps()] == [a.step_id, b.step_id]
    assert op.step(a.compensation_id).phase is Phase.COMPENSATION  # type: ignore[arg-type]
    assert op.pending_events[0].actor == "alice"  # type: ignore[attr-defined]
    assert op.ready_steps(T0) == () and op.next_wakeup() is None
    assert roundtrip(op) == op


def test_accept_takes_a_chosen_id() -> None:
    chosen = uuid4()
    op = Operation.accept(kind="vm.deploy", plan=Plan(steps=(step("a"),)), now=T0, id=chosen)
    assert op.id == chosen


@pytest.mark.parametrize("kind", ["", " vm.deploy", None])
def test_kind_must_be_text(kind: str) -> None:
    with pytest.raises(ValidationError, match="operation kind"):
        Operation.accept(kind=kind, plan=Plan(steps=(step("a"),)), now=T0)


def test_an_invalid_plan_is_refused_at_accept() -> None:
    with pytest.raises(ValidationError, match="steps must not be empty"):
        Operation.accept(kind="k", plan=Plan(steps=()), now=T0)


def test_times_must_be_timezone_aware() -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        Operation.accept(kind="k", plan=Plan(steps=(step("a"),)), now=datetime(2026, 1, 1))
    op = accepted(step("a"))
    with pytest.raises(ValidationError, match="timezone-aware"):
        op.start(datetime(2026, 1, 1))


def test_wait_then_start() -> None:
    e1, e2 = uuid4(), uuid4()
    op = accepted(step("a"), entities=(e1, e2))
    op.wait_for_entity(e1, at(1))
    assert op.state is S.WAITING and op.waiting_on == e1
    with unchanged(op):
        op.wait_for_entity(e1, at(2))  # again: nothing new
    op.wait_for_entity(e2, at(3))
    assert op.waiting_on == e2
    op.start(at(4))
    assert op.state is S.RUNNING and op.waiting_on is None and op.started_at == at(4)
    assert roundtrip(op) == op


def test_wait_only_for_an_entity_it_changes() -> None:
    op = accepted(step("a"), entities=(uuid4(),))
    with pytest.raises(ValidationError, match="not one it changes"):
        op.wait_for_entity(uuid4(), T0)


def test_wait_and_start_are_refused_once_running() -> None:
    e = uuid4()
    op = running(step("a"))
    refused(op, lambda: op.start(T0), "start")
    op2 = accepted(step("a"), entities=(e,))
    op2.start(T0)
    refused(op2, lambda: op2.wait_for_entity(e, T0), "wait for an entity")


@pytest.mark.parametrize("waiting", [False, True])
def test_cancel_before_start_cancels_at_once(waiting: bool) -> None:
    e = uuid4()
    op = accepted(step("a"), entities=(e,))
    if waiting:
        op.wait_for_entity(e, T0)
    assert op.cancel("changed my mind", at(1))
    assert op.state is S.CANCELLED and op.cancel_reason == "changed my mind"
    assert op.finished_at == at(1) and op.is_finished
    assert op.ready_steps(at(99)) == () and op.next_wakeup() is None
    assert roundtrip(op) == op


def test_cancel_while_running_before_anything_ran() -> None:
    op = running(step("a"), step("b"))
    assert op.cancel("stop", at(1))
    assert op.state is S.CANCELLED
    assert all(r.status is StepStatus.PENDING and not r.attempts for r in op.runs.values())


def test_cancel_with_a_step_in_flight_waits_for_it_then_compensates() -> None:
    a, b, c = step("a"), step("b"), step("c")
    op = running(a, b, c)
    succeed(op, a.step_id)
    d = op.dispatch(b.step_id, at(1))
    assert op.cancel("stop", at(2))
    assert op.state is S.RUNNING and op.stopping  # b still in flight
    assert op.ready_steps(at(3)) == ()  # c is never dispatched
    with pytest.raises(InvalidTransitionError, match="the operation is stopping"):
        op.dispatch(c.step_id, at(3))
    assert op.record_success(b.step_id, d.attempt, OK, at(4))
    assert op.state is S.COMPENSATING
    # b completed last, so it is undone first
    ready = op.ready_steps(at(4))
    assert [r.step_id for r in ready] == [b.compensation_id]
    succeed(op, b.compensation_id, at(5))  # type: ignore[arg-type]
    succeed(op, a.compensation_id, at(6))  # type: ignore[arg-type]
    assert op.state is S.ROLLED_BACK and op.cancel_reason == "stop"
    assert op.step(c.step_id).status is StepStatus.PENDING
    assert roundtrip(op) == op


def test_an_irreversible_step_once_dispatched_makes_the_cancel_refused() -> None:
    # a domain powered off (vm.stop's stop) is not powered on again by a cancel: once such
    # a step is sent, the operation goes to its end, so the model never says Running while
    # the domain is off (the split-process test saw a cancelled stop do that)
    a = step("a")
    off = msgspec.structs.replace(step("off", a, compensate=False), irreversible=True)
    op = running(a, off)
    succeed(op, a.step_id)
    assert op.forward_steps()[1].irreversible
    d = op.dispatch(off.step_id, at(1))
    with pytest.raises(InvalidTransitionError, match=r"step test\.run ran, and what it did "
                       r"cannot be undone"):
        op.cancel("stop", at(2))
    assert not op.stopping and op.cancel_reason is None
    assert op.record_success(off.step_id, d.attempt, OK, at(3))
    assert op.state is S.SUCCEEDED
    assert roundtrip(op) == op
    # before it is sent, the cancel is taken and undoes what ran
    early = running(a := step("a"), msgspec.structs.replace(step("off", a), irreversible=True))
    succeed(early, a.step_id)
    assert early.cancel("stop", at(1)) and early.state is S.COMPENSATING


def test_cancel_with_a_failing_step_in_flight_does_not_retry_it() -> None:
    a = step("a")
    op = running(a)
    d = op.dispatch(a.step_id, T0)
    op.cancel("stop", at(1))
    assert op.record_failure(a.step_id, d.attempt, "busy", "try later", True, at(2))
    assert op.step(a.step_id).status is StepStatus.FAILED
    assert op.state is S.CANCELLED  # nothing succeeded: nothing to undo


def test_cancel_after_steps_without_compensation_is_cancelled() -> None:
    a, b = step("a", compensate=False), step("b")
    op = running(a, b)
    succeed(op, a.step_id)
    assert op.cancel("stop", at(1))
    assert op.state is S.CANCELLED


def test_cancel_drops_a_pending_retry() -> None:
    a = step("a")
    op = running(a)
    fail(op, a.step_id, code="busy")
    assert op.step(a.step_id).status is StepStatus.RETRY_WAIT
    op.cancel("stop", at(1))
    assert op.state is S.CANCELLED
    assert op.next_wakeup() is None and op.ready_steps(at(100)) == ()


def test_cancel_twice_or_while_compensating_changes_nothing() -> None:
    a, b = step("a"), step("b")
    op = running(a, b)
    succeed(op, a.step_id)
    op.dispatch(b.step_id, T0)
    assert op.cancel("first", at(1))
    with unchanged(op):
        assert not op.cancel("second", at(2))
    assert op.cancel_reason == "first"
    op.deadline_passed(b.step_id, 1, at(60))
    assert op.state is S.COMPENSATING
    with unchanged(op):
        assert not op.cancel("third", at(61))


def test_cancel_after_a_failure_is_already_stopping() -> None:
    a, b = step("a"), step("b")
    op = running(a, b)
    op.dispatch(b.step_id, T0)
    fail(op, a.step_id, code="fatal")
    assert op.stopping and op.state is S.RUNNING
    with unchanged(op):
        assert not op.cancel("late", at(1))
    assert op.cancel_reason is None


FINISHED = [S.SUCCEEDED, S.FAILED, S.ROLLED_BACK, S.CANCELLED]


def test_these_states_are_terminal() -> None:
    assert frozenset(FINISHED) == TERMINAL_STATES


@pytest.mark.parametrize("state", FINISHED)
def test_a_finished_operation_refuses_cancel(state: OperationState) -> None:
    a = step("a")
    op = running(a)
    if state is S.SUCCEEDED:
        succeed(op, a.step_id)
    elif state is S.FAILED:
        fail(op, a.step_id)
    elif state is S.CANCELLED:
        op.cancel("x", T0)
    else:
        b = step("b")
        op = running(a, b)
        succeed(op, a.step_id)
        fail(op, b.step_id)
        succeed(op, a.compensation_id, at(1))  # type: ignore[arg-type]
    assert op.state is state
    refused(op, lambda: op.cancel("too late", at(2)), "cancel")


def test_an_unknown_step_is_not_found() -> None:
    op = running(step("a"))
    ghost = uuid4()
    for call in (lambda: op.dispatch(ghost, T0), lambda: op.record_success(ghost, 1, OK, T0),
                 lambda: op.record_failure(ghost, 1, "x", "y", True, T0),
                 lambda: op.deadline_passed(ghost, 1, T0), lambda: op.result_of(ghost)):
        with pytest.raises(NotFoundError, match=str(ghost)):
            call()
