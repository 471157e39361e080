"""Chaos: two kernels share the partitions on PostgreSQL and a 3-node NATS cluster (R3,
`sync_interval: always`) while operations run; the test SIGKILLs a kernel holding partitions,
freezes the other past its leases (SIGSTOP, then SIGCONT), SIGKILLs a worker and the NATS
node leading STEPS, and crashes PostgreSQL (SIGKILL, as `pg_ctl stop -m immediate`) and
starts it again. `cloudkernel cluster status --json`, run as an operator would, shows the
partitions move each time. Afterwards every operation succeeded and every step's effect was
applied exactly once (the counter plugin records each step id in PostgreSQL, in the
transaction of its effect), each step succeeded once in the log, and the frozen kernel found
itself deposed: its renewal lost every partition it held."""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from fixtures.nats_cluster import NatsCluster
from fixtures.postgres import PostgresServer
from support.kernel_fleet import LEASE, Fleet, holders, plan, status, wait_for

from aggregates.operation import Operation, OperationState
from kernel.bootstrap.migrations import migrate_all
from kernel.operation_commands import StartOperation
from kernel.operations import OperationEngine
from kernel.settings import Settings
from kernel.store.application import PlatformApplication, open_application
from subsystems.testing.counter import read_counter

pytestmark = pytest.mark.integration

OPERATIONS = 300


@pytest.fixture
def fleet(tmp_path: Path, pg_dsn: str, nats_cluster: NatsCluster) -> Iterator[Fleet]:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn,
                        nats_urls=tuple(nats_cluster.urls), lease_seconds=LEASE)
    migrate_all(settings)
    read_counter(dsn=pg_dsn)  # its tables, before the workers race to make them
    made = Fleet(tmp_path, pg_dsn, nats_cluster.urls)
    try:
        yield made
    finally:
        made.stop_all()


@pytest.mark.timeout(420)
def test_kernels_fail_over_and_nothing_is_lost_or_doubled(
        fleet: Fleet, pg_dsn: str, nats_cluster: NatsCluster,
        postgres_server: PostgresServer) -> None:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn,
                        nats_urls=tuple(nats_cluster.urls))
    app = open_application(PlatformApplication, settings)
    submitter = OperationEngine(app)  # a client's process: it only submits
    op_ids: list[uuid.UUID] = []
    took: dict[str, float] = {}

    def submit(count: int) -> None:
        for _ in range(count // 20):
            chunk = [StartOperation(kind="test.chaos", plan=plan(),
                                    entity_ids=(uuid.uuid4(),)) for _ in range(20)]
            for attempt in range(60):  # a client that retries with the same key
                try:
                    out = submitter.submit_many(chunk, idempotency_key=f"chaos-{len(op_ids)}")
                    break
                except Exception:
                    if attempt == 59:
                        raise
                    time.sleep(0.5)
            op_ids.extend(uuid.UUID(r["operation_id"])
                          for r in msgspec.json.decode(out.result))

    try:
        for name in ("kernel-a", "kernel-b", "worker-1", "worker-2"):
            fleet.start(name)
        shared = {"kernel-a": 8, "kernel-b": 8}
        took["balanced"] = wait_for(lambda: holders(status(fleet.env)) == shared,
                                    "two kernels share the 16 partitions", 30, fleet)
        submit(60)

        # a kernel holding partitions dies: the other holds all 16 within a few leases
        fleet.kill("kernel-a")
        killed_at = time.monotonic()
        wait_for(lambda: holders(status(fleet.env)) == {"kernel-b": 16},
                 "kernel-b takes kernel-a's partitions", 6 * LEASE, fleet)
        took["failover"] = time.monotonic() - killed_at
        submit(60)
        fleet.start("kernel-a")
        wait_for(lambda: holders(status(fleet.env)) == shared,
                 "the restarted kernel gets its share back", 6 * LEASE, fleet)

        # the other freezes past its leases; kernel-a takes them; resumed, it is deposed
        fleet.signal("kernel-b", signal.SIGSTOP)
        frozen_at = time.monotonic()
        submit(60)
        wait_for(lambda: holders(status(fleet.env)) == {"kernel-a": 16},
                 "kernel-a takes the frozen kernel's partitions", 6 * LEASE, fleet)
        took["takeover from a frozen kernel"] = time.monotonic() - frozen_at
        fleet.signal("kernel-b", signal.SIGCONT)
        wait_for(lambda: "were taken by another kernel" in fleet.log("kernel-b"),
                 "the resumed kernel finds its partitions taken", 4 * LEASE, fleet)
        wait_for(lambda: holders(status(fleet.env)) == shared, "shared again", 6 * LEASE,
                 fleet)

        # a worker, the node leading STEPS, and PostgreSQL itself
        fleet.kill("worker-1")
        submit(60)
        fleet.start("worker-1")
        leader = next(s["leader"] for s in status(fleet.env)["nats"]["streams"]
                      if s["name"] == "STEPS")
        node = nats_cluster.node(leader)
        node.kill()
        submit(20)
        time.sleep(2)
        node.start()
        postgres_server.kill()  # every session gone at once, nothing checkpointed
        time.sleep(1)
        postgres_server.start()
        submit(40)
        assert len(op_ids) == OPERATIONS

        ops: dict[uuid.UUID, Operation] = {}

        def all_finished() -> bool:
            ops.update({i: app.repository.get(i) for i in op_ids})
            return all(op.is_finished for op in ops.values())
        took["quiescence"] = wait_for(all_finished, "every operation ends", 180, fleet)
        final = status(fleet.env)
    finally:
        fleet.stop_all()

    try:
        assert Counter(op.state for op in ops.values()) == {
            OperationState.SUCCEEDED: OPERATIONS}, fleet.logs()
        report = read_counter(dsn=pg_dsn)
        steps = {str(s.step_id) for op in ops.values() for s in op.plan.steps}
        assert set(report.applied) == steps and set(report.applied.values()) == {1}
        assert report.totals["chaos"] == len(steps)
        succeeded = Counter(n.originator_id for n in app.recorder.select_notifications(
            start=None, limit=1_000_000, topics=("operation.StepSucceeded",)))
        assert sum(succeeded.values()) == len(steps)
        assert {n["name"] for n in final["nats"]["nodes"]} == {"n0", "n1", "n2"}
        replicas = {s["name"]: s["replicas"] for s in final["nats"]["streams"]
                    if "error" not in s}
        assert replicas.items() >= {"STEPS": 3, "RESULTS": 3}.items(), replicas  # (no relay)
        refused = sum(fleet.log(w).count("stale_epoch") for w in ("worker-1", "worker-2"))
        fenced = fleet.log("kernel-b").count("was fenced")
        print(f"failover: {', '.join(f'{k} {v:.1f} s' for k, v in took.items())} "
              f"(leases of {LEASE} s); kills {dict(fleet.kills)}; step runs "
              f"{sum(report.runs.values())} for {len(steps)} steps; stale-epoch steps "
              f"refused by workers {refused}; kernel-b writes fenced {fenced}")
    finally:
        app.close()
