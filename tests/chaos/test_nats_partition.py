"""Chaos: a network partition between one kernel and NATS, while PostgreSQL still answers it.

Two kernels share the partitions on PostgreSQL and one nats-server; kernel-a reaches NATS
only through a TCP proxy the test cuts (every connection reset, every reconnect refused).
A kernel that can neither publish steps nor take outcomes must not keep its partitions from
the other: after a lease period without NATS it gives every lease up and leaves the members
(`KernelRunner._step_aside`), although its leases could still be renewed. kernel-b takes them
and finishes the operations of both, those in flight at the cut included. When the proxy is
mended, kernel-a joins again and gets its share back. Every counter step's effect is applied
exactly once throughout (the counter plugin records each step id with its effect)."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import pytest
from fixtures.tcp_proxy import TcpProxy
from support.kernel_fleet import LEASE, Fleet, holders, plan, status, wait_for

from aggregates.operation import Operation, OperationState
from kernel.bootstrap.migrations import migrate_all
from kernel.operation_commands import StartOperation
from kernel.operations import OperationEngine
from kernel.settings import Settings
from kernel.store.application import PlatformApplication, open_application
from subsystems.testing.counter import read_counter

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_a_kernel_cut_off_from_nats_gives_its_partitions_up_and_comes_back(
        tmp_path: Path, pg_dsn: str, nats_url: str) -> None:
    target = urlsplit(nats_url)
    assert target.hostname is not None and target.port is not None
    proxy = TcpProxy((target.hostname, target.port)).start()
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        lease_seconds=LEASE)
    migrate_all(settings)
    read_counter(dsn=pg_dsn)  # its tables, before the worker makes them
    fleet = Fleet(tmp_path, pg_dsn, [nats_url], replicas=1)
    app = open_application(PlatformApplication, settings)
    submitter = OperationEngine(app)
    op_ids: list[uuid.UUID] = []
    took: dict[str, float] = {}

    def submit(count: int) -> None:
        chunk = [StartOperation(kind="test.partition", plan=plan(), entity_ids=(uuid.uuid4(),))
                 for _ in range(count)]
        out = submitter.submit_many(chunk, idempotency_key=f"cut-{len(op_ids)}")
        op_ids.extend(uuid.UUID(r["operation_id"]) for r in msgspec.json.decode(out.result))

    def all_finished() -> bool:
        return all(app.repository.get(i).is_finished for i in op_ids)

    shared = {"kernel-a": 8, "kernel-b": 8}
    try:
        fleet.start("kernel-a", nats_urls=[proxy.url])
        fleet.start("kernel-b")
        fleet.start("worker-1")
        wait_for(lambda: holders(status(fleet.env)) == shared,
                 "two kernels share the 16 partitions", 30, fleet)
        submit(40)

        proxy.cut()  # kernel-a keeps PostgreSQL, loses NATS
        took["partitions given up and taken"] = wait_for(
            lambda: holders(status(fleet.env)) == {"kernel-b": 16},
            "kernel-b holds every partition", 8 * LEASE, fleet)
        assert "NATS out of reach for a lease period" in fleet.log("kernel-a"), fleet.logs()
        submit(40)
        took["operations of both finished"] = wait_for(
            all_finished, "every operation ends while kernel-a is cut off", 90, fleet)

        proxy.mend()
        took["share back after the mend"] = wait_for(
            lambda: holders(status(fleet.env)) == shared, "kernel-a joins again",
            10 * LEASE, fleet)
        submit(40)
        wait_for(all_finished, "every operation ends", 90, fleet)
    finally:
        fleet.stop_all()
        proxy.cut()

    try:
        ops: list[Operation] = [app.repository.get(i) for i in op_ids]
        assert Counter(op.state for op in ops) == {OperationState.SUCCEEDED: len(op_ids)}, \
            fleet.logs()
        report = read_counter(dsn=pg_dsn)
        steps = {str(s.step_id) for op in ops for s in op.plan.steps}
        assert set(report.applied) == steps and set(report.applied.values()) == {1}
        print(f"NATS partition: {', '.join(f'{k} {v:.1f} s' for k, v in took.items())} "
              f"(leases of {LEASE} s); {len(op_ids)} operations, {len(steps)} steps applied "
              "once each")
    finally:
        app.close()
