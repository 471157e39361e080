"""The worker runtime's handling of one message, with a fake JetStream: publish, then ack/term."""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import msgspec
import pytest

from gateways.stream.worker import Worker
from kernel.contracts.steps import StepMessage, outcome_decoder, step_encoder
from subsystems.registry import load_registry


@dataclass
class FakeMsg:
    data: bytes
    subject: str = "steps.test"
    calls: list[str] = field(default_factory=list)
    metadata: Any = field(default_factory=lambda: SimpleNamespace(
        num_delivered=1, sequence=SimpleNamespace(stream=7)))

    async def ack(self) -> None:
        self.calls.append("ack")

    async def term(self) -> None:
        self.calls.append("term")

    async def nak(self, delay: float | None = None) -> None:
        self.calls.append(f"nak({delay})")

    async def in_progress(self) -> None:
        self.calls.append("in_progress")


@dataclass
class FakeJetStream:
    log: list[str]
    fail: bool = False
    published: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    async def publish(self, subject: str, payload: bytes, *, timeout: float, stream: str,
                      headers: dict[str, str]) -> None:
        await asyncio.sleep(0)
        if self.fail:
            self.log.append("publish failed")
            raise TimeoutError("no PubAck")
        self.log.append("publish")
        self.published.append((subject, payload, headers))


def make_worker(subsystem: str, **kwargs: Any) -> Worker:
    plugin = load_registry([subsystem]).plugin(subsystem).subsystem
    return Worker(plugin, servers=["nats://unused:1"], concurrency=2, **kwargs)


def step(subsystem: str, action: str, args: Any) -> StepMessage:
    return StepMessage(step_id=uuid4(), operation_id=uuid4(), attempt=1, subsystem=subsystem,
                       action=action, args=msgspec.Raw(msgspec.json.encode(args)))


async def handle(worker: Worker, data: bytes, *, fail: bool = False) -> tuple[FakeMsg,
                                                                             FakeJetStream]:
    msg = FakeMsg(data)
    js = FakeJetStream(log=msg.calls, fail=fail)
    with ThreadPoolExecutor(2) as pool:
        worker._attach(js, pool)  # type: ignore[arg-type]
        await worker.start(msg)  # type: ignore[arg-type]
    return msg, js


def test_an_outcome_is_published_before_the_step_is_acked() -> None:
    worker = make_worker("echo")
    message = step("echo", "echo", {"message": "hi"})
    msg, js = asyncio.run(handle(worker, step_encoder.encode(message)))
    assert msg.calls == ["publish", "ack"]
    subject, payload, headers = js.published[0]
    assert subject == "results.echo"
    assert headers == {"Nats-Msg-Id": f"{message.step_id}:1"}
    assert outcome_decoder.decode(payload).ok
    assert worker.stats.succeeded == 1


def test_a_failed_publish_neither_acks_nor_terms() -> None:
    worker = make_worker("echo")
    msg, _ = asyncio.run(handle(worker, step_encoder.encode(step("echo", "echo", {})),
                                fail=True))
    assert msg.calls == ["publish failed", "nak(1.0)"]
    assert worker.stats.publish_errors == 1


@pytest.mark.parametrize(("args", "action", "code"), [
    ({"message": 5}, "echo", "bad_args"),
    ({}, "shout", "unknown_action"),
])
def test_a_poison_step_is_reported_then_termed(args: Any, action: str, code: str) -> None:
    worker = make_worker("echo")
    msg, js = asyncio.run(handle(worker, step_encoder.encode(step("echo", action, args))))
    assert msg.calls == ["publish", "term"]
    outcome = outcome_decoder.decode(js.published[0][1])
    assert (outcome.ok, outcome.error_code, outcome.retryable) == (False, code, False)
    assert worker.stats.terminated == 1


def test_garbage_is_termed_without_an_outcome() -> None:
    worker = make_worker("echo")
    msg, js = asyncio.run(handle(worker, b"\x00 definitely not json"))
    assert msg.calls == ["term"]
    assert js.published == []


def test_a_failed_publish_of_a_poison_report_does_not_term() -> None:
    worker = make_worker("echo")
    msg, _ = asyncio.run(handle(worker, step_encoder.encode(step("echo", "nope", {})),
                                fail=True))
    assert "term" not in msg.calls


def test_a_long_step_is_kept_in_progress_until_it_is_acked() -> None:
    worker = make_worker("sleep", progress_interval=0.05)
    msg, _ = asyncio.run(handle(worker, step_encoder.encode(step("sleep", "sleep",
                                                                 {"seconds": 0.4}))))
    assert msg.calls[-2:] == ["publish", "ack"]
    assert msg.calls.count("in_progress") >= 5
    assert worker.stats.in_progress_sent == msg.calls.count("in_progress")


def test_no_answer_acks_and_publishes_nothing() -> None:
    worker = make_worker("silent")
    msg, js = asyncio.run(handle(worker, step_encoder.encode(step("silent", "ignore", {}))))
    assert msg.calls == ["ack"]
    assert js.published == []
    assert worker.stats.withheld == 1
