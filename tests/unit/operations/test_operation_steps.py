"""Operation steps: readiness, retries with backoff, deadlines, compensation, idempotency."""

from datetime import timedelta

import msgspec
import pytest

from aggregates.errors import ValidationError
from aggregates.operation import MAX_MESSAGE_CHARS, OperationState
from aggregates.plan import RetryPolicy
from aggregates.step_run import DEADLINE_EXCEEDED, AttemptOutcome, Phase, StepStatus
from kernel.store.testing import roundtrip

from ._plans import OK, T0, accepted, at, fail, names, refused, running, step, succeed, unchanged

S = OperationState


def test_ready_steps_follow_the_dag() -> None:
    a = step("a")
    b, c = step("b", a), step("c", a)
    d = step("d", b, c)
    op = running(d, c, b, a)
    assert names(op, [r.step_id for r in op.ready_steps(T0)]) == ["a"]
    succeed(op, a.step_id)
    assert names(op, [r.step_id for r in op.ready_steps(T0)]) == ["c", "b"]  # plan order
    succeed(op, b.step_id)
    assert names(op, [r.step_id for r in op.ready_steps(T0)]) == ["c"]
    succeed(op, c.step_id)
    ready = op.ready_steps(T0)
    assert [(r.step_id, r.attempt, r.phase, r.subsystem, r.action) for r in ready] == \
        [(d.step_id, 1, Phase.FORWARD, "test", "run")]
    succeed(op, d.step_id, at(5), msgspec.Raw(b'{"vm":"up"}'))
    assert op.state is S.SUCCEEDED and op.finished_at == at(5)
    assert op.result_of(d.step_id) == msgspec.Raw(b'{"vm":"up"}')
    assert op.completion_order == [a.step_id, b.step_id, c.step_id, d.step_id]
    assert op.ready_steps(at(6)) == () and op.in_flight() == () and op.next_wakeup() is None
    assert roundtrip(op) == op


def test_dispatch_records_the_attempt_and_its_deadline() -> None:
    a = step("a", deadline=45)
    op = running(a)
    d = op.dispatch(a.step_id, at(1))
    assert (d.operation_id, d.step_id, d.attempt) == (op.id, a.step_id, 1)
    assert d.deadline_at == at(46) and d.args == a.args and d.compensates is None
    assert d.message_id == f"{a.step_id}:1"
    assert op.in_flight() == (d,) and op.next_wakeup() == at(46)
    assert op.overdue(at(45)) == () and op.overdue(at(46)) == (d,)
    attempt = op.step(a.step_id).attempts[0]
    assert attempt.outcome is AttemptOutcome.IN_FLIGHT and attempt.dispatched_at == at(1)
    assert op.ready_steps(at(2)) == ()
    assert roundtrip(op) == op


def test_dispatch_is_refused_unless_ready() -> None:
    a = step("a")
    b = step("b", a)
    op = accepted(a, b)
    refused(op, lambda: op.dispatch(a.step_id, T0), "not running")
    op.start(T0)
    refused(op, lambda: op.dispatch(b.step_id, T0), "dependencies have not succeeded")
    refused(op, lambda: op.dispatch(a.compensation_id, T0), "not its turn")  # type: ignore[arg-type]
    op.dispatch(a.step_id, T0)
    refused(op, lambda: op.dispatch(a.step_id, T0), "InFlight")


def test_a_retryable_failure_waits_out_its_backoff() -> None:
    a = step("a")  # 3 attempts, 1 s then 2 s, no jitter
    op = running(a)
    fail(op, a.step_id, at(0), code="busy")
    run = op.step(a.step_id)
    assert run.status is StepStatus.RETRY_WAIT and run.retry_at == at(1)
    assert run.attempts[0].retry_at == at(1) and run.attempts[0].retryable
    assert op.ready_steps(at(0.5)) == () and op.next_wakeup() == at(1)
    refused(op, lambda: op.dispatch(a.step_id, at(0.5)), "retry waits until")
    assert [r.attempt for r in op.ready_steps(at(1))] == [2]
    fail(op, a.step_id, at(1), code="busy")
    assert run.retry_at == at(3)
    succeed(op, a.step_id, at(3))
    assert op.state is S.SUCCEEDED
    assert [x.outcome for x in run.attempts] == [AttemptOutcome.FAILED] * 2 + \
        [AttemptOutcome.SUCCEEDED]
    assert roundtrip(op) == op


def test_jittered_retry_times_stay_within_bounds_and_replay() -> None:
    policy = RetryPolicy(max_attempts=6, initial_delay=2, multiplier=2, max_delay=20,
                         jitter=0.3)
    a = step("a", retry=policy)
    op = running(a)
    now = T0
    for attempt in range(1, 6):
        fail(op, a.step_id, now, code="busy")
        retry_at = op.step(a.step_id).retry_at
        assert retry_at is not None
        base = policy.base_delay(attempt)
        waited = (retry_at - now).total_seconds()
        assert base * 0.7 - 1e-6 <= waited <= min(20, base * 1.3) + 1e-6
        now = retry_at
    fail(op, a.step_id, now, code="busy")
    assert op.state is S.FAILED and len(op.step(a.step_id).attempts) == 6
    assert roundtrip(op) == op  # the same retry times come back from the store


@pytest.mark.parametrize(("code", "retryable"), [("fatal", True), ("busy", False)])
def test_a_non_retryable_failure_fails_for_good(code: str, retryable: bool) -> None:
    a = step("a", compensate=False)
    op = running(a)
    fail(op, a.step_id, code=code, retryable=retryable)
    run = op.step(a.step_id)
    assert run.status is StepStatus.FAILED and run.retry_at is None
    assert op.state is S.FAILED and op.failure is not None
    assert (op.failure.step_id, op.failure.phase, op.failure.error_code) == \
        (a.step_id, Phase.FORWARD, code)


def test_exhausted_attempts_compensate_in_reverse_order_of_completion() -> None:
    a, b, c = step("a"), step("b"), step("c")
    x = step("x", a, b, c)
    op = running(a, b, c, x)
    da, db, dc = (op.dispatch(s.step_id, T0) for s in (a, b, c))
    # completion order c, a, b: not the plan order
    op.record_success(c.step_id, dc.attempt, OK, at(1))
    op.record_success(a.step_id, da.attempt, OK, at(2))
    op.record_success(b.step_id, db.attempt, OK, at(3))
    now = at(3)
    for _ in range(3):
        fail(op, x.step_id, now, code="busy")
        now = op.step(x.step_id).retry_at or now
    assert op.step(x.step_id).status is StepStatus.FAILED and op.state is S.COMPENSATING
    assert names(op, op.compensations_due()) == ["b", "a", "c"]
    undone = []
    while op.state is S.COMPENSATING:
        ready = op.ready_steps(now)
        assert len(ready) == 1 and ready[0].phase is Phase.COMPENSATION  # one at a time
        d = op.dispatch(ready[0].step_id, now)
        assert op.ready_steps(now) == ()
        assert d.compensates is not None and d.subsystem == "test" and d.action == "undo"
        undone.append(d.compensates)
        op.record_success(d.step_id, d.attempt, OK, now)
    assert names(op, undone) == ["b", "a", "c"]
    assert op.state is S.ROLLED_BACK and op.failed_step == x.step_id
    assert op.step(x.compensation_id).attempts == []  # type: ignore[arg-type]
    assert roundtrip(op) == op


def test_steps_without_compensation_or_success_are_skipped() -> None:
    a, b = step("a"), step("b", compensate=False)
    c, d = step("c", a, b), step("d", a, b)
    op = running(a, b, c, d)
    succeed(op, a.step_id)
    succeed(op, b.step_id)
    op.dispatch(c.step_id, T0)
    fail(op, d.step_id)  # c stays in flight: the operation drains it first
    assert op.state is S.RUNNING and op.stopping and op.ready_steps(T0) == ()
    assert op.record_failure(c.step_id, 1, "busy", "", True, at(1))
    assert op.step(c.step_id).status is StepStatus.FAILED  # no retry once stopping
    assert op.state is S.COMPENSATING
    assert [r.step_id for r in op.ready_steps(at(1))] == [a.compensation_id]


def test_a_failure_with_nothing_to_undo_fails() -> None:
    a, b = step("a", compensate=False), step("b")
    op = running(a, b)
    succeed(op, a.step_id)
    fail(op, b.step_id, at(1))
    assert op.state is S.FAILED and op.finished_at == at(1)


def test_a_compensation_is_retried_then_fails_the_operation() -> None:
    a, b, c = step("a"), step("b"), step("c")
    op = running(a, b, c)
    succeed(op, a.step_id)
    succeed(op, b.step_id)
    fail(op, c.step_id)
    comp = b.compensation_id
    assert comp is not None
    fail(op, comp, at(0), code="busy")
    assert op.ready_steps(at(0)) == () and op.next_wakeup() == at(1)
    fail(op, comp, at(1), code="busy")
    fail(op, comp, at(3), code="busy")
    assert op.state is S.FAILED
    assert op.failure is not None and op.failure.step_id == comp
    assert op.failure.phase is Phase.COMPENSATION and op.failure.error_code == "busy"
    assert op.step(a.compensation_id).attempts == []  # type: ignore[arg-type]
    assert op.ready_steps(at(100)) == () and op.next_wakeup() is None
    assert roundtrip(op) == op


def test_a_missed_deadline_is_a_retryable_failure() -> None:
    a = step("a", deadline=30)
    op = running(a)
    d = op.dispatch(a.step_id, T0)
    with unchanged(op):
        assert not op.deadline_passed(a.step_id, 1, at(29.9))  # not yet
    assert op.deadline_passed(a.step_id, d.attempt, at(30))
    last = op.step(a.step_id).attempts[-1]
    assert last.error_code == DEADLINE_EXCEEDED and last.retryable
    assert op.step(a.step_id).retry_at == at(31)
    with unchanged(op):  # the late result of the timed-out attempt is ignored
        assert not op.record_success(a.step_id, 1, OK, at(32))
    d2 = op.dispatch(a.step_id, at(31))
    assert d2.attempt == 2 and d2.deadline_at == at(61)


def test_deadlines_of_the_last_attempt_fail_the_step() -> None:
    a = step("a", retry=RetryPolicy(max_attempts=1), compensate=False)
    op = running(a)
    op.dispatch(a.step_id, T0)
    assert op.deadline_passed(a.step_id, 1, at(600))
    assert op.state is S.FAILED and op.failure is not None
    assert op.failure.error_code == DEADLINE_EXCEEDED


def test_duplicate_and_stale_results_change_nothing() -> None:
    a, b = step("a"), step("b")
    op = running(a, b)
    succeed(op, a.step_id)
    with unchanged(op):
        assert not op.record_success(a.step_id, 1, OK, at(1))  # duplicate
        assert not op.record_failure(a.step_id, 1, "busy", "", True, at(1))
        assert not op.deadline_passed(a.step_id, 1, at(999))
        assert not op.record_success(b.step_id, 1, OK, at(1))  # never dispatched
    fail(op, b.step_id, code="busy")
    op.dispatch(b.step_id, at(1))
    with unchanged(op):
        assert not op.record_success(b.step_id, 1, OK, at(2))  # stale attempt
        assert not op.record_failure(b.step_id, 3, "busy", "", True, at(2))  # future attempt
    assert op.record_success(b.step_id, 2, OK, at(2))
    assert op.state is S.SUCCEEDED
    with unchanged(op):
        assert not op.record_success(b.step_id, 2, OK, at(3))  # after the end


def test_results_are_checked() -> None:
    a = step("a")
    op = running(a)
    op.dispatch(a.step_id, T0)
    with unchanged(op):
        with pytest.raises(ValidationError, match=f"^step {a.step_id}: result is not valid JSON"):
            op.record_success(a.step_id, 1, msgspec.Raw(b"{oops"), T0)
        with pytest.raises(ValidationError, match="error_code"):
            op.record_failure(a.step_id, 1, "", "no code", True, T0)
    op.record_failure(a.step_id, 1, "busy", "x" * 10_000, True, T0)
    assert len(op.step(a.step_id).attempts[0].message) == MAX_MESSAGE_CHARS


def test_next_wakeup_is_the_earliest_deadline_or_retry() -> None:
    a, b = step("a", deadline=100), step("b")
    op = running(a, b)
    op.dispatch(a.step_id, T0)
    fail(op, b.step_id, at(10), code="busy")
    assert op.next_wakeup() == at(11)  # b's retry before a's deadline at 100
    op.dispatch(b.step_id, at(11))
    assert op.next_wakeup() == at(41)  # b's deadline now
    op.record_success(b.step_id, 2, OK, at(12))
    assert op.next_wakeup() == at(100)


def test_the_store_agrees_at_every_point() -> None:
    a, b = step("a"), step("b", compensate=False)
    op = running(a, b)
    checkpoints = [
        lambda: op.dispatch(a.step_id, T0),
        lambda: op.record_success(a.step_id, 1, msgspec.Raw(b'[1, 2, {"k": null}]'), at(1)),
        lambda: op.dispatch(b.step_id, at(2)),
        lambda: op.deadline_passed(b.step_id, 1, at(40)),
        lambda: op.cancel("enough", at(41)),
        lambda: op.dispatch(a.compensation_id, at(42)),  # type: ignore[arg-type]
        lambda: op.record_success(a.compensation_id, 1, OK, at(43)),  # type: ignore[arg-type]
    ]
    for call in checkpoints:
        call()
        loaded = roundtrip(op)
        assert loaded == op and loaded.version == op.version
    assert op.state is S.ROLLED_BACK
    # the stored attempt times are exact, not merely close
    assert roundtrip(op).step(b.step_id).attempts[0].deadline_at == at(2) + timedelta(seconds=30)
