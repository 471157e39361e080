"""Host: registration, resource state machine, status and capacity claims."""

from collections.abc import Callable
from uuid import uuid4

import pytest

from aggregates.base import audit_context
from aggregates.errors import (
    CapacityError,
    DomainRuleError,
    InvalidTransitionError,
    ValidationError,
)
from aggregates.host import Host, HostResourceState, HostStatus
from kernel.store.testing import roundtrip

Refused = Callable[..., InvalidTransitionError]
RS = HostResourceState


def make_host(**overrides: object) -> Host:
    """A valid host with 4 cores and 4 GiB."""
    args: dict = {"name": f"h-{uuid4().hex[:8]}", "uri": "test:///default", "zone_id": uuid4(),
                  "pod_id": uuid4(), "cluster_id": uuid4(), "cpu_cores": 4, "cpu_mhz": 2000,
                  "memory_mib": 4096}
    args.update(overrides)
    return Host.register(**args)


def test_register_defaults() -> None:
    host = make_host(name="kvm1")
    assert host.id == Host.create_id("kvm1")
    assert host.state is RS.ENABLED and host.status is HostStatus.UP
    assert (host.free_cpu_cores, host.free_memory_mib) == (4, 4096)


def test_overprovisioning_raises_totals() -> None:
    host = make_host(cpu_overprovisioning=2.0, memory_overprovisioning=1.5)
    assert (host.total_cpu_cores, host.total_memory_mib) == (8, 6144)


@pytest.mark.parametrize("overrides", [
    {"name": ""}, {"uri": "nowhere"}, {"cpu_cores": 0}, {"memory_mib": -1},
    {"cpu_overprovisioning": 0.5},
])
def test_bad_arguments_are_refused(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        make_host(**overrides)


def test_maintenance_cycle(refused: Refused) -> None:
    host = make_host()
    refused(host, lambda: host.change_resource_state(RS.MAINTENANCE),
            "move to Maintenance")
    for state in (RS.PREPARE_FOR_MAINTENANCE, RS.ERROR_IN_MAINTENANCE,
                  RS.PREPARE_FOR_MAINTENANCE, RS.MAINTENANCE, RS.ENABLED, RS.DISABLED):
        host.change_resource_state(state, "admin")
        assert host.state is state
    assert roundtrip(host) == host


def test_claims_respect_capacity_and_state(refused: Refused) -> None:
    host = make_host()
    first, vm = uuid4(), uuid4()
    host.claim(first, vm, 3, 1024)
    with pytest.raises(CapacityError):
        host.claim(uuid4(), vm, 2, 1024)
    with pytest.raises(DomainRuleError):
        host.claim(first, vm, 1, 1)
    with pytest.raises(ValidationError):
        host.claim(uuid4(), vm, 0, 1)
    host.change_resource_state(RS.DISABLED)
    refused(host, lambda: host.claim(uuid4(), vm, 1, 1), "accept a placement")
    host.change_resource_state(RS.ENABLED)
    host.change_status(HostStatus.DOWN, "no heartbeat")
    with pytest.raises(DomainRuleError):
        host.claim(uuid4(), vm, 1, 1)
    host.release(first)
    assert (host.used_cpu_cores, host.used_memory_mib) == (0, 0)
    with pytest.raises(DomainRuleError):
        host.release(first)
    assert roundtrip(host) == host


def test_status_records_only_changes() -> None:
    host = make_host()
    host.change_status(HostStatus.UP)
    assert host.version == 1
    host.change_status(HostStatus.DISCONNECTED)
    assert host.version == 2


def test_audit_metadata_lands_on_events() -> None:
    correlation = uuid4()
    with audit_context("planner", correlation, "step-9"):
        host = make_host()
        host.claim(uuid4(), uuid4(), 1, 1)
    for e in host.pending_events:
        assert (e.actor, e.correlation_id, e.causation_id) == ("planner", correlation, "step-9")
