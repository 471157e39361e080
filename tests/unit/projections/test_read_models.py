"""The hosts, networks, volumes, snapshots, templates and audit read models against the
aggregates' own state, on a scratch (in-memory SQLite) log and SQLite views."""

import random
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from aggregates.base import SYSTEM_ACTOR, audit_context
from aggregates.host import HostStatus
from aggregates.network import Network
from kernel.settings import Settings
from kernel.store.application import KernelApplication
from kernel.store.testing import scratch_application
from projections.audit import AuditModel
from projections.catalog import MODELS
from projections.fleet import HostModel
from projections.models import RowModel
from projections.networks import NetworkModel, assignable_addresses
from projections.runner import ProjectionRunner
from projections.storage import SnapshotModel, TemplateModel, VolumeModel
from projections.views import RowView, open_view

from .scenario import scripted_run
from .story import expectations, expected_host, full_story, new_hosts

ENTITY_MODELS = ("hosts", "networks", "volumes", "snapshots", "templates")


@pytest.fixture
def app() -> Iterator[KernelApplication]:
    app = scratch_application()
    yield app
    app.close()


@pytest.fixture
def views(tmp_path: Path) -> Iterator[dict[str, RowView]]:
    settings = Settings(data_dir=tmp_path / "data", store="sqlite")
    opened = {name: open_view(model, settings, create_table=True)
              for name, model in MODELS.items()}
    yield opened
    for view in opened.values():
        view.close()


def run(app: KernelApplication, view: RowView, page_size: int = 1000) -> ProjectionRunner:
    runner = ProjectionRunner(app, view, page_size=page_size)
    runner.run_once()
    assert runner.lag().positions == 0
    return runner


# --------------------------------------------------------------------------- entity rows


@pytest.mark.parametrize("page_size", [1, 7, 1000])
def test_every_entity_row_equals_its_aggregate(
        app: KernelApplication, views: dict[str, RowView], page_size: int) -> None:
    # page_size 1 folds every event into a row read back from the file (JSON columns too).
    story = full_story(app)
    scripted_run(app)  # VM and operation events the entity models must skip
    for name, expected in expectations(story).items():
        run(app, views[name], page_size)
        assert len(expected) >= 4
        assert len(views[name].all_rows()) == len(expected), name
        for agg_id, want in expected:
            assert views[name].get(agg_id) == want, name


def test_host_capacity_follows_claims_and_releases(
        app: KernelApplication, views: dict[str, RowView]) -> None:
    story = full_story(app)
    busy, full, down, maint = story.hosts
    run(app, views["hosts"], page_size=3)
    row = views["hosts"].get(busy.id)
    assert row is not None
    # 16 cores x 2.0; claims of 1..4 cores with 2 and 4 released
    assert (row["total_cpu_cores"], row["used_cpu_cores"], row["free_cpu_cores"]) == (32, 4, 28)
    assert (row["used_memory_mib"], row["claim_count"]) == (1024 + 3072, 2)
    full_row = views["hosts"].get(full.id)
    assert full_row is not None
    # 12 x 1.3 = 15.6 -> 15 cores; 49152 x 1.1 -> 54067 MiB, all claimed
    assert (full_row["total_cpu_cores"], full_row["free_cpu_cores"]) == (15, 0)
    assert (full_row["total_memory_mib"], full_row["free_memory_mib"]) == (54067, 0)
    view = views["hosts"]
    assert [r["id"] for r in view.list(status="Down").rows] == [down.id]
    assert [r["id"] for r in view.list(resource_state="Maintenance").rows] == [maint.id]
    assert {r["id"] for r in view.list(cluster_id=busy.cluster_id).rows} == {busy.id, full.id}
    assert len(view.list(zone_id=busy.zone_id, status="Up").rows) == 3
    with pytest.raises(ValueError, match="cannot filter"):
        view.list(name=busy.name)


def test_a_release_folds_into_the_row_read_back_from_the_file(
        app: KernelApplication, views: dict[str, RowView]) -> None:
    host = new_hosts(uuid4())[0]
    claim = uuid4()
    host.claim(claim, uuid4(), 5, 5000)
    app.save(host)
    runner = run(app, views["hosts"])
    assert (views["hosts"].get(host.id) or {})["used_cpu_cores"] == 5
    host.release(claim)
    app.save(host)
    runner.run_once()  # the claim to give back comes from the stored JSON
    row = views["hosts"].get(host.id)
    assert row == expected_host(host)
    assert row is not None and (row["used_cpu_cores"], row["claims"]) == (0, {})


def test_the_host_fold_never_changes_the_row_it_is_given(app: KernelApplication) -> None:
    host = new_hosts(uuid4())[0]
    claim = uuid4()
    host.claim(claim, uuid4(), 1, 512)
    host.release(claim)
    events: list[Any] = list(host.collect_events())
    registered, claimed, released = events
    row = HostModel.fold(None, registered, 1)
    assert row is not None
    after_claim = HostModel.fold(row, claimed, 2)
    assert row["claims"] == {} and row["used_cpu_cores"] == 0
    assert after_claim is not None and after_claim["claim_count"] == 1
    after_release = HostModel.fold(after_claim, released, 3)
    assert after_claim["claims"] == {str(claim): [str(claimed.vm_id), 1, 512]}
    assert after_release is not None and after_release["claims"] == {}


def test_network_rows_count_addresses_like_the_aggregate(
        app: KernelApplication, views: dict[str, RowView]) -> None:
    story = full_story(app)
    isolated, shared, tiny, failed = story.networks
    run(app, views["networks"])
    view = views["networks"]
    row = view.get(isolated.id)
    assert row is not None
    # .1-.254 usable; .1-.20 and .250-.254 reserved (the gateway inside): 229 assignable
    assert (row["ip_total"], row["ip_used"], row["ip_free"], row["vlan"]) == (229, 2, 227, 1042)
    tiny_row = view.get(tiny.id)  # a /30 whose gateway takes one of its two addresses
    assert tiny_row is not None
    assert (tiny_row["ip_total"], tiny_row["ip_used"], tiny_row["state"]) == (1, 0, "Destroyed")
    assert (view.get(shared.id) or {})["vlan"] == 300  # a Shared network keeps its VLAN
    failed_row = view.get(failed.id)
    assert failed_row is not None
    assert (failed_row["state"], failed_row["vlan"], failed_row["last_error"]) == \
        ("Allocated", None, "switch said no")
    assert [r["id"] for r in view.list(type="Shared").rows] == [shared.id]
    assert [r["id"] for r in view.list(state="Shutdown").rows] == [shared.id]
    assert len(view.list(zone_id=isolated.zone_id).rows) == 4


def test_assignable_addresses_match_the_aggregate_on_random_networks() -> None:
    rnd = random.Random(4)
    for _ in range(200):
        prefix = rnd.randint(22, 30)
        net = IPv4Network(f"10.{rnd.randint(0, 255)}.{rnd.randint(0, 3) * 4}.0/{prefix}",
                          strict=False)
        first, last = int(net.network_address), int(net.broadcast_address)
        gateway = str(IPv4Address(rnd.randint(first + 1, last - 1)))
        ranges = []
        for _ in range(rnd.randint(0, 4)):
            a, b = sorted(rnd.randint(first, last) for _ in range(2))
            ranges.append((str(IPv4Address(a)), str(IPv4Address(b))))
        network = Network.create(name="n", zone_id=uuid4(), cidr=str(net), gateway=gateway,
                                 reserved_ranges=tuple(ranges))
        assert assignable_addresses(str(net), gateway, tuple(ranges)) == \
            network.free_ip_count, (net, gateway, ranges)


def test_storage_filters(app: KernelApplication, views: dict[str, RowView]) -> None:
    story = full_story(app)
    for name in ("volumes", "snapshots", "templates"):
        run(app, views[name], page_size=5)
    volumes, snapshots, templates = (views[n] for n in ("volumes", "snapshots", "templates"))
    root, data, moving, snapping, _, recovered, expunged = story.volumes
    attached = {r["id"] for r in volumes.list(vm_id=root.vm_id).rows}
    assert attached == {root.id, data.id}
    assert {r["id"] for r in volumes.list(pool_id=data.pool_id).rows} == \
        {v.id for v in story.volumes if v.pool_id == data.pool_id}
    assert [r["id"] for r in volumes.list(state="Snapshotting").rows] == [snapping.id]
    assert [r["id"] for r in volumes.list(state="Expunged").rows] == [expunged.id]
    assert [r["id"] for r in volumes.list(type="ROOT").rows] == [root.id]
    assert [r["id"] for r in volumes.list(template_id=root.template_id).rows] == [root.id]
    assert (volumes.get(root.id) or {})["size_bytes"] == 40 << 30
    assert (volumes.get(moving.id) or {})["last_error"] == "busy"
    assert (volumes.get(recovered.id) or {})["state"] == "Allocated"
    of_root = {r["id"] for r in snapshots.list(volume_id=root.id).rows}
    assert of_root == {s.id for s in story.snapshots if s.volume_id == root.id}
    assert len(of_root) == 2
    backed_up = snapshots.list(state="BackedUp").rows
    assert [(r["size_bytes"], r["backup_path"]) for r in backed_up] == \
        [(3 << 30, "snapshots/1")]
    debian, iso, raw, gone = story.templates
    assert [r["id"] for r in templates.list(state="Error").rows] == [raw.id]
    assert [r["id"] for r in templates.list(state="Removed").rows] == [gone.id]
    assert {r["id"] for r in templates.list(state="Ready").rows} == {debian.id, iso.id}
    assert (templates.get(iso.id) or {})["checksum"] == "{MD5}0a0b"
    assert (templates.get(debian.id) or {})["checksum"] == "{SHA-256}ab12"
    assert [r["id"] for r in templates.list(format="ISO").rows] == [iso.id]


# --------------------------------------------------------------------------- audit


def test_audit_index_has_one_row_per_event_of_every_topic(
        app: KernelApplication, views: dict[str, RowView]) -> None:
    story = full_story(app)
    scripted_run(app)
    run(app, views["audit"], page_size=50)
    notifications = app.recorder.select_notifications(start=0, limit=100_000)
    rows = views["audit"].all_rows()
    assert [r["position"] for r in rows] == [n.id for n in notifications]
    assert [(r["originator_id"], r["originator_version"], r["topic"]) for r in rows] == \
        [(n.originator_id, n.originator_version, n.topic) for n in notifications]
    topics = {r["topic"] for r in rows}
    assert {"host.CapacityReleased", "network.IpAllocated", "volume.Migrated",
            "snapshot.BackedUp", "template.Removed", "nic.Reserved", "vm.Allocated",
            "operation.Accepted"} <= topics
    busy = story.hosts[0]
    history = views["audit"].list(originator_id=busy.id).rows
    assert [r["originator_version"] for r in history] == list(range(1, busy.version + 1))
    assert [r["position"] for r in history] == sorted(r["position"] for r in history)


def test_audit_index_filters_by_correlation_and_actor_in_log_order(
        app: KernelApplication, views: dict[str, RowView]) -> None:
    story = full_story(app)
    busy, full = story.hosts[:2]
    operation = uuid4()
    with audit_context(actor="bob", correlation_id=operation, causation_id="command:x"):
        full.change_status(HostStatus.DOWN, "cable")
        app.save(full)
    run(app, views["audit"], page_size=4)
    view = views["audit"]
    caused = view.list(correlation_id=story.correlation_id).rows
    # 4 claims and 2 releases on `busy`, then the claim that filled `full`
    assert [(r["originator_id"], r["topic"]) for r in caused] == \
        [(busy.id, "host.CapacityClaimed")] * 4 + [(busy.id, "host.CapacityReleased")] * 2 + \
        [(full.id, "host.CapacityClaimed")]
    assert {(r["actor"], r["causation_id"]) for r in caused} == {("alice", "command:place:1")}
    bobs = view.list(actor="bob").rows
    assert [(r["originator_id"], r["topic"], r["correlation_id"]) for r in bobs] == \
        [(full.id, "host.StatusChanged", operation)]
    assert view.list(correlation_id=None, actor="alice").rows == []
    system = view.list(actor=SYSTEM_ACTOR, limit=1000).rows
    assert len(system) + len(caused) + len(bobs) == app.recorder.max_notification_id()
    # paging through one entity's events by position
    seen, after = [], None
    while True:
        page = view.list(originator_id=busy.id, limit=2, after=after)
        seen += [r["originator_version"] for r in page.rows]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == list(range(1, busy.version + 1))
    with pytest.raises(ValueError, match="cannot filter by \\['topic'\\]"):
        view.list(topic="host.Registered")


def test_audit_rebuild_equals_live(app: KernelApplication, views: dict[str, RowView]) -> None:
    full_story(app)
    runner = run(app, views["audit"], page_size=9)
    full_story(app)
    runner.run_once()
    live = views["audit"].all_rows()
    assert len(live) == app.recorder.max_notification_id()
    runner.rebuild()
    assert views["audit"].all_rows() == live


# --------------------------------------------------------------------------- interface


def test_every_model_rebuilds_to_what_it_followed_live(
        app: KernelApplication, views: dict[str, RowView]) -> None:
    runners: dict[str, ProjectionRunner] = {}
    for _ in range(3):  # live: three rounds of activity, small pages
        full_story(app)
        scripted_run(app)
        for name, view in views.items():
            runners.setdefault(name, ProjectionRunner(app, view, page_size=11)).run_once()
    for name, runner in runners.items():
        live = views[name].all_rows()
        assert live or name in ("inventory", "services"), name  # none in the story
        report = runner.rebuild()
        assert report.position == app.recorder.max_notification_id()
        assert views[name].all_rows() == live, name


def test_models_read_their_own_topics_and_the_audit_index_reads_all() -> None:
    assert AuditModel.topics() == ()
    for model, prefix in ((HostModel, "host"), (NetworkModel, "network"),
                          (VolumeModel, "volume"), (SnapshotModel, "snapshot"),
                          (TemplateModel, "template")):
        topics = model.topics()
        assert topics and {t.split(".")[0] for t in topics} == {prefix}
    assert set(MODELS) == {"vms", "operations", "hosts", "networks", "volumes", "snapshots",
                           "templates", "audit", "inventory", "services", "addresses",
                           "address_pools"}
    assert all(issubclass(m, RowModel) and m.name == n for n, m in MODELS.items())


def test_a_page_is_applied_once_with_its_positions(
        app: KernelApplication, views: dict[str, RowView]) -> None:
    host = new_hosts(uuid4())[0]
    app.save(host)
    notifications = app.recorder.select_notifications(start=0, limit=10)
    page = [(n.id, app.mapper.to_domain_event(n)) for n in notifications]
    audit = views["audit"]
    assert audit.apply_page(page, Tracking(app.name, notifications[-1].id)) == 1
    with pytest.raises(IntegrityError):
        audit.apply_page(page, Tracking(app.name, notifications[-1].id))
    row = audit.get(notifications[0].id)
    assert row is not None and row["originator_id"] == host.id
    assert isinstance(row["originator_id"], UUID)


def test_prefetched_pages_keep_order_raise_read_errors_and_stop_early() -> None:
    from projections.runner import _prefetched

    assert list(_prefetched(iter(range(50)))) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        raise RuntimeError("the log read failed")

    got: list[int] = []
    with pytest.raises(RuntimeError, match="the log read failed"):
        for page in _prefetched(failing()):
            got.append(page)
    assert got == [1]

    produced: list[int] = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    for page in _prefetched(endless()):
        if page == 3:
            break  # the reader thread is stopped and joined, not left running
    assert len(produced) <= 3 + 1 + 2 + 1  # what was consumed, in the queue, and in hand
