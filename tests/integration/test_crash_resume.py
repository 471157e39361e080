"""Crash-resume: SIGKILL the kernel and the workers at random points while hundreds of
operations run on real PostgreSQL and a real nats-server; restart them; every operation ends
in a terminal state and every step's effect is applied exactly once."""

import random
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from support.kernel_fleet import Fleet

from aggregates.operation import Operation, OperationState
from aggregates.plan import Plan, PlannedStep, RetryPolicy
from gateways.stream.embedded import EmbeddedNatsServer
from kernel.bootstrap.migrations import migrate_all
from kernel.operation_commands import StartOperation
from kernel.operations import OperationEngine
from kernel.settings import Settings
from kernel.store.application import PlatformApplication, open_application
from subsystems.testing.counter import read_counter

OPERATIONS = 240
STEPS_PER_OP = 3
COUNTER = msgspec.json.encode({"name": "crash", "amount": 1})


def plan() -> Plan:
    policy = RetryPolicy(max_attempts=20, initial_delay=0.2, multiplier=2.0, max_delay=2.0)
    a = PlannedStep(step_id=uuid.uuid4(), subsystem="counter", action="add",
                    args=msgspec.Raw(COUNTER), retry=policy, deadline_seconds=4.0)
    b = PlannedStep(step_id=uuid.uuid4(), subsystem="counter", action="add",
                    args=msgspec.Raw(COUNTER), retry=policy, deadline_seconds=4.0,
                    depends_on=(a.step_id,))
    c = PlannedStep(step_id=uuid.uuid4(), subsystem="counter", action="add",
                    args=msgspec.Raw(COUNTER), retry=policy, deadline_seconds=4.0)
    return Plan(steps=(a, b, c))


def test_kill_kernel_and_workers_at_random_and_nothing_is_lost_or_repeated(
        tmp_path: Path, pg_dsn: str, nats_server: EmbeddedNatsServer) -> None:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_server.url,),
                        postgres_pool_size=2)
    migrate_all(settings)
    read_counter(dsn=pg_dsn)  # creates the counter's tables before the workers race to
    app = open_application(PlatformApplication, settings)
    submitter = OperationEngine(app)  # another process's view: it only submits
    fleet = Fleet(tmp_path, pg_dsn, [nats_server.url], replicas=1)
    rng = random.Random(20261124)
    op_ids: list[Any] = []
    try:
        for name in ("kernel", "worker-1", "worker-2"):
            fleet.start(name)
        deadline = time.monotonic() + 40
        submitted = 0
        victims: list[str] = []
        while submitted < OPERATIONS and time.monotonic() < deadline:
            chunk = [StartOperation(kind="test.crash", plan=plan(), entity_ids=(uuid.uuid4(),))
                     for _ in range(20)]
            out = submitter.submit_many(chunk, idempotency_key=f"crash-{submitted}")
            op_ids += [uuid.UUID(r["operation_id"]) for r in msgspec.json.decode(out.result)]
            submitted += len(chunk)
            time.sleep(rng.uniform(0.1, 0.6))
            if submitted % 40 == 0:  # every other chunk, at a random moment of the work
                if not victims:
                    victims = rng.sample(["kernel", "worker-1", "worker-2"], 3)
                victim = victims.pop()
                fleet.kill(victim)
                time.sleep(rng.uniform(0.0, 1.0))
                fleet.start(victim)
        assert submitted == OPERATIONS
        assert fleet.kills["kernel"] >= 2 and fleet.kills["worker-1"] >= 1 \
            and fleet.kills["worker-2"] >= 1

        finished_by = time.monotonic() + 120
        ops: dict[Any, Operation] = {}
        while time.monotonic() < finished_by:
            ops = {i: app.repository.get(i) for i in op_ids}
            if all(op.is_finished for op in ops.values()):
                break
            time.sleep(1.0)
        states = {i: op.state for i, op in ops.items()}
        unfinished = [i for i, op in ops.items() if not op.is_finished]
        assert not unfinished, f"{len(unfinished)} operations unfinished\n{fleet.logs()}"
    finally:
        fleet.stop_all()

    try:
        # Every operation succeeded (the counter never fails for good).
        assert Counter(states.values()) == {OperationState.SUCCEEDED: OPERATIONS}
        # Exactly once: one effect per step id, and the total moved once per step.
        report = read_counter(dsn=pg_dsn)
        steps = {str(s.step_id) for i in op_ids for s in app.repository.get(i).plan.steps}
        assert len(steps) == OPERATIONS * STEPS_PER_OP
        assert set(report.applied) == steps
        assert set(report.applied.values()) == {1}
        assert report.totals["crash"] == len(steps)
        # Each step succeeded exactly once in the log, whatever ran twice.
        succeeded = Counter(
            n.originator_id for n in app.recorder.select_notifications(
                start=None, limit=1_000_000, topics=("operation.StepSucceeded",)))
        assert sum(succeeded.values()) == len(steps)
        print(f"kills: {dict(fleet.kills)}; step runs: {sum(report.runs.values())} "
              f"for {len(steps)} steps")
    finally:
        app.close()
