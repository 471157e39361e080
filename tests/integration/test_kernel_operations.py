"""The operation kernel end to end: real PostgreSQL, a real nats-server, real workers.

Each test runs, in its own asyncio loop, the kernel loops (`KernelRunner` with an
`OperationEngine` and a `DispatchFeed` on the PostgreSQL platform application) and one
in-process `Worker` per test subsystem (echo, sleep, flaky, silent). Nothing is mocked: steps
travel over JetStream, outcomes come back over JetStream, and every assertion reads the
operation back from the event store. These are the real-infrastructure counterparts of
`tests/unit/kernel/test_engine.py`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.entity_queue import EntityBusyError, EntityQueue
from aggregates.operation import Operation, OperationState
from aggregates.plan import Compensation, Plan, PlannedStep, RetryPolicy
from aggregates.step_run import DEADLINE_EXCEEDED, AttemptOutcome, Phase, StepStatus
from gateways.stream.embedded import EmbeddedNatsServer
from gateways.stream.kernel_runner import KernelRunner
from gateways.stream.worker import Worker
from kernel.bootstrap.migrations import migrate_all
from kernel.dispatch_feed import DispatchFeed
from kernel.operations import OperationEngine
from kernel.settings import Settings
from kernel.store.application import KernelApplication, PlatformApplication, open_application
from subsystems.registry import load_registry

T = TypeVar("T")
SUBSYSTEMS = ("echo", "sleep", "flaky", "silent")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
# Upward slack allowed on anything timed: a loaded 2-core machine runs late, never early.
SLACK = 1.5

S = StepStatus
O = OperationState  # noqa: E741


# --------------------------------------------------------------------------- plan helpers


def echo(message: str = "", *, after: Iterable[PlannedStep] = (), undo: bool = False,
         retry: RetryPolicy | None = None) -> PlannedStep:
    """An `echo.echo` step, optionally undone by an `echo.echo` compensation."""
    return _step("echo", "echo", {"message": message}, after=after, undo=undo, retry=retry)


def sleep(seconds: float, *, after: Iterable[PlannedStep] = (), undo: bool = False,
          ) -> PlannedStep:
    """A `sleep.sleep` step."""
    return _step("sleep", "sleep", {"seconds": seconds}, after=after, undo=undo)


def flaky(times: int, *, retryable: bool = True, code: str = "flaky",
          after: Iterable[PlannedStep] = (), undo: bool = False,
          retry: RetryPolicy | None = None) -> PlannedStep:
    """A `flaky.fail` step that fails its first `times` attempts."""
    return _step("flaky", "fail", {"times": times, "retryable": retryable, "code": code},
                 after=after, undo=undo, retry=retry)


def _step(subsystem: str, action: str, args: dict[str, Any], *,
          after: Iterable[PlannedStep] = (), undo: bool = False,
          retry: RetryPolicy | None = None, deadline: float = 30.0) -> PlannedStep:
    step_id = uuid4()
    compensation = None
    if undo:
        compensation = Compensation(
            subsystem="echo", action="echo",
            args=msgspec.Raw(msgspec.json.encode({"message": f"undo {step_id}"})),
            retry=RetryPolicy(max_attempts=3, initial_delay=0.1, jitter=0.0),
            deadline_seconds=30.0)
    return PlannedStep(
        step_id=step_id, subsystem=subsystem, action=action,
        args=msgspec.Raw(msgspec.json.encode(args)),
        depends_on=tuple(s.step_id for s in after),
        retry=retry or RetryPolicy(max_attempts=3, initial_delay=0.1, jitter=0.0),
        deadline_seconds=deadline, compensation=compensation)


def decoded(raw: msgspec.Raw | None) -> Any:
    assert raw is not None
    return msgspec.json.decode(raw)


def seconds(later: datetime | None, earlier: datetime | None) -> float:
    assert later is not None and earlier is not None
    return (later - earlier).total_seconds()


# --------------------------------------------------------------------------- the running kernel


class Kernel:
    """The kernel and its workers, running on this test's loop; blocking calls go to threads."""

    def __init__(self, app: KernelApplication, engine: OperationEngine,
                 tasks: dict[str, asyncio.Task[Any]]) -> None:
        self.app, self.engine, self.tasks = app, engine, tasks

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking engine or store call in a thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def check(self) -> None:
        """Raise if the kernel or a worker stopped on its own."""
        for name, task in self.tasks.items():
            if task.done():
                error = None if task.cancelled() else task.exception()
                raise AssertionError(f"{name} stopped while the test ran: {error!r}")

    async def accept(self, *steps: PlannedStep, entities: tuple[UUID, ...] = (),
                     key: str | None = None) -> tuple[UUID, OperationState]:
        """Submit an operation of these steps; its id and the state it was accepted in."""
        outcome = await self.call(self.engine.submit, "test.op", Plan(steps=steps), entities,
                                  idempotency_key=key or f"op-{uuid4()}")
        assert not outcome.replayed
        accepted = decoded(outcome.result)
        return UUID(accepted["operation_id"]), OperationState(accepted["state"])

    async def submit(self, *steps: PlannedStep, entities: tuple[UUID, ...] = (),
                     key: str | None = None) -> UUID:
        """Submit an operation of these steps; its id."""
        return (await self.accept(*steps, entities=entities, key=key))[0]

    async def cancel(self, op_id: UUID, reason: str = "test cancels") -> str:
        """Cancel an operation; the state the command left it in."""
        outcome = await self.call(self.engine.cancel, op_id, reason,
                                  idempotency_key=f"cancel-{uuid4()}")
        return str(decoded(outcome.result)["state"])

    async def operation(self, op_id: UUID) -> Operation:
        """The operation as the event store has it now."""
        op: Operation = await self.call(self.app.repository.get, op_id)
        return op

    async def events(self, op_id: UUID) -> list[Any]:
        """Every stored event of the operation, in order."""
        return await self.call(lambda: list(self.app.events.get(op_id)))

    async def wait_until(self, op_id: UUID, ready: Callable[[Operation], bool],
                         timeout: float = 15.0, what: str = "condition") -> Operation:
        """Poll the store until `ready(operation)`; fail (with the state) after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            op = await self.operation(op_id)
            if ready(op):
                return op
            if time.monotonic() > deadline:
                runs = {str(r.step_id)[:8]: (r.phase.value, r.status.value, len(r.attempts))
                        for r in op.runs.values()}
                raise AssertionError(f"operation {op_id}: no {what} within {timeout}s; "
                                     f"state {op.state.value}, runs {runs}")
            await asyncio.sleep(0.05)

    async def finished(self, op_id: UUID, timeout: float = 15.0) -> Operation:
        """Wait for a terminal state."""
        return await self.wait_until(op_id, lambda op: op.is_finished, timeout, "terminal state")


async def _start_worker(url: str, name: str) -> tuple[Worker, asyncio.Event, asyncio.Task[Any]]:
    plugin = load_registry([name], {name: {}}).plugin(name).subsystem
    worker = Worker(plugin, servers=[url], concurrency=4, fetch_timeout=0.25,
                    drain_timeout=10.0)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop), name=f"worker-{name}")
    ready = asyncio.create_task(worker.ready.wait())
    await asyncio.wait({task, ready}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if not worker.ready.is_set():
        stop.set()
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_TIMEOUT)
        if not task.cancelled() and task.exception() is not None:
            raise AssertionError(f"worker {name} did not start") from task.exception()
        raise AssertionError(f"worker {name} did not start within {START_TIMEOUT}s")
    return worker, stop, task


@asynccontextmanager
async def running_kernel(pg_dsn: str, nats_url: str, *,
                         refuse_when_busy: bool = False) -> AsyncIterator[Kernel]:
    """Migrate, start a worker per test subsystem, then the kernel; stop all of it on exit."""
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,))
    await asyncio.to_thread(migrate_all, settings)
    stops: list[tuple[str, asyncio.Event, asyncio.Task[Any]]] = []
    app: KernelApplication | None = None
    body_failed = True
    try:
        for name in SUBSYSTEMS:
            _, stop, task = await _start_worker(nats_url, name)
            stops.append((f"worker {name}", stop, task))
        app = await asyncio.to_thread(open_application, PlatformApplication, settings)
        engine = OperationEngine(app, refuse_when_busy=refuse_when_busy)
        runner = KernelRunner(engine, DispatchFeed(app), settings.nats_urls)
        kernel_stop = asyncio.Event()
        kernel_task = asyncio.create_task(runner.run(kernel_stop), name="kernel")
        stops.insert(0, ("kernel", kernel_stop, kernel_task))
        yield Kernel(app, engine, {name: task for name, _, task in stops})
        body_failed = False
    except BaseException:
        body_failed = True
        raise
    finally:
        for _, stop, _ in stops:
            stop.set()
        errors = []
        for name, _, task in stops:
            try:
                await asyncio.wait_for(task, STOP_TIMEOUT)
            except BaseException as e:  # report every one, after stopping every one
                errors.append(f"{name}: {e!r}")
        if app is not None:
            app.close()
        # A failure to stop must not hide the test's own failure.
        assert body_failed or not errors, f"stopping failed: {errors}"


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


@pytest.fixture
def url(nats_server: EmbeddedNatsServer) -> str:
    return nats_server.url


# --------------------------------------------------------------------------- 1. a DAG succeeds


def test_a_two_step_dag_succeeds_and_records_every_result(pg_dsn: str, url: str) -> None:
    async def scenario() -> None:
        async with running_kernel(pg_dsn, url) as k:
            first = echo("one")
            second = echo("two", after=[first])
            op_id = await k.submit(first, second)
            op = await k.finished(op_id)

            assert op.state is O.SUCCEEDED
            assert decoded(op.result_of(first.step_id))["message"] == "one"
            assert decoded(op.result_of(second.step_id))["message"] == "two"
            for step in (first, second):
                run_ = op.step(step.step_id)
                assert run_.status is S.SUCCEEDED
                assert [a.number for a in run_.attempts] == [1]
                assert run_.attempts[0].outcome is AttemptOutcome.SUCCEEDED
            # The dependency held: the second step went out only after the first succeeded.
            a, b = (op.step(s.step_id).attempts[0] for s in (first, second))
            assert a.finished_at is not None and b.dispatched_at >= a.finished_at
            assert op.completion_order == [first.step_id, second.step_id]

    run(scenario())


# --------------------------------------------------------------------------- 2. retry, backoff


def test_a_flaky_step_is_retried_with_exponential_backoff(pg_dsn: str, url: str) -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay=0.2, multiplier=2, jitter=0)

    async def scenario() -> None:
        async with running_kernel(pg_dsn, url) as k:
            step = flaky(2, retry=policy)
            op_id = await k.submit(step)
            op = await k.finished(op_id)

            assert op.state is O.SUCCEEDED
            attempts = op.step(step.step_id).attempts
            assert [(a.number, a.outcome) for a in attempts] == [
                (1, AttemptOutcome.FAILED), (2, AttemptOutcome.FAILED),
                (3, AttemptOutcome.SUCCEEDED)]
            assert [a.error_code for a in attempts[:2]] == ["flaky", "flaky"]
            assert all(a.retryable for a in attempts[:2])
            assert decoded(op.result_of(step.step_id)) == {"attempt": 3}
            # The backoff: 0.2 s after attempt 1 failed, then 0.4 s after attempt 2 failed.
            for failed, nxt, wait in ((attempts[0], attempts[1], 0.2),
                                      (attempts[1], attempts[2], 0.4)):
                assert seconds(failed.retry_at, failed.finished_at) == pytest.approx(wait)
                assert failed.retry_at is not None and nxt.dispatched_at >= failed.retry_at
                gap = seconds(nxt.dispatched_at, failed.dispatched_at)
                assert wait <= gap < wait + SLACK, (wait, gap)

    run(scenario())


# --------------------------------------------------------------------------- 3. failed for good


def test_a_step_that_fails_for_good_fails_the_operation(pg_dsn: str, url: str) -> None:
    retry = RetryPolicy(max_attempts=2, initial_delay=0.1, jitter=0, non_retryable=("quota",))

    async def scenario() -> None:
        async with running_kernel(pg_dsn, url) as k:
            cases = {
                # the plugin says not retryable
                "plugin": (flaky(5, retryable=False, code="broken", retry=retry), "broken", 1),
                # the policy lists the code as non-retryable
                "policy": (flaky(5, retryable=True, code="quota", retry=retry), "quota", 1),
                # retryable, but max_attempts is used up
                "exhausted": (flaky(5, retryable=True, code="flaky", retry=retry), "flaky", 2),
            }
            ops = {}
            for name, (failing, _, _) in cases.items():
                before = echo(f"before {name}")  # succeeded, but owes no compensation
                after = echo(f"after {name}", after=[failing])
                ops[name] = (await k.submit(before, _rewire(failing, before), after),
                             before, after)
            for name, (failing, code, attempts) in cases.items():
                op_id, before, after = ops[name]
                op = await k.finished(op_id)
                assert op.state is O.FAILED, name
                assert op.failure is not None
                assert (op.failure.step_id, op.failure.phase, op.failure.error_code) == (
                    failing.step_id, Phase.FORWARD, code), name
                assert f"attempt {attempts} fails" in op.failure.message, name
                run_ = op.step(failing.step_id)
                assert run_.status is S.FAILED and len(run_.attempts) == attempts, name
                assert all(a.error_code == code for a in run_.attempts), name
                assert run_.attempts[-1].retry_at is None, name
                assert op.step(before.step_id).status is S.SUCCEEDED, name
                assert op.step(after.step_id).attempts == [], name  # never dispatched
                topics = [type(e).__name__ for e in await k.events(op_id)]
                assert "CompensationStarted" not in topics, name

    run(scenario())


def _rewire(step: PlannedStep, after: PlannedStep) -> PlannedStep:
    """The same step, depending on `after`."""
    return msgspec.structs.replace(step, depends_on=(after.step_id,))


# --------------------------------------------------------------------------- 4. deadline


def test_a_step_with_no_answer_times_out_on_every_attempt(pg_dsn: str, url: str) -> None:
    deadline, backoff = 1.0, 0.2
    retry = RetryPolicy(max_attempts=2, initial_delay=backoff, jitter=0)

    async def scenario() -> None:
        async with running_kernel(pg_dsn, url) as k:
            step = _step("silent", "ignore", {}, retry=retry, deadline=deadline)
            started = time.monotonic()
            op_id = await k.submit(step)
            op = await k.finished(op_id, timeout=10)
            elapsed = time.monotonic() - started

            assert op.state is O.FAILED
            assert op.failure is not None and op.failure.error_code == DEADLINE_EXCEEDED
            attempts = op.step(step.step_id).attempts
            assert [(a.number, a.outcome, a.error_code) for a in attempts] == [
                (1, AttemptOutcome.FAILED, DEADLINE_EXCEEDED),
                (2, AttemptOutcome.FAILED, DEADLINE_EXCEEDED)]
            for a in attempts:
                assert seconds(a.deadline_at, a.dispatched_at) == pytest.approx(deadline)
                # counted when the deadline came, not before, and not much later
                assert 0 <= seconds(a.finished_at, a.deadline_at) < SLACK
            assert attempts[0].retry_at is not None
            assert attempts[1].dispatched_at >= attempts[0].retry_at
            assert attempts[1].retry_at is None
            expected = 2 * deadline + backoff
            assert expected <= seconds(op.finished_at, attempts[0].dispatched_at) \
                < expected + SLACK
            assert expected <= elapsed < expected + 2 * SLACK

    run(scenario())


def test_the_kernel_times_out_an_operation_another_process_accepted(pg_dsn: str,
                                                                      url: str) -> None:
    # The NATS intake or the admin API may accept operations with an engine of their own:
    # the kernel learns those deadlines from the dispatches in the log.
    deadline = 1.0
    retry = RetryPolicy(max_attempts=1, jitter=0)

    async def scenario() -> None:
        async with running_kernel(pg_dsn, url) as k:
            other = OperationEngine(k.app)  # shares the store, not the kernel's timers
            step = _step("silent", "ignore", {}, retry=retry, deadline=deadline)
            outcome = await k.call(other.submit, "test.op", Plan(steps=(step,)),
                                   idempotency_key=f"op-{uuid4()}")
            op_id = UUID(decoded(outcome.result)["operation_id"])
            op = await k.finished(op_id, timeout=10)
            assert op.state is O.FAILED
            assert op.failure is not None and op.failure.error_code == DEADLINE_EXCEEDED
            attempt = op.step(step.step_id).attempts[0]
            assert 0 <= seconds(attempt.finished_at, attempt.deadline_at) < SLACK

    run(scenario())


# --------------------------------------------------------------------------- 5. compensation


def test_compensations_run_in_reverse_order_of_completion(pg_dsn: str, url: str) -> None:
    async def scenario() -> None:
        async with running_kernel(pg_dsn, url) as k:
            # a finishes well after b, so completion order (b, a) differs from plan order.
            a = sleep(0.5, undo=True)
            b = echo("b", undo=True)
            c = flaky(1, retryable=False, code="broken", after=[a, b], undo=True)
            op_id = await k.submit(a, b, c)
            op = await k.finished(op_id)

            assert op.state is O.ROLLED_BACK
            events = await k.events(op_id)
            done = [e.step_id for e in events
                    if isinstance(e, Operation.StepSucceeded) and e.phase is Phase.FORWARD]
            assert done == [b.step_id, a.step_id]  # the order they completed in
            undone = [op.step(e.step_id).compensates for e in events
                      if isinstance(e, Operation.StepSucceeded)
                      and e.phase is Phase.COMPENSATION]
            assert undone == list(reversed(done))
            # one compensation at a time: the second goes out after the first succeeded
            comp_events = [type(e).__name__ for e in events
                           if getattr(e, "phase", None) is Phase.COMPENSATION]
            assert comp_events == ["StepDispatched", "StepSucceeded"] * 2
            # c failed for good and never succeeded: it is never compensated
            assert op.step(c.step_id).status is S.FAILED
            assert c.compensation_id is not None
            assert op.step(c.compensation_id).attempts == []
            for step in (a, b):
                assert step.compensation_id is not None
                comp = op.step(step.compensation_id)
                assert comp.status is S.SUCCEEDED and len(comp.attempts) == 1
                assert decoded(comp.result)["message"] == f"undo {step.step_id}"
            names = [type(e).__name__ for e in events]
            assert names.index("CompensationStarted") > max(
                i for i, e in enumerate(events) if isinstance(e, Operation.StepAttemptFailed))

    run(scenario())


# --------------------------------------------------------------------------- 6. cancel


def test_cancel_while_a_step_runs_compensates_what_ran(pg_dsn: str, url: str) -> None:
    async def scenario() -> None:
        async with running_kernel(pg_dsn, url) as k:
            a = echo("a", undo=True)
            b = sleep(2.0, after=[a], undo=True)
            c = echo("c", after=[b], undo=True)
            d = echo("d", after=[c])
            op_id = await k.submit(a, b, c, d, entities=(uuid4(),))
            await k.wait_until(op_id, lambda op: op.step(b.step_id).status is S.IN_FLIGHT,
                               what="b in flight")
            await asyncio.sleep(0.3)  # the worker is sleeping now
            assert await k.cancel(op_id) == O.RUNNING.value  # b is still in flight
            cancelled_at = time.monotonic()
            op = await k.finished(op_id)

            assert op.state is O.ROLLED_BACK
            assert op.cancel_reason == "test cancels"
            b_attempt = op.step(b.step_id).attempts[0]
            # nothing settled before b reported
            assert seconds(op.finished_at, b_attempt.dispatched_at) >= 2.0
            assert time.monotonic() - cancelled_at < 2.0 + SLACK
            # no forward step went out after the cancel
            events = await k.events(op_id)
            cancel_at = next(i for i, e in enumerate(events)
                             if isinstance(e, Operation.CancelRequested))
            assert not [e for e in events[cancel_at:] if isinstance(e, Operation.StepDispatched)
                        and e.phase is Phase.FORWARD]
            assert op.step(c.step_id).attempts == [] and op.step(d.step_id).attempts == []
            # b finished (it was running) and is undone too, then a: reverse order
            assert op.completion_order == [a.step_id, b.step_id]
            undone = [op.step(e.step_id).compensates for e in events
                      if isinstance(e, Operation.StepSucceeded)
                      and e.phase is Phase.COMPENSATION]
            assert undone == [b.step_id, a.step_id]
            assert c.compensation_id is not None
            assert op.step(c.compensation_id).attempts == []

    run(scenario())


def test_cancel_while_waiting_for_an_entity_lets_the_next_through(pg_dsn: str,
                                                                  url: str) -> None:
    async def scenario() -> None:
        async with running_kernel(pg_dsn, url) as k:
            vm = uuid4()
            holder = await k.submit(sleep(1.5), entities=(vm,))
            waiting, state = await k.accept(echo("never", undo=True), entities=(vm,))
            nxt, next_state = await k.accept(echo("next"), entities=(vm,))
            assert (state, next_state) == (O.WAITING, O.WAITING)
            assert await k.cancel(waiting) == O.CANCELLED.value

            cancelled = await k.operation(waiting)
            assert cancelled.state is O.CANCELLED and cancelled.started_at is None
            assert all(r.attempts == [] for r in cancelled.runs.values())
            first = await k.finished(holder)
            second = await k.finished(nxt)
            assert (first.state, second.state) == (O.SUCCEEDED, O.SUCCEEDED)
            assert seconds(second.started_at, first.finished_at) >= 0
            topics = [type(e).__name__ for e in await k.events(waiting)]
            assert "Started" not in topics and "StepDispatched" not in topics
            queue = await k.call(k.app.repository.get, EntityQueue.create_id(vm))
            assert queue.owner is None and list(queue.waiting) == []

    run(scenario())


# --------------------------------------------------------------------------- 7. per-entity FIFO


def test_operations_on_one_entity_run_one_after_another(pg_dsn: str, url: str) -> None:
    async def scenario() -> None:
        async with running_kernel(pg_dsn, url) as k:
            vm = uuid4()
            accepted = [await k.accept(sleep(0.5), echo(f"op {n}"), entities=(vm,))
                        for n in range(3)]
            op_ids = [op_id for op_id, _ in accepted]
            assert [state for _, state in accepted] == [O.RUNNING, O.WAITING, O.WAITING]
            ops = [await k.finished(i) for i in op_ids]
            assert [op.state for op in ops] == [O.SUCCEEDED] * 3

            for before, after in itertools.pairwise(ops):
                assert seconds(after.started_at, before.finished_at) >= 0
                first_dispatch = min(a.dispatched_at for r in after.runs.values()
                                     for a in r.attempts)
                assert seconds(first_dispatch, before.finished_at) >= 0
            # In the log too: each Started comes after its predecessor's Succeeded.
            notes = await k.call(k.app.recorder.select_notifications, start=0, limit=10_000,
                                 topics=("operation.Started", "operation.Succeeded"))
            position = {(UUID(str(n.originator_id)), n.topic): n.id for n in notes}
            for before_id, after_id in itertools.pairwise(op_ids):
                assert position[(after_id, "operation.Started")] > \
                    position[(before_id, "operation.Succeeded")]

    run(scenario())


def test_refuse_when_busy_raises_the_conflict_and_writes_nothing(pg_dsn: str,
                                                                 url: str) -> None:
    async def scenario() -> None:
        async with running_kernel(pg_dsn, url, refuse_when_busy=True) as k:
            vm = uuid4()
            holder = await k.submit(sleep(1.5), entities=(vm,))
            head = await k.call(k.app.recorder.max_notification_id)
            with pytest.raises(EntityBusyError) as refused:
                await k.submit(echo("second"), entities=(vm,), key="second-op")
            assert refused.value.to_dict()  # a clear, serialisable conflict
            assert str(holder) in str(refused.value)
            assert await k.call(k.app.recorder.max_notification_id) == head
            assert await k.call(k.app.lookup_idempotency, "second-op") is None
            assert (await k.operation(holder)).state is O.RUNNING

            assert (await k.finished(holder)).state is O.SUCCEEDED
            again = await k.submit(echo("second"), entities=(vm,), key="second-op")
            assert (await k.finished(again)).state is O.SUCCEEDED

    run(scenario())


def test_engine_work_in_a_thread_does_not_stall_the_kernel_loop(pg_dsn: str, url: str) -> None:
    async def scenario() -> None:
        async with running_kernel(pg_dsn, url) as k:
            warm_up = await k.submit(echo("the kernel loops are running"))
            assert (await k.finished(warm_up)).state is O.SUCCEEDED
            loop = asyncio.get_running_loop()

            def long_batch() -> None:  # what the store thread does during a big batch
                with k.engine._lock:
                    time.sleep(1.0)

            busy = loop.run_in_executor(None, long_batch)
            worst = 0.0
            while not busy.done():
                t = time.monotonic()
                await asyncio.sleep(0.01)
                worst = max(worst, time.monotonic() - t)
            assert worst < 0.25, f"the event loop stalled {worst:.2f}s"

    run(scenario())
