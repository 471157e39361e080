"""The whole platform under random, concurrent, overlapping commands: the real engine, the
cloud's commands and effects, and subsystems that answer success, failure, or never.

Commands are sent while earlier ones still run, twice with the same idempotency key or with
fresh ones, and operations are cancelled at random points; steps are answered out of order,
some failing (retryable or not), some never answered until their deadline. After every step
and at quiescence the machine checks the platform's invariants (../shared/PROOF.md):

* each host's claims are exactly the resources of the VMs placed there, nothing negative;
* every pool claim belongs to a live volume, and each live volume is claimed once;
* no volume is attached to a VM that is not there, nor a VM to a volume it does not list;
* every operation ends, and no entity is held by an operation that ended;
* a refused command did not move the log head.

`CLOUDKERNEL_PLATFORM_EXAMPLES` runs a longer profile (nightly-style).
"""

import os
from typing import Any
from uuid import UUID, uuid4

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from aggregates.entity_queue import EntityQueue
from aggregates.errors import InvalidTransitionError, KernelError
from aggregates.host import Host
from aggregates.operation import Operation
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState
from kernel.cloud.storage_pools import Directory
from kernel.cloud.vm_moves import MigrateVm, RebootVm
from kernel.cloud.vms import DestroyVm, StartVm, StopVm
from kernel.cloud.volume_copies import SnapshotVolumeCommand
from kernel.cloud.volume_moves import DeleteVolumeCommand
from kernel.cloud.volumes import (
    AttachVolumeCommand,
    CreateVolumeCommand,
    DetachVolumeCommand,
    ResizeVolumeCommand,
)
from kernel.commands import Command
from kernel.contracts.steps import StepMessage, StepOutcome
from tests.unit.operations._volume_cloud import (
    GIB,
    VolumeCloud,
    make_cloud,
    offering_20g,
    offering_zone,
)
from tests.unit.operations.test_vm_deploy import deploy

EXAMPLES = int(os.environ.get("CLOUDKERNEL_PLATFORM_EXAMPLES", "150"))
ON_HOST = {VmState.STARTING, VmState.RUNNING, VmState.STOPPING, VmState.MIGRATING}
GONE_VOLUMES = {VolumeState.DESTROY, VolumeState.EXPUNGING, VolumeState.EXPUNGED}


class PlatformMachine(RuleBasedStateMachine):
    """Random commands against one cloud; the subsystems answer as the machine says."""

    vms = Bundle("vms")
    volumes = Bundle("volumes")

    @initialize(target=vms)
    def two_vms(self) -> Any:
        self.cloud: VolumeCloud = make_cloud()
        self.pending: list[StepMessage] = []  # dispatched, not answered yet
        self.sent: list[tuple[Command, str]] = []  # every command accepted, with its key
        self.ops: list[UUID] = []  # in the order accepted: draws replay the same
        ids = []
        for name in ("vm-a", "vm-b"):
            ids.append(UUID(deploy(self.cloud, name)["vm_id"]))
        self.cloud.run()
        return multiple(*ids)

    def teardown(self) -> None:
        if hasattr(self, "cloud"):
            self.cloud.app.close()

    # ------------------------------------------------------------------ sending

    def send(self, command: Command, *, key: str | None = None) -> dict[str, Any] | None:
        """Send a command; a refusal must leave the log head where it was."""
        head = self.cloud.app.recorder.max_notification_id()
        key = key or f"k-{uuid4()}"
        try:
            out = self.cloud.engine.execute(command, idempotency_key=key)
        except KernelError:
            assert self.cloud.app.recorder.max_notification_id() == head, command
            return None
        self.sent.append((command, key))
        import msgspec

        result = msgspec.json.decode(out.result)
        if isinstance(result, dict) and result.get("operation_id"):
            op_id = UUID(result["operation_id"])
            if op_id not in self.ops:
                self.ops.append(op_id)
        return result if isinstance(result, dict) else None

    @rule(vm=vms)
    def start(self, vm: UUID) -> None:
        self.send(StartVm(vm_id=vm))

    @rule(vm=vms)
    def start_twice(self, vm: UUID) -> None:
        self.send(StartVm(vm_id=vm))
        self.send(StartVm(vm_id=vm))

    @rule(vm=vms)
    def stop(self, vm: UUID) -> None:
        self.send(StopVm(vm_id=vm, force_after_seconds=0.0))

    @rule(vm=vms)
    def reboot(self, vm: UUID) -> None:
        self.send(RebootVm(vm_id=vm))

    @rule(vm=vms)
    def migrate(self, vm: UUID) -> None:
        self.send(MigrateVm(vm_id=vm))

    @rule(vm=vms, expunge=st.booleans())
    def destroy(self, vm: UUID, expunge: bool) -> None:
        self.send(DestroyVm(vm_id=vm, expunge=expunge))

    @rule(target=volumes, attach_to=st.none() | vms)
    def create_volume(self, attach_to: UUID | None) -> Any:
        out = self.send(CreateVolumeCommand(
            name=f"data-{uuid4().hex[:6]}", account="alice",
            zone_id=offering_zone(self.cloud), disk_offering_id=offering_20g(self.cloud).id,
            vm_id=attach_to))
        return multiple() if out is None else UUID(out["volume_id"])

    @rule(volume=volumes, vm=vms)
    def attach(self, volume: UUID, vm: UUID) -> None:
        self.send(AttachVolumeCommand(volume_id=volume, vm_id=vm))

    @rule(volume=volumes)
    def detach(self, volume: UUID) -> None:
        self.send(DetachVolumeCommand(volume_id=volume))

    @rule(volume=volumes, grow=st.integers(1, 3))
    def resize(self, volume: UUID, grow: int) -> None:
        self.send(ResizeVolumeCommand(volume_id=volume, size_bytes=(20 + grow) * GIB))

    @rule(volume=volumes)
    def snapshot(self, volume: UUID) -> None:
        self.send(SnapshotVolumeCommand(volume_id=volume))

    @rule(volume=volumes)
    def delete_volume(self, volume: UUID) -> None:
        self.send(DeleteVolumeCommand(volume_id=volume))

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data(), fresh=st.booleans())
    def resend(self, data: st.DataObject, fresh: bool) -> None:
        """A client's retry: the same key (the first answer, nothing new) or a fresh one."""
        command, key = data.draw(st.sampled_from(self.sent))
        head = self.cloud.app.recorder.max_notification_id()
        out = self.send(command, key=None if fresh else key)
        if not fresh:
            assert self.cloud.app.recorder.max_notification_id() == head
            assert out is None or out.get("operation_id") is None \
                or UUID(out["operation_id"]) in self.ops

    @precondition(lambda self: bool(self.ops))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        op_id = data.draw(st.sampled_from(self.ops))
        op: Operation = self.cloud.get(op_id)
        if op.is_finished:
            return
        try:
            self.cloud.engine.cancel(op_id, "the test changed its mind",
                                     idempotency_key=f"c-{uuid4()}")
        except InvalidTransitionError:
            # refused only past the point of no return: an irreversible step was sent
            assert any(r.irreversible and r.attempts for r in op.forward_steps()), op.kind

    # ------------------------------------------------------------------ subsystems

    @rule(data=st.data())
    def answer_some(self, data: st.DataObject) -> None:
        """Deliver some dispatched steps, in any order: success, failure, or not yet."""
        self.pending += self.cloud.dispatched()
        if not self.pending:
            return
        picked = data.draw(st.lists(st.sampled_from(range(len(self.pending))), unique=True,
                                    max_size=4))
        outcomes = []
        for index in sorted(picked, reverse=True):
            message = self.pending.pop(index)
            how = data.draw(st.sampled_from(["ok", "ok", "ok", "retryable", "fatal"]))
            if how == "ok":
                outcomes.append(self.cloud.answer(message))
            else:
                outcomes.append(StepOutcome(
                    step_id=message.step_id, operation_id=message.operation_id,
                    attempt=message.attempt, subsystem=message.subsystem, ok=False,
                    error_code="injected", message=f"{message.action} broke",
                    retryable=how == "retryable"))
        self.cloud.engine.apply_outcomes(outcomes)

    @rule()
    def time_passes(self) -> None:
        """An hour: every retry and deadline comes due (unanswered steps time out)."""
        from datetime import timedelta

        self.pending += self.cloud.dispatched()
        self.pending.clear()  # never answered: their deadlines pass
        self.cloud.now += timedelta(hours=1)
        self.cloud.engine.fire_due_timers()

    # ------------------------------------------------------------------ invariants

    def _all(self, topic: str) -> list[Any]:
        return [self.cloud.get(i) for i in dict.fromkeys(self.cloud.ids(topic))]

    @invariant()
    def hosts_count_exactly_what_they_hold(self) -> None:
        if not hasattr(self, "cloud"):
            return
        # a VM a migration holds keeps its claims on both hosts until the operation ends
        # (moved and NIC entries released on the source, or moved back): then MigrateEnded
        # gives back one side's
        migrating = set()
        for op_id in self.ops:
            op: Operation = self.cloud.get(op_id)
            if op.kind == "vm.migrate" and not op.is_finished:
                migrating |= set(op.entity_ids)
        for host in self._all("host.Registered"):
            assert isinstance(host, Host)
            assert host.used_cpu_cores == sum(c[1] for c in host.claims.values()) >= 0
            assert host.used_cpu_cores <= host.total_cpu_cores
            for vm_id, _cpu, _mem in host.claims.values():
                vm: VirtualMachine = self.cloud.get(vm_id)
                # a claim is a VM's on its host, or the destination of its migration, or,
                # while a migration holds it, its source
                held = (vm.host_id, vm.destination_host_id) + \
                    ((vm.last_host_id,) if vm.id in migrating else ())
                assert host.id in held, (host.name, vm)

    @invariant()
    def volumes_and_vms_agree(self) -> None:
        if not hasattr(self, "cloud"):
            return
        for volume in self._all("volume.Allocated"):
            if not isinstance(volume, Volume) or volume.vm_id is None:
                continue
            vm: VirtualMachine = self.cloud.get(volume.vm_id)
            assert vm.state is not VmState.EXPUNGED or volume.state in GONE_VOLUMES, (
                f"volume {volume.name} ({volume.state.value}) is attached to an expunged VM")

    def quiesce(self) -> None:
        """Answer everything with success until nothing runs."""
        self.pending += self.cloud.dispatched()
        if self.pending:
            self.cloud.engine.apply_outcomes([self.cloud.answer(m) for m in self.pending])
            self.pending.clear()
        self.cloud.run(limit=300)

    @invariant()
    def at_quiescence_everything_ended_and_nothing_leaked(self) -> None:
        if not hasattr(self, "cloud") or len(self.sent) % 4 != 3:
            return  # the full check now and then: it drives the cloud to rest
        self.quiesce()
        for op_id in self.ops:
            op: Operation = self.cloud.get(op_id)
            assert op.is_finished, (op.kind, op.state)
        for queue_id in self.cloud.ids("entity_queue.Opened"):
            queue: EntityQueue = self.cloud.get(queue_id)
            assert queue.owner is None and queue.waiting == [], queue
        claimed: dict[UUID, UUID] = {}
        for pool_id in Directory(self.cloud.app).ids():
            pool: PrimaryStoragePool = self.cloud.get(pool_id)
            for claim_id in pool.claims:
                assert claim_id not in claimed
                claimed[claim_id] = pool_id
        for vm in self._all("vm.Allocated"):
            if not isinstance(vm, VirtualMachine):
                continue
            holding = [h for h in self._all("host.Registered")
                       if any(c[0] == vm.id for c in h.claims.values())]
            if vm.state in ON_HOST:
                assert [h.id for h in holding] == [vm.host_id], (vm.name, vm.state)
            else:
                assert holding == [], (vm.name, vm.state, [h.name for h in holding])


PlatformMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestPlatform = PlatformMachine.TestCase
