"""The synchronous step runner: decode, dispatch, encode; poison messages are termed."""

import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import msgspec
import pytest

from aggregates.errors import StepFailedError
from kernel.contracts.steps import StepMessage, StepOutcome, step_encoder
from subsystems.base import NoAnswer, StepContext, SubsystemBase, action, step_settlers
from subsystems.runner import Disposal, StepRunner, Verdict


class Args(msgspec.Struct, frozen=True):
    n: int
    label: str = ""


class Answer(msgspec.Struct, frozen=True):
    doubled: int


class Probe(SubsystemBase):
    """A plugin whose behaviour the arguments choose."""

    name = "probe"
    version = "1"

    def __init__(self) -> None:
        self.contexts: list[StepContext] = []

    @action()
    def double(self, ctx: StepContext, args: Args) -> Answer:
        self.contexts.append(ctx)
        return Answer(doubled=2 * args.n)

    @action()
    def as_dict(self, ctx: StepContext, args: Args) -> dict[str, Any]:
        return {"n": args.n, "label": args.label}

    @action()
    def nothing(self, ctx: StepContext, args: Args) -> None:
        return None

    @action()
    def refuse(self, ctx: StepContext, args: Args) -> None:
        raise StepFailedError("host is full", retryable=args.n > 0, code="capacity")

    @action()
    def crash(self, ctx: StepContext, args: Args) -> None:
        raise ZeroDivisionError("division by zero")

    @action()
    def odd_result(self, ctx: StepContext, args: Args) -> Any:
        return {"when": object()}

    @action()
    def withhold(self, ctx: StepContext, args: Args) -> None:
        raise NoAnswer


NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def runner(probe: Probe) -> StepRunner:
    return StepRunner(probe, worker="w-1", clock=lambda: NOW)


def step(action: str, args: Any = None, **fields: Any) -> StepMessage:
    raw = msgspec.Raw(msgspec.json.encode({"n": 3} if args is None else args))
    base: dict[str, Any] = {"step_id": uuid4(), "operation_id": uuid4(), "attempt": 2,
                            "subsystem": "probe", "action": action, "args": raw}
    return StepMessage(**{**base, **fields})


def run(runner: StepRunner, message: StepMessage | bytes, delivery: int = 1) -> Verdict:
    data = message if isinstance(message, bytes) else step_encoder.encode(message)
    return runner.run(data, delivery=delivery)


def outcome_of(verdict: Verdict) -> StepOutcome:
    assert verdict.outcome is not None
    return verdict.outcome


def test_a_struct_result_is_encoded_into_the_outcome(runner: StepRunner, probe: Probe) -> None:
    msg = step("double", deadline_at=NOW + timedelta(seconds=5), compensation=True)
    verdict = run(runner, msg, delivery=3)
    out = outcome_of(verdict)
    assert verdict.disposal is Disposal.ACK
    assert (out.ok, out.step_id, out.operation_id, out.attempt) == (
        True, msg.step_id, msg.operation_id, 2)
    assert (out.subsystem, out.worker, out.error_code) == ("probe", "w-1", "")
    assert msgspec.json.decode(out.result) == {"doubled": 6}
    assert out.msg_id == f"{msg.step_id}:2"
    ctx = probe.contexts[0]
    assert (ctx.kind, ctx.attempt, ctx.delivery, ctx.compensation) == ("probe.double", 2, 3, True)
    assert ctx.seconds_left(NOW) == 5.0


def test_dict_and_none_results(runner: StepRunner) -> None:
    out = outcome_of(run(runner, step("as_dict", {"n": 1, "label": "x"})))
    assert msgspec.json.decode(out.result) == {"n": 1, "label": "x"}
    assert bytes(outcome_of(run(runner, step("nothing"))).result) == b"null"


@pytest.mark.parametrize(("n", "retryable"), [(1, True), (0, False)])
def test_step_failed_error_carries_its_code_and_retryability(
        runner: StepRunner, n: int, retryable: bool) -> None:
    verdict = run(runner, step("refuse", {"n": n}))
    out = outcome_of(verdict)
    assert verdict.disposal is Disposal.ACK
    assert (out.ok, out.error_code, out.message, out.retryable) == (
        False, "capacity", "host is full", retryable)


def test_any_other_exception_is_a_retryable_handler_error(runner: StepRunner) -> None:
    out = outcome_of(run(runner, step("crash")))
    assert (out.ok, out.error_code, out.retryable) == (False, "handler_error", True)
    assert out.message == "ZeroDivisionError: division by zero"


def test_a_result_that_is_not_json_is_a_non_retryable_bad_result(runner: StepRunner) -> None:
    out = outcome_of(run(runner, step("odd_result")))
    assert (out.ok, out.error_code, out.retryable) == (False, "bad_result", False)


def test_no_answer_acks_without_an_outcome(runner: StepRunner) -> None:
    verdict = run(runner, step("withhold"))
    assert verdict.disposal is Disposal.ACK
    assert verdict.outcome is None


def test_a_step_past_its_deadline_is_not_started(runner: StepRunner, probe: Probe) -> None:
    verdict = run(runner, step("double", deadline_at=NOW - timedelta(seconds=1)))
    out = outcome_of(verdict)
    assert verdict.disposal is Disposal.ACK
    assert (out.ok, out.error_code, out.retryable) == (False, "deadline_exceeded", True)
    assert probe.contexts == []
    naive = run(runner, step("double", deadline_at=datetime(2026, 11, 24, 11, 59)))
    assert outcome_of(naive).error_code == "deadline_exceeded"  # naive on the wire means UTC


@pytest.mark.parametrize(("message", "code"), [
    (step("no_such_action"), "unknown_action"),
    (step("double", subsystem="other"), "unknown_action"),
    (step("double", {"n": "three"}), "bad_args"),
    (step("double", {"label": "no n"}), "bad_args"),
    (step("double", [1, 2]), "bad_args"),
])
def test_steps_that_can_never_run_are_termed_and_reported(
        runner: StepRunner, message: StepMessage, code: str) -> None:
    verdict = run(runner, message)
    out = outcome_of(verdict)
    assert verdict.disposal is Disposal.TERM
    assert (out.ok, out.error_code, out.retryable) == (False, code, False)
    assert (out.step_id, out.attempt) == (message.step_id, message.attempt)
    assert code in verdict.reason


def test_an_undecodable_message_with_readable_ids_is_reported(runner: StepRunner) -> None:
    step_id = uuid4()
    ids = {"step_id": str(step_id), "operation_id": str(uuid4()), "attempt": 4}
    verdict = run(runner, msgspec.json.encode({**ids, "action": 7}))
    out = outcome_of(verdict)
    assert verdict.disposal is Disposal.TERM
    assert (out.error_code, out.retryable, out.step_id, out.attempt) == (
        "bad_message", False, step_id, 4)


@pytest.mark.parametrize("data", [b"not json", b"", b"[]", b'{"step_id": "nope"}', b"\xff\xfe"])
def test_garbage_is_termed_without_an_outcome(runner: StepRunner, data: bytes) -> None:
    verdict = run(runner, data)
    assert verdict.disposal is Disposal.TERM
    assert verdict.outcome is None
    assert verdict.reason.startswith("bad_message")


def test_the_runner_lists_its_step_kinds(runner: StepRunner) -> None:
    assert "probe.double" in runner.kinds
    assert len(runner.kinds) == 7


def test_a_step_from_an_older_epoch_of_its_partition_is_refused(runner: StepRunner,
                                                                probe: Probe) -> None:
    # kernel epoch 3 owns partition 5 now: what its deposed predecessor (epoch 2) publishes
    # late is terminated without an outcome and never run; other partitions are apart
    assert outcome_of(run(runner, step("double", partition=5, epoch=3))).ok
    late = run(runner, step("double", partition=5, epoch=2))
    assert (late.disposal, late.outcome) == (Disposal.TERM, None)
    assert "stale_epoch" in late.reason and "epoch 2 of partition 5" in late.reason
    assert outcome_of(run(runner, step("double", partition=6, epoch=1))).ok
    assert outcome_of(run(runner, step("double", partition=5, epoch=3))).ok  # same epoch
    assert outcome_of(run(runner, step("double", partition=5, epoch=4))).ok  # a newer owner
    assert run(runner, step("double", partition=5, epoch=3)).disposal is Disposal.TERM
    assert outcome_of(run(runner, step("double"))).ok  # one kernel: no epoch, never refused
    assert len(probe.contexts) == 5 and runner.refused_epoch == 2


def test_a_step_message_id_carries_its_epoch() -> None:
    one = step("double")
    assert one.msg_id == f"{one.step_id}:2"  # one kernel: as before
    owned = step("double", partition=1, epoch=7)
    assert owned.msg_id == f"{owned.step_id}:2:e7"  # not a repeat of another epoch's


class TestSettlers:
    """After the handler, in its thread, the step settlers run before any outcome is made."""

    @pytest.fixture(autouse=True)
    def _settlers(self) -> Any:
        saved = list(step_settlers)
        step_settlers.clear()
        yield
        step_settlers[:] = saved

    def test_they_run_after_the_handler_in_its_thread_whatever_it_did(
            self, runner: StepRunner, probe: Probe) -> None:
        seen: list[tuple[int, int]] = []
        step_settlers.append(lambda: seen.append((threading.get_ident(), len(probe.contexts))))
        for action_name in ("double", "refuse", "crash", "withhold"):
            run(runner, step(action_name))
        here = threading.get_ident()
        # after `double` had recorded its context (the handler ran first), and for each step
        assert seen == [(here, 1), (here, 1), (here, 1), (here, 1)]

    def test_a_step_not_settled_is_a_retryable_failure_not_a_success(
            self, runner: StepRunner) -> None:
        def cannot() -> None:
            raise OSError(28, "No space left on device")

        step_settlers.append(cannot)
        verdict = run(runner, step("double"))
        out = outcome_of(verdict)
        assert verdict.disposal is Disposal.ACK
        assert (out.ok, out.error_code, out.retryable) == (False, "unsettled", True)
        assert "No space left on device" in (out.message or "")

    def test_a_refused_step_runs_no_settler(self, runner: StepRunner) -> None:
        step_settlers.append(lambda: pytest.fail("settled a step that never ran"))
        assert outcome_of(run(runner, step("no_such_action"))).error_code == "unknown_action"
        assert outcome_of(run(runner, step("double", args={"n": "x"}))).error_code == "bad_args"
