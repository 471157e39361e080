"""VM operations: deploy, start, stop and destroy, as step plans with their effects.

Deploy (`vm.deploy`):

    planner.plan ─> storage.create_volume (+pool) ─> hypervisor.define (+start)

* `planner.plan` proposes a host; its effect claims the capacity on the Host aggregate (a
  full host refuses: the attempt fails, the host is added to the VM's avoid list, and the next
  attempt plans again without it) and moves the VM to Starting on that host.
* `storage.create_volume` makes sure the chosen primary pool (of the host's cluster, or
  zone-wide) exists on the host and creates the root volume on it from the template, grown
  to the volume's size (the template's disk by default; `root_size_bytes` asks for more);
  its effect checks the disk made is that size, claims the pool's capacity and records the
  volume Ready and attached (compensation: delete it).
* `hypervisor.define` defines the domain from the offering, volume and NICs, with arguments
  bound from the entities, and starts it (compensation: undefine it, powering it off); its
  effect records the VM Running.

When a deploy ends otherwise, the same transaction releases the capacity claim, retires the
root volume and, if the hypervisor failed, avoids that host and deploys again elsewhere (up to
`MAX_DEPLOY_HOSTS` hosts, as CloudStack's planner retries with its avoid set); else the VM goes
to Error. A deploy that failed therefore leaves no claim, volume or domain behind.

Stop (`vm.stop`): hypervisor.stop ─> hypervisor.undefine; the VM is Stopped and its claim given
back. Start (`vm.start`): plan, define, start, as deploy without the volume. Destroy
(`vm.destroy`): stop if running, undefine, delete the root volume; the VM is Destroyed (and
its volumes expunged).
"""

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

import msgspec

from aggregates.errors import NotFoundError, ValidationError
from aggregates.host import Host, HostStatus
from aggregates.image_store import ImageStore
from aggregates.network import Network, NetworkState
from aggregates.nic import Nic
from aggregates.offering import ServiceOffering
from aggregates.plan import (
    MAX_START_AFTER_SECONDS,
    Compensation,
    Plan,
    PlannedStep,
    RetryPolicy,
)
from aggregates.storage_pool import PrimaryStoragePool, StoragePoolState
from aggregates.template import Template, TemplateState
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState, VolumeType
from kernel.cloud.nics import ELEMENT_RETRY, GURU_RETRY, NicRef, nic_steps
from kernel.commands import Command
from kernel.effects import EffectScope, Refusal
from kernel.operation_commands import AlreadyDoneError, StartOperation
from kernel.steps.planner import PlannerName, PlanPlacement
from kernel.unit_of_work import UnitOfWork

MAX_DEPLOY_HOSTS = 3
HYPERVISOR_RETRY = RetryPolicy(max_attempts=2, initial_delay=0.5, jitter=0.1)
PLAN_RETRY = RetryPolicy(max_attempts=4, initial_delay=0.05, max_delay=1.0, jitter=0.2,
                         non_retryable=("insufficient_capacity",))
DEFAULT_POOL_ROOT = "/var/lib/cloudkernel/pools"
SECTOR = 512


# --------------------------------------------------------------------------- commands


class DeployVm(Command, frozen=True, kw_only=True, tag="vm.deploy"):
    """Allocate a VM with a root volume from a template, place it, create and start it."""

    name: str
    account: str
    zone_id: UUID
    service_offering_id: UUID
    template_id: UUID
    planner: PlannerName = "FirstFit"
    network_ids: tuple[UUID, ...] = ()  # one NIC on each, the first is the default
    root_size_bytes: int | None = None
    affinity_vm_ids: tuple[UUID, ...] = ()
    anti_affinity_vm_ids: tuple[UUID, ...] = ()
    ha_enabled: bool = False
    vm_id: UUID | None = None


class StartVm(Command, frozen=True, kw_only=True, tag="vm.start"):
    """Place a stopped VM again and start it."""

    vm_id: UUID


class StopVm(Command, frozen=True, kw_only=True, tag="vm.stop"):
    """Shut a running VM down (forced after `force_after_seconds`) and free its host."""

    vm_id: UUID
    force_after_seconds: float = 60.0


class DestroyVm(Command, frozen=True, kw_only=True, tag="vm.destroy"):
    """Power a VM off and remove its domain (Destroyed); then, after the expunge delay, give
    back its addresses and delete its root volume (Expunged)."""

    vm_id: UUID
    expunge: bool = True
    expunge_delay_seconds: float = 0.0


class VmAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """What a VM command started: the operation, the VM and its root volume."""

    operation_id: UUID | None  # None: nothing to do on any host
    vm_id: UUID
    volume_id: UUID | None = None


# Plan arguments of the steps whose wire arguments are bound at dispatch.
class VmRef(msgspec.Struct, frozen=True, kw_only=True):
    """Which VM (and root volume) a bound step is about."""

    vm_id: UUID
    volume_id: UUID | None = None
    force_after_seconds: float = 60.0
    network_ids: tuple[UUID, ...] = ()
    expunge_delay_seconds: float | None = None  # vm.destroy: expunge after this (None: never)
    start_domain: bool = False  # hypervisor.define starts the domain too


# --------------------------------------------------------------------------- ids and lookups


def placement_claim_id(operation_id: UUID) -> UUID:
    """The capacity claim a deploy or start makes: one per operation."""
    return uuid5(NAMESPACE_URL, f"cloudkernel:placement:{operation_id}")


def pool_claim_id(volume_id: UUID) -> UUID:
    """A volume's claim on its pool."""
    return uuid5(NAMESPACE_URL, f"cloudkernel:pool-claim:{volume_id}")


def pool_path(pool: PrimaryStoragePool) -> str:
    """The directory of a pool on its hosts: a `file://` URI's path, else a mount point."""
    parts = urlsplit(pool.uri)
    if parts.scheme == "file" and parts.path:
        return parts.path
    return f"{DEFAULT_POOL_ROOT}/{pool.pool_name}"


def template_file(template: Template) -> str:
    """The template's file name in its image store."""
    return f"{template.id}.{template.format.value.lower()}"


def store_directory(store: ImageStore) -> str:
    """The local directory of an image store (`file://` URI), or its mount point."""
    parts = urlsplit(store.url)
    if parts.scheme == "file" and parts.path:
        return parts.path
    return f"/var/lib/cloudkernel/image-stores/{store.name}"


def reaches(host: Host, pool: PrimaryStoragePool) -> bool:
    """Whether the host can reach the pool (zone, cluster or host scope)."""
    return pool.zone_id == host.zone_id and pool.cluster_id in (None, host.cluster_id) \
        and pool.host_id in (None, host.id)


def choose_pool(scope: EffectScope, host: Host, size_bytes: int,
                pool_ids: tuple[UUID, ...]) -> PrimaryStoragePool:
    """The first Up pool, by name, in the host's cluster (or zone-wide) with room."""
    candidates = []
    for pool_id in pool_ids:
        pool = scope.peek(pool_id, PrimaryStoragePool)
        if pool.state is StoragePoolState.UP and reaches(host, pool) \
                and pool.free_bytes >= size_bytes:
            candidates.append(pool)
    if not candidates:
        raise Refusal(f"no primary storage pool for host {host.name} has {size_bytes} bytes "
                      "free", retryable=False, code="no_storage")
    return min(candidates, key=lambda p: p.name)


# --------------------------------------------------------------------------- plans


def _bound(subsystem: str, action: str, ref: VmRef, *, depends_on: tuple[UUID, ...] = (),
           retry: RetryPolicy = HYPERVISOR_RETRY, deadline: float = 120.0,
           compensation: Compensation | None = None,
           irreversible: bool = False) -> PlannedStep:
    """A step whose wire arguments the kernel binds at dispatch from `ref`'s entities."""
    return PlannedStep(step_id=uuid4(), subsystem=subsystem, action=action,
                       args=msgspec.Raw(msgspec.json.encode(ref)), depends_on=depends_on,
                       retry=retry, deadline_seconds=deadline, compensation=compensation,
                       irreversible=irreversible)


def _undo(subsystem: str, action: str, ref: VmRef) -> Compensation:
    return Compensation(subsystem=subsystem, action=action,
                        args=msgspec.Raw(msgspec.json.encode(ref)), retry=HYPERVISOR_RETRY)


def placement_step(vm: VirtualMachine, offering: ServiceOffering, planner: PlannerName,
                   affinity: tuple[UUID, ...] = (),
                   anti_affinity: tuple[UUID, ...] = ()) -> PlannedStep:
    """Plan a host for the VM (the avoid list is bound at dispatch from the VM)."""
    return PlannedStep.of(
        PlanPlacement(vm_id=vm.id, account=vm.account, zone_id=vm.zone_id,
                      cpu_cores=offering.cpu_cores, memory_mib=offering.memory_mib,
                      cpu_mhz=offering.cpu_mhz, host_tags=tuple(offering.host_tags),
                      planner=planner, affinity_vm_ids=affinity,
                      anti_affinity_vm_ids=anti_affinity),
        retry=PLAN_RETRY, deadline_seconds=30.0)


def deploy_plan(vm: VirtualMachine, volume: Volume, offering: ServiceOffering,
                planner: PlannerName = "FirstFit", affinity: tuple[UUID, ...] = (),
                anti_affinity: tuple[UUID, ...] = (),
                network_ids: tuple[UUID, ...] = ()) -> Plan:
    """plan -> pool -> root volume -> define -> start, and the NICs' steps before define."""
    ref = VmRef(vm_id=vm.id, volume_id=volume.id, network_ids=network_ids, start_domain=True)
    plan = placement_step(vm, offering, planner, affinity, anti_affinity)
    # One storage step makes sure of the pool on the host and creates the volume on it.
    create = _bound("storage", "create_volume", ref, depends_on=(plan.step_id,),
                    compensation=_undo("storage", "delete_volume", ref))
    nics, nics_ready = nic_steps(vm.id, network_ids, plan.step_id)
    # One step defines and starts the domain: a round trip less per deploy.
    define = _bound("hypervisor", "define", ref, depends_on=(create.step_id, *nics_ready),
                    compensation=_undo("hypervisor", "undefine", ref))
    return Plan(steps=(plan, create, *nics, define))


def new_root_volume(vm: VirtualMachine, template: Template, size_bytes: int | None) -> Volume:
    """The root volume a deploy creates from the template: the template's disk, grown to
    `size_bytes` if asked (as CloudStack resizes a root disk; never smaller)."""
    size = size_bytes or template.size_bytes
    if not size:
        raise ValidationError(f"template {template.name} has no size: pass root_size_bytes")
    if template.size_bytes and size < template.size_bytes:
        raise ValidationError(f"root_size_bytes: {size} is smaller than the disk of template "
                              f"{template.name} ({template.size_bytes} bytes)")
    return Volume.allocate(name=f"ROOT-{vm.name}", account=vm.account, zone_id=vm.zone_id,
                           volume_type=VolumeType.ROOT, size_bytes=size,
                           template_id=template.id)


def deploy_factory(uow: UnitOfWork, command: DeployVm,
                   now: datetime) -> tuple[StartOperation, VmAccepted]:
    """vm.deploy: allocate the VM and its root volume, and the deploy operation."""
    offering = _read(uow, command.service_offering_id)
    if not isinstance(offering, ServiceOffering) or not offering.active:
        raise ValidationError(f"service_offering_id: {command.service_offering_id} is not an "
                              "active service offering")
    template = _read(uow, command.template_id)
    if not isinstance(template, Template):
        raise ValidationError(f"template_id: {command.template_id} is not a template")
    if template.state is not TemplateState.READY or template.image_store_id is None:
        raise ValidationError(f"template {template.name} is {template.state.value}, not Ready: "
                              "download it first (template.download)")
    if template.zone_id != command.zone_id:
        raise ValidationError(f"template {template.name} is not in zone {command.zone_id}")
    if command.vm_id is not None and uow.find(command.vm_id) is not None:
        raise ValidationError(f"vm_id: {command.vm_id} already exists")
    vm = VirtualMachine.allocate(name=command.name, account=command.account,
                                 zone_id=command.zone_id,
                                 service_offering_id=offering.id, template_id=template.id,
                                 # HA is the offering's (as in CloudStack), or asked for
                                 ha_enabled=command.ha_enabled or offering.ha_enabled,
                                 id=command.vm_id)
    if command.root_size_bytes is not None and (
            command.root_size_bytes <= 0 or command.root_size_bytes % SECTOR):
        raise ValidationError(f"root_size_bytes: {command.root_size_bytes} is not a positive "
                              f"multiple of {SECTOR} bytes (a disk is whole sectors)")
    volume = new_root_volume(vm, template, command.root_size_bytes)
    for network_id in command.network_ids:
        network = _read(uow, network_id)
        if not isinstance(network, Network) or network.zone_id != command.zone_id:
            raise ValidationError(f"network_ids: {network_id} is not a network of zone "
                                  f"{command.zone_id}")
        if network.state is not NetworkState.IMPLEMENTED:
            raise ValidationError(f"network {network.name} is {network.state.value}: "
                                  "implement it first (network.implement)")
    if len(set(command.network_ids)) != len(command.network_ids):
        raise ValidationError("network_ids: a network is named twice")
    uow.add(vm)
    uow.add(volume)
    uow.fresh.add(volume.id)
    if command.vm_id is None:
        uow.fresh.add(vm.id)
    operation_id = uuid4()
    spec = StartOperation(kind="vm.deploy", operation_id=operation_id,
                          plan=deploy_plan(vm, volume, offering, command.planner,
                                           command.affinity_vm_ids,
                                           command.anti_affinity_vm_ids,
                                           command.network_ids),
                          entity_ids=(vm.id, volume.id))
    return spec, VmAccepted(operation_id=operation_id, vm_id=vm.id, volume_id=volume.id)


def _read(uow: UnitOfWork, aggregate_id: UUID) -> Any:
    """An aggregate the command only reads, or None."""
    try:
        return uow.read(aggregate_id)
    except NotFoundError:
        return None


def _existing_vm(uow: UnitOfWork, vm_id: UUID) -> VirtualMachine:
    vm = uow.get(vm_id)
    if not isinstance(vm, VirtualMachine):
        raise NotFoundError(f"no vm {vm_id}")
    return vm


def root_volume_of(uow: UnitOfWork | EffectScope, vm: VirtualMachine,
                   volume_ids: tuple[UUID, ...]) -> UUID | None:
    """The VM's root volume among these ids."""
    for volume_id in volume_ids:
        volume = uow.peek(volume_id) if isinstance(uow, EffectScope) else uow.get(volume_id)
        if isinstance(volume, Volume) and volume.vm_id == vm.id \
                and volume.volume_type is VolumeType.ROOT:
            return volume_id
    return None


def start_factory(uow: UnitOfWork, command: StartVm,
                  now: datetime) -> tuple[StartOperation, VmAccepted]:
    """vm.start: plan, define and start a Stopped VM."""
    vm = _existing_vm(uow, command.vm_id)
    if vm.state is VmState.RUNNING:
        raise AlreadyDoneError(f"vm {vm.name} is Running already: only a Stopped VM starts")
    if vm.state is not VmState.STOPPED:
        raise ValidationError(f"vm {vm.name} is {vm.state.value}: only a Stopped VM starts")
    offering = uow.get(vm.service_offering_id)
    ref = VmRef(vm_id=vm.id, volume_id=vm.root_volume_id, start_domain=True)
    # The NICs' entries leave the host the VM last ran on before it is placed again (on that
    # host, the placement's prepare puts them back): the VM may start elsewhere.
    left = left_host_entry_steps(uow, vm)
    plan = msgspec.structs.replace(placement_step(vm, offering, "FirstFit"),
                                   depends_on=tuple(s.step_id for s in left))
    nics, nics_ready = host_nic_steps(uow, vm, plan.step_id)
    define = _bound("hypervisor", "define", ref, depends_on=(plan.step_id, *nics_ready),
                    compensation=_undo("hypervisor", "undefine", ref))
    operation_id = uuid4()
    return (StartOperation(kind="vm.start", operation_id=operation_id,
                           plan=Plan(steps=(*left, plan, *nics, define)),
                           entity_ids=(vm.id,)),
            VmAccepted(operation_id=operation_id, vm_id=vm.id))


def stop_factory(uow: UnitOfWork, command: StopVm,
                 now: datetime) -> tuple[StartOperation, VmAccepted]:
    """vm.stop: shut the domain down, undefine it, free the host."""
    vm = _existing_vm(uow, command.vm_id)
    if vm.state is VmState.STOPPED:
        raise AlreadyDoneError(f"vm {vm.name} is Stopped already: only a Running VM stops")
    if vm.state is not VmState.RUNNING:
        raise ValidationError(f"vm {vm.name} is {vm.state.value}: only a Running VM stops")
    vm.stop()
    ref = VmRef(vm_id=vm.id, force_after_seconds=command.force_after_seconds)
    # a domain powered off and undefined is not put back: once the stop is sent, the VM stops
    stop = _bound("hypervisor", "stop", ref,
                  deadline=max(60.0, command.force_after_seconds + 60.0), irreversible=True)
    undefine = _bound("hypervisor", "undefine", ref, depends_on=(stop.step_id,),
                      irreversible=True)
    operation_id = uuid4()
    return (StartOperation(kind="vm.stop", operation_id=operation_id,
                           plan=Plan(steps=(stop, undefine)), entity_ids=(vm.id,)),
            VmAccepted(operation_id=operation_id, vm_id=vm.id))


def destroy_factory(uow: UnitOfWork, command: DestroyVm,
                    now: datetime) -> tuple[StartOperation | None, VmAccepted]:
    """vm.destroy: power off and undefine a running VM, then expunge after the delay; a VM
    on no host is Destroyed at once, and its expunge is the operation."""
    vm = _existing_vm(uow, command.vm_id)
    if vm.state in (VmState.DESTROYED, VmState.EXPUNGING, VmState.EXPUNGED):
        raise AlreadyDoneError(f"vm {vm.name} is {vm.state.value} already: it cannot be "
                               "destroyed now")
    if vm.state not in (VmState.RUNNING, VmState.STOPPED, VmState.ALLOCATED, VmState.ERROR):
        raise ValidationError(f"vm {vm.name} is {vm.state.value}: it cannot be destroyed now")
    if not 0 <= command.expunge_delay_seconds <= MAX_START_AFTER_SECONDS:
        raise ValidationError(f"expunge_delay_seconds: 0 to {MAX_START_AFTER_SECONDS}, got "
                              f"{command.expunge_delay_seconds}")
    delay = command.expunge_delay_seconds if command.expunge else None
    entities = (vm.id,) if vm.root_volume_id is None else (vm.id, vm.root_volume_id)
    operation_id = uuid4()
    accepted = VmAccepted(operation_id=operation_id, vm_id=vm.id, volume_id=vm.root_volume_id)
    if vm.state is VmState.RUNNING:
        vm.stop(forced=True)
        ref = VmRef(vm_id=vm.id, volume_id=vm.root_volume_id, force_after_seconds=0.0,
                    expunge_delay_seconds=delay)
        stop = _bound("hypervisor", "stop", ref, irreversible=True)
        undefine = _bound("hypervisor", "undefine", ref, depends_on=(stop.step_id,),
                          irreversible=True)
        return (StartOperation(kind="vm.destroy", operation_id=operation_id,
                               plan=Plan(steps=(stop, undefine)), entity_ids=entities),
                accepted)
    vm.destroy()
    spec = expunge_operation(uow, vm, delay, operation_id) if delay is not None else None
    if spec is None:
        return None, msgspec.structs.replace(accepted, operation_id=None)
    return spec, accepted


def expunge_operation(uow: "UnitOfWork", vm: VirtualMachine, delay: float | None,
                      operation_id: UUID | None = None) -> StartOperation | None:
    """The vm.expunge operation of a Destroyed VM: its NICs' entries and addresses back, its
    root volume deleted, not before `delay` seconds, and its data volumes detached (held by
    the operation meanwhile); None (and the VM Expunged now) when it holds nothing."""
    ref = VmRef(vm_id=vm.id, volume_id=vm.root_volume_id)
    steps = nic_release_steps(uow, vm, ())
    if vm.root_volume_id is not None:
        steps.append(_bound("storage", "delete_volume", ref,
                            depends_on=tuple(s.step_id for s in steps), irreversible=True))
    if not steps:
        detach_data_volumes(uow, vm)
        vm.expunge()
        vm.expunged()
        return None
    steps = [msgspec.structs.replace(s, start_after_seconds=delay or 0.0)
             if not s.depends_on else s for s in steps]
    entities = (vm.id,) if vm.root_volume_id is None else (vm.id, vm.root_volume_id)
    return StartOperation(kind="vm.expunge", operation_id=operation_id or uuid4(),
                          plan=Plan(steps=tuple(steps)),
                          entity_ids=(*entities, *data_volume_ids(vm)))


def data_volume_ids(vm: VirtualMachine) -> tuple[UUID, ...]:
    """The VM's disks other than its root volume, by device."""
    return tuple(v for d, v in sorted(vm.disks.items()) if d != 0)


def detach_data_volumes(reader: UnitOfWork | EffectScope, vm: VirtualMachine) -> None:
    """Before a VM is expunged: each data volume is detached and stays Ready (as CloudStack
    detaches them on expunge). The VM has no domain any more, so only the records change. A
    volume stuck in a transition stays linked; `entity.repair` detaches it once the VM is
    Expunged."""
    for volume_id in data_volume_ids(vm):
        volume = reader.get(volume_id)
        if not isinstance(volume, Volume) or volume.vm_id != vm.id:
            vm.detach_disk(volume_id)  # a stale entry: the volume is not attached to it
        elif volume.state is VolumeState.READY:
            volume.detach()
            vm.detach_disk(volume_id)


def host_nic_steps(uow: UnitOfWork, vm: VirtualMachine,
                   placed: UUID) -> tuple[list[PlannedStep], list[UUID]]:
    """For a VM that has its NICs: their network and entries on the host it is placed on."""
    steps: list[PlannedStep] = []
    ready: list[UUID] = []
    for device_id in sorted(vm.nics):
        nic = uow.get(vm.nics[device_id])
        ref = _nic_ref(vm, nic, device_id)
        element = PlannedStep(step_id=uuid4(), subsystem="networkelement", action="implement",
                              args=ref, depends_on=(placed,), retry=ELEMENT_RETRY)
        prepare = PlannedStep(step_id=uuid4(), subsystem="networkelement", action="prepare",
                              args=ref, depends_on=(element.step_id,), retry=ELEMENT_RETRY)
        steps += [element, prepare]
        ready.append(prepare.step_id)
    return steps, ready


def _nic_ref(vm: VirtualMachine, nic: Nic, device_id: int) -> msgspec.Raw:
    """The arguments of a step on one NIC of the VM."""
    return msgspec.Raw(msgspec.json.encode(NicRef(vm_id=vm.id, nic_id=nic.id,
                                                  network_id=nic.network_id,
                                                  device_id=device_id)))


def left_host_entry_steps(uow: UnitOfWork, vm: VirtualMachine) -> list[PlannedStep]:
    """For a Stopped VM that ran on a host that answers: each NIC's entries released there
    (bound while the VM is on no host, so to the one it last ran on). A host that does not
    answer (a fenced one, whose VMs start elsewhere) keeps them: a start never waits for it."""
    if vm.last_host_id is None or vm.host_id is not None:
        return []
    last = uow.get(vm.last_host_id)
    if not isinstance(last, Host) or last.status is not HostStatus.UP:
        return []
    steps = []
    for device_id in sorted(vm.nics):
        nic: Nic = uow.get(vm.nics[device_id])
        if nic.ip is None:
            continue
        ref = _nic_ref(vm, nic, device_id)
        steps.append(PlannedStep(step_id=uuid4(), subsystem="networkelement",
                                 action="release", args=ref, retry=ELEMENT_RETRY))
    return steps


def nic_release_steps(uow: UnitOfWork, vm: VirtualMachine,
                      after: tuple[UUID, ...]) -> list[PlannedStep]:
    """For a VM going away: each NIC's entries leave its host, then its address and MAC."""
    steps: list[PlannedStep] = []
    for device_id in sorted(vm.nics):
        nic: Nic = uow.get(vm.nics[device_id])
        ref = _nic_ref(vm, nic, device_id)
        entries: tuple[UUID, ...] = after
        if vm.host_id or vm.last_host_id:
            release_entries = PlannedStep(step_id=uuid4(), subsystem="networkelement",
                                          action="release", args=ref, depends_on=after,
                                          retry=ELEMENT_RETRY)
            steps.append(release_entries)
            entries = (release_entries.step_id,)
        steps.append(PlannedStep(step_id=uuid4(), subsystem="networkguru", action="release",
                                 args=ref, depends_on=entries, retry=GURU_RETRY))
    return steps
