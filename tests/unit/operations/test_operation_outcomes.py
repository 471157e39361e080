"""What an operation records as it starts and ends: its fields before anything ran, when each
terminal state was reached and why, and what a ready step and a dispatch carry."""

import msgspec
import pytest

from aggregates.errors import ValidationError
from aggregates.operation import Operation, OperationState, QueuedCommand
from aggregates.plan import Plan, RetryPolicy
from aggregates.step_run import Failure, Phase, ReadyStep, StepDispatch
from kernel.store.testing import roundtrip

from ._plans import T0, accepted, at, fail, running, step, succeed

S = OperationState


def test_an_accepted_operation_has_nothing_recorded_yet() -> None:
    op = accepted(step("a"))
    assert (op.started_at, op.finished_at, op.waiting_on, op.cancel_reason) == (
        None, None, None, None)
    assert (op.failed_step, op.failure, op.note, op.command) == (None, None, "", None)
    assert not op.stopping and not op.is_finished and not op.planned_on_admission


def test_a_queued_command_must_be_one_json_value() -> None:
    bad = QueuedCommand(actor="alice", command=msgspec.Raw(b"{nope"))
    with pytest.raises(ValidationError, match=r"^operation vm\.stop: command is not valid JSON"):
        Operation.accept(kind="vm.stop", plan=Plan(steps=()), now=T0, command=bad)


def test_success_records_when_it_ended() -> None:
    a = step("a")
    op = running(a)
    op.dispatch(a.step_id, at(1))
    assert op.record_success(a.step_id, 1, msgspec.Raw(b"{}"), at(3))
    assert op.step(a.step_id).attempts[0].finished_at == at(3)
    assert (op.state, op.finished_at, op.note, op.failure) == (S.SUCCEEDED, at(3), "", None)
    assert roundtrip(op) == op


def test_a_rollback_records_when_it_ended() -> None:
    a, b = step("a"), step("b", retry=RetryPolicy(max_attempts=1))
    op = running(a, b)
    succeed(op, a.step_id, at(1))
    fail(op, b.step_id, at(2))
    assert (op.state, op.failed_step, op.finished_at) == (S.COMPENSATING, b.step_id, None)
    succeed(op, a.compensation_id, at(4))  # type: ignore[arg-type]
    assert (op.state, op.finished_at) == (S.ROLLED_BACK, at(4))


def test_a_failure_records_the_step_its_phase_and_its_last_error() -> None:
    a = step("a", retry=RetryPolicy(max_attempts=1), compensate=False)
    op = running(a)
    fail(op, a.step_id, at(2), code="disk_full")
    assert (op.state, op.finished_at) == (S.FAILED, at(2))
    assert op.failure == Failure(step_id=a.step_id, phase=Phase.FORWARD,
                                 error_code="disk_full", message="disk_full on attempt 1")
    assert roundtrip(op) == op


def test_a_cancel_records_its_reason_and_when_it_ended() -> None:
    a = step("a")
    op = running(a)
    op.dispatch(a.step_id, T0)
    assert op.cancel("user asked", at(1))
    [requested] = [e for e in op.pending_events if isinstance(e, Operation.CancelRequested)]
    assert (requested.reason, op.cancel_reason, op.finished_at) == ("user asked", "user asked",
                                                                    None)
    assert op.record_failure(a.step_id, 1, "boom", "broke", True, at(2))
    assert (op.state, op.finished_at) == (S.CANCELLED, at(2))


def test_ready_steps_and_dispatches_carry_everything_a_worker_needs() -> None:
    a = step("a", deadline=20)
    op = running(a)
    [ready] = op.ready_steps(T0)
    assert ready == ReadyStep(step_id=a.step_id, phase=Phase.FORWARD, attempt=1,
                              subsystem="test", action="run")
    dispatch = op.dispatch(a.step_id, at(1))
    assert dispatch == StepDispatch(
        operation_id=op.id, step_id=a.step_id, phase=Phase.FORWARD, attempt=1,
        deadline_at=at(21), subsystem="test", action="run", args=a.args)
    assert op.in_flight() == (dispatch,)
    op.record_failure(a.step_id, 1, "boom", "retry me", True, at(2))  # retried 1 s later
    assert op.ready_steps(at(2.5)) == ()
    [again] = op.ready_steps(at(3))
    assert (again.step_id, again.attempt) == (a.step_id, 2)


def test_a_compensation_is_dispatched_naming_the_step_it_undoes() -> None:
    a, b = step("a"), step("b", retry=RetryPolicy(max_attempts=1), compensate=False)
    op = running(a, b)
    succeed(op, a.step_id)
    fail(op, b.step_id, at(1))
    [undo] = op.ready_steps(at(1))
    assert undo == ReadyStep(step_id=a.compensation_id, phase=Phase.COMPENSATION,  # type: ignore[arg-type]
                             attempt=1, subsystem="test", action="undo")
    dispatch = op.dispatch(undo.step_id, at(1))
    assert (dispatch.phase, dispatch.compensates) == (Phase.COMPENSATION, a.step_id)


def test_a_dispatch_carries_the_arguments_bound_for_its_attempt() -> None:
    a = step("a")
    op = running(a)
    bound = msgspec.Raw(b'{"host_uri": "qemu:///system"}')
    dispatch = op.dispatch(a.step_id, T0, args=bound)
    assert dispatch.args == bound and op.in_flight()[0].args == bound
    b = step("b")
    other = running(b)
    with pytest.raises(ValidationError, match=f"^step {b.step_id}: args is not valid JSON"):
        other.dispatch(b.step_id, T0, args=msgspec.Raw(b"{nope"))


def test_a_delayed_step_is_ready_at_its_time_and_a_plain_one_sets_no_timer() -> None:
    a = step("a")
    op = running(a)
    assert op.next_wakeup() is None  # ready now: nothing to wait for
    slow = msgspec.structs.replace(step("slow"), start_after_seconds=10)
    op = running(slow)
    assert op.ready_steps(at(9.9)) == () and op.next_wakeup() == at(10)
    assert [r.step_id for r in op.ready_steps(at(10))] == [slow.step_id]
    assert op.dispatch(slow.step_id, at(10)).attempt == 1
