"""The operation saga: random small DAGs and random step outcomes against an independent model.

Rules report successes, retryable and non-retryable failures, missed deadlines, duplicate and
stale results, and cancel at random times. After every rule the operation must agree with the
model: its state, which steps are ready, each step's status. And always: attempts stay within
the policy, compensations run one at a time in reverse order of completion and only for steps
that succeeded, and the operation read back from the store equals the live one.
"""

from datetime import UTC, datetime, timedelta
from uuid import UUID

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from aggregates.errors import InvalidTransitionError
from aggregates.operation import TERMINAL_STATES, Operation, OperationState
from aggregates.plan import Compensation, Plan, PlannedStep, RetryPolicy
from aggregates.step_run import DEADLINE_EXCEEDED, Phase, StepStatus
from kernel.store.testing import roundtrip

S = OperationState
T0 = datetime(2026, 1, 1, tzinfo=UTC)
OK = msgspec.Raw(b'{"ok":true}')
FATAL = "fatal"  # every policy here lists it as non-retryable
DEADLINE = 30.0
SAGA_SETTINGS = settings(max_examples=120, stateful_step_count=50, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])
# the model's step statuses
# how a worker answers: mostly success, else a retryable, fatal, refused or missing answer
OUTCOMES = ["success"] * 4 + ["busy", "fatal", "refused", "deadline"]
PENDING, IN_FLIGHT, RETRY, OK_, FAILED = "pending", "in flight", "retry", "ok", "failed"
AS_MODEL = {StepStatus.PENDING: PENDING, StepStatus.IN_FLIGHT: IN_FLIGHT,
            StepStatus.RETRY_WAIT: RETRY, StepStatus.SUCCEEDED: OK_, StepStatus.FAILED: FAILED}


def policies() -> st.SearchStrategy[RetryPolicy]:
    return st.builds(RetryPolicy, max_attempts=st.integers(1, 3),
                     initial_delay=st.sampled_from([0.0, 1.0, 5.0]),
                     multiplier=st.sampled_from([1.0, 2.0]), max_delay=st.just(8.0),
                     jitter=st.sampled_from([0.0, 0.5, 1.0]), non_retryable=st.just((FATAL,)))


class OperationSaga(RuleBasedStateMachine):
    """One operation over a random DAG, driven by a random dispatcher and random workers."""

    op: Operation

    @initialize(data=st.data())
    def accept(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, 5), label="steps")
        ids = data.draw(st.lists(st.uuids(), min_size=n, max_size=n, unique=True), label="ids")
        steps = []
        for i, sid in enumerate(ids):
            deps = data.draw(st.sets(st.sampled_from(ids[:i]), max_size=2)) if i else set()
            comp = None
            if data.draw(st.sampled_from([True, True, True, False]), label="compensated"):
                comp = Compensation(subsystem="test", action="undo", args=msgspec.Raw(b"{}"),
                                    retry=data.draw(policies()), deadline_seconds=DEADLINE)
            steps.append(PlannedStep(step_id=sid, subsystem="test", action="run",
                                     args=msgspec.Raw(b'{"i":%d}' % i),
                                     depends_on=tuple(sorted(deps)),
                                     retry=data.draw(policies()),
                                     deadline_seconds=DEADLINE, compensation=comp))
        order = data.draw(st.permutations(steps), label="plan order")
        entity = data.draw(st.uuids())
        self.op = Operation.accept(kind="test.saga", plan=Plan(steps=tuple(order)), now=T0,
                                   entity_ids=(entity,))  # a fresh id: the store is shared
        self.now = T0
        self.plan = {s.step_id: s for s in steps}
        self.comp_of = {s.step_id: s.compensation_id for s in steps if s.compensation_id}
        self.forward = [s.step_id for s in order]
        self.status = dict.fromkeys([*self.forward, *self.comp_of.values()], PENDING)
        self.attempts = dict.fromkeys(self.status, 0)
        self.retry_at: dict[UUID, datetime] = {}
        self.dispatched: list[tuple[UUID, int]] = []
        self.completion: list[UUID] = []  # forward steps, in the order they succeeded
        self.undo_order: list[UUID] = []  # forward steps, in the order their undo started
        self.cause: str | None = None  # what stopped the operation first: cancel or failure
        self.started = False
        begin = data.draw(st.sampled_from(
            ["start"] * 10 + ["wait"] * 2 + ["cancel", "wait+cancel"]))
        self.ending = data.draw(st.sampled_from(
            ["succeed", "fail", "cancel", "cancel, then busy", "undo fails"]))
        self.waited = "wait" in begin
        if self.waited:
            self.op.wait_for_entity(entity, T0)
        if "cancel" in begin:
            assert self.op.cancel("before start", T0)
            self.cause = "cancel"
        else:
            self.op.start(T0)
            self.started = True

    # ------------------------------------------------------------------ the model

    @property
    def stopping(self) -> bool:
        return self.cause is not None

    def next_undo(self) -> UUID | None:
        """The compensation due next: of the latest-completed step not yet undone."""
        for sid in reversed(self.completion):
            comp = self.comp_of.get(sid)
            if comp is not None and self.status[comp] != OK_:
                return comp
        return None

    def expected_state(self) -> OperationState:
        if not self.started:
            if self.cause:
                return S.CANCELLED
            return S.WAITING if self.waited else S.ACCEPTED
        if not self.stopping:
            done = all(self.status[s] == OK_ for s in self.forward)
            return S.SUCCEEDED if done else S.RUNNING
        if any(self.status[s] == IN_FLIGHT for s in self.forward):
            return S.RUNNING
        owed = [self.comp_of[s] for s in self.completion if s in self.comp_of]
        if not owed:
            return S.CANCELLED if self.cause == "cancel" else S.FAILED
        if any(self.status[c] == FAILED for c in owed):
            return S.FAILED
        if all(self.status[c] == OK_ for c in owed):
            return S.ROLLED_BACK
        return S.COMPENSATING

    def due(self, sid: UUID) -> bool:
        return self.status[sid] == PENDING or (
            self.status[sid] == RETRY and self.retry_at[sid] <= self.now)

    def expected_ready(self) -> set[UUID]:
        state = self.expected_state()
        if state is S.RUNNING and not self.stopping:
            return {s for s in self.forward if self.due(s) and (
                self.status[s] != PENDING
                or all(self.status[d] == OK_ for d in self.plan[s].depends_on))}
        if state is S.COMPENSATING:
            comp = self.next_undo()
            return {comp} if comp is not None and self.due(comp) else set()
        return set()

    def in_flight(self) -> list[UUID]:
        return sorted(s for s, status in self.status.items() if status == IN_FLIGHT)

    def policy(self, sid: UUID) -> RetryPolicy:
        if sid in self.plan:
            return self.plan[sid].retry
        forward = next(f for f, c in self.comp_of.items() if c == sid)
        comp = self.plan[forward].compensation
        assert comp is not None
        return comp.retry

    # ------------------------------------------------------------------ actions

    def do_dispatch(self, sid: UUID) -> None:
        d = self.op.dispatch(sid, self.now)
        self.attempts[sid] += 1
        assert d.attempt == self.attempts[sid] and d.deadline_at == self.now + \
            timedelta(seconds=DEADLINE)
        if sid not in self.plan and self.attempts[sid] == 1:
            assert d.compensates is not None
            self.undo_order.append(d.compensates)
        self.status[sid] = IN_FLIGHT
        self.dispatched.append((sid, d.attempt))

    def do_succeed(self, sid: UUID) -> None:
        assert self.op.record_success(sid, self.attempts[sid], OK, self.now)
        self.status[sid] = OK_
        if sid in self.plan:
            self.completion.append(sid)

    def do_fail(self, sid: UUID, code: str, retryable: bool, deadline: bool = False) -> None:
        attempt = self.attempts[sid]
        if deadline:
            assert self.op.deadline_passed(sid, attempt, self.now)
        else:
            assert self.op.record_failure(sid, attempt, code, "boom", retryable, self.now)
        policy = self.policy(sid)
        final = (not retryable or code in policy.non_retryable
                 or attempt >= policy.max_attempts or (sid in self.plan and self.stopping))
        if final:
            self.status[sid] = FAILED
            if sid in self.plan and self.cause is None:
                self.cause = "failure"
        else:
            retry_at = self.op.step(sid).retry_at
            assert retry_at is not None
            base = policy.base_delay(attempt)
            low = base * (1 - policy.jitter)
            high = min(policy.max_delay, base * (1 + policy.jitter))
            waited = (retry_at - self.now).total_seconds()
            assert low - 1e-5 <= waited <= high + 1e-5
            self.status[sid], self.retry_at[sid] = RETRY, retry_at

    # ------------------------------------------------------------------ rules

    @precondition(lambda self: bool(self.op.ready_steps(self.now)))
    @rule(data=st.data())
    def dispatch(self, data: st.DataObject) -> None:
        ready = [r.step_id for r in self.op.ready_steps(self.now)]
        self.do_dispatch(data.draw(st.sampled_from(ready)))

    @precondition(lambda self: bool(self.in_flight()))
    @rule(data=st.data(), outcome=st.sampled_from(OUTCOMES))
    def report(self, data: st.DataObject, outcome: str) -> None:
        sid = data.draw(st.sampled_from(self.in_flight()))
        if outcome == "success":
            self.do_succeed(sid)
        elif outcome == "deadline":
            deadline_at = self.op.step(sid).attempts[-1].deadline_at
            early = deadline_at - timedelta(microseconds=1)
            if self.now < early:
                version = self.op.version
                assert not self.op.deadline_passed(sid, self.attempts[sid], early)
                assert self.op.version == version
            self.now = max(self.now, deadline_at)
            self.do_fail(sid, DEADLINE_EXCEEDED, True, deadline=True)
        else:
            code, retryable = {"busy": ("busy", True), "fatal": (FATAL, True),
                               "refused": ("busy", False)}[outcome]
            self.do_fail(sid, code, retryable)

    @precondition(lambda self: bool(self.dispatched))
    @rule(data=st.data(), kind=st.sampled_from(["success", "failure", "deadline"]))
    def duplicate_or_stale(self, data: st.DataObject, kind: str) -> None:
        stale = [d for d in self.dispatched
                 if not (self.status[d[0]] == IN_FLIGHT and self.attempts[d[0]] == d[1])]
        if not stale:
            return
        sid, attempt = data.draw(st.sampled_from(stale))
        version = self.op.version
        if kind == "success":
            assert not self.op.record_success(sid, attempt, OK, self.now)
        elif kind == "failure":
            assert not self.op.record_failure(sid, attempt, "busy", "late", True, self.now)
        else:
            assert not self.op.deadline_passed(sid, attempt, self.now + timedelta(days=1))
        assert self.op.version == version

    @rule(now=st.integers(0, 19))
    def cancel(self, now: int) -> None:
        if now:  # cancel is rare: most operations should get to run their steps
            return
        state, version = self.op.state, self.op.version
        if state in TERMINAL_STATES:
            with pytest.raises(InvalidTransitionError):
                self.op.cancel("too late", self.now)
            assert self.op.version == version
        elif self.stopping:
            assert not self.op.cancel("again", self.now)
            assert self.op.version == version
        else:
            assert self.op.cancel("random cancel", self.now)
            self.cause = "cancel"

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 10.0]))
    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    @precondition(lambda self: self.op.next_wakeup() is not None)
    @rule()
    def sleep_until_wakeup(self) -> None:
        wakeup = self.op.next_wakeup()
        assert wakeup is not None
        self.now = max(self.now, wakeup)

    @rule()
    def save_and_reload(self) -> None:
        loaded = roundtrip(self.op)
        assert loaded == self.op and loaded.version == self.op.version

    # ------------------------------------------------------------------ invariants

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.op.state is self.expected_state()
        assert {r.step_id for r in self.op.ready_steps(self.now)} == self.expected_ready()
        assert {sid: AS_MODEL[run.status] for sid, run in self.op.runs.items()} == self.status
        assert self.op.completion_order == self.completion

    @invariant()
    def attempts_stay_within_the_policy(self) -> None:
        for sid, run in self.op.runs.items():
            assert len(run.attempts) == self.attempts[sid] <= run.retry.max_attempts
            assert [a.number for a in run.attempts] == list(range(1, len(run.attempts) + 1))

    @invariant()
    def only_what_succeeded_is_undone_latest_first(self) -> None:
        for run in self.op.runs.values():
            if run.phase is Phase.COMPENSATION and run.attempts:
                assert self.op.step(run.compensates).status is StepStatus.SUCCEEDED  # type: ignore[arg-type]
        owed = [s for s in reversed(self.completion) if s in self.comp_of]
        assert self.undo_order == owed[:len(self.undo_order)]
        flying = self.op.in_flight()
        if any(d.phase is Phase.COMPENSATION for d in flying):
            assert len(flying) == 1  # one compensation at a time, no forward step beside it

    @invariant()
    def the_final_state_agrees_with_the_outcomes(self) -> None:
        op = self.op
        forward = [op.step(s).status for s in self.forward]
        owed = [op.step(self.comp_of[s]).status for s in self.completion if s in self.comp_of]
        if op.state is S.SUCCEEDED:
            assert all(s is StepStatus.SUCCEEDED for s in forward) and not self.stopping
        if op.state is S.ROLLED_BACK:
            assert self.stopping and owed and all(s is StepStatus.SUCCEEDED for s in owed)
        if op.state is S.CANCELLED:
            assert self.cause == "cancel" and not owed
        if op.state is S.FAILED:
            assert op.failure is not None
            assert (self.cause == "failure" and not owed) or StepStatus.FAILED in owed
        if op.is_finished:
            assert op.in_flight() == () and op.ready_steps(self.now) == ()
            assert op.next_wakeup() is None and op.finished_at is not None

    def teardown(self) -> None:
        """Drive the operation to its end along the drawn ending; it must finish there and
        the store agree. The endings make sure every example also ends in a full rollback,
        a failed compensation, or a cancel with a step in flight, not only in success."""
        if not hasattr(self, "op"):
            return
        for _ in range(200):
            if self.op.is_finished:
                break
            ready, flying = self.op.ready_steps(self.now), self.in_flight()
            if ready:
                self.do_dispatch(ready[0].step_id)
            elif flying:
                self.report_in_drain(flying[0])
            else:
                wakeup = self.op.next_wakeup()
                assert wakeup is not None, "a live operation with nothing to do is stuck"
                self.now = max(self.now, wakeup)
            self.agrees_with_the_model()
            self.only_what_succeeded_is_undone_latest_first()
        assert self.op.is_finished
        self.the_final_state_agrees_with_the_outcomes()
        loaded = roundtrip(self.op)
        assert loaded == self.op and loaded.version == self.op.version

    def report_in_drain(self, sid: UUID) -> None:
        forward = sid in self.plan
        if forward and self.completion and not self.stopping:
            if self.ending.startswith("cancel"):
                assert self.op.cancel("cancel with a step in flight", self.now)
                self.cause = "cancel"
                if self.ending == "cancel, then busy":  # a retryable failure: not retried
                    self.do_fail(sid, "busy", True)
                    return
            elif self.ending in ("fail", "undo fails"):
                self.do_fail(sid, FATAL, True)
                return
        if not forward and self.ending == "undo fails" and len(self.undo_order) >= 2:
            self.do_fail(sid, FATAL, True)
            return
        self.do_succeed(sid)


TestOperationSaga = OperationSaga.TestCase
TestOperationSaga.settings = SAGA_SETTINGS
