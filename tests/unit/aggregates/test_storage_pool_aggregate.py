"""PrimaryStoragePool: scope, state machine and byte claims."""

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
from aggregates.storage_pool import PrimaryStoragePool, StoragePoolState, StorageScope
from kernel.store.testing import roundtrip

Refused = Callable[..., InvalidTransitionError]
S = StoragePoolState
GIB = 1 << 30


def make_pool(**overrides: object) -> PrimaryStoragePool:
    """A valid zone-wide pool of 10 GiB, 2x over-provisioned."""
    args: dict = {"name": f"pool-{uuid4().hex[:8]}", "zone_id": uuid4(), "pool_name": "primary",
                  "uri": "nfs://10.0.0.5/export/primary", "capacity_bytes": 10 * GIB}
    args.update(overrides)
    return PrimaryStoragePool.create(**args)


def test_create_defaults() -> None:
    zone = uuid4()
    pool = make_pool(name="p1", zone_id=zone, tags=("ssd", "fast", "ssd"))
    assert pool.id == PrimaryStoragePool.create_id(zone, "p1")
    assert pool.state is S.UP and pool.scope is StorageScope.ZONE
    assert pool.total_bytes == 20 * GIB and pool.free_bytes == 20 * GIB
    assert pool.tags == ("fast", "ssd")


def test_cluster_scope_needs_pod_and_cluster() -> None:
    pool = make_pool(scope=StorageScope.CLUSTER, pod_id=uuid4(), cluster_id=uuid4())
    assert pool.cluster_id is not None
    with pytest.raises(ValidationError):
        make_pool(scope=StorageScope.CLUSTER, pod_id=uuid4())
    with pytest.raises(ValidationError):
        make_pool(scope=StorageScope.ZONE, cluster_id=uuid4())
    with pytest.raises(ValidationError):
        make_pool(scope=StorageScope.HOST, pod_id=uuid4(), cluster_id=uuid4())


@pytest.mark.parametrize("overrides", [
    {"name": ""}, {"pool_name": ""}, {"uri": "/export"}, {"capacity_bytes": 0},
    {"storage_overprovisioning": 0.1}, {"tags": ("",)},
])
def test_bad_arguments_are_refused(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        make_pool(**overrides)


def test_claims_never_exceed_total() -> None:
    pool = make_pool(storage_overprovisioning=1.0)
    a, b = uuid4(), uuid4()
    pool.claim(a, uuid4(), 6 * GIB)
    with pytest.raises(CapacityError):
        pool.claim(b, uuid4(), 5 * GIB)
    pool.claim(b, uuid4(), 4 * GIB)
    assert pool.free_bytes == 0
    with pytest.raises(CapacityError):
        pool.resize_claim(a, 7 * GIB)
    pool.resize_claim(a, 2 * GIB)
    assert pool.used_bytes == 6 * GIB
    pool.release(a)
    pool.release(b)
    assert pool.used_bytes == 0 and pool.claims == {}
    with pytest.raises(DomainRuleError):
        pool.release(a)
    with pytest.raises(DomainRuleError):
        pool.resize_claim(a, GIB)
    assert roundtrip(pool) == pool


def test_claims_need_an_up_pool(refused: Refused) -> None:
    pool = make_pool()
    claim = uuid4()
    pool.claim(claim, uuid4(), GIB)
    pool.change_state(S.DISABLED)
    refused(pool, lambda: pool.claim(uuid4(), uuid4(), GIB), "accept a volume")
    refused(pool, lambda: pool.resize_claim(claim, 2 * GIB), "grow a volume")
    pool.resize_claim(claim, GIB // 2)
    pool.release(claim)
    assert pool.used_bytes == 0


def test_maintenance_and_removal(refused: Refused) -> None:
    pool = make_pool()
    claim = uuid4()
    pool.claim(claim, uuid4(), GIB)
    refused(pool, lambda: pool.change_state(S.MAINTENANCE), "move to Maintenance")
    pool.change_state(S.PREPARE_FOR_MAINTENANCE)
    pool.change_state(S.ERROR_IN_MAINTENANCE, "volumes could not move")
    pool.change_state(S.PREPARE_FOR_MAINTENANCE)
    pool.change_state(S.MAINTENANCE)
    with pytest.raises(DomainRuleError):
        pool.change_state(S.REMOVED)
    pool.release(claim)
    pool.change_state(S.REMOVED)
    refused(pool, lambda: pool.change_state(S.UP), "move to Up")
    assert roundtrip(pool) == pool


def test_audit_metadata_lands_on_events() -> None:
    with audit_context("storage-admin", None, "c1"):
        pool = make_pool()
        pool.change_state(S.DISABLED, "flaky")
    assert [e.actor for e in pool.pending_events] == ["storage-admin"] * 2
