"""System VMs of a service: VMs the orchestrator runs for it, as CloudStack runs its
secondary-storage and console-proxy VMs, through an ordinary `vm.deploy`.

A system VM is known by its service and name: its VM id and the command's idempotency key are
derived from them, so asking again answers the first deploy's result and deploys nothing.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from uuid import NAMESPACE_URL, UUID, uuid5

from kernel.contracts.services import require_service_name
from services.framework.wire import CommandResult, OperationOutcome


class Deployer(Protocol):
    """What deploying a system VM needs of a running service (a ServiceRuntime)."""

    @property
    def service_name(self) -> str:
        """The service's name."""
        ...

    async def command(self, tag: str, body: Mapping[str, Any], *,
                      idempotency_key: str) -> CommandResult:
        """Send a command; its answer."""
        ...

    async def wait_operation(self, operation_id: UUID, timeout: float = 120) -> OperationOutcome:
        """Wait until the operation ended."""
        ...


def system_vm_id(service: str, name: str) -> UUID:
    """The id of a service's system VM."""
    return uuid5(NAMESPACE_URL, f"cloudkernel:system-vm:{service}/{name}")


def system_vm_name(service: str, name: str) -> str:
    """The VM name a system VM gets: `s-<service>-<name>`."""
    return f"s-{service}-{name}"


async def ensure_system_vm(runtime: Deployer, name: str, *, zone_id: UUID,
                           template_id: UUID, offering_id: UUID, account: str = "system",
                           network_ids: Sequence[UUID] = (), wait: bool = False,
                           timeout: float = 300) -> UUID:
    """Deploy the system VM unless this service deployed it already; returns its VM id."""
    require_service_name(name)
    service = runtime.service_name
    vm_id = system_vm_id(service, name)
    body = {"name": system_vm_name(service, name), "account": account,
            "zone_id": str(zone_id), "service_offering_id": str(offering_id),
            "template_id": str(template_id), "network_ids": [str(n) for n in network_ids],
            "vm_id": str(vm_id)}
    done = await runtime.command("vm.deploy", body,
                                 idempotency_key=f"system-vm:{service}:{name}")
    operation_id = done.result.get("operation_id") if isinstance(done.result, dict) else None
    if wait and operation_id:
        outcome = await runtime.wait_operation(UUID(str(operation_id)), timeout=timeout)
        if not outcome.succeeded:
            raise RuntimeError(f"system VM {name} of {service}: deploy {outcome.status}"
                               f"{': ' + outcome.message if outcome.message else ''}")
    return UUID(str(done.result.get("vm_id", vm_id)))
