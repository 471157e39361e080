"""Snapshot and Backup life cycles."""

from collections.abc import Callable
from uuid import uuid4

import pytest

from aggregates.backup import Backup, BackupState
from aggregates.base import audit_context
from aggregates.errors import InvalidTransitionError, ValidationError
from aggregates.snapshot import Snapshot, SnapshotState
from kernel.store.testing import roundtrip

Refused = Callable[..., InvalidTransitionError]
GIB = 1 << 30


def make_snapshot() -> Snapshot:
    """A snapshot of a 10 GiB volume."""
    return Snapshot.allocate(name="snap-1", account="acme", zone_id=uuid4(), volume_id=uuid4(),
                             volume_size_bytes=10 * GIB)


def make_backup(volumes: int = 2) -> Backup:
    """A backup of a VM's volumes."""
    return Backup.allocate(name="bk-1", account="acme", zone_id=uuid4(), vm_id=uuid4(),
                           volume_ids=tuple(uuid4() for _ in range(volumes)))


def test_snapshot_happy_path(refused: Refused) -> None:
    snapshot = make_snapshot()
    refused(snapshot, lambda: snapshot.back_up(uuid4()), "back up")
    snapshot.create()
    refused(snapshot, snapshot.destroy, "destroy")
    snapshot.created("/pool/snap-1")
    store = uuid4()
    snapshot.back_up(store)
    refused(snapshot, lambda: snapshot.created("/x"), "complete creation")
    snapshot.backed_up("snapshots/1/snap-1.qcow2", 3 * GIB)
    assert snapshot.state is SnapshotState.BACKED_UP
    assert (snapshot.image_store_id, snapshot.size_bytes) == (store, 3 * GIB)
    snapshot.destroy()
    refused(snapshot, snapshot.destroy, "destroy")
    assert roundtrip(snapshot) == snapshot


def test_snapshot_failure_and_validation(refused: Refused) -> None:
    snapshot = make_snapshot()
    refused(snapshot, lambda: snapshot.fail("x"), "fail")
    snapshot.create()
    with pytest.raises(ValidationError):
        snapshot.created("")
    snapshot.fail("qemu-img failed")
    assert snapshot.state is SnapshotState.ERROR and snapshot.last_error == "qemu-img failed"
    snapshot.destroy()
    with pytest.raises(ValidationError):
        Snapshot.allocate(name="s", account="a", zone_id=uuid4(), volume_id=uuid4(),
                          volume_size_bytes=0)


def test_backup_happy_path_and_restore(refused: Refused) -> None:
    backup = make_backup()
    refused(backup, backup.restore, "restore")
    backup.back_up()
    refused(backup, backup.remove, "remove")
    backup.backed_up("nas:backup/42", 5 * GIB)
    assert backup.state is BackupState.BACKED_UP and backup.external_id == "nas:backup/42"
    with pytest.raises(ValidationError):
        backup.restore(uuid4())
    backup.restore(backup.volume_ids[1])
    assert backup.restoring_volume_id == backup.volume_ids[1]
    refused(backup, backup.restore, "restore")
    backup.restore_failed("vm running")
    assert backup.state is BackupState.BACKED_UP and backup.restoring_volume_id is None
    backup.restore()
    backup.restored()
    backup.remove()
    refused(backup, backup.remove, "remove")
    assert roundtrip(backup) == backup


def test_backup_failure_and_validation(refused: Refused) -> None:
    backup = make_backup()
    backup.back_up()
    backup.backup_failed("provider down")
    assert backup.state is BackupState.FAILED
    refused(backup, backup.back_up, "back up")
    backup.remove()
    with pytest.raises(ValidationError):
        make_backup(volumes=0)
    same = uuid4()
    with pytest.raises(ValidationError):
        Backup.allocate(name="b", account="a", zone_id=uuid4(), vm_id=uuid4(),
                        volume_ids=(same, same))


def test_audit_metadata_lands_on_events() -> None:
    with audit_context("scheduler", None, "policy-1"):
        snapshot = make_snapshot()
        snapshot.create()
        backup = make_backup()
        backup.back_up()
    events = [*snapshot.pending_events, *backup.pending_events]
    assert {(e.actor, e.causation_id) for e in events} == {("scheduler", "policy-1")}
