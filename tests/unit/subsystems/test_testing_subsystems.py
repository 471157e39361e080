"""The test subsystems: echo, sleep, flaky, silent and the exactly-once counter."""

import threading
import time
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.errors import ConfigError
from kernel.contracts.steps import StepMessage, StepOutcome, step_encoder
from subsystems.base import Subsystem
from subsystems.registry import load_registry
from subsystems.runner import Disposal, StepRunner, Verdict
from subsystems.testing.counter import make_counter, read_counter


def plugin(name: str, config: dict[str, Any] | None = None) -> Subsystem:
    return load_registry([name], {name: config or {}}).plugin(name).subsystem


def perform(subsystem: Subsystem, action: str, args: Any, *, attempt: int = 1,
            step_id: UUID | None = None, delivery: int = 1) -> Verdict:
    msg = StepMessage(step_id=step_id or uuid4(), operation_id=uuid4(), attempt=attempt,
                      subsystem=subsystem.name, action=action,
                      args=msgspec.Raw(msgspec.json.encode(args)))
    return StepRunner(subsystem).run(step_encoder.encode(msg), delivery=delivery)


def ok(verdict: Verdict) -> Any:
    assert verdict.outcome is not None and verdict.outcome.ok, verdict
    return msgspec.json.decode(verdict.outcome.result)


def failed(verdict: Verdict) -> StepOutcome:
    assert verdict.outcome is not None and not verdict.outcome.ok, verdict
    return verdict.outcome


def test_echo_returns_its_arguments() -> None:
    args = {"message": "hi", "data": {"k": [1, 2, None]}}
    assert ok(perform(plugin("echo"), "echo", args)) == args


def test_sleep_sleeps() -> None:
    started = time.monotonic()
    assert ok(perform(plugin("sleep"), "sleep", {"seconds": 0.2}, delivery=2)) == {
        "seconds": 0.2, "delivery": 2}
    assert time.monotonic() - started >= 0.2
    assert failed(perform(plugin("sleep"), "sleep", {"seconds": -1})).error_code == "bad_args"


def test_flaky_fails_retryably_until_its_attempt_comes() -> None:
    flaky = plugin("flaky")
    for attempt in (1, 2):
        out = failed(perform(flaky, "fail", {"times": 2}, attempt=attempt))
        assert (out.error_code, out.retryable) == ("flaky", True)
        assert f"attempt {attempt} fails" in out.message
    assert ok(perform(flaky, "fail", {"times": 2}, attempt=3)) == {"attempt": 3}


def test_flaky_can_fail_for_good() -> None:
    out = failed(perform(plugin("flaky"), "fail", {"times": 1, "retryable": False,
                                                    "code": "disk_gone"}))
    assert (out.error_code, out.retryable) == ("disk_gone", False)


def test_silent_holds_then_drops_the_step_without_an_outcome() -> None:
    started = time.monotonic()
    verdict = perform(plugin("silent"), "ignore", {"hold_seconds": 0.1})
    assert time.monotonic() - started >= 0.1
    assert (verdict.disposal, verdict.outcome) == (Disposal.ACK, None)


def test_counter_applies_each_step_once_however_often_it_runs(tmp_path: Path) -> None:
    path = str(tmp_path / "counter.db")
    counter = plugin("counter", {"path": path})
    counter.open()
    try:
        again = uuid4()
        first = ok(perform(counter, "add", {"name": "vms", "amount": 5}, step_id=again))
        assert first == {"name": "vms", "total": 5, "applied_now": True}
        redelivered = ok(perform(counter, "add", {"name": "vms", "amount": 5}, step_id=again,
                                 delivery=2))
        assert redelivered == {"name": "vms", "total": 5, "applied_now": False}
        assert ok(perform(counter, "add", {"name": "vms", "amount": 2}))["total"] == 7
    finally:
        counter.close()
    report = read_counter(path=path)
    assert report.totals == {"vms": 7}
    assert report.runs[str(again)] == 2
    assert report.applied[str(again)] == 1
    assert sorted(report.applied.values()) == [1, 1]


def test_counter_is_exactly_once_under_concurrent_redeliveries(tmp_path: Path) -> None:
    path = str(tmp_path / "counter.db")
    counters = [plugin("counter", {"path": path}) for _ in range(2)]  # two "processes"
    for c in counters:
        c.open()
    steps = [uuid4() for _ in range(20)]
    errors: list[BaseException] = []

    def serve(counter: Subsystem) -> None:
        try:
            for step_id in steps:
                ok(perform(counter, "add", {"amount": 1}, step_id=step_id))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=serve, args=(c,)) for c in counters for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in counters:
        c.close()
    assert errors == []
    report = read_counter(path=path)
    assert report.totals == {"default": 20}
    assert set(report.runs.values()) == {4}
    assert set(report.applied.values()) == {1}


def test_counter_needs_a_place_for_its_table() -> None:
    counter = make_counter({})  # listing works without configuration
    with pytest.raises(ConfigError, match="set config 'path'"):
        counter.open()
    with pytest.raises(ConfigError, match="not both"):
        make_counter({"path": "a.db", "dsn": "postgresql://x/y"})
    with pytest.raises(ConfigError, match="'dsn' must be a non-empty string"):
        make_counter({"dsn": 5})


def test_an_unopened_counter_reports_a_retryable_failure() -> None:
    out = failed(perform(make_counter({"path": "unused.db"}), "add", {}))
    assert (out.error_code, out.retryable) == ("handler_error", True)
