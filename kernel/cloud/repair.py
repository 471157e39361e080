"""`entity.repair`: an audited command in place of the SQL that un-sticks a VM or a volume.

An outside failure (a hypervisor that never answered, a kernel that crashed between two
versions, a bug) can leave an entity in a transition with no operation left to end it. The
command forces it to a settled state (`aggregates.repair` lists which, from which) and records
`vm.Repaired` or `volume.Repaired` with the state it left, the state it was forced to and the
reason; the actor is the command's. It starts no operation, and it refuses:

* an entity that an unfinished operation holds: the repair must not race it (cancel that
  operation first, `operation.cancel`, then repair what its compensations left stuck);
* an operation (cancel it) and any entity other than a VM or a volume;
* a VM forced to Running or Stopped without a Ready root volume (it could not run);
* a VM forced to Running on a host that has no room left for it.

What the ordinary operation would have done to the other entities, the repair does in the
same transaction, so nothing leaks:

* a VM forced to Stopped or Error gives back every capacity claim it holds (as `vm.stop`
  does, and as a failed deploy does before Error); forced to Running, it keeps the claim on
  its host (taking one if it holds none, as after a failed deploy) and gives back any other
  (a migration's destination): it runs on its host, never on a half-reached destination;
* a volume forced out of Creating gives its pool claim back (as a failed create), out of
  Migrating the destination pool's claim, out of Resizing shrinks its claim back to its size
  (as a failed resize); out of Snapshotting its snapshot, if still being taken, is failed;
  out of Attaching it stays attached only if its VM lists it as a disk;
* an entity that a finished operation still shows as holding (a stale hold) is freed, unless
  another operation waits for it.

A volume still attached to a VM that is Expunged (as `vm.destroy` left data volumes before
expunges detached them) is stuck by that attachment: attach, detach and delete refuse it.
Its repair detaches it from that VM, whatever its state; a Ready one is repaired to Ready.
"""

from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec

from aggregates.entity_queue import EntityQueue
from aggregates.errors import CapacityError, DomainRuleError, NotFoundError
from aggregates.host import Host
from aggregates.offering import ServiceOffering
from aggregates.operation import Operation
from aggregates.repair import (
    VM_REPAIRS,
    VOLUME_REPAIRS,
    RepairRefusedError,
    check_reason,
    check_repair,
)
from aggregates.snapshot import Snapshot, SnapshotState
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState
from kernel.cloud.vms import pool_claim_id
from kernel.cloud.volumes import look
from kernel.commands import Command
from kernel.operation_commands import StartOperation
from kernel.unit_of_work import UnitOfWork

_GONE = (VolumeState.ALLOCATED, VolumeState.DESTROY, VolumeState.EXPUNGING,
         VolumeState.EXPUNGED)


class RepairEntity(Command, frozen=True, kw_only=True, tag="entity.repair"):
    """Force a VM or a volume stuck in a transition (or a VM in Error) to a settled state,
    recording why; refused while an operation holds it, or when it would be unsafe."""

    entity_id: UUID
    to_state: str
    reason: str


class RepairDone(msgspec.Struct, frozen=True, kw_only=True):
    """What a repair changed: the entity's state, and what else (`also`: claims given back
    or taken, a snapshot failed)."""

    entity_id: UUID
    kind: str
    name: str
    from_state: str
    to_state: str
    reason: str
    also: tuple[str, ...] = ()


def repair_claim_id(vm_id: UUID, version: int) -> UUID:
    """The capacity claim a repair takes for a VM forced to Running that held none."""
    return uuid5(NAMESPACE_URL, f"cloudkernel:repair-claim:{vm_id}:{version}")


def repair_factory(uow: UnitOfWork, command: RepairEntity,
                   now: datetime) -> tuple[StartOperation | None, RepairDone]:
    """entity.repair: check, then force the entity's state; no operation is started."""
    entity = uow.find(command.entity_id)
    if entity is None:
        raise NotFoundError(f"no entity {command.entity_id}")
    if isinstance(entity, VirtualMachine):
        return None, _repair_vm(uow, entity, command)
    if isinstance(entity, Volume):
        return None, _repair_volume(uow, entity, command)
    if isinstance(entity, Operation):
        raise RepairRefusedError(
            f"{command.entity_id} is an operation ({entity.kind}, {entity.state.value}): "
            "operations are not repaired; one stuck Running is cancelled with operation.cancel "
            "(its compensations then run), and what it leaves stuck can be repaired")
    kind = getattr(entity, "KIND", type(entity).__name__)
    raise RepairRefusedError(f"{command.entity_id} is a {kind}: only VMs and volumes are "
                             "repaired")


def require_no_live_operation(uow: UnitOfWork, entity_id: UUID, label: str) -> None:
    """Refuse while another unfinished operation holds the entity (a finished one that still
    shows as its owner is a stale hold, and does not count; nor does the repair's own hold when
    it is planned again on its turn)."""
    queue = uow.find(EntityQueue.create_id(entity_id))
    if not isinstance(queue, EntityQueue) or queue.owner in (None, uow.planning):
        return
    op = uow.find(queue.owner)
    if isinstance(op, Operation) and not op.is_finished:
        raise RepairRefusedError(
            f"{label} is held by operation {op.id} ({op.kind}, {op.state.value}): a repair "
            f"must not race it; cancel operation {op.id} first (operation.cancel), then "
            "repair what it leaves stuck")


def drop_stale_hold(uow: UnitOfWork, entity_id: UUID) -> list[str]:
    """Free an entity that a finished operation still shows as holding, when no operation
    waits for it (a waiter would need the engine to start it: it is left as it is)."""
    queue = uow.find(EntityQueue.create_id(entity_id))
    if not isinstance(queue, EntityQueue) or queue.owner is None or queue.waiting:
        return []
    owner = queue.owner
    queue.release(owner)
    return [f"freed from finished operation {owner}, which still held it"]


# --------------------------------------------------------------------------- VMs


def _repair_vm(uow: UnitOfWork, vm: VirtualMachine, command: RepairEntity) -> RepairDone:
    label = f"vm {vm.name}"
    to = VM_REPAIRS.state(VmState, command.to_state)
    require_no_live_operation(uow, vm.id, label)
    why = check_repair(VM_REPAIRS, label, vm.state, to, command.reason)
    if to in (VmState.RUNNING, VmState.STOPPED):
        _require_root_disk(uow, vm, to)
    from_state, hosts = vm.state, {vm.host_id, vm.last_host_id, vm.destination_host_id}
    keep = vm.host_id if to is VmState.RUNNING else None
    # Checked in this order, each refusal comes before anything changed.
    also = _claim_where_running(uow, vm, keep)
    vm.repair(to, why)
    also += _release_claims(uow, vm.id, hosts - {None, keep}) + drop_stale_hold(uow, vm.id)
    return RepairDone(entity_id=vm.id, kind="vm", name=vm.name, from_state=from_state.value,
                      to_state=to.value, reason=why, also=tuple(also))


def _require_root_disk(uow: UnitOfWork, vm: VirtualMachine, to: VmState) -> None:
    """A VM forced to Running or Stopped must have a root volume it can run from."""
    volume = None if vm.root_volume_id is None else uow.find(vm.root_volume_id)
    if not isinstance(volume, Volume) or volume.state in _GONE or volume.path is None:
        what = "no root volume" if not isinstance(volume, Volume) else \
            f"no usable root volume ({volume.name} is {volume.state.value})"
        first = "" if vm.state is VmState.ERROR else "repair it to Error, then "
        raise RepairRefusedError(f"vm {vm.name} has {what}: it cannot be {to.value}; "
                                 f"{first}vm.destroy removes it")
    if volume.state is not VolumeState.READY:
        raise RepairRefusedError(f"vm {vm.name}: its root volume {volume.name} ({volume.id}) "
                                 f"is {volume.state.value}; repair the volume first")


def _claim_where_running(uow: UnitOfWork, vm: VirtualMachine, host_id: UUID | None) -> list[str]:
    """A VM forced to Running holds capacity on its host: a claim if it has none (after a
    failed deploy); refused if the host has no room or takes no placements."""
    if host_id is None:
        return []
    host: Host = look(uow, host_id, Host, "host")
    if any(claim_vm == vm.id for claim_vm, _, _ in host.claims.values()):
        return []
    offering: ServiceOffering = look(uow, vm.service_offering_id, ServiceOffering,
                                     "service offering")
    try:
        host.claim(repair_claim_id(vm.id, vm.version), vm.id, offering.cpu_cores,
                   offering.memory_mib)
    except (CapacityError, DomainRuleError) as e:
        raise RepairRefusedError(
            f"vm {vm.name} cannot be Running on host {host.name}, which refuses its capacity "
            f"({e}); repair it to Stopped, then vm.start places it") from e
    return [f"claimed {offering.cpu_cores} cores/{offering.memory_mib} MiB on host {host.name}"]


def _release_claims(uow: UnitOfWork, vm_id: UUID, host_ids: set[UUID | None]) -> list[str]:
    """Give back every claim the VM holds on these hosts (as vm.stop does)."""
    also: list[str] = []
    for host_id in sorted((h for h in host_ids if h is not None), key=str):
        host: Host = look(uow, host_id, Host, "host")
        for claim_id, (claim_vm, cpu, memory) in list(host.claims.items()):
            if claim_vm == vm_id:
                host.release(claim_id)
                also.append(f"released {cpu} cores/{memory} MiB on host {host.name}")
    return also


# --------------------------------------------------------------------------- volumes


def _repair_volume(uow: UnitOfWork, volume: Volume, command: RepairEntity) -> RepairDone:
    label = f"volume {volume.name}"
    to = VOLUME_REPAIRS.state(VolumeState, command.to_state)
    require_no_live_operation(uow, volume.id, label)
    attached_vm = None if volume.vm_id is None else uow.find(volume.vm_id)
    vm_gone = volume.vm_id is not None and (not isinstance(attached_vm, VirtualMachine)
                                            or attached_vm.state is VmState.EXPUNGED)
    if vm_gone and volume.state is VolumeState.READY:  # stuck by its attachment alone
        why = check_reason(label, command.reason)
    else:
        why = check_repair(VOLUME_REPAIRS, label, volume.state, to, command.reason)
    snapshot = None
    if volume.state is VolumeState.SNAPSHOTTING and volume.snapshot_id is not None:
        snapshot = uow.find(volume.snapshot_id)
        if isinstance(snapshot, Snapshot):
            require_no_live_operation(uow, snapshot.id, f"snapshot {snapshot.name}")
    from_state = volume.state
    also: list[str] = []
    detach = False
    if from_state is VolumeState.CREATING and volume.pool_id is not None:
        also += _release_pool_claim(uow, volume, volume.pool_id)
    elif from_state is VolumeState.MIGRATING and volume.destination_pool_id is not None:
        also += _release_pool_claim(uow, volume, volume.destination_pool_id)
    elif from_state is VolumeState.RESIZING and volume.pool_id is not None:
        pool: PrimaryStoragePool = look(uow, volume.pool_id, PrimaryStoragePool,
                                        "storage pool")
        if pool_claim_id(volume.id) in pool.claims:
            pool.resize_claim(pool_claim_id(volume.id), volume.size_bytes)
            also.append(f"claim on storage pool {pool.name} back to {volume.size_bytes} bytes")
    elif isinstance(snapshot, Snapshot) and snapshot.state is SnapshotState.CREATING:
        snapshot.fail(f"repaired: {why}")
        also.append(f"snapshot {snapshot.name} failed")
    elif from_state is VolumeState.ATTACHING and volume.vm_id is not None and not vm_gone:
        detach = not (isinstance(attached_vm, VirtualMachine)
                      and volume.id in attached_vm.disks.values())
        also.append(f"detached from vm {volume.vm_id}" if detach else
                    f"attached to vm {volume.vm_id}, which lists it as a disk")
    if vm_gone:
        also.append(f"detached from vm {volume.vm_id}, which is expunged")
    volume.repair(to, why, detach=detach, vm_gone=vm_gone)
    if vm_gone and isinstance(attached_vm, VirtualMachine):
        attached_vm.detach_disk(volume.id)
    also += drop_stale_hold(uow, volume.id)
    return RepairDone(entity_id=volume.id, kind="volume", name=volume.name,
                      from_state=from_state.value, to_state=to.value, reason=why,
                      also=tuple(also))


def _release_pool_claim(uow: UnitOfWork, volume: Volume, pool_id: UUID) -> list[str]:
    pool: PrimaryStoragePool = look(uow, pool_id, PrimaryStoragePool, "storage pool")
    if pool_claim_id(volume.id) not in pool.claims:
        return []
    size = pool.claims[pool_claim_id(volume.id)][1]
    pool.release(pool_claim_id(volume.id))
    return [f"released {size} bytes on storage pool {pool.name}"]


REPAIR_COMMANDS: dict[type[Any], Any] = {RepairEntity: repair_factory}
