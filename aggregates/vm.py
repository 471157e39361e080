"""VirtualMachine: a guest's life cycle, modelled on CloudStack's VirtualMachine state machine.

VMs have random ids; `VirtualMachine.allocate(..., id=...)` takes the id when a command has
already chosen it. The state (what the kernel wants and has done) and the observed power
state (what the hypervisor last reported) are kept apart: only `observe_power` changes the
latter, and `power_drift` tells the reconciler when they disagree.

    Allocated/Stopped --start--> Starting --started--> Running
    Starting --start_failed--> Stopped
    Running --stop--> Stopping --stopped--> Stopped;  Stopping --stop_failed--> Running
    Running --migrate--> Migrating --migrated / migration_failed--> Running
    Allocated/Stopped/Error --destroy--> Destroyed --recover--> Stopped
    Destroyed/Error --expunge--> Expunging --expunged--> Expunged
    Allocated/Starting/Stopped/Stopping/Migrating/Expunging --fail--> Error
    Starting/Stopping/Migrating/Error/Expunging --repair--> Running/Stopped/Error (audited,
    by an operator, when an outside failure left it stuck: see `aggregates.repair`)
"""

from enum import Enum
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate
from aggregates.errors import DomainRuleError
from aggregates.repair import VM_REPAIRS, RepairRefusedError, check_repair
from aggregates.validation import require_hostname, require_name


class VmState(Enum):
    """The VM's state as the kernel drives it (CloudStack's VirtualMachine.State)."""

    ALLOCATED = "Allocated"
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    MIGRATING = "Migrating"
    DESTROYED = "Destroyed"
    EXPUNGING = "Expunging"
    EXPUNGED = "Expunged"
    ERROR = "Error"


class PowerState(Enum):
    """The power state a hypervisor last reported (CloudStack's PowerState)."""

    ON = "PowerOn"
    OFF = "PowerOff"
    UNKNOWN = "PowerUnknown"
    REPORT_MISSING = "PowerReportMissing"


_S = VmState
_ON_HOST = frozenset({_S.STARTING, _S.RUNNING, _S.STOPPING, _S.MIGRATING})
_POWERED_OFF = frozenset({_S.ALLOCATED, _S.STOPPED, _S.DESTROYED, _S.EXPUNGED})


class VirtualMachine(PlatformAggregate):
    """A guest VM: its offering, template, placement and life cycle."""

    TOPIC = "vm"
    KIND = "vm"

    class Event(PlatformAggregate.Event):
        """Base of VirtualMachine events."""

        TOPIC = "vm.Event"

    class Allocated(Event, PlatformAggregate.Created):
        """The VM was allocated (deployed, not yet started)."""

        TOPIC = "vm.Allocated"
        name: str
        account: str
        zone_id: UUID
        service_offering_id: UUID
        template_id: UUID
        ha_enabled: bool

    class StartRequested(Event):
        """The VM is starting on a host."""

        TOPIC = "vm.StartRequested"
        host_id: UUID

    class Started(Event):
        """The VM is running."""

        TOPIC = "vm.Started"

    class StartFailed(Event):
        """The start failed; the VM is Stopped."""

        TOPIC = "vm.StartFailed"
        reason: str

    class StopRequested(Event):
        """The VM is stopping."""

        TOPIC = "vm.StopRequested"
        forced: bool

    class Stopped(Event):
        """The VM is stopped and off its host."""

        TOPIC = "vm.Stopped"

    class StopFailed(Event):
        """The stop failed; the VM is Running."""

        TOPIC = "vm.StopFailed"
        reason: str

    class MigrationRequested(Event):
        """The VM is moving to another host."""

        TOPIC = "vm.MigrationRequested"
        destination_host_id: UUID

    class Migrated(Event):
        """The VM runs on its destination host."""

        TOPIC = "vm.Migrated"

    class MigrationFailed(Event):
        """The migration failed; the VM runs where it was."""

        TOPIC = "vm.MigrationFailed"
        reason: str

    class Destroyed(Event):
        """The VM was destroyed; it can be recovered until expunged."""

        TOPIC = "vm.Destroyed"

    class Recovered(Event):
        """A destroyed VM was recovered (Stopped)."""

        TOPIC = "vm.Recovered"

    class ExpungeRequested(Event):
        """The VM's resources are being removed."""

        TOPIC = "vm.ExpungeRequested"

    class Expunged(Event):
        """The VM is gone for good."""

        TOPIC = "vm.Expunged"

    class Failed(Event):
        """An operation left the VM in Error."""

        TOPIC = "vm.Failed"
        reason: str

    class Repaired(Event):
        """An operator forced the VM out of a stuck state (see `aggregates.repair`)."""

        TOPIC = "vm.Repaired"
        from_state: VmState
        to_state: VmState
        reason: str

    class PowerObserved(Event):
        """A hypervisor reported the VM's power state (and where it saw it)."""

        TOPIC = "vm.PowerObserved"
        power_state: PowerState
        host_id: UUID | None

    class StoppedOutOfBand(Event):
        """The VM was found stopped, or gone, behind the kernel's back, and the kernel took
        that as the truth (or made sure of it by fencing): it is Stopped, off its host."""

        TOPIC = "vm.StoppedOutOfBand"
        reason: str

    class AdoptedRunning(Event):
        """The VM was found running on a host while the kernel had it stopped, and the
        kernel took that as the truth: it is Running there."""

        TOPIC = "vm.AdoptedRunning"
        host_id: UUID

    class HostAvoided(Event):
        """A host the VM must not be placed on again (a refused claim, a failed start)."""

        TOPIC = "vm.HostAvoided"
        host_id: UUID
        reason: str

    class DiskAttached(Event):
        """A volume is one of the VM's disks, at a device slot (0: the root disk)."""

        TOPIC = "vm.DiskAttached"
        volume_id: UUID
        device_id: int

    class DiskDetached(Event):
        """A volume is no longer one of the VM's disks."""

        TOPIC = "vm.DiskDetached"
        volume_id: UUID

    class NicPlugged(Event):
        """A NIC is one of the VM's network interfaces, at a device slot (0: the default)."""

        TOPIC = "vm.NicPlugged"
        nic_id: UUID
        device_id: int

    class NicUnplugged(Event):
        """A NIC is no longer one of the VM's network interfaces."""

        TOPIC = "vm.NicUnplugged"
        nic_id: UUID

    @event(Allocated)
    def __init__(self, name: str, account: str, zone_id: UUID, service_offering_id: UUID,
                 template_id: UUID, ha_enabled: bool) -> None:
        self.name, self.account, self.zone_id = name, account, zone_id
        self.service_offering_id, self.template_id = service_offering_id, template_id
        self.ha_enabled = ha_enabled
        self.state = VmState.ALLOCATED
        self.host_id: UUID | None = None
        self.last_host_id: UUID | None = None
        self.destination_host_id: UUID | None = None
        self.power_state = PowerState.UNKNOWN
        self.power_host_id: UUID | None = None
        self.last_error = ""
        self.avoid_hosts: tuple[UUID, ...] = ()
        self.disks: dict[int, UUID] = {}  # device id -> volume id
        self.nics: dict[int, UUID] = {}  # device id -> nic id

    @classmethod
    def allocate(cls, *, name: str, account: str, zone_id: UUID, service_offering_id: UUID,
                 template_id: UUID, ha_enabled: bool = False,
                 id: UUID | None = None) -> "VirtualMachine":
        """Validate and allocate a VM; `name` becomes the guest hostname."""
        require_hostname("vm", name)
        require_name(f"vm {name}: account", account)
        vm: VirtualMachine = cls._create(
            cls.Allocated, id=id, name=name, account=account, zone_id=zone_id,
            service_offering_id=service_offering_id, template_id=template_id,
            ha_enabled=bool(ha_enabled))
        return vm

    # start

    def start(self, host_id: UUID) -> None:
        """Begin starting the VM on the host placement chose."""
        self._require({_S.ALLOCATED, _S.STOPPED}, "start")
        self._start_requested(host_id)

    @event(StartRequested)
    def _start_requested(self, host_id: UUID) -> None:
        self.state, self.host_id = VmState.STARTING, host_id

    def started(self) -> None:
        """Record that the VM runs."""
        self._require({_S.STARTING}, "complete start")
        self._started()

    @event(Started)
    def _started(self) -> None:
        self.state, self.last_error = VmState.RUNNING, ""

    def start_failed(self, reason: str) -> None:
        """Record a failed start; the VM is Stopped and off the host."""
        self._require({_S.STARTING}, "fail start")
        self._start_failed(reason)

    @event(StartFailed)
    def _start_failed(self, reason: str) -> None:
        self.state, self.last_error = VmState.STOPPED, reason
        self.host_id = None

    # stop

    def stop(self, forced: bool = False) -> None:
        """Begin stopping the VM."""
        self._require({_S.RUNNING}, "stop")
        self._stop_requested(bool(forced))

    @event(StopRequested)
    def _stop_requested(self, forced: bool) -> None:
        self.state = VmState.STOPPING

    def stopped(self) -> None:
        """Record that the VM is stopped; it leaves its host."""
        self._require({_S.STOPPING}, "complete stop")
        self._stopped()

    @event(Stopped)
    def _stopped(self) -> None:
        self.state, self.last_error = VmState.STOPPED, ""
        self.last_host_id, self.host_id = self.host_id, None

    def stop_failed(self, reason: str) -> None:
        """Record a failed stop; the VM is Running."""
        self._require({_S.STOPPING}, "fail stop")
        self._stop_failed(reason)

    @event(StopFailed)
    def _stop_failed(self, reason: str) -> None:
        self.state, self.last_error = VmState.RUNNING, reason

    # migrate

    def migrate(self, destination_host_id: UUID) -> None:
        """Begin moving the running VM to another host."""
        self._require({_S.RUNNING}, "migrate")
        if destination_host_id == self.host_id:
            raise DomainRuleError(f"vm {self.name} already runs on {destination_host_id}")
        self._migration_requested(destination_host_id)

    @event(MigrationRequested)
    def _migration_requested(self, destination_host_id: UUID) -> None:
        self.state, self.destination_host_id = VmState.MIGRATING, destination_host_id

    def migrated(self) -> None:
        """Record that the VM runs on its destination host."""
        self._require({_S.MIGRATING}, "complete migration")
        self._migrated()

    @event(Migrated)
    def _migrated(self) -> None:
        self.last_host_id, self.host_id = self.host_id, self.destination_host_id
        self.state, self.destination_host_id, self.last_error = VmState.RUNNING, None, ""

    def migration_failed(self, reason: str) -> None:
        """Record a failed migration; the VM runs where it was."""
        self._require({_S.MIGRATING}, "fail migration")
        self._migration_failed(reason)

    @event(MigrationFailed)
    def _migration_failed(self, reason: str) -> None:
        self.state, self.destination_host_id = VmState.RUNNING, None
        self.last_error = reason

    # destroy, recover, expunge

    def destroy(self) -> None:
        """Destroy the VM (stop it first); it can be recovered until expunged."""
        self._require({_S.ALLOCATED, _S.STOPPED, _S.ERROR}, "destroy")
        self._destroyed()

    @event(Destroyed)
    def _destroyed(self) -> None:
        self.state = VmState.DESTROYED
        if self.host_id is not None:
            self.last_host_id, self.host_id = self.host_id, None

    def recover(self) -> None:
        """Bring a destroyed VM back, Stopped."""
        self._require({_S.DESTROYED}, "recover")
        self._recovered()

    @event(Recovered)
    def _recovered(self) -> None:
        self.state = VmState.STOPPED

    def expunge(self) -> None:
        """Begin removing the VM's resources for good."""
        self._require({_S.DESTROYED, _S.ERROR}, "expunge")
        self._expunge_requested()

    @event(ExpungeRequested)
    def _expunge_requested(self) -> None:
        self.state = VmState.EXPUNGING
        if self.host_id is not None:
            self.last_host_id, self.host_id = self.host_id, None

    def expunged(self) -> None:
        """Record that the VM is gone."""
        self._require({_S.EXPUNGING}, "complete expunge")
        self._expunged()

    @event(Expunged)
    def _expunged(self) -> None:
        self.state = VmState.EXPUNGED

    def fail(self, reason: str) -> None:
        """Record that an operation left the VM in Error."""
        # Stopped too: a deploy that failed on every host it tried (CloudStack's
        # Stopped --OperationFailedToError--> Error).
        self._require({_S.ALLOCATED, _S.STARTING, _S.STOPPED, _S.STOPPING, _S.MIGRATING,
                       _S.EXPUNGING}, "fail")
        self._failed(reason)

    @event(Failed)
    def _failed(self, reason: str) -> None:
        self.state, self.last_error = VmState.ERROR, reason
        self.destination_host_id = None

    def repair(self, to_state: VmState, reason: str) -> None:
        """Force a stuck VM (or one in Error) to Running, Stopped or Error, saying why."""
        label = f"vm {self.name}"
        why = check_repair(VM_REPAIRS, label, self.state, to_state, reason)
        if to_state is _S.RUNNING and self.host_id is None:
            raise RepairRefusedError(f"{label} is on no host: it cannot be Running; repair it "
                                     "to Stopped, then vm.start places it")
        self._repaired(self.state, to_state, why)

    @event(Repaired)
    def _repaired(self, from_state: VmState, to_state: VmState, reason: str) -> None:
        self.state, self.destination_host_id = to_state, None
        self.last_error = "" if to_state is VmState.RUNNING else reason
        if to_state is VmState.STOPPED and self.host_id is not None:
            self.last_host_id, self.host_id = self.host_id, None

    # disks

    @property
    def root_volume_id(self) -> UUID | None:
        """The root disk's volume, once attached."""
        return self.disks.get(0)

    def attach_disk(self, volume_id: UUID, device_id: int) -> None:
        """Record a volume as the disk at `device_id`; the same again records nothing."""
        if self.disks.get(device_id) == volume_id:
            return
        if device_id in self.disks:
            raise DomainRuleError(f"vm {self.name}: device {device_id} holds volume "
                                  f"{self.disks[device_id]}")
        if volume_id in self.disks.values():
            raise DomainRuleError(f"vm {self.name}: volume {volume_id} is attached already")
        self._disk_attached(volume_id, device_id)

    @event(DiskAttached)
    def _disk_attached(self, volume_id: UUID, device_id: int) -> None:
        self.disks = {**self.disks, device_id: volume_id}

    def detach_disk(self, volume_id: UUID) -> None:
        """Record that a volume is no longer a disk; one that is not records nothing."""
        if volume_id in self.disks.values():
            self._disk_detached(volume_id)

    @event(DiskDetached)
    def _disk_detached(self, volume_id: UUID) -> None:
        self.disks = {d: v for d, v in self.disks.items() if v != volume_id}

    # nics

    def plug_nic(self, nic_id: UUID, device_id: int) -> None:
        """Record a NIC at `device_id`; the same again records nothing."""
        if self.nics.get(device_id) == nic_id:
            return
        if device_id in self.nics or nic_id in self.nics.values():
            raise DomainRuleError(f"vm {self.name}: nic {nic_id} or device {device_id} is "
                                  "taken")
        self._nic_plugged(nic_id, device_id)

    @event(NicPlugged)
    def _nic_plugged(self, nic_id: UUID, device_id: int) -> None:
        self.nics = {**self.nics, device_id: nic_id}

    def unplug_nic(self, nic_id: UUID) -> None:
        """Record that a NIC is gone; one that is not plugged records nothing."""
        if nic_id in self.nics.values():
            self._nic_unplugged(nic_id)

    @event(NicUnplugged)
    def _nic_unplugged(self, nic_id: UUID) -> None:
        self.nics = {d: n for d, n in self.nics.items() if n != nic_id}

    # placement

    def avoid_host(self, host_id: UUID, reason: str) -> None:
        """Keep the VM off this host in later placements; a host already avoided records
        nothing."""
        if host_id not in self.avoid_hosts:
            self._host_avoided(host_id, reason)

    @event(HostAvoided)
    def _host_avoided(self, host_id: UUID, reason: str) -> None:
        self.avoid_hosts = (*self.avoid_hosts, host_id)

    # observed power

    def observe_power(self, power_state: PowerState, host_id: UUID | None = None) -> None:
        """Record a power report; the same report again records nothing."""
        if (power_state, host_id) != (self.power_state, self.power_host_id):
            self._power_observed(power_state, host_id)

    @event(PowerObserved)
    def _power_observed(self, power_state: PowerState, host_id: UUID | None) -> None:
        self.power_state, self.power_host_id = power_state, host_id

    def stopped_out_of_band(self, reason: str) -> None:
        """Take a stop that happened outside (or a fenced host) as the truth."""
        self._require({_S.RUNNING}, "record a stop out of band")
        self._stopped_out_of_band(reason)

    @event(StoppedOutOfBand)
    def _stopped_out_of_band(self, reason: str) -> None:
        self.state, self.last_error = VmState.STOPPED, reason
        self.last_host_id, self.host_id = self.host_id, None

    def adopt_running(self, host_id: UUID) -> None:
        """Take a start that happened outside as the truth: Running on that host."""
        self._require({_S.STOPPED}, "adopt as running")
        self._adopted_running(host_id)

    @event(AdoptedRunning)
    def _adopted_running(self, host_id: UUID) -> None:
        self.state, self.host_id, self.last_error = VmState.RUNNING, host_id, ""

    @property
    def power_drift(self) -> bool:
        """Whether the last power report contradicts the state (running where it should not)."""
        if self.state is VmState.RUNNING:
            return self.power_state in (PowerState.OFF, PowerState.REPORT_MISSING) or (
                self.power_state is PowerState.ON and self.power_host_id is not None
                and self.power_host_id != self.host_id)
        return self.state in _POWERED_OFF and self.power_state is PowerState.ON

    @property
    def on_host(self) -> bool:
        """Whether the VM holds a place on a host (it is starting, running or moving)."""
        return self.state in _ON_HOST
