"""The operation engine and dispatch feed on the real store, with a hand-moved clock."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.entity_queue import EntityQueue
from aggregates.errors import NotFoundError
from aggregates.operation import Operation, OperationState
from aggregates.plan import Compensation, Plan, PlannedStep, RetryPolicy
from kernel.commands import CommandOutcome
from kernel.contracts.steps import StepMessage, StepOutcome
from kernel.dispatch_feed import DispatchFeed
from kernel.operation_commands import CancelOperation, StartOperation
from kernel.operations import OperationEngine
from kernel.store.testing import scratch_application

ARGS = msgspec.Raw(b'{"n":1}')


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(clock: Clock) -> Iterator[OperationEngine]:
    app = scratch_application()
    yield OperationEngine(app, clock=clock)
    app.close()


def step(action: str = "echo", deps: tuple[UUID, ...] = (), *, undo: bool = False,
         retry: RetryPolicy | None = None, deadline: float = 30.0) -> PlannedStep:
    return PlannedStep(
        step_id=uuid4(), subsystem="echo", action=action, args=ARGS, depends_on=deps,
        retry=retry or RetryPolicy(max_attempts=3, initial_delay=1.0, jitter=0.0),
        deadline_seconds=deadline,
        compensation=Compensation(subsystem="echo", action="undo", args=ARGS) if undo else None)


def submit(engine: OperationEngine, *steps: PlannedStep,
           entities: tuple[UUID, ...] = ()) -> UUID:
    out = engine.submit("test.op", Plan(steps=steps), entities,
                        idempotency_key=f"k-{uuid4()}")
    return UUID(msgspec.json.decode(out.result)["operation_id"])


def drain(engine: OperationEngine, feed: DispatchFeed) -> list[StepMessage]:
    messages, position = feed.read(feed.position())
    feed.commit(position)
    return messages


def ok(m: StepMessage) -> StepOutcome:
    return StepOutcome(step_id=m.step_id, operation_id=m.operation_id, attempt=m.attempt,
                       subsystem=m.subsystem, ok=True, result=msgspec.Raw(b'{"done":true}'))


def fail(m: StepMessage, *, retryable: bool = True, code: str = "boom") -> StepOutcome:
    return StepOutcome(step_id=m.step_id, operation_id=m.operation_id, attempt=m.attempt,
                       subsystem=m.subsystem, ok=False, error_code=code, message="it broke",
                       retryable=retryable)


def op(engine: OperationEngine, op_id: UUID) -> Operation:
    return engine.app.repository.get(op_id)  # type: ignore[no-any-return]


def test_a_dag_runs_step_by_step_through_the_log(engine: OperationEngine) -> None:
    feed = DispatchFeed(engine.app)
    a = step()
    b = step(deps=(a.step_id,))
    op_id = submit(engine, a, b)
    first = drain(engine, feed)
    assert [(m.step_id, m.attempt, m.subject) for m in first] == [(a.step_id, 1, "steps.echo.echo")]
    assert first[0].msg_id == f"{a.step_id}:1" and bytes(first[0].args) == bytes(ARGS)
    report = engine.apply_outcomes([ok(first[0])])
    assert report.applied == 1 and report.positions
    second = drain(engine, feed)
    assert [m.step_id for m in second] == [b.step_id]
    engine.apply_outcomes([ok(second[0])])
    assert op(engine, op_id).state is OperationState.SUCCEEDED
    assert drain(engine, feed) == []


def test_duplicate_and_stale_outcomes_change_nothing(engine: OperationEngine) -> None:
    feed = DispatchFeed(engine.app)
    submit(engine, step(), step())
    msgs = drain(engine, feed)
    engine.apply_outcomes([ok(msgs[0])])
    head = engine.app.recorder.max_notification_id()
    report = engine.apply_outcomes([ok(msgs[0]), fail(msgs[0])])
    assert report.applied == 0 and engine.app.recorder.max_notification_id() == head


def test_retry_waits_out_its_backoff_on_a_timer(engine: OperationEngine, clock: Clock) -> None:
    feed = DispatchFeed(engine.app)
    submit(engine, step())
    (m1,) = drain(engine, feed)
    engine.apply_outcomes([fail(m1)])
    assert drain(engine, feed) == []  # backing off
    assert engine.next_timer() == clock.now + timedelta(seconds=1)
    clock.advance(0.5)
    engine.fire_due_timers()
    assert drain(engine, feed) == []
    clock.advance(0.6)
    engine.fire_due_timers()
    (m2,) = drain(engine, feed)
    assert (m2.step_id, m2.attempt) == (m1.step_id, 2) and m2.msg_id.endswith(":2")


def test_a_step_with_no_answer_by_its_deadline_is_retried(engine: OperationEngine,
                                                          clock: Clock) -> None:
    feed = DispatchFeed(engine.app)
    op_id = submit(engine, step(deadline=5.0))
    (m1,) = drain(engine, feed)
    clock.advance(5.0)
    engine.fire_due_timers()  # deadline: retryable failure, backoff 1 s
    clock.advance(1.0)
    engine.fire_due_timers()
    (m2,) = drain(engine, feed)
    assert m2.attempt == 2
    engine.apply_outcomes([ok(m1)])  # the late answer of attempt 1 changes nothing
    assert op(engine, op_id).state is OperationState.RUNNING
    engine.apply_outcomes([ok(m2)])
    assert op(engine, op_id).state is OperationState.SUCCEEDED


def test_exhausted_retries_compensate_in_reverse_order(engine: OperationEngine,
                                                       clock: Clock) -> None:
    feed = DispatchFeed(engine.app)
    a, b = step(undo=True), step(undo=True)
    c = step(deps=(a.step_id, b.step_id), undo=True,
             retry=RetryPolicy(max_attempts=1, jitter=0.0))
    op_id = submit(engine, a, b, c)
    first = drain(engine, feed)
    engine.apply_outcomes([ok(first[1])])  # b completes before a
    engine.apply_outcomes([ok(first[0])])
    (mc,) = drain(engine, feed)
    engine.apply_outcomes([fail(mc)])
    undo_1 = drain(engine, feed)
    assert [m.compensation for m in undo_1] == [True] and undo_1[0].action == "undo"
    engine.apply_outcomes([ok(undo_1[0])])
    undo_2 = drain(engine, feed)
    engine.apply_outcomes([ok(undo_2[0])])
    operation = op(engine, op_id)
    assert operation.state is OperationState.ROLLED_BACK
    order = [operation.step(m.step_id) for m in (undo_1[0], undo_2[0])]
    assert [r.compensates for r in order] == [a.step_id, b.step_id]  # latest completed first
    assert drain(engine, feed) == []  # no compensation for c, which never succeeded


def test_busy_entities_queue_fifo_and_start_when_free(engine: OperationEngine) -> None:
    feed = DispatchFeed(engine.app)
    vm = uuid4()
    first = submit(engine, step(), entities=(vm,))
    second = submit(engine, step(), entities=(vm,))
    third = submit(engine, step(), entities=(vm,))
    assert op(engine, second).state is OperationState.WAITING
    msgs = drain(engine, feed)
    assert [m.operation_id for m in msgs] == [first]
    engine.apply_outcomes([ok(msgs[0])])
    msgs = drain(engine, feed)
    assert [m.operation_id for m in msgs] == [second]
    assert op(engine, third).state is OperationState.WAITING
    queue = engine.app.repository.get(EntityQueue.create_id(vm))
    assert queue.owner == second


def test_cancel_compensates_what_ran(engine: OperationEngine) -> None:
    feed = DispatchFeed(engine.app)
    a = step(undo=True)
    b = step(deps=(a.step_id,), undo=True)
    op_id = submit(engine, a, b, entities=(uuid4(),))
    (ma,) = drain(engine, feed)
    engine.apply_outcomes([ok(ma)])
    (mb,) = drain(engine, feed)
    engine.cancel(op_id, "admin changed their mind", idempotency_key="c1")
    assert drain(engine, feed) == []  # b is in flight: nothing new until it reports
    engine.apply_outcomes([ok(mb)])
    undo = drain(engine, feed)
    assert len(undo) == 1 and undo[0].compensation
    engine.apply_outcomes([ok(undo[0])])
    undo2 = drain(engine, feed)
    engine.apply_outcomes([ok(undo2[0])])
    assert op(engine, op_id).state is OperationState.ROLLED_BACK


def test_timers_are_rebuilt_from_the_log(clock: Clock) -> None:
    app = scratch_application()
    try:
        engine = OperationEngine(app, clock=clock)
        feed = DispatchFeed(app)
        submit(engine, step(deadline=10.0))
        (m1,) = drain(engine, feed)
        restarted = OperationEngine(app, clock=clock)  # a new process: nothing in memory
        assert restarted.next_timer() is None
        assert restarted.recover() == 1
        clock.advance(10.0)
        restarted.fire_due_timers()
        clock.advance(1.0)
        restarted.fire_due_timers()
        (m2,) = DispatchFeed(app).read(feed.position())[0]
        assert (m2.step_id, m2.attempt) == (m1.step_id, 2)
    finally:
        app.close()


def test_feed_position_is_durable(engine: OperationEngine) -> None:
    feed = DispatchFeed(engine.app)
    submit(engine, step(), step())
    msgs, position = feed.read(feed.position())
    assert len(msgs) == 2
    assert DispatchFeed(engine.app).position() == 0  # not committed: a restart publishes again
    feed.commit(position)
    assert DispatchFeed(engine.app).position() == position
    assert DispatchFeed(engine.app).read(position) == ([], position)


def test_bulk_submission_is_one_idempotent_transaction(engine: OperationEngine) -> None:
    from kernel.operation_commands import StartOperation

    specs = [StartOperation(kind="bulk", plan=Plan(steps=(step(),))) for _ in range(50)]
    out = engine.submit_many(specs, idempotency_key="bulk-1")
    assert len(msgspec.json.decode(out.result)) == 50
    assert len(out.positions) == 150  # Accepted, Started, StepDispatched each
    again = engine.submit_many(specs, idempotency_key="bulk-1")
    assert again.replayed
    assert len(drain(engine, DispatchFeed(engine.app))) == 50


def test_without_group_commit_each_outcome_is_its_own_transaction(clock: Clock) -> None:
    app = scratch_application()
    try:
        engine = OperationEngine(app, clock=clock, group_commit=False)
        feed = DispatchFeed(app)
        for _ in range(3):
            submit(engine, step())
        msgs = drain(engine, feed)
        report = engine.apply_outcomes([ok(m) for m in msgs])
        assert report.applied == 3
        notes = app.recorder.select_notifications(start=max(report.positions) - 5, limit=10)
        assert len(report.positions) == 6
        assert notes
    finally:
        app.close()


def test_a_failed_timer_batch_does_not_lose_its_timers(clock: Clock) -> None:
    from eventsourcing.persistence import OperationalError

    app = scratch_application()
    try:
        engine, feed = OperationEngine(app, clock=clock), DispatchFeed(app)
        submit(engine, step(deadline=5.0))
        drain(engine, feed)
        clock.advance(5.0)
        real_save = app.save

        def db_down(*_: object, **__: object) -> None:
            raise OperationalError("server closed the connection")

        app.save = db_down  # type: ignore[method-assign]
        with pytest.raises(OperationalError):
            engine.fire_due_timers()
        app.save = real_save  # type: ignore[method-assign]
        assert engine.next_timer() is not None, "the deadline timer was dropped"
        engine.fire_due_timers()
        clock.advance(1.0)
        engine.fire_due_timers()
        (m2,) = drain(engine, feed)
        assert m2.attempt == 2
    finally:
        app.close()


def test_next_timer_does_not_wait_for_a_batch(engine: OperationEngine) -> None:
    import threading
    import time

    submit(engine, step(deadline=5.0))
    holding = threading.Event()

    def long_batch() -> None:
        with engine._lock:
            holding.set()
            time.sleep(1.0)

    t = threading.Thread(target=long_batch)
    t.start()
    holding.wait(5)
    started = time.monotonic()
    assert engine.next_timer() is not None
    assert time.monotonic() - started < 0.2
    t.join()


def test_concurrent_commands_are_committed_together_and_each_gets_its_outcome(
        engine: OperationEngine) -> None:
    import threading

    saves: list[int] = []
    real_save = engine.app.save

    def counting_save(*objs: object, **kwargs: object) -> object:
        records = kwargs.get("idempotency")
        saves.append(len(records) if isinstance(records, list) else 1)
        return real_save(*objs, **kwargs)

    engine.app.save = counting_save  # type: ignore[method-assign]
    entity = uuid4()
    outcomes: dict[int, object] = {}
    commands = {i: (CancelOperation(operation_id=uuid4()) if i == 7 else
                    StartOperation(kind="test.op", plan=Plan(steps=(step(),)),
                                   entity_ids=(entity,))) for i in range(12)}

    def run(i: int) -> None:
        try:
            outcomes[i] = engine.execute(commands[i], idempotency_key=f"key-{i}")
        except Exception as e:
            outcomes[i] = e

    with engine._lock:  # hold the engine so that the commands queue up behind it
        threads = [threading.Thread(target=run, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        while len(engine._lane.requests) < 12:
            threading.Event().wait(0.001)
    for t in threads:
        t.join()
    assert isinstance(outcomes[7], NotFoundError)  # refused alone, the others still ran
    accepted = [msgspec.json.decode(o.result)["operation_id"] for i, o in outcomes.items()
                if i != 7 and isinstance(o, CommandOutcome)]
    assert len(set(accepted)) == 11
    ops = [op(engine, UUID(a)) for a in accepted]
    # one entity: exactly one runs, the others wait in its queue, in one consistent state
    assert sorted(o.state.value for o in ops).count("Running") == 1
    # the batch failed on the refused command and was run one by one; a replay then
    # answers from the ledger without writing
    replay = engine.execute(commands[0], idempotency_key="key-0")
    assert replay.replayed
    assert all(n == 1 for n in saves)  # the failed batch saved nothing


def test_a_batch_of_good_commands_is_one_transaction(engine: OperationEngine) -> None:
    import threading

    saves: list[int] = []
    real_save = engine.app.save

    def counting_save(*objs: object, **kwargs: object) -> object:
        records = kwargs.get("idempotency")
        saves.append(len(records) if isinstance(records, list) else 1)
        return real_save(*objs, **kwargs)

    engine.app.save = counting_save  # type: ignore[method-assign]
    results: list[CommandOutcome] = []
    with engine._lock:
        threads = [threading.Thread(target=lambda i=i: results.append(engine.execute(
            StartOperation(kind="test.op", plan=Plan(steps=(step(),))),
            idempotency_key=f"good-{i}"))) for i in range(10)]
        for t in threads:
            t.start()
        while len(engine._lane.requests) < 10:
            threading.Event().wait(0.001)
    for t in threads:
        t.join()
    assert saves == [10]
    assert len(results) == 10 and all(r.positions for r in results)
    # each command's positions are its own events, not the whole batch's
    all_positions = [p for r in results for p in r.positions]
    assert len(all_positions) == len(set(all_positions))
