"""The reconciler: compares what the hypervisors report with what the kernel wants, and acts.

The kernel is not the master of the hosts. Each hypervisor worker reports, on an interval,
every domain of the hosts it serves (`PowerReport`s, over NATS). The reconciler records what
changed as events, never every report, and applies the policies of the settings:

* a host that stops reporting goes Disconnected after `host_disconnected_after` missed
  intervals and Down after `host_down_after`; a report brings it back Up. When a host goes
  Down with HA VMs on it, it is fenced (`host.fence`); only a fence that succeeded stops its
  VMs and starts the HA ones elsewhere, so a VM never runs twice (no split brain).
* a Running VM found shut off: `on_stopped_out_of_band` = adopt (Stopped, its claim given
  back, its leftover definition removed) or restart (powered on again where it is);
* a Stopped VM found running: `on_unexpected_running` = adopt (Running there, its capacity
  claimed) or stop (stopped and undefined there);
* a VM's definition left powered off on a host it does not run on (a fenced host's, once it
  reports again) is removed there (`vm.clean_definition`), so no second copy can start;
* a domain no VM accounts for: `on_unknown_domain` = adopt (an UnmanagedDomain whose capacity
  counts) or quarantine (an UnmanagedDomain, powered off and kept);
* a Running VM missing from its host's reports `power_missing_after` times: PowerReportMissing.
  Its host reported without it, so it runs nowhere: it is Stopped out of band and, if it is
  an HA VM or the policy is restart, started again through the planner.

A VM an operation holds is only observed, never acted on: its operation decides its state.
Everything acted on is saved through the operation engine, in one transaction per batch, and
every action on a host is an ordinary operation (`kernel.reality.actions`).
"""

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID, uuid4

from aggregates.errors import CapacityError, DomainRuleError, NotFoundError
from aggregates.host import Host, HostStatus
from aggregates.offering import ServiceOffering
from aggregates.unmanaged import Disposition, UnmanagedDomain
from aggregates.vm import PowerState, VirtualMachine, VmState
from kernel.cloud.storage_pools import directory
from kernel.effects import EffectScope
from kernel.operation_commands import StartOperation
from kernel.operations import OperationEngine, utcnow
from kernel.reality import actions
from kernel.reality.roster import HOST_TOPIC
from kernel.settings import Settings
from kernel.steps.hypervisor import DomainPower, PowerReport
from kernel.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)
UNMANAGED_TOPIC = "unmanaged_domain.Discovered"
_ON = frozenset({"running", "blocked", "paused", "shutting_down"})
_OFF = frozenset({"shutoff", "crashed", "suspended"})


def power_of(state: str) -> PowerState:
    """The platform's power state for a libvirt domain state."""
    if state in _ON:
        return PowerState.ON
    return PowerState.OFF if state in _OFF else PowerState.UNKNOWN


@dataclass(frozen=True)
class RealityPolicy:
    """How often hosts report, when silence means trouble, and what drift does."""

    interval: float = 10.0
    disconnected_after: int = 2
    down_after: int = 4
    missing_after: int = 2
    on_stopped_out_of_band: str = "adopt"
    on_unexpected_running: str = "adopt"
    on_unknown_domain: str = "quarantine"

    @classmethod
    def of(cls, settings: Settings) -> "RealityPolicy":
        """The policy the settings give."""
        return cls(settings.observe_interval_seconds, settings.host_disconnected_after,
                   settings.host_down_after, settings.power_missing_after,
                   settings.on_stopped_out_of_band, settings.on_unexpected_running,
                   settings.on_unknown_domain)


class _Pass:
    """One batch's work: its scope, the operations it starts, its view of the missing VMs."""

    def __init__(self, uow: UnitOfWork, missing: dict[UUID, int], now: datetime) -> None:
        self.uow, self.scope, self.now = uow, EffectScope(uow), now
        self.missing = missing
        self.operations: list[StartOperation] = []
        self.unmanaged: tuple[UUID, ...] = ()
        self.looked: dict[UUID, VirtualMachine] = {}  # the VMs this pass compared

    def idle(self, entity_id: UUID) -> bool:
        return actions.is_idle(self.scope, entity_id)


class Reconciler:
    """Turns observations into events and actions; thread-safe through the engine."""

    def __init__(self, engine: OperationEngine, policy: RealityPolicy,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.engine, self.policy, self.clock = engine, policy, clock
        self.hosts = directory(engine.app, HOST_TOPIC)
        self.unmanaged = directory(engine.app, UNMANAGED_TOPIC)
        self._by_uri: dict[str, UUID] = {}
        self._since = clock()  # a host never heard from counts its silence from here
        self._last: dict[UUID, datetime] = {}
        self._missing: dict[UUID, int] = {}
        # Each VM's version when the last pass compared it with a report. A VM the kernel
        # changed since (a stop that ended) is not acted on from this pass's report, which
        # may have been taken before that change: the next report, taken after it, decides.
        self._versions: dict[UUID, int] = {}
        self.stats: Counter[str] = Counter()

    # ------------------------------------------------------------------ reports

    def observe(self, reports: Sequence[PowerReport]) -> int:
        """Apply a batch of reports (the latest of each host); returns the hosts seen."""
        latest = {r.host_uri: r for r in reports}
        at = self.clock()
        heard: dict[UUID, datetime] = {}
        missing: dict[UUID, int] = {}
        looked: dict[UUID, VirtualMachine] = {}

        def work(uow: UnitOfWork, now: datetime) -> int:
            missing.clear()
            missing.update(self._missing)
            heard.clear()
            step = _Pass(uow, missing, now)
            step.unmanaged = self.unmanaged.ids()  # one look per batch
            for report in latest.values():
                host_id = self._host_id(step.scope, report.host_uri)
                if host_id is None:
                    log.warning("reality: a report from %s, which is no host", report.host_uri)
                    continue
                heard[host_id] = at
                self._reconcile(step, step.scope.get(host_id, Host), report)
            for spec in step.operations:
                self.engine.start_in(uow, spec, now)
            looked.clear()
            looked.update(step.looked)
            return len(heard)

        self.engine.run_batch(work)
        self._versions.update({vm_id: vm.version for vm_id, vm in looked.items()})
        self._last.update(heard)
        self._missing = missing
        self.stats["reports"] += len(latest)
        return len(heard)

    def _host_id(self, scope: EffectScope, uri: str) -> UUID | None:
        if uri not in self._by_uri:
            for host_id in self.hosts.ids():
                if host_id not in self._by_uri.values():
                    self._by_uri[scope.peek(host_id, Host).uri] = host_id
        return self._by_uri.get(uri)

    def _reconcile(self, step: _Pass, host: Host, report: PowerReport) -> None:
        if host.status is not HostStatus.UP:
            host.change_status(HostStatus.UP, "it reports again")
            self.stats["hosts_up"] += 1
        seen = {d.uuid: d for d in report.domains}
        placed: set[UUID] = set()
        for vm_id in dict.fromkeys(vm for vm, _cpu, _mem in host.claims.values()):
            vm: object = step.scope.peek(vm_id)
            if isinstance(vm, VirtualMachine) and vm.host_id == host.id:
                placed.add(vm.id)
                self._placed_vm(step, host, vm, seen.get(vm.id))
        for domain in report.domains:
            if domain.uuid in placed:
                continue
            known = step.uow.find(domain.uuid)
            if isinstance(known, VirtualMachine):
                self._stray(step, host, known, domain)
            else:
                self._unknown(step, host, domain)
        for unmanaged_id in step.unmanaged:
            found = step.scope.peek(unmanaged_id, UnmanagedDomain)
            if found.host_id == host.id and found.domain_uuid not in seen and found.present:
                gone = step.scope.get(unmanaged_id, UnmanagedDomain)
                gone.vanish()
                if gone.id in host.claims:
                    host.release(gone.id)

    def _placed_vm(self, step: _Pass, host: Host, vm: VirtualMachine,
                   domain: DomainPower | None) -> None:
        """A VM the kernel has on this host."""
        if not step.idle(vm.id):
            step.missing.pop(vm.id, None)
            return  # its operation decides its state
        if self._changed_since_last_look(step, vm):
            return
        vm = step.scope.get(vm.id, VirtualMachine)
        if domain is not None:
            step.missing.pop(vm.id, None)
            power = power_of(domain.state)
            vm.observe_power(power, host.id)
            if vm.state is VmState.RUNNING and power is PowerState.OFF:
                self.stats["stopped_out_of_band"] += 1
                if self.policy.on_stopped_out_of_band == "restart":
                    step.operations.append(actions.power_on(vm.id, host.uri))
                else:
                    step.operations += actions.restart_elsewhere(
                        step.scope, vm, f"found shut off on host {host.name}", step.now,
                        start=False)
                    step.operations.append(actions.clean_definition(vm.id, host.uri))
            return
        if vm.state is not VmState.RUNNING:
            return
        count = step.missing[vm.id] = step.missing.get(vm.id, 0) + 1
        if count < self.policy.missing_after:
            return
        step.missing.pop(vm.id, None)
        elsewhere = actions.running_elsewhere(vm, host.id)
        if elsewhere is not None:  # it moved behind our back: follow it, never start a copy
            self.stats["moved_out_of_band"] += 1
            actions.restart_elsewhere(step.scope, vm, f"found running on another host, not on "
                                      f"{host.name}", step.now, start=False)
            there = step.scope.get(elsewhere, Host)
            if not self._adopt(there, vm, step.scope):
                step.operations.append(actions.enforce_stop(vm.id, there.uri))
            return
        vm.observe_power(PowerState.REPORT_MISSING, host.id)
        self.stats["power_report_missing"] += 1
        start = vm.ha_enabled or self.policy.on_stopped_out_of_band == "restart"
        step.operations += actions.restart_elsewhere(
            step.scope, vm, f"missing from the reports of host {host.name}", step.now,
            start=start)

    def _stray(self, step: _Pass, host: Host, vm: VirtualMachine, domain: DomainPower) -> None:
        """A VM's domain on a host the kernel does not have it on."""
        if not step.idle(vm.id) or self._changed_since_last_look(step, vm):
            return
        power = power_of(domain.state)
        vm = step.scope.get(vm.id, VirtualMachine)
        if vm.state is VmState.RUNNING:  # running elsewhere: recorded, the drift is visible
            if power is PowerState.ON:
                vm.observe_power(power, host.id)
            else:  # a definition left here (a fenced host's): no second copy may start
                step.operations.append(actions.clean_definition(vm.id, host.uri))
            return
        if vm.state is not VmState.STOPPED:
            return
        if power is not PowerState.ON:  # a definition left behind: no second copy may start
            step.operations.append(actions.clean_definition(vm.id, host.uri))
            return
        vm.observe_power(power, host.id)
        self.stats["unexpected_running"] += 1
        if self.policy.on_unexpected_running == "adopt" and self._adopt(host, vm, step.scope):
            return
        step.operations.append(actions.enforce_stop(vm.id, host.uri))

    def _changed_since_last_look(self, step: _Pass, vm: VirtualMachine) -> bool:
        """Whether the kernel changed the VM since the last pass compared it with a report;
        the VM is remembered as this pass saw it (after what this pass does to it)."""
        step.looked[vm.id] = vm  # the same object as changed below: its version at the end
        last = self._versions.get(vm.id)
        return last is not None and last != vm.version

    def _adopt(self, host: Host, vm: VirtualMachine, scope: EffectScope) -> bool:
        offering = scope.peek(vm.service_offering_id, ServiceOffering)
        try:
            host.claim(uuid4(), vm.id, offering.cpu_cores, offering.memory_mib)
        except (CapacityError, DomainRuleError) as e:
            log.warning("reality: vm %s runs on %s but cannot be adopted there (%s): it is "
                        "stopped", vm.name, host.name, e)
            return False
        vm.adopt_running(host.id)
        return True

    def _unknown(self, step: _Pass, host: Host, domain: DomainPower) -> None:
        """A domain that is no VM of the platform."""
        entity_id = UnmanagedDomain.create_id(host.id, domain.uuid)
        found = step.uow.find(entity_id)
        if found is None:
            disposition = Disposition.ADOPTED if self.policy.on_unknown_domain == "adopt" \
                else Disposition.QUARANTINED
            found = UnmanagedDomain.discover(
                host_id=host.id, domain_uuid=domain.uuid, name=domain.name, power=domain.state,
                vcpus=domain.vcpus, memory_mib=domain.memory_mib, disposition=disposition)
            step.uow.add(found)
            self.stats["unknown_domains"] += 1
        elif isinstance(found, UnmanagedDomain):
            found.observe(domain.state)
        else:
            raise NotFoundError(f"domain {domain.uuid} on {host.name} is a {type(found)}")
        if found.is_adopted:
            if found.id not in host.claims:
                try:
                    host.claim(found.id, found.id, max(found.vcpus, 1), max(found.memory_mib, 1))
                except (CapacityError, DomainRuleError) as e:
                    log.warning("reality: unmanaged domain %s on %s: capacity not claimed (%s)",
                                found.name, host.name, e)
        elif power_of(domain.state) is PowerState.ON and step.idle(found.id):
            step.operations.append(actions.quarantine(found.id, domain.uuid, host.uri))

    # ------------------------------------------------------------------ silence

    def tick(self) -> int:
        """Mark the hosts that stopped reporting; fence the Down ones with HA VMs. Returns
        the hosts whose status changed."""
        interval, at = self.policy.interval, self.clock()

        def work(uow: UnitOfWork, now: datetime) -> int:
            step = _Pass(uow, {}, now)
            changed = 0
            for host_id in self.hosts.ids():
                host = step.scope.peek(host_id, Host)
                silent = (at - self._last.get(host_id, self._since)).total_seconds() / interval
                if silent >= self.policy.down_after and host.status is not HostStatus.DOWN:
                    changed += 1
                    self._down(step, step.scope.get(host_id, Host), silent)
                elif silent >= self.policy.disconnected_after and host.status is HostStatus.UP:
                    changed += 1
                    step.scope.get(host_id, Host).change_status(
                        HostStatus.DISCONNECTED, f"no report for {silent:.1f} intervals")
            for spec in step.operations:
                self.engine.start_in(uow, spec, now)
            return changed

        return self.engine.run_batch(work).applied

    def _down(self, step: _Pass, host: Host, silent: float) -> None:
        host.change_status(HostStatus.DOWN, f"no report for {silent:.1f} intervals")
        self.stats["hosts_down"] += 1
        needs_fence = False
        for vm_id in dict.fromkeys(vm for vm, _cpu, _mem in host.claims.values()):
            vm: object = step.scope.peek(vm_id)
            if not isinstance(vm, VirtualMachine) or vm.host_id != host.id \
                    or vm.state is not VmState.RUNNING or not step.idle(vm.id):
                continue
            step.scope.get(vm.id, VirtualMachine).observe_power(PowerState.UNKNOWN, host.id)
            needs_fence = needs_fence or vm.ha_enabled
        if needs_fence and step.idle(host.id):
            step.operations.append(actions.fence(host))
