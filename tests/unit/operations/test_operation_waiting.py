"""An operation that waited for its entities: planned again, refused or found done already, at
the aggregate; and why a step that is not ready cannot be dispatched."""

from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.errors import ValidationError
from aggregates.operation import MAX_MESSAGE_CHARS, Operation, OperationState, QueuedCommand
from aggregates.plan import Plan, PlannedStep, RetryPolicy
from kernel.store.testing import roundtrip

from ._plans import T0, accepted, at, fail, refused, running, step, succeed

S = OperationState
COMMAND = QueuedCommand(actor="alice", command=msgspec.Raw(b'{"kind": "vm.stop"}'))


def queued(*entities: UUID, kind: str = "vm.stop") -> Operation:
    """An operation accepted with its command, waiting to be planned."""
    return Operation.accept(kind=kind, plan=Plan(steps=()), now=T0, entity_ids=entities,
                            command=COMMAND)


def replanned_event(op: Operation) -> Operation.Replanned:
    [event] = [e for e in op.pending_events if isinstance(e, Operation.Replanned)]
    return event


def test_a_replan_keeps_kind_and_entities_it_already_had() -> None:
    e1, e2 = sorted((uuid4(), uuid4()))
    op = queued(e1, e2)
    plan = Plan(steps=(step("a"),))
    op.replan(plan, at(1), [e2], kind="vm.stop")
    event = replanned_event(op)
    assert (event.kind, event.entity_ids, event.plan) == ("", (), plan)
    assert (op.kind, op.entity_ids, op.plan) == ("vm.stop", (e1, e2), plan)
    assert roundtrip(op) == op


def test_a_replan_records_a_new_kind_and_every_entity_it_now_changes() -> None:
    e1, e2, e3 = sorted((uuid4(), uuid4(), uuid4()))
    op = queued(e2)
    op.replan(Plan(steps=(step("a"),)), at(1), [e3, e1], kind="vm.expunge")
    event = replanned_event(op)
    assert (event.kind, event.entity_ids) == ("vm.expunge", (e1, e2, e3))
    assert (op.kind, op.entity_ids) == ("vm.expunge", (e1, e2, e3))
    assert roundtrip(op) == op


def test_a_replan_without_a_kind_keeps_the_kind() -> None:
    op = queued(uuid4())
    op.replan(Plan(steps=(step("a"),)), at(1))
    assert replanned_event(op).kind == "" and op.kind == "vm.stop"
    assert roundtrip(op).kind == "vm.stop"


@pytest.mark.parametrize("kind", ["", "  "])
def test_a_replan_to_a_blank_kind_is_refused(kind: str) -> None:
    op = queued(uuid4())
    with pytest.raises(ValidationError,
                       match=f"operation kind must be non-empty text, got {kind!r}"):
        op.replan(Plan(steps=(step("a"),)), at(1), kind=kind)
    assert op.version == 1


def test_only_a_waiting_operation_with_a_command_is_planned_again() -> None:
    with_plan = accepted(step("a"))
    refused(with_plan, lambda: with_plan.replan(Plan(steps=(step("b"),)), at(1)),
            "be planned again (it was accepted with its plan)")
    op = queued(uuid4())
    op.start(T0)
    refused(op, lambda: op.replan(Plan(steps=(step("b"),)), at(1)), "be planned again")


def test_refuse_ends_a_waiting_operation_before_any_step() -> None:
    op = queued(uuid4())
    with pytest.raises(ValidationError, match="error_code must be non-empty text"):
        op.refuse("", "no", at(1))
    op.refuse("invalid", "the VM was destroyed meanwhile", at(1))
    assert op.state is S.FAILED and op.finished_at == at(1)
    assert op.failure is not None
    assert (op.failure.step_id, op.failure.error_code, op.failure.message) == (
        None, "invalid", "the VM was destroyed meanwhile")
    refused(op, lambda: op.refuse("invalid", "again", at(2)), "be refused")


def test_an_unneeded_operation_succeeds_with_its_note() -> None:
    op = queued(uuid4())
    for note in ("", "   "):
        with pytest.raises(ValidationError, match="note: say why nothing was left to do"):
            op.complete_unneeded(note, at(1))
    op.complete_unneeded("the VM is Stopped already", at(1))
    assert (op.state, op.note, op.finished_at) == (S.SUCCEEDED, "the VM is Stopped already",
                                                   at(1))
    refused(op, lambda: op.complete_unneeded("again", at(2)), "complete")


def test_a_failed_attempt_records_when_it_ended_and_a_missed_deadline_says_which() -> None:
    a = step("a", deadline=30)
    op = running(a)
    fail(op, a.step_id, at(5), code="boom")
    assert op.step(a.step_id).attempts[0].finished_at == at(5)
    op.dispatch(a.step_id, at(6))
    assert op.deadline_passed(a.step_id, 2, at(36))
    late = op.step(a.step_id).attempts[1]
    assert late.finished_at == at(36)
    assert late.message == f"no result by the deadline {at(36).isoformat()}"


def delayed(name: str, seconds: float) -> PlannedStep:
    return msgspec.structs.replace(step(name), start_after_seconds=seconds)


def test_a_step_that_is_not_ready_says_why() -> None:
    slow = delayed("slow", 10)
    op = running(slow)
    refused(op, lambda: op.dispatch(slow.step_id, at(9)),
            f"it waits until {at(10).isoformat()}")
    a, b = step("a"), step("b")
    op = running(a, b)
    fail(op, a.step_id, T0, code="boom")  # retried 1 s later
    refused(op, lambda: op.dispatch(a.step_id, at(0.5)),
            f"retry waits until {at(1).isoformat()}")
    op.cancel("stop", at(0.5))  # b never ran; a waits for its retry no more
    assert op.state is S.CANCELLED
    refused(op, lambda: op.dispatch(b.step_id, at(2)), "the operation is not running")
    # a's retry time has come, but a cancelled operation retries nothing
    refused(op, lambda: op.dispatch(a.step_id, at(1)), "the operation is not running")


def test_a_delayed_step_whose_time_came_still_waits_for_its_dependencies() -> None:
    a = step("a")
    b = msgspec.structs.replace(step("b", a), start_after_seconds=10)
    op = running(a, b)
    refused(op, lambda: op.dispatch(b.step_id, at(10)), "its dependencies have not succeeded")


def test_nothing_is_dispatched_while_an_operation_stops() -> None:
    a, b = step("a"), step("b", retry=RetryPolicy(max_attempts=1))
    op = running(a, b)
    op.dispatch(a.step_id, T0)
    fail(op, b.step_id, T0)  # failed for good while a is in flight: stopping
    assert op.state is S.RUNNING and op.stopping
    refused(op, lambda: op.dispatch(b.step_id, at(1)), "Failed")
    refused(op, lambda: op.dispatch(b.compensation_id, at(1)),  # type: ignore[arg-type]
            "the operation is stopping")


def test_a_forward_step_is_not_dispatched_while_compensating() -> None:
    a = step("a")
    b = step("b", a, retry=RetryPolicy(max_attempts=1))
    c = step("c", a)
    op = running(a, b, c)
    succeed(op, a.step_id)
    fail(op, b.step_id, T0)
    assert op.state is S.COMPENSATING
    refused(op, lambda: op.dispatch(c.step_id, at(1)), "the operation is compensating")


def test_refusals_and_notes_are_kept_to_the_message_limit() -> None:
    op = queued(uuid4())
    op.refuse("invalid", "x" * 5000, at(1))
    assert op.failure is not None and op.failure.message == "x" * MAX_MESSAGE_CHARS
    done = queued(uuid4())
    done.complete_unneeded("y" * 5000, at(1))
    assert done.note == "y" * MAX_MESSAGE_CHARS


def test_malformed_inputs_are_refused_naming_what_is_wrong() -> None:
    a = step("a")
    op = running(a)
    with pytest.raises(ValidationError,
                       match=f"^step {a.step_id}: args must be msgspec.Raw JSON$"):
        op.dispatch(a.step_id, T0, args=b"{}")  # type: ignore[arg-type]
    op.dispatch(a.step_id, T0)
    with pytest.raises(ValidationError,
                       match=f"^step {a.step_id}: result must be msgspec.Raw JSON$"):
        op.record_success(a.step_id, 1, b"{}", T0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError,
                       match=f"^step {a.step_id}: error_code must be non-empty text$"):
        op.record_failure(a.step_id, 1, "", "no code", True, T0)
    with pytest.raises(ValidationError, match="command must be a QueuedCommand"):
        Operation.accept(kind="vm.stop", plan=Plan(steps=()), now=T0,
                         command=b"{}")  # type: ignore[arg-type]
    waiting, entity = queued(uuid4()), uuid4()
    with pytest.raises(ValidationError,
                       match=f"^operation {waiting.id}: entity {entity} is not one it changes$"):
        waiting.wait_for_entity(entity, T0)
