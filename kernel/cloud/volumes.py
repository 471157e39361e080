"""Data volume operations as step plans: create, attach, detach, resize (snapshots and
backups are in `volume_copies`); and what every volume operation shares.

* `volume.create`: the pool (given, or the first Up one by name with room) and the host to
  create on (the VM's, when the volume is for a VM; else the first Up host, by name, that
  reaches the pool) are chosen, and the pool's capacity claimed, when the command is taken.
  storage.create_pool ─> storage.create_volume (undo: delete_volume) [─> hypervisor.attach_disk
  (undo: detach_disk)]. A failed create gives the claim back and the volume is Expunged.
* `volume.attach` (a Running VM): hypervisor.attach_disk (undo: detach_disk); `volume.detach`
  (a data disk): hypervisor.detach_disk (undo: attach_disk); a Stopped VM has no domain, so
  its detach finds none and only the record changes.
* `volume.resize` grows only: the volume is Resizing and its pool claim grown when the command
  is taken (a full pool refuses it then); storage.resize_volume; a failure shrinks the claim
  back. A grow cannot be undone.

Commands validate when taken; the arguments of each step are bound at dispatch, when the
operation holds its entities, and binding checks again what the step needs, so a step is never
sent against entities that changed meanwhile. A command that changes an entity right away
refuses while another operation holds it.
"""

from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

import msgspec

from aggregates.entity_queue import EntityQueue
from aggregates.errors import DomainRuleError, NotFoundError, ValidationError
from aggregates.host import MAINTENANCE_STATES, Host, HostStatus
from aggregates.offering import DiskOffering
from aggregates.operation import Operation
from aggregates.plan import Compensation, Plan, PlannedStep, RetryPolicy
from aggregates.storage_pool import PrimaryStoragePool, StoragePoolState
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import CDROM_DEVICE_ID, Volume, VolumeState, VolumeType
from kernel.cloud.storage_pools import directory
from kernel.cloud.vms import pool_claim_id, reaches
from kernel.commands import Command
from kernel.effects import EffectScope, StepContext
from kernel.operation_commands import StartOperation
from kernel.steps.storage import VolumeRef
from kernel.unit_of_work import UnitOfWork

STEP_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.5, max_delay=5.0, jitter=0.2)
HOST_TOPIC = "host.Registered"
T = TypeVar("T")
RUNNING_VM_STATES = (VmState.STARTING, VmState.RUNNING, VmState.STOPPING, VmState.MIGRATING)


# --------------------------------------------------------------------------- commands


class CreateVolumeCommand(Command, frozen=True, kw_only=True, tag="volume.create"):
    """Create a blank data volume (a disk offering's size, or `size_bytes`) on a primary pool;
    with `vm_id`, on that Running VM's host, and attach it."""

    name: str
    account: str
    zone_id: UUID
    disk_offering_id: UUID | None = None
    size_bytes: int | None = None
    pool_id: UUID | None = None
    vm_id: UUID | None = None
    volume_id: UUID | None = None


class AttachVolumeCommand(Command, frozen=True, kw_only=True, tag="volume.attach"):
    """Attach a Ready, detached data volume to a Running VM."""

    volume_id: UUID
    vm_id: UUID


class DetachVolumeCommand(Command, frozen=True, kw_only=True, tag="volume.detach"):
    """Detach a data volume from its VM."""

    volume_id: UUID


class ResizeVolumeCommand(Command, frozen=True, kw_only=True, tag="volume.resize"):
    """Grow a volume to `size_bytes` (a volume never shrinks)."""

    volume_id: UUID
    size_bytes: int


class VolumeAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """What a volume command started: the operation and the entities it is about."""

    operation_id: UUID
    volume_id: UUID | None = None
    vm_id: UUID | None = None
    snapshot_id: UUID | None = None
    backup_id: UUID | None = None


class VolumeOp(msgspec.Struct, frozen=True, kw_only=True):
    """Plan arguments of a bound volume step: the entities it is about."""

    volume_id: UUID | None = None
    vm_id: UUID | None = None
    pool_id: UUID | None = None
    host_id: UUID | None = None
    snapshot_id: UUID | None = None
    backup_id: UUID | None = None
    volume_ids: tuple[UUID, ...] = ()
    target_dir: str = ""


# --------------------------------------------------------------------------- lookups

Reader = UnitOfWork | EffectScope
def look(reader: Reader, aggregate_id: UUID, kind: type[Any], what: str) -> Any:
    """An aggregate to read; NotFoundError naming `what` if missing or of another kind."""
    try:
        found = reader.peek(aggregate_id) if isinstance(reader, EffectScope) \
            else reader.get(aggregate_id)
    except NotFoundError:
        found = None
    if not isinstance(found, kind):
        raise NotFoundError(f"no {what} {aggregate_id}")
    return found


def volume_file_name(volume: Volume) -> str:
    """The volume's name in its libvirt pool."""
    return f"{volume.id}.qcow2"


def storage_host(reader: Reader, volume: Volume) -> Host:
    """A host that reaches the volume's pool: where it was created, else its VM's host; if
    that one is down or in maintenance, its VM's host or any other usable host that reaches
    the pool (a shared pool is reached from every host of its cluster)."""
    host_id = volume.host_id
    vm = None if volume.vm_id is None else look(reader, volume.vm_id, VirtualMachine, "vm")
    if host_id is None and vm is not None:
        host_id = vm.host_id or vm.last_host_id
    if host_id is None:
        raise NotFoundError(f"volume {volume.name} is on no known host")
    recorded: Host = look(reader, host_id, Host, "host")
    if _usable(recorded) or volume.pool_id is None:
        return recorded
    pool = look(reader, volume.pool_id, PrimaryStoragePool, "storage pool")
    others = [vm.host_id] if vm is not None and vm.host_id is not None else []
    app = reader.uow.app if isinstance(reader, EffectScope) else reader.app
    for other_id in (*others, *directory(app, HOST_TOPIC).ids()):
        other: Host = look(reader, other_id, Host, "host")
        if _usable(other) and reaches(other, pool):
            return other
    return recorded  # nothing better: the step waits for it (and is retried)


def _usable(host: Host) -> bool:
    return host.status is HostStatus.UP and host.resource_state not in MAINTENANCE_STATES


def volume_ref(reader: Reader, volume: Volume) -> VolumeRef:
    """The volume as the storage, snapshot and backup steps name it."""
    if volume.pool_id is None or volume.path is None:
        raise NotFoundError(f"volume {volume.name} has no storage yet")
    pool = look(reader, volume.pool_id, PrimaryStoragePool, "storage pool")
    return VolumeRef(host_uri=storage_host(reader, volume).uri, pool=pool.pool_name,
                     name=volume_file_name(volume))


def next_device(vm: VirtualMachine) -> int:
    """The first free data disk slot of a VM (1 and up, not the CD-ROM's)."""
    device = 1
    while device in vm.disks or device == CDROM_DEVICE_ID:
        device += 1
    return device


def require_idle(uow: UnitOfWork, entity_id: UUID, label: str) -> None:
    """Refuse to change an entity now if another operation holds it (its effects expect it
    as it was when they were planned). The operation being planned again when its turn came
    holds it itself: that is no refusal."""
    queue = uow.find(EntityQueue.create_id(entity_id))
    if isinstance(queue, EntityQueue) and queue.is_busy and queue.owner != uow.planning:
        raise DomainRuleError(f"{label} is busy with operation {queue.owner}; try again when "
                              "it ends")


def require_vm_not_running(vm: VirtualMachine, what: str) -> None:
    """Refuse while the VM is on a host (starting, running, stopping or migrating)."""
    if vm.state in RUNNING_VM_STATES:
        raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: stop it before {what}")


def plan_ref(ctx: StepContext) -> VolumeOp:
    """The plan arguments of a bound volume step."""
    return ctx.plan_args(VolumeOp)


def operation_ref(op: Operation) -> VolumeOp:
    """The entities of a volume operation, from its first step's plan arguments."""
    return msgspec.json.decode(op.forward_steps()[0].args, type=VolumeOp)


def need(value: T | None, what: str) -> T:
    """The value, or NotFoundError naming what is missing."""
    if value is None:
        raise NotFoundError(f"{what} is missing")
    return value


# --------------------------------------------------------------------------- plans


def bound_step(subsystem: str, action: str, ref: msgspec.Struct, *,
               depends_on: tuple[UUID, ...] = (), retry: RetryPolicy = STEP_RETRY,
               deadline: float = 120.0, undo: str | None = None) -> PlannedStep:
    """A step whose wire arguments are bound at dispatch from `ref`'s entities; `undo`
    (`<subsystem>.<action>`) is its compensation, bound from the same `ref`."""
    args = msgspec.Raw(msgspec.json.encode(ref))
    compensation = None
    if undo is not None:
        undo_subsystem, undo_action = undo.split(".")
        compensation = Compensation(subsystem=undo_subsystem, action=undo_action, args=args,
                                    retry=retry, deadline_seconds=deadline)
    return PlannedStep(step_id=uuid4(), subsystem=subsystem, action=action, args=args,
                       depends_on=depends_on, retry=retry, deadline_seconds=deadline,
                       compensation=compensation)


def start_operation(kind: str, steps: list[PlannedStep], entities: tuple[UUID, ...],
                    **accepted: Any) -> tuple[StartOperation, VolumeAccepted]:
    """The operation to start, and the command's result naming it and its entities."""
    operation_id = uuid4()
    return (StartOperation(kind=kind, operation_id=operation_id, plan=Plan(steps=tuple(steps)),
                           entity_ids=entities),
            VolumeAccepted(operation_id=operation_id, **accepted))


def volume_of(uow: UnitOfWork, volume_id: UUID) -> Volume:
    """The volume, or NotFoundError."""
    return look(uow, volume_id, Volume, "volume")  # type: ignore[no-any-return]


def vm_of(uow: UnitOfWork, vm_id: UUID) -> VirtualMachine:
    """The VM, or NotFoundError."""
    return look(uow, vm_id, VirtualMachine, "vm")  # type: ignore[no-any-return]


def _attachable(volume: Volume, vm: VirtualMachine) -> None:
    if vm.state is not VmState.RUNNING or vm.host_id is None:
        raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: a volume attaches to a "
                              "Running VM")
    if volume.zone_id != vm.zone_id:
        raise ValidationError(f"volume {volume.name} and vm {vm.name} are in different zones")


def _choose_pool(uow: UnitOfWork, command: CreateVolumeCommand, size: int,
                 host: Host | None) -> PrimaryStoragePool:
    if command.pool_id is not None:
        pool = look(uow, command.pool_id, PrimaryStoragePool, "storage pool")
        if pool.zone_id != command.zone_id or (host is not None and not reaches(host, pool)):
            raise ValidationError(f"pool_id: storage pool {pool.name} is not reachable "
                                  + (f"from host {host.name}" if host else "in this zone"))
        return pool  # type: ignore[no-any-return]
    fits = [p for p in (uow.get(i) for i in directory(uow.app, "storage_pool.Created").ids())
            if p.state is StoragePoolState.UP and p.zone_id == command.zone_id
            and p.free_bytes >= size and (host is None or reaches(host, p))]
    if not fits:
        raise DomainRuleError(f"no Up primary storage pool in zone {command.zone_id} has "
                              f"{size} bytes free" + (f" for host {host.name}" if host else ""))
    return min(fits, key=lambda p: p.name)


def _host_for(uow: UnitOfWork, pool: PrimaryStoragePool) -> Host:
    hosts = [h for h in (uow.get(i) for i in directory(uow.app, HOST_TOPIC).ids())
             if h.status is HostStatus.UP and reaches(h, pool)]
    if not hosts:
        raise DomainRuleError(f"no Up host reaches storage pool {pool.name}")
    return min(hosts, key=lambda h: h.name)


def create_factory(uow: UnitOfWork, command: CreateVolumeCommand,
                   now: datetime) -> tuple[StartOperation, VolumeAccepted]:
    """volume.create: claim the pool now; create the volume on a host (and attach it)."""
    if command.disk_offering_id is not None:
        offering = look(uow, command.disk_offering_id, DiskOffering, "disk offering")
        if not offering.active:
            raise ValidationError(f"disk offering {offering.name} is retired")
        size = offering.volume_size(command.size_bytes)
    elif command.size_bytes is None:
        raise ValidationError("size_bytes: give a size or a disk_offering_id")
    else:
        size = command.size_bytes
    if command.volume_id is not None and uow.find(command.volume_id) is not None:
        raise ValidationError(f"volume_id: {command.volume_id} already exists")
    vm = None if command.vm_id is None else vm_of(uow, command.vm_id)
    vm_host = None
    if vm is not None:
        if vm.zone_id != command.zone_id:
            raise ValidationError(f"vm {vm.name} is not in zone {command.zone_id}")
        if vm.state is not VmState.RUNNING or vm.host_id is None:
            raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: a volume attaches to a "
                                  "Running VM")
        vm_host = look(uow, vm.host_id, Host, "host")
    volume = Volume.allocate(name=command.name, account=command.account,
                             zone_id=command.zone_id, volume_type=VolumeType.DATADISK,
                             size_bytes=size, disk_offering_id=command.disk_offering_id,
                             id=command.volume_id)
    pool = _choose_pool(uow, command, size, vm_host)
    host = vm_host or _host_for(uow, pool)
    pool.claim(pool_claim_id(volume.id), volume.id, size)
    volume.create(pool.id)
    uow.add(volume)
    ref = VolumeOp(volume_id=volume.id, vm_id=command.vm_id, pool_id=pool.id, host_id=host.id)
    ensure_pool = bound_step("storage", "create_pool", ref)
    create = bound_step("storage", "create_volume", ref, depends_on=(ensure_pool.step_id,),
                        undo="storage.delete_volume")
    steps = [ensure_pool, create]
    entities: tuple[UUID, ...] = (volume.id,)
    if vm is not None:
        steps.append(bound_step("hypervisor", "attach_disk", ref, depends_on=(create.step_id,),
                                undo="hypervisor.detach_disk"))
        entities = (volume.id, vm.id)
    return start_operation("volume.create", steps, entities, volume_id=volume.id,
                           vm_id=command.vm_id)


def attach_factory(uow: UnitOfWork, command: AttachVolumeCommand,
                   now: datetime) -> tuple[StartOperation, VolumeAccepted]:
    """volume.attach: a Ready, detached data volume to a Running VM."""
    volume, vm = volume_of(uow, command.volume_id), vm_of(uow, command.vm_id)
    if volume.volume_type is not VolumeType.DATADISK:
        raise DomainRuleError(f"volume {volume.name} is a ROOT volume")
    if volume.state is not VolumeState.READY or volume.vm_id is not None:
        where = f", attached to vm {volume.vm_id}" if volume.vm_id else ""
        raise DomainRuleError(f"volume {volume.name} is {volume.state.value}{where}: only a "
                              "Ready, detached volume attaches")
    _attachable(volume, vm)
    ref = VolumeOp(volume_id=volume.id, vm_id=vm.id)
    step = bound_step("hypervisor", "attach_disk", ref, undo="hypervisor.detach_disk")
    return start_operation("volume.attach", [step], (volume.id, vm.id), volume_id=volume.id,
                           vm_id=vm.id)


def detach_factory(uow: UnitOfWork, command: DetachVolumeCommand,
                   now: datetime) -> tuple[StartOperation, VolumeAccepted]:
    """volume.detach: a data disk leaves its VM's domain (if it has one) and its disks."""
    volume = volume_of(uow, command.volume_id)
    if volume.vm_id is None:
        raise DomainRuleError(f"volume {volume.name} is not attached")
    if volume.volume_type is not VolumeType.DATADISK:
        raise DomainRuleError(f"volume {volume.name} is the ROOT volume of vm {volume.vm_id}: "
                              "it cannot be detached")
    if volume.state is not VolumeState.READY:
        raise DomainRuleError(f"volume {volume.name} is {volume.state.value}, not Ready")
    vm = vm_of(uow, volume.vm_id)
    if vm.state not in (VmState.RUNNING, VmState.STOPPED) or \
            (vm.host_id or vm.last_host_id) is None:
        raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: detach from a Running or "
                              "Stopped VM")
    ref = VolumeOp(volume_id=volume.id, vm_id=vm.id)
    step = bound_step("hypervisor", "detach_disk", ref, undo="hypervisor.attach_disk")
    return start_operation("volume.detach", [step], (volume.id, vm.id), volume_id=volume.id,
                           vm_id=vm.id)


def resize_factory(uow: UnitOfWork, command: ResizeVolumeCommand,
                   now: datetime) -> tuple[StartOperation, VolumeAccepted]:
    """volume.resize: grow the pool claim and mark the volume Resizing now; then grow it."""
    volume = volume_of(uow, command.volume_id)
    require_idle(uow, volume.id, f"volume {volume.name}")
    if volume.pool_id is None or volume.path is None:
        raise DomainRuleError(f"volume {volume.name} has no storage yet")
    pool = look(uow, volume.pool_id, PrimaryStoragePool, "storage pool")
    volume.resize(command.size_bytes)
    claim = pool_claim_id(volume.id)
    if claim in pool.claims:
        pool.resize_claim(claim, command.size_bytes)
    else:  # a volume created before pools were claimed: claim it whole now
        pool.claim(claim, volume.id, command.size_bytes)
    step = bound_step("storage", "resize_volume", VolumeOp(volume_id=volume.id))
    return start_operation("volume.resize", [step], (volume.id,), volume_id=volume.id)


VOLUME_COMMANDS: dict[type[Any], Any] = {
    CreateVolumeCommand: create_factory,
    AttachVolumeCommand: attach_factory,
    DetachVolumeCommand: detach_factory,
    ResizeVolumeCommand: resize_factory,
}
