"""Step effects: arguments bound at dispatch, successes recorded on entities, refusals retried."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.errors import CapacityError
from aggregates.host import Host
from aggregates.operation import Operation, OperationState
from aggregates.plan import Compensation, Plan, PlannedStep, RetryPolicy
from kernel.contracts.steps import StepMessage, StepOutcome
from kernel.dispatch_feed import DispatchFeed
from kernel.effects import (
    BaseEffect,
    EffectMutatedError,
    Effects,
    EffectScope,
    Refusal,
    StepContext,
)
from kernel.operation_commands import StartOperation
from kernel.operations import OperationEngine
from kernel.store.testing import scratch_application

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class ClaimArgs(msgspec.Struct, frozen=True, kw_only=True):
    host_id: UUID
    cores: int


class Bound(msgspec.Struct, frozen=True, kw_only=True):
    host_uri: str
    free_cores: int
    attempt: int


class Claimed(msgspec.Struct, frozen=True, kw_only=True):
    claim_id: UUID


class ClaimEffect(BaseEffect):
    """test.claim: bound with the host's URI; a success claims cores, a full host refuses."""

    def __init__(self) -> None:
        self.failures: list[tuple[str, str]] = []

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        args = ctx.plan_args(ClaimArgs)
        host = scope.peek(args.host_id, Host)
        return Bound(host_uri=host.uri, free_cores=host.free_cpu_cores, attempt=ctx.attempt)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        args = ctx.plan_args(ClaimArgs)
        claim = msgspec.json.decode(result, type=Claimed)
        host = scope.get(args.host_id, Host)
        try:
            host.claim(claim.claim_id, uuid4(), args.cores, 1)
        except CapacityError as e:
            raise Refusal(str(e), retryable=True, code="host_full") from e

    def failed(self, scope: EffectScope, ctx: StepContext, code: str, message: str) -> None:
        self.failures.append((code, message))


class ReleaseEffect(BaseEffect):
    """test.release (the compensation): releases the claim the forward step made."""

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        claim = msgspec.json.decode(result, type=Claimed)
        host = scope.get(ctx.plan_args(ClaimArgs).host_id, Host)
        host.release(claim.claim_id)


class Followed:
    def __init__(self) -> None:
        self.finished: list[OperationState] = []

    def finished_(self, scope: EffectScope, op: Operation, now: datetime) -> list[StartOperation]:
        self.finished.append(op.state)
        return []


@pytest.fixture
def claim_effect() -> ClaimEffect:
    return ClaimEffect()


@pytest.fixture
def engine(claim_effect: ClaimEffect) -> Iterator[OperationEngine]:
    app = scratch_application()
    effects = Effects(steps={"test.claim": claim_effect, "test.release": ReleaseEffect()})
    yield OperationEngine(app, clock=lambda: NOW, effects=effects)
    app.close()


def new_host(engine: OperationEngine, cores: int = 4) -> Host:
    host = Host.register(name=f"h-{uuid4()}", uri="test:///h.xml", zone_id=uuid4(),
                         pod_id=uuid4(), cluster_id=uuid4(), cpu_cores=cores, cpu_mhz=1000,
                         memory_mib=1024)
    engine.app.save(host)
    return host


def claim_step(host: Host, cores: int, *, attempts: int = 2) -> PlannedStep:
    args = ClaimArgs(host_id=host.id, cores=cores)
    return PlannedStep(
        step_id=uuid4(), subsystem="test", action="claim",
        args=msgspec.Raw(msgspec.json.encode(args)),
        retry=RetryPolicy(max_attempts=attempts, initial_delay=0.001, jitter=0),
        compensation=Compensation(subsystem="test", action="release",
                                  args=msgspec.Raw(msgspec.json.encode(args))))


def submit(engine: OperationEngine, *steps: PlannedStep) -> UUID:
    out = engine.submit("test.op", Plan(steps=steps), idempotency_key=f"k-{uuid4()}")
    return UUID(msgspec.json.decode(out.result)["operation_id"])


def dispatched(feed: DispatchFeed) -> list[StepMessage]:
    messages, position = feed.read(feed.position())
    feed.commit(position)
    return messages


def outcome(m: StepMessage, result: msgspec.Struct | None = None, *,
            ok: bool = True) -> StepOutcome:
    return StepOutcome(step_id=m.step_id, operation_id=m.operation_id, attempt=m.attempt,
                       subsystem=m.subsystem, ok=ok,
                       result=msgspec.Raw(msgspec.json.encode(result)),
                       error_code="" if ok else "boom", message="" if ok else "it broke",
                       retryable=True)


def test_arguments_are_bound_at_dispatch_and_recorded_in_the_log(
        engine: OperationEngine) -> None:
    host = new_host(engine)
    feed = DispatchFeed(engine.app)
    submit(engine, claim_step(host, 3))
    [message] = dispatched(feed)
    assert msgspec.json.decode(message.args, type=Bound) == Bound(
        host_uri="test:///h.xml", free_cores=4, attempt=1)


def test_a_success_is_recorded_on_the_entity_in_the_same_transaction(
        engine: OperationEngine) -> None:
    host = new_host(engine)
    feed = DispatchFeed(engine.app)
    op_id = submit(engine, claim_step(host, 3))
    [message] = dispatched(feed)
    report = engine.apply_outcomes([outcome(message, Claimed(claim_id=uuid4()))])
    saved: Host = engine.app.repository.get(host.id)
    assert saved.free_cpu_cores == 1
    assert engine.app.repository.get(op_id).state is OperationState.SUCCEEDED
    # one transaction: the claim and the step's success have adjacent positions
    assert len(report.positions) >= 2
    # a duplicate outcome changes nothing, the entity included
    engine.apply_outcomes([outcome(message, Claimed(claim_id=uuid4()))])
    assert engine.app.repository.get(host.id).free_cpu_cores == 1


def test_a_refused_success_is_a_failed_attempt_retried_then_compensated(
        engine: OperationEngine, claim_effect: ClaimEffect) -> None:
    host = new_host(engine, cores=4)
    feed = DispatchFeed(engine.app)
    first = submit(engine, claim_step(host, 3))
    [m1] = dispatched(feed)
    engine.apply_outcomes([outcome(m1, Claimed(claim_id=uuid4()))])
    version = engine.app.repository.get(host.id).version

    second = submit(engine, claim_step(host, 3, attempts=2))
    [m2] = dispatched(feed)
    engine.apply_outcomes([outcome(m2, Claimed(claim_id=uuid4()))])
    op = engine.app.repository.get(second)
    attempt = op.step(m2.step_id).attempts[0]
    assert (attempt.error_code, attempt.retryable) == ("host_full", True)
    assert "host_full" in claim_effect.failures[0][0]
    # the refused effect left the host exactly as it was
    assert engine.app.repository.get(host.id).version == version

    engine.clock = lambda: NOW + timedelta(seconds=1)  # the retry is due
    engine.fire_due_timers()
    [retry] = dispatched(feed)
    assert retry.attempt == 2
    assert msgspec.json.decode(retry.args, type=Bound).free_cores == 1  # bound again, fresh
    engine.apply_outcomes([outcome(retry, Claimed(claim_id=uuid4()))])
    assert engine.app.repository.get(second).state is OperationState.FAILED
    assert engine.app.repository.get(first).state is OperationState.SUCCEEDED
    assert engine.app.repository.get(host.id).free_cpu_cores == 1


def test_a_compensation_undoes_the_effect_of_its_forward_step(engine: OperationEngine) -> None:
    host = new_host(engine)
    feed = DispatchFeed(engine.app)
    claim = claim_step(host, 2)
    fails = PlannedStep(step_id=uuid4(), subsystem="echo", action="echo",
                        args=msgspec.Raw(b"{}"), depends_on=(claim.step_id,),
                        retry=RetryPolicy(max_attempts=1))
    op_id = submit(engine, claim, fails)
    [m1] = dispatched(feed)
    claim_id = uuid4()
    engine.apply_outcomes([outcome(m1, Claimed(claim_id=claim_id))])
    assert engine.app.repository.get(host.id).free_cpu_cores == 2
    [m2] = dispatched(feed)
    engine.apply_outcomes([outcome(m2, ok=False)])
    [undo] = dispatched(feed)
    assert (undo.subsystem, undo.action, undo.compensation) == ("test", "release", True)
    # the compensation's own effect reads the forward step's result (the claim id)
    engine.apply_outcomes([outcome(undo, Claimed(claim_id=claim_id))])
    assert engine.app.repository.get(host.id).free_cpu_cores == 4
    assert engine.app.repository.get(op_id).state is OperationState.ROLLED_BACK


def test_unbindable_arguments_fail_the_attempt_for_good(engine: OperationEngine) -> None:
    feed = DispatchFeed(engine.app)
    ghost = Host.register(name="ghost", uri="test:///g.xml", zone_id=uuid4(), pod_id=uuid4(),
                          cluster_id=uuid4(), cpu_cores=1, cpu_mhz=1, memory_mib=1)
    op_id = submit(engine, claim_step(ghost, 1))  # never saved: cannot be bound
    op = engine.app.repository.get(op_id)
    assert op.state is OperationState.FAILED
    assert op.failure is not None and op.failure.error_code == "not_found"
    assert dispatched(feed)[0].attempt == 1  # the attempt exists in the log, with the plan's args


def test_an_operation_kind_settles_its_entities_when_it_ends() -> None:
    app = scratch_application()
    followed = Followed()

    class Kind:
        def finished(self, scope: EffectScope, op: Operation,
                     now: datetime) -> list[StartOperation]:
            return followed.finished_(scope, op, now)

    engine = OperationEngine(app, clock=lambda: NOW,
                             effects=Effects(operations={"test.op": Kind()}))
    try:
        feed = DispatchFeed(app)
        step = PlannedStep(step_id=uuid4(), subsystem="echo", action="echo",
                           args=msgspec.Raw(b"{}"))
        submit(engine, step)
        [m] = dispatched(feed)
        engine.apply_outcomes([outcome(m, Claimed(claim_id=uuid4()))])
        assert followed.finished == [OperationState.SUCCEEDED]
    finally:
        app.close()


def test_effects_declared_twice_are_refused() -> None:
    with pytest.raises(ValueError, match=r"test\.claim"):
        _ = Effects(steps={"test.claim": ClaimEffect()}) | Effects(
            steps={"test.claim": ClaimEffect()})


def test_an_effect_that_changes_then_refuses_never_saves_its_change() -> None:
    class Sloppy(BaseEffect):
        def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
            host = scope.get(ctx.plan_args(ClaimArgs).host_id, Host)
            host.claim(uuid4(), uuid4(), 1, 1)  # changed ...
            raise Refusal("... then refused", retryable=True)

    app = scratch_application()
    engine = OperationEngine(app, clock=lambda: NOW,
                             effects=Effects(steps={"test.claim": Sloppy()}))
    try:
        host = new_host(engine)
        feed = DispatchFeed(app)
        submit(engine, claim_step(host, 1))
        [message] = dispatched(feed)
        with pytest.raises(EffectMutatedError):
            engine.apply_outcomes([outcome(message, Claimed(claim_id=uuid4()))])
        assert app.repository.get(host.id).claims == {}
        assert host.id not in engine.cache  # the changed copy is forgotten
    finally:
        app.close()


def test_a_domain_rule_raised_by_an_effect_fails_the_step_for_good() -> None:
    """A plain KernelError from an effect (not a Refusal) means another attempt cannot do
    better: the attempt fails, not retryable, with the error's own code, and nothing of the
    effect is kept; the operation compensates what succeeded before it."""
    from aggregates.errors import DomainRuleError

    class Strict(BaseEffect):
        def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
            scope.get(ctx.plan_args(ClaimArgs).host_id, Host)  # read only, then refuse
            raise DomainRuleError("the host was retired meanwhile")

    app = scratch_application()
    engine = OperationEngine(app, clock=lambda: NOW,
                             effects=Effects(steps={"test.claim": Strict()}))
    try:
        host = new_host(engine)
        feed = DispatchFeed(app)
        op_id = submit(engine, claim_step(host, 1, attempts=5))
        [message] = dispatched(feed)
        engine.apply_outcomes([outcome(message, Claimed(claim_id=uuid4()))])
        op: Operation = app.repository.get(op_id)
        [attempt] = op.step(message.step_id).attempts
        assert (attempt.error_code, attempt.retryable) == ("domain_rule", False)
        assert attempt.message == "the host was retired meanwhile"
        assert attempt.retry_at is None  # 4 attempts left, none used: not retryable
        assert op.state is OperationState.FAILED
        assert op.failure is not None and op.failure.error_code == "domain_rule"
        assert dispatched(feed) == []  # nothing retried, nothing to undo
        assert app.repository.get(host.id).claims == {}
    finally:
        app.close()
