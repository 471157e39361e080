"""A VM's NICs in its operations: address and MAC from the guru, DHCP/DNS entries on the host.

Per NIC, a deploy runs `networkguru.allocate` (its effect records the MAC on the zone's
MacPool, the address on the Network and the Nic itself, reserved; a proposal from a stale
index is refused and retried; compensation `networkguru.release` gives all of it back), then,
once the VM is placed, `networkelement.implement` (the guest network's libvirt network on
that host, if not there yet; the Network records the host) and `networkelement.prepare`
(the NIC's DHCP and DNS host entries; compensation `networkelement.release`).
"""

from uuid import UUID, uuid4

import msgspec

from aggregates.errors import DomainRuleError, NotFoundError
from aggregates.host import Host
from aggregates.mac_pool import MacPool
from aggregates.network import Network
from aggregates.nic import Nic
from aggregates.plan import Compensation, PlannedStep, RetryPolicy
from aggregates.vm import VirtualMachine
from kernel.effects import BaseEffect, Effects, EffectScope, Refusal, StepContext
from kernel.steps.network import (
    AllocateNic,
    ElementImplemented,
    ImplementElement,
    NicAllocation,
    PrepareNic,
    ReleaseNic,
    ReleaseNicEntries,
)

GURU_RETRY = RetryPolicy(max_attempts=5, initial_delay=0.02, max_delay=0.5, jitter=0.3)
ELEMENT_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.5, jitter=0.1)


class NicRef(msgspec.Struct, frozen=True, kw_only=True):
    """A NIC of a VM, at a device slot, on a network (plan arguments of the NIC steps)."""

    vm_id: UUID
    nic_id: UUID
    network_id: UUID
    device_id: int


def _raw(value: msgspec.Struct) -> msgspec.Raw:
    return msgspec.Raw(msgspec.json.encode(value))


def nic_steps(vm_id: UUID, network_ids: tuple[UUID, ...], placed: UUID
              ) -> tuple[list[PlannedStep], list[UUID]]:
    """The NIC steps of a deploy, and the steps the domain's definition must wait for."""
    steps: list[PlannedStep] = []
    ready: list[UUID] = []
    for device_id, network_id in enumerate(network_ids):
        ref = _raw(NicRef(vm_id=vm_id, nic_id=uuid4(), network_id=network_id,
                          device_id=device_id))
        allocate = PlannedStep(step_id=uuid4(), subsystem="networkguru", action="allocate",
                               args=ref, retry=GURU_RETRY, deadline_seconds=30.0,
                               compensation=Compensation(subsystem="networkguru",
                                                         action="release", args=ref,
                                                         retry=GURU_RETRY))
        element = PlannedStep(step_id=uuid4(), subsystem="networkelement", action="implement",
                              args=ref, depends_on=(placed,), retry=ELEMENT_RETRY)
        prepare = PlannedStep(step_id=uuid4(), subsystem="networkelement", action="prepare",
                              args=ref, depends_on=(element.step_id, allocate.step_id),
                              retry=ELEMENT_RETRY,
                              compensation=Compensation(subsystem="networkelement",
                                                        action="release", args=ref,
                                                        retry=ELEMENT_RETRY))
        steps += [allocate, element, prepare]
        ready.append(prepare.step_id)
    return steps, ready


def vm_host(scope: EffectScope, vm: VirtualMachine) -> Host:
    """The host the VM is on, or was last on."""
    host_id = vm.host_id or vm.last_host_id
    if host_id is None:
        raise NotFoundError(f"vm {vm.name} is on no host")
    return scope.peek(host_id, Host)


class AllocateNicEffect(BaseEffect):
    """networkguru.allocate: record the proposal (MAC, address, the Nic), or refuse it."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = ctx.plan_args(NicRef)
        return AllocateNic(network_id=ref.network_id, nic_id=ref.nic_id)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        ref = ctx.plan_args(NicRef)
        got = msgspec.json.decode(result, type=NicAllocation)
        pools = scope.uow
        pool_id = MacPool.create_id(got.zone_id)
        if pools.find(pool_id) is None:
            scope.add(MacPool.create(zone_id=got.zone_id))
        pool = scope.get(pool_id, MacPool)
        network = scope.get(ref.network_id, Network)
        # Both checks before either change: a refusal must leave both untouched.
        if pool.holder_of(got.mac) not in (None, ref.nic_id) or (
                network.nic_ip(ref.nic_id) != got.ip and not network.is_assignable(got.ip)):
            raise Refusal(f"{got.mac} or {got.ip} was taken meanwhile", retryable=True,
                          code="taken")
        try:
            if pool.mac_of(ref.nic_id) is None:
                pool.allocate(ref.nic_id, got.mac)
            if network.nic_ip(ref.nic_id) is None:
                network.allocate_ip(ref.nic_id, got.ip)
        except DomainRuleError as e:  # taken meanwhile: the guru proposes again
            raise Refusal(str(e), retryable=True, code="taken") from e
        if pools.find(ref.nic_id) is None:
            scope.add(Nic.allocate(vm_id=ref.vm_id, network_id=ref.network_id, mac=got.mac,
                                   device_id=ref.device_id, is_default=ref.device_id == 0,
                                   id=ref.nic_id))
        scope.get(ref.nic_id, Nic).reserve(got.ip)
        scope.get(ref.vm_id, VirtualMachine).plug_nic(ref.nic_id, ref.device_id)


class ReleaseNicEffect(BaseEffect):
    """networkguru.release: give back what the aggregates hold (not what a reply says)."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = ctx.plan_args(NicRef)
        return ReleaseNic(network_id=ref.network_id, nic_id=ref.nic_id, release_mac=True)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        release_nic(scope, ctx.plan_args(NicRef).nic_id)


def release_nic(scope: EffectScope, nic_id: UUID) -> None:
    """The NIC's address, MAC and slot go back; the NIC is Released."""
    if scope.uow.find(nic_id) is None:
        return
    nic = scope.get(nic_id, Nic)
    network = scope.get(nic.network_id, Network)
    held = network.nic_ip(nic.id)
    if held is not None:
        network.release_ip(held)
    if nic.state.value != "Released":
        nic.release()
    pool_id = MacPool.create_id(network.zone_id)
    if scope.uow.find(pool_id) is not None:
        pool = scope.get(pool_id, MacPool)
        if pool.mac_of(nic.id) is not None:
            pool.release(nic.id)
    scope.get(nic.vm_id, VirtualMachine).unplug_nic(nic.id)


class ImplementElementEffect(BaseEffect):
    """networkelement.implement: the guest network's libvirt network on the VM's host; the
    Network records the host, so that its shutdown removes it there."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = ctx.plan_args(NicRef)
        network = scope.peek(ref.network_id, Network)
        host = vm_host(scope, scope.peek(ref.vm_id, VirtualMachine))
        return ImplementElement(network_id=network.id, host_uri=host.uri,
                                network_type=network.network_type.value, cidr=network.cidr,
                                gateway=network.gateway, vlan=network.vlan)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        ref = ctx.plan_args(NicRef)
        done = msgspec.json.decode(result, type=ElementImplemented)
        vm = scope.peek(ref.vm_id, VirtualMachine)
        # The host it was bound to: the VM's, or the one a migration moves it to (or back).
        for host_id in dict.fromkeys((vm.host_id, vm.destination_host_id, vm.last_host_id)):
            if host_id is not None and scope.peek(host_id, Host).uri == done.host_uri:
                scope.get(ref.network_id, Network).element_implemented(host_id)
                return
        raise Refusal(f"network {ref.network_id} was implemented on {done.host_uri}, which "
                      f"is none of vm {vm.name}'s hosts", retryable=False, code="wrong_host")


class _Entries(BaseEffect):
    def entries(self, scope: EffectScope, ctx: StepContext) -> dict[str, object]:
        ref = ctx.plan_args(NicRef)
        nic = scope.peek(ref.nic_id, Nic)
        vm = scope.peek(ref.vm_id, VirtualMachine)
        if nic.ip is None:
            raise NotFoundError(f"nic {nic.id} has no address")
        return {"network_id": ref.network_id, "host_uri": vm_host(scope, vm).uri,
                "nic_id": nic.id, "mac": nic.mac, "ip": nic.ip, "hostname": vm.name}


class PrepareNicEffect(_Entries):
    """networkelement.prepare: the NIC's DHCP and DNS entries on the host."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        return PrepareNic(**self.entries(scope, ctx))  # type: ignore[arg-type]


class ReleaseEntriesEffect(_Entries):
    """networkelement.release: the NIC's entries leave the host."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        return ReleaseNicEntries(**self.entries(scope, ctx))  # type: ignore[arg-type]


NIC_EFFECTS = Effects(steps={
    "networkguru.allocate": AllocateNicEffect(),
    "networkguru.release": ReleaseNicEffect(),
    "networkelement.implement": ImplementElementEffect(),
    "networkelement.prepare": PrepareNicEffect(),
    "networkelement.release": ReleaseEntriesEffect(),
})
