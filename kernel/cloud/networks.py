"""Guest network operations: create (designed by the guru), implement (a VLAN), shut down.

* `network.create`: `networkguru.design` validates and normalizes the request; its effect
  creates the Network aggregate (known by zone and name, so a second create of the same name
  is refused by the aggregate's id).
* `network.implement`: the Network is Implementing at once; `networkguru.implement` proposes a
  VLAN from the zone's pool, and its effect records it on the zone's VlanPool (a VLAN taken
  meanwhile is refused and proposed again) and the Network Implemented. A zone gets a VLAN pool
  of `DEFAULT_VLANS` on its first implement. If the operation fails the Network is Allocated.
* `network.shutdown` (no NIC may hold an address): `networkelement.shutdown` on every host the
  Network records its element on (made there by a deploy, start or migration), each removing
  the libvirt network with its bridge, DHCP/DNS entries and rules, and recorded as gone from
  that host; then `networkguru.shutdown`, whose effect gives the VLAN back and records the
  Network Shutdown. A host that cannot be reached fails the operation: the Network stays
  Implemented, still set up on that host, and a later shutdown tries again. (Networks
  implemented before the kernel recorded element hosts know of none.)
"""

from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import msgspec

from aggregates.errors import DomainRuleError, NotFoundError, ValidationError
from aggregates.host import Host
from aggregates.network import GuestNetworkType, Network, NetworkState
from aggregates.operation import Operation, OperationState
from aggregates.plan import Plan, PlannedStep, RetryPolicy
from aggregates.vlan_pool import VlanPool
from aggregates.zone import Zone
from kernel.cloud.nics import ELEMENT_RETRY
from kernel.commands import Command
from kernel.effects import BaseEffect, Effects, EffectScope, Refusal, StepContext
from kernel.operation_commands import StartOperation
from kernel.steps.network import (
    DesignNetwork,
    ImplementNetwork,
    NetworkDesign,
    ShutdownElement,
    ShutdownNetwork,
    VlanAssigned,
)
from kernel.unit_of_work import UnitOfWork

DEFAULT_VLANS = (100, 999)
RETRY = RetryPolicy(max_attempts=5, initial_delay=0.02, max_delay=0.5, jitter=0.3)


class CreateNetworkCommand(Command, frozen=True, kw_only=True, tag="network.create"):
    """Design and create a guest network in a zone."""

    zone_id: UUID
    name: str
    cidr: str
    network_type: str = "Isolated"
    gateway: str | None = None
    reserved_ranges: tuple[tuple[str, str], ...] = ()
    vlan: int | None = None


class ImplementNetworkCommand(Command, frozen=True, kw_only=True, tag="network.implement"):
    """Give a network its VLAN, so that VMs can be deployed on it."""

    network_id: UUID


class ShutdownNetworkCommand(Command, frozen=True, kw_only=True, tag="network.shutdown"):
    """Give an unused network's VLAN back."""

    network_id: UUID


class NetworkAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """The operation and the network it is about."""

    operation_id: UUID
    network_id: UUID


class NetworkRef(msgspec.Struct, frozen=True, kw_only=True):
    """The network a bound step is about."""

    network_id: UUID


class ElementRef(msgspec.Struct, frozen=True, kw_only=True):
    """A network's element on one host (plan arguments of `networkelement.shutdown`)."""

    network_id: UUID
    host_id: UUID


def _step(subsystem: str, action: str, args: msgspec.Struct) -> PlannedStep:
    return PlannedStep(step_id=uuid4(), subsystem=subsystem, action=action,
                       args=msgspec.Raw(msgspec.json.encode(args)), retry=RETRY,
                       deadline_seconds=60.0)


def _spec(kind: str, network_id: UUID,
          step: PlannedStep) -> tuple[StartOperation, NetworkAccepted]:
    operation_id = uuid4()
    return (StartOperation(kind=kind, operation_id=operation_id, plan=Plan(steps=(step,)),
                           entity_ids=(network_id,)),
            NetworkAccepted(operation_id=operation_id, network_id=network_id))


def create_factory(uow: UnitOfWork, command: CreateNetworkCommand,
                   now: datetime) -> tuple[StartOperation, NetworkAccepted]:
    """network.create: the guru designs it; the design's effect creates it."""
    zone = uow.find(command.zone_id)
    if not isinstance(zone, Zone):
        raise ValidationError(f"zone_id: {command.zone_id} is not a zone")
    if command.network_type not in ("Isolated", "Shared"):
        raise ValidationError(f"network_type: expected Isolated or Shared, got "
                              f"{command.network_type!r}")
    network_id = Network.create_id(zone.id, command.name)
    if uow.find(network_id) is not None:
        raise ValidationError(f"name: zone {zone.name} has a network {command.name} already")
    design = DesignNetwork(zone_id=zone.id, name=command.name, cidr=command.cidr,
                           network_type=command.network_type,  # type: ignore[arg-type]
                           gateway=command.gateway, reserved_ranges=command.reserved_ranges,
                           vlan=command.vlan, zone_guest_cidr=zone.guest_cidr)
    return _spec("network.create", network_id, _step("networkguru", "design", design))


def implement_factory(uow: UnitOfWork, command: ImplementNetworkCommand,
                      now: datetime) -> tuple[StartOperation, NetworkAccepted]:
    """network.implement: Implementing now; the guru's VLAN makes it Implemented."""
    network = uow.find(command.network_id)
    if not isinstance(network, Network):
        raise NotFoundError(f"no network {command.network_id}")
    network.implement()
    pool_id = VlanPool.create_id(network.zone_id)
    if uow.find(pool_id) is None:
        uow.add(VlanPool.create(zone_id=network.zone_id, first=DEFAULT_VLANS[0],
                                last=DEFAULT_VLANS[1]))
    return _spec("network.implement", network.id,
                 _step("networkguru", "implement", ImplementNetwork(network_id=network.id)))


def shutdown_factory(uow: UnitOfWork, command: ShutdownNetworkCommand,
                     now: datetime) -> tuple[StartOperation, NetworkAccepted]:
    """network.shutdown: only when no NIC holds an address on it."""
    network = uow.find(command.network_id)
    if not isinstance(network, Network):
        raise NotFoundError(f"no network {command.network_id}")
    if network.state is not NetworkState.IMPLEMENTED:
        raise ValidationError(f"network {network.name} is {network.state.value}, not "
                              "Implemented")
    if network.allocated_ips:
        raise ValidationError(f"network {network.name}: {len(network.allocated_ips)} NICs "
                              "still hold addresses")
    elements = [msgspec.structs.replace(_step("networkelement", "shutdown",
                                              ElementRef(network_id=network.id,
                                                         host_id=host_id)),
                                        retry=ELEMENT_RETRY)
                for host_id in network.element_hosts]
    guru = msgspec.structs.replace(
        _step("networkguru", "shutdown", ShutdownNetwork(network_id=network.id)),
        depends_on=tuple(e.step_id for e in elements))
    operation_id = uuid4()
    return (StartOperation(kind="network.shutdown", operation_id=operation_id,
                           plan=Plan(steps=(*elements, guru)), entity_ids=(network.id,)),
            NetworkAccepted(operation_id=operation_id, network_id=network.id))


class DesignEffect(BaseEffect):
    """networkguru.design: create the Network the design describes."""

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        design = msgspec.json.decode(result, type=NetworkDesign)
        network = Network.create(name=design.name, zone_id=design.zone_id, cidr=design.cidr,
                                 gateway=design.gateway,
                                 network_type=GuestNetworkType(design.network_type),
                                 vlan=design.vlan if design.network_type == "Shared" else None,
                                 reserved_ranges=design.reserved_ranges)
        if scope.uow.find(network.id) is not None:
            raise Refusal(f"network {design.name} exists already", retryable=False,
                          code="exists")
        scope.add(network)


class ImplementEffect(BaseEffect):
    """networkguru.implement: the VLAN on the zone's pool, the Network Implemented."""

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        got = msgspec.json.decode(result, type=VlanAssigned)
        network = scope.get(got.network_id, Network)
        if network.state is not NetworkState.IMPLEMENTING:
            raise Refusal(f"network {network.name} is {network.state.value}, not "
                          "Implementing", retryable=False, code="invalid_transition")
        if got.pooled and got.vlan is not None:
            try:
                scope.get(VlanPool.create_id(got.zone_id), VlanPool).allocate(network.id,
                                                                              got.vlan)
            except DomainRuleError as e:
                raise Refusal(str(e), retryable=True, code="taken") from e
        network.implemented(got.vlan)


class ShutdownElementEffect(BaseEffect):
    """networkelement.shutdown: bound with the host's URI; the element is gone from it."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = ctx.plan_args(ElementRef)
        return ShutdownElement(network_id=ref.network_id,
                               host_uri=scope.peek(ref.host_id, Host).uri)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        ref = ctx.plan_args(ElementRef)
        scope.get(ref.network_id, Network).element_shut_down(ref.host_id)


class ShutdownEffect(BaseEffect):
    """networkguru.shutdown: the VLAN back to the pool (what the pool holds), Shutdown."""

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        network = scope.get(ctx.plan_args(ShutdownNetwork).network_id, Network)
        if network.state is not NetworkState.IMPLEMENTED or network.element_hosts:
            # a deploy made it on a host meanwhile: it is in use again
            raise Refusal(f"network {network.name} is {network.state.value}, set up on "
                          f"{len(network.element_hosts)} hosts: it cannot be shut down",
                          retryable=False, code="network_in_use")
        pool_id = VlanPool.create_id(network.zone_id)
        if scope.uow.find(pool_id) is not None:
            pool = scope.get(pool_id, VlanPool)
            if pool.vlan_of(network.id) is not None:
                pool.release(network.id)
        network.shutdown()


class ImplementEnded:
    """network.implement ended otherwise than well: the Network is Allocated again."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        if op.state is not OperationState.SUCCEEDED:
            ref = msgspec.json.decode(op.forward_steps()[0].args, type=ImplementNetwork)
            network = scope.get(ref.network_id, Network)
            if network.state is NetworkState.IMPLEMENTING:
                network.implementation_failed(op.state.value)
        return []


NETWORK_COMMANDS: dict[type[Any], Any] = {CreateNetworkCommand: create_factory,
                    ImplementNetworkCommand: implement_factory,
                    ShutdownNetworkCommand: shutdown_factory}
NETWORK_EFFECTS = Effects(
    steps={"networkguru.design": DesignEffect(), "networkguru.implement": ImplementEffect(),
           "networkguru.shutdown": ShutdownEffect(),
           "networkelement.shutdown": ShutdownElementEffect()},
    operations={"network.implement": ImplementEnded()})
