"""TenantView over the events a real lifecycle writes: the platform's in-memory engine runs
deploy, volume create/attach/detach, snapshot, stop, start and destroy (with the subsystems
answered by the operation tests' harness), and the public event feed carries the events to
the view as the relay would."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
import pytest

from kernel.cloud.vms import DeployVm, DestroyVm, StartVm, StopVm
from kernel.cloud.volume_copies import SnapshotVolumeCommand
from kernel.cloud.volumes import AttachVolumeCommand, DetachVolumeCommand
from kernel.contracts.events import ORIGINATOR_ID, TOPIC, PublicEvent
from kernel.event_feed import EventFeed
from services.framework.tenant_view import TenantView
from tests.unit.operations._volume_cloud import VolumeCloud, create_volume, make_cloud


class Event:
    """A public event as a service receives it (the framework's ServiceEvent's fields)."""

    def __init__(self, public: PublicEvent) -> None:
        self.position, self.subject = public.position, public.subject
        self.topic = public.headers[TOPIC]
        self.originator_id = UUID(public.headers[ORIGINATOR_ID])
        self.payload = public.payload

    def data(self) -> dict[str, Any]:
        return msgspec.json.decode(self.payload)  # type: ignore[no-any-return]


def events(cloud: VolumeCloud, after: int = 0) -> list[Event]:
    return [Event(e) for e in EventFeed(cloud.app).read(after, 100_000)]


def wanted(view: TenantView, found: list[Event]) -> list[Event]:
    """Only the events of the view's subjects (what its consumer's filters let through)."""
    prefixes = [s.removesuffix(">") for s in view.subjects() if s.endswith(">")]
    exact = {s for s in view.subjects() if not s.endswith(">")}
    return [e for e in found if e.subject in exact or any(e.subject.startswith(p)
                                                          for p in prefixes)]


@pytest.fixture
def cloud() -> Iterator[VolumeCloud]:
    c = make_cloud()
    yield c
    c.app.close()


@pytest.fixture
def view(tmp_path: Path) -> Iterator[TenantView]:
    v = TenantView(tmp_path / "view.sqlite")
    yield v
    v.close()


def feed(view: TenantView, cloud: VolumeCloud) -> None:
    for event in wanted(view, events(cloud, view.position)):
        view.apply(event)


def deploy(cloud: VolumeCloud, name: str, account: str) -> dict[str, Any]:
    template = next(t for t in cloud.ids("template.Registered")
                    if cloud.get(t).state.value == "Ready")
    offering = next(o for o in cloud.ids("service_offering.Created")
                    if cloud.get(o).name == "small")
    return cloud.command(DeployVm(name=name, account=account, zone_id=cloud.get(template).zone_id,
                                  service_offering_id=offering, template_id=template))


def test_the_view_follows_a_whole_lifecycle_and_agrees_with_the_platform(
        cloud: VolumeCloud, view: TenantView) -> None:
    feed(view, cloud)
    assert [z.name for z in view.zones()] == ["zone-1"]
    assert {o.name for o in view.offerings("service")} == {"small", "large-ha"}
    assert {o.name for o in view.offerings("disk")} == {"data-20g", "data-custom"}
    ready = [t for t in view.templates() if t.state == "Ready"]
    assert [t.name for t in ready] == ["empty-qcow2"]

    accepted = deploy(cloud, "web-1", "alice")
    vm_id = UUID(accepted["vm_id"])
    feed(view, cloud)
    row = view.vm(vm_id, "alice")
    assert row is not None and row.state == "Allocated" and row.name == "web-1"
    op = view.operation(UUID(accepted["operation_id"]))
    assert op is not None and op.kind == "vm.deploy" and not op.finished
    assert str(vm_id) in op.entity_ids

    cloud.run()
    feed(view, cloud)
    vm = cloud.get(vm_id)
    row = view.vm(vm_id, "alice")
    assert row is not None and row.state == vm.state.value == "Running"
    assert row.host_id == str(vm.host_id) and row.root_volume_id == str(vm.root_volume_id)
    op = view.operation(UUID(accepted["operation_id"]))
    assert op is not None and op.status == "Succeeded"
    [root] = view.vm_volumes(vm_id)
    assert root.volume_type == "ROOT" and root.device_id == 0 and root.state == "Ready"

    created = create_volume(cloud)
    volume_id = UUID(created["volume_id"])
    cloud.run()
    cloud.command(AttachVolumeCommand(volume_id=volume_id, vm_id=vm_id))
    cloud.run()
    feed(view, cloud)
    volume = view.volume(volume_id, "alice")
    assert volume is not None and volume.vm_id == str(vm_id) and volume.device_id == 1
    assert volume.state == cloud.get(volume_id).state.value == "Ready"
    assert volume.size_bytes == cloud.get(volume_id).size_bytes
    assert [v.device_id for v in view.vm_volumes(vm_id)] == [0, 1]

    cloud.command(DetachVolumeCommand(volume_id=volume_id))
    cloud.run()
    snap = cloud.command(SnapshotVolumeCommand(volume_id=volume_id))
    cloud.run()
    feed(view, cloud)
    volume = view.volume(volume_id, "alice")
    assert volume is not None and volume.vm_id is None and volume.device_id is None
    snapshot = view.snapshot(UUID(snap["snapshot_id"]), "alice")
    platform_snapshot = cloud.get(UUID(snap["snapshot_id"]))
    assert snapshot is not None and snapshot.volume_id == str(volume_id)
    assert snapshot.state == platform_snapshot.state.value

    cloud.command(StopVm(vm_id=vm_id))
    feed(view, cloud)
    assert view.vm(vm_id, "alice").state == "Stopping"  # type: ignore[union-attr]
    cloud.run()
    feed(view, cloud)
    row = view.vm(vm_id, "alice")
    assert row is not None and row.state == "Stopped" and row.host_id is None

    cloud.command(StartVm(vm_id=vm_id))
    cloud.run()
    cloud.command(DestroyVm(vm_id=vm_id))
    cloud.run()
    feed(view, cloud)
    assert cloud.get(vm_id).state.value == "Expunged"
    assert view.vm(vm_id, "alice").state == "Expunged"  # type: ignore[union-attr]
    assert view.vms("alice") == []  # expunged VMs are gone from lists
    assert view.volume(root.id, "alice").state == "Expunged"  # type: ignore[union-attr]
    assert view.position == max(e.position for e in wanted(view, events(cloud)))


def test_an_account_sees_only_its_own_resources(cloud: VolumeCloud, view: TenantView) -> None:
    alice = UUID(deploy(cloud, "web-a", "alice")["vm_id"])
    bob = UUID(deploy(cloud, "web-b", "bob")["vm_id"])
    cloud.run()
    feed(view, cloud)
    assert [v.id for v in view.vms("alice")] == [alice]
    assert [v.id for v in view.vms("bob")] == [bob]
    assert view.vm(bob, "alice") is None and view.vm(bob, "bob") is not None
    assert {v.account for v in view.volumes("alice")} == {"alice"}
    assert len(view.vms(None)) == 2


def test_a_redelivered_event_is_applied_once(cloud: VolumeCloud, view: TenantView) -> None:
    accepted = deploy(cloud, "web-1", "alice")
    cloud.run()
    everything = wanted(view, events(cloud))
    for event in everything:
        view.apply(event)
    head = view.position
    vm_id = UUID(accepted["vm_id"])
    before = view.vm(vm_id, "alice")
    # an older event again (a redelivery after a crash before its ack): nothing changes
    allocated = next(e for e in everything if e.topic == "vm.Allocated")
    view.apply(allocated)
    assert view.position == head and view.vm(vm_id, "alice") == before
    assert before is not None and before.state == "Running"
    for event in everything:
        view.apply(event)
    assert view.position == head and view.vm(vm_id, "alice") == before
    # the newest event twice: applied once
    cloud.command(StopVm(vm_id=vm_id))
    stop = next(e for e in wanted(view, events(cloud, head)) if e.topic == "vm.StopRequested")
    view.apply(stop)
    after = view.vm(vm_id, "alice")
    assert after is not None and after.state == "Stopping"
    view.apply(stop)
    assert view.position == stop.position and view.vm(vm_id, "alice") == after


def test_the_view_survives_a_reopen(cloud: VolumeCloud, tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite"
    view = TenantView(path)
    deploy(cloud, "web-1", "alice")
    cloud.run()
    feed(view, cloud)
    head = view.position
    view.close()
    again = TenantView(path)
    try:
        assert again.position == head and len(again.vms("alice")) == 1
    finally:
        again.close()
