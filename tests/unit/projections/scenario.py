"""A scripted run of VM and operation events, shared by the SQLite and PostgreSQL tests."""

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import msgspec

from aggregates.operation import Operation
from aggregates.plan import Plan, PlannedStep
from aggregates.vm import PowerState, VirtualMachine
from kernel.store.application import KernelApplication
from projections.models import Row

NOW = datetime(2026, 1, 1, tzinfo=UTC)
OK = msgspec.Raw(b"{}")
ZONE, OFFERING, TEMPLATE = uuid4(), uuid4(), uuid4()
HOST_1, HOST_2 = uuid4(), uuid4()


def new_vm(name: str, account: str = "alice") -> VirtualMachine:
    return VirtualMachine.allocate(name=name, account=account, zone_id=ZONE,
                                   service_offering_id=OFFERING, template_id=TEMPLATE)


def step() -> PlannedStep:
    return PlannedStep(step_id=uuid4(), subsystem="hv", action="noop", args=OK)


def scripted_run(app: KernelApplication) -> tuple[list[VirtualMachine], list[Operation]]:
    """Save a small story of VMs and operations; returns the aggregates as they end."""
    running = new_vm("web-1")
    running.start(HOST_1)
    app.save(running)
    running.started()
    running.migrate(HOST_2)
    app.save(running)
    running.migrated()
    running.observe_power(PowerState.ON, HOST_2)

    failed_start = new_vm("db-1", account="bob")
    failed_start.start(HOST_1)
    failed_start.start_failed("no capacity")

    destroyed = new_vm("tmp-1")
    destroyed.start(HOST_2)
    destroyed.started()
    destroyed.stop()
    destroyed.stopped()
    destroyed.destroy()

    allocated = new_vm("idle-1", account="bob")

    s1, s2 = step(), step()
    progressing = Operation.accept(kind="deploy", plan=Plan(steps=(s1, s2)), now=NOW,
                                   entity_ids=[running.id])
    progressing.start(NOW)
    progressing.dispatch(s1.step_id, NOW)
    progressing.record_success(s1.step_id, 1, OK, NOW)
    progressing.dispatch(s2.step_id, NOW)

    s3 = step()
    failing = Operation.accept(kind="stop", plan=Plan(steps=(s3,)), now=NOW)
    failing.start(NOW)
    failing.dispatch(s3.step_id, NOW)
    failing.record_failure(s3.step_id, 1, "boom", "it broke", False, NOW)

    waiting = Operation.accept(kind="deploy", plan=Plan(steps=(step(),)), now=NOW)
    app.save(running, failed_start, destroyed, allocated, progressing, failing, waiting)
    return [running, failed_start, destroyed, allocated], [progressing, failing, waiting]


def expected_vm(vm: VirtualMachine) -> dict[str, Any]:
    return {"id": vm.id, "name": vm.name, "account": vm.account, "state": vm.state.value,
            "power_state": vm.power_state.value, "host_id": vm.host_id,
            "zone_id": vm.zone_id, "offering_id": vm.service_offering_id,
            "version": vm.version}


def expected_operation(op: Operation) -> dict[str, Any]:
    forward = op.forward_steps()
    return {"id": op.id, "kind": op.kind, "state": op.state.value,
            "steps_total": len(forward),
            "steps_succeeded": sum(r.status.value == "Succeeded" for r in forward),
            "steps_failed": sum(r.status.value == "Failed" for r in forward),
            "steps_in_flight": sum(r.status.value == "InFlight" for r in forward),
            "started_at": op.started_at, "finished_at": op.finished_at,
            "version": op.version}


def subset(row: Row | None, keys: dict[str, Any]) -> dict[str, Any]:
    assert row is not None
    return {k: row[k] for k in keys}


def bulk_vms(app: KernelApplication, n_vms: int, per_save: int = 200) -> list[UUID]:
    """Save n_vms VMs with 5 events each (allocate, start, started, stop, stopped)."""
    ids: list[UUID] = []
    batch: list[VirtualMachine] = []
    for i in range(n_vms):
        vm = new_vm(f"vm-{i}", account=f"acct-{i % 7}")
        vm.start(HOST_1 if i % 2 else HOST_2)
        vm.started()
        if i % 3 == 0:
            vm.stop()
            vm.stopped()
        else:
            vm.observe_power(PowerState.ON, vm.host_id)
            vm.observe_power(PowerState.UNKNOWN, vm.host_id)
        batch.append(vm)
        ids.append(vm.id)
        if len(batch) == per_save:
            app.save(*batch)
            batch = []
    if batch:
        app.save(*batch)
    return ids
