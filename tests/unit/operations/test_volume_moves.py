"""Volume delete and migration between pools in the engine, with scripted subsystem outcomes.

Whatever happens (success, a failure at any step, a cancel that moves the volume back), the
volume must be on exactly one pool, hold a claim on that pool only, and its file must be
there and nowhere else; a delete gives the claim back only once the storage is gone.
"""

from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.operation import OperationState
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState, VolumeType
from kernel.cloud.vms import StartVm, StopVm, pool_claim_id
from kernel.cloud.volume_moves import DeleteVolumeCommand, MigrateVolumeCommand
from kernel.cloud.volumes import ResizeVolumeCommand
from kernel.steps.hypervisor import DefineDomain
from kernel.steps.storage import CreatePool, DeleteVolume, MigrateVolume

from ._volume_cloud import (
    VolumeCloud,
    create_volume,
    make_cloud,
    offering_zone,
    pool_of,
    ready_volume,
    running_vm,
)
from .test_vm_deploy import GIB


@pytest.fixture
def cloud() -> Iterator[VolumeCloud]:
    made = make_cloud()
    yield made
    made.app.close()


def pool_named(cloud: VolumeCloud, name: str) -> PrimaryStoragePool:
    return next(cloud.get(p) for p in cloud.ids("storage_pool.Created")
                if cloud.get(p).name == name)


def zone_pool(cloud: VolumeCloud, name: str, capacity_bytes: int = 1024 * GIB,
              zone_id: UUID | None = None) -> PrimaryStoragePool:
    """A zone-wide pool (every host of the zone reaches it), added to the inventory."""
    pool = PrimaryStoragePool.create(name=name, zone_id=zone_id or offering_zone(cloud),
                                     pool_name=name, uri=f"file:///var/lib/cloudkernel/{name}",
                                     capacity_bytes=capacity_bytes,
                                     storage_overprovisioning=1.0)
    cloud.app.save(pool)
    return pool


def claimed_on(cloud: VolumeCloud, volume_id: UUID) -> dict[str, int]:
    """Pool name -> the bytes the volume holds there."""
    return {pool.name: pool.claims[pool_claim_id(volume_id)][1]
            for pool in (cloud.get(p) for p in cloud.ids("storage_pool.Created"))
            if pool_claim_id(volume_id) in pool.claims}


def host_name(cloud: VolumeCloud, uri: str) -> str:
    return next(cloud.get(h).name for h in cloud.host_ids if cloud.get(h).uri == uri)


def sent(cloud: VolumeCloud, kind: str, type_: type[Any], since: int = 0) -> list[Any]:
    """The bound arguments of every step of this kind dispatched since `since`, in order."""
    return [msgspec.json.decode(m.args, type=type_) for m in cloud.seen[since:]
            if f"{m.subsystem}.{m.action}" == kind]


def refused(cloud: VolumeCloud, command: Any, match: str) -> None:
    """The command is refused with `match` in its message, and writes nothing."""
    head = cloud.app.recorder.max_notification_id()
    with pytest.raises(Exception, match=match):
        cloud.command(command)
    assert cloud.app.recorder.max_notification_id() == head


def attached_volume(cloud: VolumeCloud) -> tuple[VirtualMachine, Volume]:
    vm = running_vm(cloud)
    accepted = create_volume(cloud, vm)
    cloud.run()
    assert cloud.op(accepted).state is OperationState.SUCCEEDED
    return cloud.get(vm.id), cloud.get(UUID(accepted["volume_id"]))


# --------------------------------------------------------------------------- delete


def test_delete_removes_the_storage_and_gives_the_claim_back(cloud: VolumeCloud) -> None:
    volume = ready_volume(cloud)
    assert claimed_on(cloud, volume.id) == {"primary-a": 20 * GIB}
    deleted = cloud.command(DeleteVolumeCommand(volume_id=volume.id))
    assert deleted["state"] == VolumeState.EXPUNGING.value
    assert cloud.get(volume.id).state is VolumeState.EXPUNGING
    since = len(cloud.seen)
    cloud.run()
    assert cloud.op(deleted).state is OperationState.SUCCEEDED
    assert cloud.kinds(since) == ["storage.delete_volume"]
    [bound] = sent(cloud, "storage.delete_volume", DeleteVolume)
    assert (host_name(cloud, bound.volume.host_uri), bound.volume.pool, bound.volume.name) == \
        ("kvm-a1", "primary-a", f"{volume.id}.qcow2")
    assert cloud.get(volume.id).state is VolumeState.EXPUNGED
    assert claimed_on(cloud, volume.id) == {} and volume.path not in cloud.volumes
    refused(cloud, DeleteVolumeCommand(volume_id=volume.id), "Expunged")


@pytest.mark.parametrize("trouble", ["down", "maintenance"])
def test_a_volume_whose_host_is_down_or_in_maintenance_is_reached_through_another(
        cloud: VolumeCloud, trouble: str) -> None:
    from aggregates.host import Host, HostResourceState, HostStatus

    volume = ready_volume(cloud)
    assert volume.host_id is not None
    host: Host = cloud.get(volume.host_id)
    if trouble == "down":
        host.change_status(HostStatus.DOWN, "test")
    else:
        host.change_resource_state(HostResourceState.PREPARE_FOR_MAINTENANCE, "test")
    cloud.app.save(host)
    cloud.engine.cache.clear()
    deleted = cloud.command(DeleteVolumeCommand(volume_id=volume.id))
    cloud.run()
    assert cloud.op(deleted).state is OperationState.SUCCEEDED
    [bound] = sent(cloud, "storage.delete_volume", DeleteVolume)
    other = host_name(cloud, bound.volume.host_uri)
    assert other != "kvm-a1" and other.startswith("kvm-a")  # the same cluster reaches the pool


def test_a_volume_never_created_is_expunged_without_a_step(cloud: VolumeCloud) -> None:
    blank = Volume.allocate(name="blank", account="alice", zone_id=offering_zone(cloud),
                            volume_type=VolumeType.DATADISK, size_bytes=GIB)
    cloud.app.save(blank)
    kept = cloud.command(DeleteVolumeCommand(volume_id=blank.id, expunge=False))
    assert kept["operation_id"] is None and cloud.get(blank.id).state is VolumeState.DESTROY
    deleted = cloud.command(DeleteVolumeCommand(volume_id=blank.id))
    assert deleted == {"operation_id": None, "volume_id": str(blank.id),
                       "state": VolumeState.EXPUNGED.value}
    assert cloud.get(blank.id).state is VolumeState.EXPUNGED
    assert cloud.dispatched() == []


def test_a_destroyed_volume_keeps_its_storage_until_expunged(cloud: VolumeCloud) -> None:
    volume = ready_volume(cloud)
    kept = cloud.command(DeleteVolumeCommand(volume_id=volume.id, expunge=False))
    assert kept["operation_id"] is None and cloud.dispatched() == []
    assert cloud.get(volume.id).state is VolumeState.DESTROY
    assert claimed_on(cloud, volume.id) == {"primary-a": 20 * GIB}
    deleted = cloud.command(DeleteVolumeCommand(volume_id=volume.id))
    cloud.run()
    assert cloud.op(deleted).state is OperationState.SUCCEEDED
    assert cloud.get(volume.id).state is VolumeState.EXPUNGED
    assert claimed_on(cloud, volume.id) == {} and volume.path not in cloud.volumes


def test_deletes_of_attached_root_busy_or_unknown_volumes_are_refused(
        cloud: VolumeCloud) -> None:
    vm, volume = attached_volume(cloud)
    assert vm.root_volume_id is not None
    refused(cloud, DeleteVolumeCommand(volume_id=volume.id), "detach it first")
    refused(cloud, DeleteVolumeCommand(volume_id=vm.root_volume_id), "ROOT")
    refused(cloud, DeleteVolumeCommand(volume_id=uuid4()), "no volume")
    other = ready_volume(cloud)
    cloud.command(ResizeVolumeCommand(volume_id=other.id, size_bytes=30 * GIB))
    refused(cloud, DeleteVolumeCommand(volume_id=other.id), "busy|Resizing")
    assert cloud.get(volume.id).state is VolumeState.READY


def test_a_failed_delete_keeps_the_claim_and_the_volume_destroyed(cloud: VolumeCloud) -> None:
    volume = ready_volume(cloud)
    cloud.fail["storage.delete_volume"] = 99
    deleted = cloud.command(DeleteVolumeCommand(volume_id=volume.id))
    cloud.run()
    op = cloud.op(deleted)
    assert op.state is OperationState.FAILED
    assert op.failure is not None and "storage.delete_volume broke" in op.failure.message
    failed = cloud.get(volume.id)
    assert failed.state is VolumeState.DESTROY
    assert "storage.delete_volume" in failed.last_error
    assert claimed_on(cloud, volume.id) == {"primary-a": 20 * GIB}
    assert volume.path in cloud.volumes
    cloud.fail.clear()  # a later delete tries again
    again = cloud.command(DeleteVolumeCommand(volume_id=volume.id))
    cloud.run()
    assert cloud.op(again).state is OperationState.SUCCEEDED
    assert cloud.get(volume.id).state is VolumeState.EXPUNGED
    assert claimed_on(cloud, volume.id) == {} and volume.path not in cloud.volumes


@pytest.mark.parametrize("step_ok", [True, False])
def test_a_cancelled_delete_records_what_the_storage_did(cloud: VolumeCloud,
                                                         step_ok: bool) -> None:
    volume = ready_volume(cloud)
    deleted = cloud.command(DeleteVolumeCommand(volume_id=volume.id))
    step = cloud.run_until("storage.delete_volume")
    cloud.engine.cancel(UUID(deleted["operation_id"]), "no", idempotency_key="cancel-del")
    if not step_ok:
        cloud.fail["storage.delete_volume"] = 1
    cloud.engine.apply_outcomes([cloud.answer(step)])
    cloud.run()
    assert cloud.op(deleted).is_finished
    after = cloud.get(volume.id)
    if step_ok:  # the storage is gone: a delete cannot be undone
        assert after.state is VolumeState.EXPUNGED and claimed_on(cloud, volume.id) == {}
    else:
        assert after.state is VolumeState.DESTROY
        assert claimed_on(cloud, volume.id) == {"primary-a": 20 * GIB}
        assert volume.path in cloud.volumes


# --------------------------------------------------------------------------- migrate


def test_a_detached_volume_moves_to_a_pool_of_another_cluster(cloud: VolumeCloud) -> None:
    volume = ready_volume(cloud)
    target = pool_named(cloud, "primary-b")
    moved = cloud.command(MigrateVolumeCommand(volume_id=volume.id, pool_id=target.id))
    # the destination is claimed, and the volume Migrating, when the command is taken
    migrating = cloud.get(volume.id)
    assert (migrating.state, migrating.destination_pool_id) == (VolumeState.MIGRATING,
                                                                target.id)
    assert claimed_on(cloud, volume.id) == {"primary-a": 20 * GIB, "primary-b": 20 * GIB}
    since = len(cloud.seen)
    cloud.run()
    assert cloud.op(moved).state is OperationState.SUCCEEDED
    assert cloud.kinds(since) == ["storage.create_pool", "storage.migrate_volume"]
    [pool] = sent(cloud, "storage.create_pool", CreatePool, since)
    [move] = sent(cloud, "storage.migrate_volume", MigrateVolume, since)
    assert (host_name(cloud, pool.host_uri), pool.pool) == ("kvm-b1", "primary-b")
    name = f"{volume.id}.qcow2"
    assert (host_name(cloud, move.source.host_uri), move.source.pool, move.source.name) == \
        ("kvm-a1", "primary-a", name)
    assert (host_name(cloud, move.target.host_uri), move.target.pool, move.target.name) == \
        ("kvm-b1", "primary-b", name)
    after = cloud.get(volume.id)
    assert (after.state, after.pool_id, after.path) == \
        (VolumeState.READY, target.id, f"/pools/primary-b/{name}")
    assert cloud.get(after.host_id).name == "kvm-b1"
    assert claimed_on(cloud, volume.id) == {"primary-b": 20 * GIB}
    assert after.path in cloud.volumes and volume.path not in cloud.volumes

    # the volume is now found where it moved: a delete runs on the destination's host
    deleted = cloud.command(DeleteVolumeCommand(volume_id=volume.id))
    cloud.run()
    assert cloud.op(deleted).state is OperationState.SUCCEEDED
    [bound] = sent(cloud, "storage.delete_volume", DeleteVolume)
    assert (host_name(cloud, bound.volume.host_uri), bound.volume.pool) == \
        ("kvm-b1", "primary-b")
    assert claimed_on(cloud, volume.id) == {} and not cloud.volumes & {after.path, volume.path}


def test_a_stopped_vm_starts_on_its_disks_new_path(cloud: VolumeCloud) -> None:
    vm, data = attached_volume(cloud)
    assert vm.root_volume_id is not None
    root: Volume = cloud.get(vm.root_volume_id)
    target = zone_pool(cloud, "primary-z")
    refused(cloud, MigrateVolumeCommand(volume_id=data.id, pool_id=target.id),
            "Running: stop the VM")
    cloud.command(StopVm(vm_id=vm.id))
    cloud.run()
    refused(cloud, MigrateVolumeCommand(volume_id=data.id,
                                        pool_id=pool_named(cloud, "primary-b").id),
            "not reachable from host kvm-a1 of vm web-1")
    for volume in (root, data):
        moved = cloud.command(MigrateVolumeCommand(volume_id=volume.id, pool_id=target.id))
        assert set(cloud.op(moved).entity_ids) == {volume.id, vm.id}
        cloud.run()
        assert cloud.op(moved).state is OperationState.SUCCEEDED
    [_, move] = sent(cloud, "storage.migrate_volume", MigrateVolume)
    assert host_name(cloud, move.target.host_uri) == "kvm-a1"  # the VM's host reaches it
    root, data = cloud.get(root.id), cloud.get(data.id)
    assert {root.pool_id, data.pool_id} == {target.id}
    assert claimed_on(cloud, root.id).keys() == claimed_on(cloud, data.id).keys() == \
        {"primary-z"}
    assert cloud.get(vm.id).disks == vm.disks  # still its disks, at the same slots
    cloud.command(StartVm(vm_id=vm.id))
    cloud.run()
    assert cloud.get(vm.id).state is VmState.RUNNING
    define = sent(cloud, "hypervisor.define", DefineDomain)[-1]
    assert [d.path for d in define.disks] == [root.path, data.path]
    assert all(path.startswith("/pools/primary-z/") for path in (root.path or "",
                                                                  data.path or ""))


def test_bad_migrations_are_refused_and_write_nothing(cloud: VolumeCloud) -> None:
    volume = ready_volume(cloud)
    source = pool_of(cloud, volume)
    refused(cloud, MigrateVolumeCommand(volume_id=volume.id, pool_id=source.id),
            "already on storage pool primary-a")
    small = zone_pool(cloud, "primary-small", capacity_bytes=GIB)
    refused(cloud, MigrateVolumeCommand(volume_id=volume.id, pool_id=small.id), "free")
    elsewhere = zone_pool(cloud, "primary-far", zone_id=uuid4())
    refused(cloud, MigrateVolumeCommand(volume_id=volume.id, pool_id=elsewhere.id),
            "not in the zone")
    refused(cloud, MigrateVolumeCommand(volume_id=uuid4(), pool_id=small.id), "no volume")
    refused(cloud, MigrateVolumeCommand(volume_id=volume.id, pool_id=uuid4()),
            "no storage pool")
    cloud.command(ResizeVolumeCommand(volume_id=volume.id, size_bytes=30 * GIB))
    refused(cloud, MigrateVolumeCommand(volume_id=volume.id,
                                        pool_id=pool_named(cloud, "primary-b").id), "busy")
    assert claimed_on(cloud, volume.id) == {"primary-a": 30 * GIB}


@pytest.mark.parametrize("kind", ["storage.create_pool", "storage.migrate_volume"])
def test_a_failed_migration_leaves_the_volume_where_it_was(cloud: VolumeCloud,
                                                           kind: str) -> None:
    volume = ready_volume(cloud)
    cloud.fail[kind] = 99
    moved = cloud.command(MigrateVolumeCommand(volume_id=volume.id,
                                               pool_id=pool_named(cloud, "primary-b").id))
    cloud.run()
    assert cloud.op(moved).state is OperationState.FAILED
    after = cloud.get(volume.id)
    assert (after.state, after.pool_id, after.path, after.host_id, after.destination_pool_id) \
        == (VolumeState.READY, volume.pool_id, volume.path, volume.host_id, None)
    assert kind in after.last_error
    assert claimed_on(cloud, volume.id) == {"primary-a": 20 * GIB}
    assert volume.path in cloud.volumes and cloud.migrations == []


def test_a_cancelled_migration_moves_the_volume_back(cloud: VolumeCloud) -> None:
    volume = ready_volume(cloud)
    moved = cloud.command(MigrateVolumeCommand(volume_id=volume.id,
                                               pool_id=pool_named(cloud, "primary-b").id))
    step = cloud.run_until("storage.migrate_volume")
    cloud.engine.cancel(UUID(moved["operation_id"]), "no", idempotency_key="cancel-move")
    cloud.engine.apply_outcomes([cloud.answer(step)])
    cloud.run()
    assert cloud.op(moved).state is OperationState.ROLLED_BACK
    assert cloud.kinds()[-1] == "undo storage.migrate_volume"
    there, back = cloud.migrations
    assert back == (there[1], there[0])
    after = cloud.get(volume.id)
    assert (after.state, after.pool_id, after.path, after.host_id) == \
        (VolumeState.READY, volume.pool_id, volume.path, volume.host_id)
    assert claimed_on(cloud, volume.id) == {"primary-a": 20 * GIB}
    assert volume.path in cloud.volumes
    assert f"/pools/primary-b/{volume.id}.qcow2" not in cloud.volumes
