"""Applying effects, one call at a time: what each effect is told (the operation, the attempt,
the time, the failure's message), the scope it works on, and what a refusal becomes."""

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.errors import DomainRuleError, NotFoundError
from aggregates.host import Host
from aggregates.operation import Operation
from aggregates.step_run import StepRun
from kernel.effects import (
    AllOf,
    BaseEffect,
    EffectMutatedError,
    Effects,
    EffectScope,
    Refusal,
    StepContext,
    accept_success,
    bound_args,
    record_failure,
    settle,
)
from kernel.operation_commands import StartOperation
from kernel.store.testing import scratch_application
from kernel.unit_of_work import UnitOfWork
from tests.unit.operations._plans import T0, Run, running, step

LATER = T0 + timedelta(minutes=5)


class Args(msgspec.Struct, frozen=True):
    """Bound arguments."""

    host_uri: str


class Seen(BaseEffect):
    """Remembers what every call was told; binds `Args`, refuses as told."""

    def __init__(self, refusal: Exception | None = None) -> None:
        self.calls: list[tuple[str, Any, ...]] = []
        self.refusal = refusal

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        self.calls.append(("bind", ctx))
        return Args(host_uri="qemu:///system")

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        self.calls.append(("succeeded", ctx, bytes(result)))
        if self.refusal is not None:
            raise self.refusal

    def failed(self, scope: EffectScope, ctx: StepContext, error_code: str,
               message: str) -> None:
        self.calls.append(("failed", ctx, error_code, message))


def host() -> Host:
    return Host.register(name=f"h-{uuid4().hex[:6]}", uri="qemu+ssh://root@kvm-1/system",
                         zone_id=uuid4(), pod_id=uuid4(), cluster_id=uuid4(), cpu_cores=2,
                         cpu_mhz=1000, memory_mib=1024)


@pytest.fixture
def uow() -> Any:
    app = scratch_application()
    yield UnitOfWork(app, {})
    app.close()


def dispatched_op() -> tuple[Operation, StepRun]:
    op = running(step("a"))
    [run] = op.forward_steps()
    op.dispatch(run.step_id, T0)
    return op, run


def test_every_effect_is_told_its_operation_attempt_and_time(uow: UnitOfWork) -> None:
    op, run = dispatched_op()
    seen = Seen()
    effects = Effects(steps={"test.run": seen})
    assert bound_args(effects, uow, op, run, 2, LATER) == msgspec.Raw(
        b'{"host_uri":"qemu:///system"}')
    assert accept_success(effects, uow, op, run, 3, msgspec.Raw(b"{}"), LATER) is None
    record_failure(effects, uow, op, run, 4, "boom", "it broke", LATER)
    told = [(c[0], c[1].operation, c[1].run, c[1].attempt, c[1].now, *c[2:])
            for c in seen.calls]
    assert told == [("bind", op, run, 2, LATER), ("succeeded", op, run, 3, LATER, b"{}"),
                    ("failed", op, run, 4, LATER, "boom", "it broke")]


def test_a_step_kind_without_an_effect_binds_and_records_nothing(uow: UnitOfWork) -> None:
    op, run = dispatched_op()
    effects = Effects(steps={"test.run": BaseEffect()})
    assert bound_args(effects, uow, op, run, 1, T0) is None  # the plan's own arguments
    assert bound_args(Effects(), uow, op, run, 1, T0) is None
    assert accept_success(Effects(), uow, op, run, 1, msgspec.Raw(b"{}"), T0) is None


def test_a_kernel_error_in_an_effect_is_a_refusal_no_attempt_can_overcome(
        uow: UnitOfWork) -> None:
    op, run = dispatched_op()
    effects = Effects(steps={"test.run": Seen(DomainRuleError("the host was retired"))})
    refusal = accept_success(effects, uow, op, run, 1, msgspec.Raw(b"{}"), T0)
    assert isinstance(refusal, Refusal)
    assert (str(refusal), refusal.code, refusal.retryable) == (
        "the host was retired", "domain_rule", False)
    assert refusal.retryable is False


def test_a_refusal_keeps_only_its_lesson(uow: UnitOfWork) -> None:
    op, run = dispatched_op()
    h = host()
    uow.app.save(h)
    learnt: list[UUID] = []

    def lesson(scope: EffectScope) -> None:
        scope.get(h.id, Host).disable("refused a placement")
        learnt.append(h.id)

    refusal = Refusal("full", retryable=True, code="host_full", then=lesson)
    effects = Effects(steps={"test.run": Seen(refusal)})
    assert accept_success(effects, uow, op, run, 1, msgspec.Raw(b"{}"), T0) is refusal
    assert learnt == [h.id] and uow.get(h.id).resource_state.value == "Disabled"


def test_an_effect_that_changed_then_refused_names_what_it_changed(uow: UnitOfWork) -> None:
    h = host()
    uow.app.save(h)
    scope = EffectScope(uow)
    scope.get(h.id, Host).disable()
    why = Refusal("then refused", retryable=True)
    with pytest.raises(EffectMutatedError) as info:
        scope.check_unchanged(why)
    assert info.value.__cause__ is why
    message = str(info.value)
    assert f"an effect refused (then refused) after changing ['{h.id}']" in message
    assert "effects must validate before they change anything" in message


def test_an_unchanged_scope_passes_the_check(uow: UnitOfWork) -> None:
    h = host()
    uow.app.save(h)
    scope = EffectScope(uow)
    scope.get(h.id, Host)
    scope.check_unchanged(Refusal("no", retryable=False))  # nothing changed: no error


def test_a_scope_sees_its_new_aggregates_and_refuses_the_wrong_kind(uow: UnitOfWork) -> None:
    scope = EffectScope(uow)
    new = host()
    scope.add(new)
    assert scope.peek(new.id) is new and scope.get(new.id, Host) is new
    with pytest.raises(NotFoundError, match=f"no Operation {new.id}"):
        scope.get(new.id, Operation)
    with pytest.raises(NotFoundError, match=f"no Operation {new.id}"):
        scope.peek(new.id, Operation)
    with pytest.raises(NotFoundError):
        uow.get(new.id)  # only merged when the effect is accepted
    scope.merge()
    assert uow.get(new.id) is new


def test_the_context_gives_the_arguments_each_attempt_was_sent() -> None:
    op = running(step("a"))
    [run] = op.forward_steps()
    ctx = StepContext(op, run, 1, T0)
    assert ctx.bound_args(Run) == Run("a")  # not dispatched yet: the plan's
    op.dispatch(run.step_id, T0)
    assert StepContext(op, op.step(run.step_id), 1, T0).bound_args(Run) == Run("a")
    op.record_failure(run.step_id, 1, "boom", "retry", True, T0)
    op.dispatch(run.step_id, T0 + timedelta(seconds=2),
                args=msgspec.Raw(msgspec.json.encode(Run("bound"))))
    ctx = StepContext(op, op.step(run.step_id), 2, T0)
    assert (ctx.bound_args(Run), ctx.plan_args(Run)) == (Run("bound"), Run("a"))
    assert (ctx.kind, ctx.compensating) == ("test.run", False)


def test_the_context_reads_the_result_of_an_earlier_step() -> None:
    a = step("a")
    op = running(a, step("b", a))
    ctx = StepContext(op, op.step(a.step_id), 1, T0)
    with pytest.raises(NotFoundError,
                       match=f"step {a.step_id} of operation {op.id} has no result"):
        ctx.result_of(a.step_id, Run)
    op.dispatch(a.step_id, T0)
    op.record_success(a.step_id, 1, msgspec.Raw(b'{"name": "made"}'), T0)
    assert ctx.result_of(a.step_id, Run) == Run("made")


def test_every_finished_hook_is_told_the_time(uow: UnitOfWork) -> None:
    told: list[tuple[str, datetime]] = []

    class Hook:
        def __init__(self, name: str) -> None:
            self.name = name

        def finished(self, scope: EffectScope, operation: Operation,
                     now: datetime) -> list[StartOperation]:
            told.append((self.name, now))
            return []

    op = running(step("a"))
    effects = Effects(operations={"test.op": Hook("first")}) | Effects(
        operations={"test.op": Hook("second")})
    assert isinstance(effects.operations["test.op"], AllOf)
    assert settle(effects, uow, op, LATER) == []
    assert told == [("first", LATER), ("second", LATER)]


@pytest.mark.parametrize("refusal", [Refusal("then refused", retryable=True),
                                     DomainRuleError("then refused")])
def test_an_effect_that_changed_then_refused_stops_the_batch_naming_its_refusal(
        uow: UnitOfWork, refusal: Exception) -> None:
    h = host()
    uow.app.save(h)

    class Sloppy(BaseEffect):
        def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
            scope.get(h.id, Host).disable()
            raise refusal

    op, run = dispatched_op()
    with pytest.raises(EffectMutatedError, match=r"an effect refused \(then refused\)") as info:
        accept_success(Effects(steps={"test.run": Sloppy()}), uow, op, run, 1,
                       msgspec.Raw(b"{}"), T0)
    assert info.value.__cause__ is refusal
