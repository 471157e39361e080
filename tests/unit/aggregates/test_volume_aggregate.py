"""Volume: every (state, action) pair against an independent transition table."""

from collections.abc import Callable
from uuid import uuid4

import pytest

from aggregates.base import audit_context
from aggregates.errors import DomainRuleError, InvalidTransitionError, ValidationError
from aggregates.volume import Volume, VolumeState, VolumeType
from kernel.store.testing import roundtrip

Refused = Callable[..., InvalidTransitionError]
S = VolumeState
GIB = 1 << 30
POOL_A, POOL_B, VM = uuid4(), uuid4(), uuid4()

# action -> (call, refused action text, states it may start from, state it lands in)
ACTIONS: dict[str, tuple[Callable[[Volume], None], str, set[VolumeState], VolumeState]] = {
    "create": (lambda v: v.create(POOL_A), "create", {S.ALLOCATED}, S.CREATING),
    "created": (lambda v: v.created("/pool/v1"), "complete creation", {S.CREATING}, S.READY),
    "creation_failed": (lambda v: v.creation_failed("x"), "fail creation", {S.CREATING},
                        S.ALLOCATED),
    "attach": (lambda v: v.attach(VM, 1), "attach", {S.READY}, S.ATTACHING),
    "attached": (lambda v: v.attached(), "complete attach", {S.ATTACHING}, S.READY),
    "attach_failed": (lambda v: v.attach_failed("x"), "fail attach", {S.ATTACHING}, S.READY),
    "resize": (lambda v: v.resize(v.size_bytes + GIB), "resize", {S.READY}, S.RESIZING),
    "resized": (lambda v: v.resized(), "complete resize", {S.RESIZING}, S.READY),
    "resize_failed": (lambda v: v.resize_failed("x"), "fail resize", {S.RESIZING}, S.READY),
    "migrate": (lambda v: v.migrate(POOL_B), "migrate", {S.READY}, S.MIGRATING),
    "migrated": (lambda v: v.migrated("/b/v1"), "complete migration", {S.MIGRATING}, S.READY),
    "migration_failed": (lambda v: v.migration_failed("x"), "fail migration", {S.MIGRATING},
                         S.READY),
    "take_snapshot": (lambda v: v.take_snapshot(uuid4()), "take a snapshot", {S.READY},
                      S.SNAPSHOTTING),
    "snapshot_taken": (lambda v: v.snapshot_taken(), "complete snapshot", {S.SNAPSHOTTING},
                       S.READY),
    "snapshot_failed": (lambda v: v.snapshot_failed("x"), "fail snapshot", {S.SNAPSHOTTING},
                        S.READY),
    "destroy": (lambda v: v.destroy(), "destroy", {S.ALLOCATED, S.READY}, S.DESTROY),
    "expunge": (lambda v: v.expunge(), "expunge", {S.DESTROY}, S.EXPUNGING),
    "expunged": (lambda v: v.expunged(), "complete expunge", {S.EXPUNGING}, S.EXPUNGED),
    "expunge_failed": (lambda v: v.expunge_failed("x"), "fail expunge", {S.EXPUNGING},
                       S.DESTROY),
}

PATHS: dict[VolumeState, list[str]] = {
    S.ALLOCATED: [],
    S.CREATING: ["create"],
    S.READY: ["create", "created"],
    S.ATTACHING: ["create", "created", "attach"],
    S.RESIZING: ["create", "created", "resize"],
    S.MIGRATING: ["create", "created", "migrate"],
    S.SNAPSHOTTING: ["create", "created", "take_snapshot"],
    S.DESTROY: ["create", "created", "destroy"],
    S.EXPUNGING: ["create", "created", "destroy", "expunge"],
    S.EXPUNGED: ["create", "created", "destroy", "expunge", "expunged"],
}


def make_volume(volume_type: VolumeType = VolumeType.DATADISK) -> Volume:
    """A freshly allocated 10 GiB volume."""
    return Volume.allocate(name="data-1", account="acme", zone_id=uuid4(),
                           volume_type=volume_type, size_bytes=10 * GIB)


def volume_in(state: VolumeState) -> Volume:
    """A data disk driven into `state` through allowed transitions."""
    volume = make_volume()
    for name in PATHS[state]:
        ACTIONS[name][0](volume)
    assert volume.state is state
    return volume


@pytest.mark.parametrize("state", list(VolumeState))
@pytest.mark.parametrize("action", [*ACTIONS, "recover", "detach"])
def test_transition_table(state: VolumeState, action: str, refused: Refused) -> None:
    volume = volume_in(state)
    if action == "recover":
        call, text, sources, target = Volume.recover, "recover", {S.DESTROY}, S.READY
    elif action == "detach":
        call, text, sources, target = Volume.detach, "detach", {S.READY}, S.READY
    else:
        call, text, sources, target = ACTIONS[action]
    if state not in sources:
        refused(volume, lambda: call(volume), text)
    elif action == "detach":
        with pytest.raises(DomainRuleError):
            call(volume)
    else:
        call(volume)
        assert volume.state is target


def test_allocate_validation() -> None:
    with pytest.raises(ValidationError):
        Volume.allocate(name="v", account="a", zone_id=uuid4(),
                        volume_type=VolumeType.ROOT, size_bytes=0)
    with pytest.raises(ValidationError):
        Volume.allocate(name="", account="a", zone_id=uuid4(),
                        volume_type=VolumeType.ROOT, size_bytes=1)
    with pytest.raises(ValidationError):
        Volume.allocate(name="v", account="a", zone_id=uuid4(),
                        volume_type=VolumeType.DATADISK, size_bytes=1, template_id=uuid4())
    chosen = uuid4()
    volume = Volume.allocate(name="root", account="a", zone_id=uuid4(), id=chosen,
                             volume_type=VolumeType.ROOT, size_bytes=1, template_id=uuid4())
    assert volume.id == chosen


def test_create_failure_returns_to_allocated_and_recover_goes_back() -> None:
    volume = volume_in(S.CREATING)
    volume.creation_failed("pool full")
    assert volume.pool_id is None and volume.last_error == "pool full"
    volume.destroy()
    volume.recover()
    assert volume.state is S.ALLOCATED
    ready = volume_in(S.DESTROY)
    ready.recover()
    assert ready.state is S.READY and ready.pool_id == POOL_A


def test_attach_detach() -> None:
    volume = volume_in(S.READY)
    for bad in (0, 3, -1):
        with pytest.raises(ValidationError):
            volume.attach(VM, bad)
    volume.attach(VM, 2)
    assert volume.is_attached and volume.device_id == 2
    volume.attached()
    with pytest.raises(DomainRuleError):
        volume.attach(uuid4(), 4)
    with pytest.raises(DomainRuleError):
        volume.destroy()
    volume.detach()
    assert (volume.vm_id, volume.device_id) == (None, None)
    volume.attach(VM, 4)
    volume.attach_failed("domain gone")
    assert not volume.is_attached and volume.state is S.READY
    assert roundtrip(volume) == volume


def test_root_attaches_as_device_zero() -> None:
    volume = make_volume(VolumeType.ROOT)
    volume.create(POOL_A)
    volume.created("/p/root")
    with pytest.raises(ValidationError):
        volume.attach(VM, 1)
    volume.attach(VM, 0)
    volume.attached()
    assert volume.device_id == 0


def test_resize_only_grows() -> None:
    volume = volume_in(S.READY)
    with pytest.raises(DomainRuleError):
        volume.resize(10 * GIB)
    with pytest.raises(DomainRuleError):
        volume.resize(5 * GIB)
    volume.resize(20 * GIB)
    assert volume.requested_size_bytes == 20 * GIB and volume.size_bytes == 10 * GIB
    volume.resize_failed("no room")
    assert volume.size_bytes == 10 * GIB and volume.requested_size_bytes is None
    volume.resize(30 * GIB)
    volume.resized()
    assert volume.size_bytes == 30 * GIB
    assert roundtrip(volume) == volume


def test_migrate_moves_pool_and_path() -> None:
    volume = volume_in(S.READY)
    with pytest.raises(DomainRuleError):
        volume.migrate(POOL_A)
    volume.migrate(POOL_B)
    volume.migrated("/b/data-1")
    assert (volume.pool_id, volume.path, volume.destination_pool_id) == (
        POOL_B, "/b/data-1", None)
    volume.migrate(POOL_A)
    volume.migration_failed("copy failed")
    assert volume.pool_id == POOL_B


def test_audit_metadata_lands_on_events() -> None:
    with audit_context("carol", None, "resize-1"):
        volume = volume_in(S.READY)
        volume.resize(11 * GIB)
    assert {(e.actor, e.causation_id) for e in volume.pending_events} == {("carol", "resize-1")}
