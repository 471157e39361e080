"""The worker runtime against a real nats-server: steps in on STEPS, outcomes out on RESULTS."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import nats
from nats.js import JetStreamContext

from gateways.stream.streams import ensure_streams
from gateways.stream.worker import Worker
from kernel.contracts.steps import (
    RESULTS_STREAM,
    STEPS_STREAM,
    StepMessage,
    StepOutcome,
    outcome_decoder,
    step_encoder,
    worker_consumer,
)
from subsystems.registry import load_registry
from subsystems.testing.counter import read_counter

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "gateways.cli.main"]


# --------------------------------------------------------------------------- helpers


@asynccontextmanager
async def jetstream(url: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        yield js
    finally:
        await nc.close()


@asynccontextmanager
async def serving(url: str, subsystem: str, config: dict[str, Any] | None = None,
                  **kwargs: Any) -> AsyncIterator[Worker]:
    """An in-process worker, stopped (and drained) on exit."""
    plugin = load_registry([subsystem], {subsystem: config or {}}).plugin(subsystem).subsystem
    worker = Worker(plugin, servers=[url], **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    ready = asyncio.create_task(worker.ready.wait())
    await asyncio.wait({task, ready}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert worker.ready.is_set(), "worker did not start"
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def make_step(subsystem: str, action: str, args: Any, *, attempt: int = 1,
              step_id: UUID | None = None) -> StepMessage:
    return StepMessage(step_id=step_id or uuid4(), operation_id=uuid4(), attempt=attempt,
                       subsystem=subsystem, action=action,
                       args=msgspec.Raw(msgspec.json.encode(args)))


async def publish(js: JetStreamContext, *steps: StepMessage) -> None:
    await asyncio.gather(*(js.publish(s.subject, step_encoder.encode(s),
                                      headers={"Nats-Msg-Id": s.msg_id}) for s in steps))


async def outcomes(js: JetStreamContext, count: int, timeout: float = 10.0,
                   ) -> list[tuple[str, StepOutcome]]:
    """Wait until RESULTS holds `count` messages; return (Nats-Msg-Id, outcome) of each."""
    deadline = time.monotonic() + timeout
    while True:
        last = (await js.stream_info(RESULTS_STREAM)).state.last_seq
        if last >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    found = []
    for seq in range(1, last + 1):
        raw = await js.get_msg(RESULTS_STREAM, seq)
        found.append(((raw.headers or {}).get("Nats-Msg-Id", ""),
                      outcome_decoder.decode(raw.data or b"")))
    assert len(found) >= count, f"only {len(found)} of {count} outcomes: {found}"
    return found


async def settled(js: JetStreamContext, subsystem: str, timeout: float = 5.0) -> Any:
    """The subsystem's consumer once nothing is pending or unacked."""
    deadline = time.monotonic() + timeout
    while True:
        info = await js.consumer_info(STEPS_STREAM, worker_consumer(subsystem))
        if (info.num_pending, info.num_ack_pending) == (0, 0) or time.monotonic() > deadline:
            return info
        await asyncio.sleep(0.05)


def result(outcome: StepOutcome) -> Any:
    return msgspec.json.decode(outcome.result)


class CliWorker:
    """`cloudkernel worker` as a process, with its output collected in the background."""

    def __init__(self, tmp_path: Path, url: str, subsystem: str, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "worker", "--subsystem", subsystem, "--nats-url", url, *extra],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self.serving = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.serving.wait(30):
            self.kill()
            raise AssertionError("cloudkernel worker did not start:\n" + self.output())

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if " serves " in line:
                self.serving.set()

    def output(self) -> str:
        """Everything it printed, once it has exited."""
        self._reader.join(10)
        return "".join(self.lines)

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def run(body: Callable[[], Any]) -> Any:
    return asyncio.run(body())


# --------------------------------------------------------------------------- tests


def test_echo_round_trip(nats_url: str) -> None:
    async def body() -> None:
        async with jetstream(nats_url) as js, serving(nats_url, "echo") as worker:
            step = make_step("echo", "echo", {"message": "hello", "data": [1, 2]})
            await publish(js, step)
            [(msg_id, outcome)] = await outcomes(js, 1)
            assert msg_id == f"{step.step_id}:1"
            assert (outcome.ok, outcome.step_id, outcome.operation_id, outcome.attempt) == (
                True, step.step_id, step.operation_id, 1)
            assert (outcome.subsystem, outcome.worker) == ("echo", worker.identity)
            assert result(outcome) == {"message": "hello", "data": [1, 2]}
            info = await settled(js, "echo")
            assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)
            assert (await js.stream_info(STEPS_STREAM)).state.messages == 0  # work queue

    run(body)


def test_flaky_fails_then_succeeds_across_attempts(nats_url: str) -> None:
    async def body() -> None:
        async with jetstream(nats_url) as js, serving(nats_url, "flaky"):
            step_id = uuid4()
            for attempt in (1, 2, 3):
                await publish(js, make_step("flaky", "fail", {"times": 2}, attempt=attempt,
                                            step_id=step_id))
                await outcomes(js, attempt)
            found = await outcomes(js, 3)
            assert [m for m, _ in found] == [f"{step_id}:{a}" for a in (1, 2, 3)]
            assert [(o.ok, o.retryable, o.error_code) for _, o in found] == [
                (False, True, "flaky"), (False, True, "flaky"), (True, False, "")]
            assert result(found[2][1]) == {"attempt": 3}

    run(body)


def test_poison_messages_are_termed_and_reported(nats_url: str) -> None:
    async def body() -> None:
        async with jetstream(nats_url) as js, serving(nats_url, "echo") as worker:
            unknown = make_step("echo", "shout", {})
            bad_args = make_step("echo", "echo", {"message": 42})
            good = make_step("echo", "echo", {"message": "still fine"})
            await js.publish("steps.echo.echo", b"{not json")
            await publish(js, unknown, bad_args, good)
            found = {m: o for m, o in await outcomes(js, 3)}
            assert set(found) == {unknown.msg_id, bad_args.msg_id, good.msg_id}
            assert (found[unknown.msg_id].error_code, found[unknown.msg_id].retryable) == (
                "unknown_action", False)
            assert (found[bad_args.msg_id].error_code, found[bad_args.msg_id].retryable) == (
                "bad_args", False)
            assert found[good.msg_id].ok
            info = await settled(js, "echo")
            assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)
            assert worker.stats.terminated == 3
            assert (await js.stream_info(STEPS_STREAM)).state.messages == 0

    run(body)


def test_a_silent_step_is_acked_without_an_outcome(nats_url: str) -> None:
    async def body() -> None:
        async with jetstream(nats_url) as js, serving(nats_url, "silent", ack_wait=1) as w:
            await publish(js, make_step("silent", "ignore", {"hold_seconds": 1.5}))
            info = await settled(js, "silent", timeout=5)
            assert (info.num_ack_pending, info.num_redelivered) == (0, 0)
            assert w.stats.withheld == 1
            assert (await js.stream_info(RESULTS_STREAM)).state.messages == 0

    run(body)


def test_a_long_step_is_kept_in_progress_and_delivered_once(nats_url: str) -> None:
    async def body() -> None:
        async with jetstream(nats_url) as js, serving(nats_url, "sleep", ack_wait=1,
                                                      concurrency=2) as worker:
            info = await js.consumer_info(STEPS_STREAM, worker_consumer("sleep"))
            assert info.config.ack_wait == 1
            await publish(js, make_step("sleep", "sleep", {"seconds": 3}))
            [(_, outcome)] = await outcomes(js, 1, timeout=10)
            assert result(outcome) == {"seconds": 3, "delivery": 1}
            info = await settled(js, "sleep")
            assert info.num_redelivered == 0
            assert info.delivered.consumer_seq == 1
            assert worker.stats.received == 1
            assert worker.stats.in_progress_sent >= 6

    run(body)


def test_a_second_delivery_of_a_running_attempt_waits_and_gets_the_firsts_outcome(
        nats_url: str) -> None:
    # a new kernel publishes what was in flight at its epoch (another message id) while
    # the first delivery still runs: the worker does not run the attempt twice at once, and
    # once the first has reported, the twin gets that outcome without running again (run
    # later, it could act after what the kernel did since: delete, then create again)
    async def body() -> None:
        async with jetstream(nats_url) as js, serving(nats_url, "sleep",
                                                      concurrency=4) as worker:
            first = msgspec.structs.replace(make_step("sleep", "sleep", {"seconds": 2}),
                                            partition=3, epoch=1)
            again = msgspec.structs.replace(first, epoch=2)
            assert first.msg_id != again.msg_id
            await publish(js, first)
            await asyncio.sleep(0.5)
            await publish(js, again)
            found = await outcomes(js, 1, timeout=10)
            assert [result(o) for _, o in found] == [{"seconds": 2, "delivery": 1}]
            info = await settled(js, "sleep", timeout=15)
            assert (info.num_pending, info.num_ack_pending) == (0, 0)
            assert worker.stats.deferred >= 1  # put back while the first ran
            assert (worker.stats.succeeded, worker.stats.repeated) == (1, 1)
            assert (await js.stream_info(RESULTS_STREAM)).state.messages == 1

    run(body)


def test_a_twin_of_an_attempt_already_done_gets_its_outcome_without_a_run(
        nats_url: str) -> None:
    async def body() -> None:
        async with jetstream(nats_url) as js, serving(nats_url, "sleep") as worker:
            first = msgspec.structs.replace(make_step("sleep", "sleep", {"seconds": 0.2}),
                                            partition=5, epoch=1)
            await publish(js, first)
            [(_, done)] = await outcomes(js, 1, timeout=10)
            await publish(js, msgspec.structs.replace(first, epoch=2))
            info = await settled(js, "sleep", timeout=10)
            assert (info.num_pending, info.num_ack_pending) == (0, 0)
            assert (worker.stats.succeeded, worker.stats.repeated) == (1, 1)
            assert (await js.stream_info(RESULTS_STREAM)).state.messages == 1
            assert result(done) == {"seconds": 0.2, "delivery": 1}

    run(body)


def test_two_workers_share_a_backlog(nats_url: str) -> None:
    async def body() -> None:
        async with jetstream(nats_url) as js:
            steps = [make_step("sleep", "sleep", {"seconds": 0.05}) for _ in range(40)]
            await publish(js, *steps)
            async with serving(nats_url, "sleep", concurrency=2) as a, \
                    serving(nats_url, "sleep", concurrency=2) as b:
                found = await outcomes(js, 40)
            assert {m for m, _ in found} == {s.msg_id for s in steps}
            by_worker = {w.identity: 0 for w in (a, b)}
            for _, outcome in found:
                by_worker[outcome.worker] += 1
            assert all(n > 0 for n in by_worker.values()), by_worker
            assert a.stats.received + b.stats.received == 40

    run(body)


def test_a_killed_worker_leaves_the_step_for_another_which_applies_it_exactly_once(
        tmp_path: Path, nats_url: str, pg_dsn: str) -> None:
    config = {"dsn": pg_dsn}
    held = make_step("counter", "add", {"name": "vms", "hold_after": 60})
    held_id = held.step_id
    killed = CliWorker(tmp_path, nats_url, "counter", "--ack-wait", "1", "--concurrency", "4",
                       "--config-json", json.dumps(config))

    async def body() -> None:
        async with jetstream(nats_url) as js:
            others = [make_step("counter", "add", {"name": "vms"}) for _ in range(20)]
            await publish(js, held, *others)
            deadline = time.monotonic() + 15
            while str(held.step_id) not in read_counter(dsn=pg_dsn).applied:
                assert time.monotonic() < deadline, "the held step never ran"
                await asyncio.sleep(0.05)
            killed.kill()  # SIGKILL: its effect is committed, its outcome never published
            async with serving(nats_url, "counter", config) as survivor:
                found = {m: o for m, o in await outcomes(js, 21, timeout=20)}
                await settled(js, "counter")
            assert set(found) == {s.msg_id for s in (held, *others)}
            assert all(o.ok for o in found.values())
            replayed = found[held.msg_id]
            assert replayed.worker == survivor.identity
            assert result(replayed)["applied_now"] is False  # the effect was already there

    try:
        run(body)
    finally:
        killed.kill()
    report = read_counter(dsn=pg_dsn)
    assert report.totals == {"vms": 21}
    assert len(report.applied) == 21 and set(report.applied.values()) == {1}
    assert report.runs[str(held_id)] == 2  # ran on the killed worker and on the survivor
    assert sum(report.runs.values()) >= 22


def test_cli_worker_serves_and_stops_cleanly_on_sigterm(tmp_path: Path, nats_url: str) -> None:
    worker = CliWorker(tmp_path, nats_url, "sleep", "--concurrency", "2")
    try:
        assert "(sleep.sleep)" in worker.lines[-1]

        async def body() -> list[tuple[str, StepOutcome]]:
            async with jetstream(nats_url) as js:
                await publish(js, make_step("sleep", "sleep", {"seconds": 0}))
                await outcomes(js, 1)
                await publish(js, make_step("sleep", "sleep", {"seconds": 1.0}))
                await asyncio.sleep(0.3)  # the long step is running now
                worker.proc.send_signal(signal.SIGTERM)
                return await outcomes(js, 2)

        found = run(body)
        assert all(o.ok for _, o in found)  # the running step finished before the exit
        assert worker.proc.wait(15) == 0
    finally:
        worker.kill()
    out = worker.output()
    assert "stopped: 2 received, 2 succeeded, 0 failed, 0 terminated" in out, out


def test_cli_worker_fails_fast_without_nats(tmp_path: Path) -> None:
    url = "nats://127.0.0.1:1"
    proc = subprocess.run([*CLI, "worker", "--subsystem", "echo", "--nats-url", url,
                           "--connect-timeout", "1"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"cannot connect to NATS at {url} within 1s" in proc.stderr
