"""Cluster: creation, allocation state and over-provisioning factors."""

from collections.abc import Callable
from uuid import uuid4

import pytest

from aggregates.allocation import AllocationState
from aggregates.base import audit_context
from aggregates.cluster import Cluster
from aggregates.errors import InvalidTransitionError, ValidationError
from kernel.store.testing import roundtrip

Refused = Callable[..., InvalidTransitionError]

ZONE, POD = uuid4(), uuid4()


def make_cluster(**overrides: object) -> Cluster:
    """A valid cluster."""
    args: dict = {"name": f"c-{uuid4().hex[:8]}", "zone_id": ZONE, "pod_id": POD}
    args.update(overrides)
    return Cluster.add(**args)


def test_add_defaults() -> None:
    cluster = make_cluster(name="c1")
    assert cluster.id == Cluster.create_id(POD, "c1")
    assert cluster.hypervisor == "KVM" and cluster.enabled
    assert (cluster.cpu_overprovisioning, cluster.memory_overprovisioning) == (1.0, 1.0)


def test_enable_disable(refused: Refused) -> None:
    cluster = make_cluster()
    cluster.disable()
    assert cluster.state is AllocationState.DISABLED
    refused(cluster, cluster.disable, "disable")
    cluster.enable()
    refused(cluster, cluster.enable, "enable")


def test_change_overprovisioning() -> None:
    cluster = make_cluster(cpu_overprovisioning=2)
    assert cluster.cpu_overprovisioning == 2.0
    cluster.change_overprovisioning(cpu_overprovisioning=2.0)
    assert cluster.version == 1
    cluster.change_overprovisioning(memory_overprovisioning=1.5)
    assert (cluster.cpu_overprovisioning, cluster.memory_overprovisioning) == (2.0, 1.5)
    assert cluster.version == 2
    with pytest.raises(ValidationError):
        cluster.change_overprovisioning(cpu_overprovisioning=0.5)
    assert roundtrip(cluster) == cluster


@pytest.mark.parametrize("overrides", [
    {"name": ""},
    {"hypervisor": ""},
    {"cpu_overprovisioning": 0.9},
    {"memory_overprovisioning": float("inf")},
    {"memory_overprovisioning": True},
])
def test_bad_arguments_are_refused(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        make_cluster(**overrides)


def test_audit_metadata_lands_on_events() -> None:
    correlation = uuid4()
    with audit_context("alice", correlation):
        cluster = make_cluster()
        cluster.change_overprovisioning(cpu_overprovisioning=3.0)
    assert {(e.actor, e.correlation_id) for e in cluster.pending_events} == {
        ("alice", correlation)}
