"""Every read model over one mixed log on real PostgreSQL, and on SQLite fed from the same log.

The log: the sample inventory loaded as an admin command, then claims, networks, volumes,
snapshots, templates, VMs and operations. Rows must be the same on both stores, equal to
the aggregates' own state, and equal to a fresh rebuild; the audit index must list an
entity's events in log order with the actor and correlation ids they were stamped with.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregates.host import Host
from aggregates.image_store import ImageStore
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.template import Template
from kernel.bootstrap import SAMPLE_INVENTORY, Platform, open_platform
from kernel.bootstrap.migrations import migrate_all
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings
from projections.catalog import MODELS
from projections.query import QueryError
from projections.runner import ProjectionRunner
from projections.views import RowView, open_view
from tests.unit.projections.scenario import bulk_vms, scripted_run
from tests.unit.projections.story import (
    Story,
    address_activity,
    expectations,
    expected_host,
    expected_template,
    host_activity,
    network_activity,
    storage_activity,
)

HOSTS = ("kvm-a1", "kvm-a2", "kvm-a3", "kvm-a4", "kvm-b1", "kvm-b2", "kvm-b3", "kvm-b4")
STORES = ("postgres", "sqlite")


@pytest.fixture
def platform(pg_dsn: str) -> Iterator[Platform]:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn)
    migrate_all(settings)
    platform = open_platform(settings)
    yield platform
    platform.close()


@pytest.fixture
def views(platform: Platform, tmp_path: Path) -> Iterator[dict[tuple[str, str], RowView]]:
    sqlite = Settings(store="sqlite", data_dir=tmp_path / "data")
    opened: dict[tuple[str, str], RowView] = {}
    try:
        for name, model in MODELS.items():
            opened["postgres", name] = open_view(model, platform.settings)  # migrated
            opened["sqlite", name] = open_view(model, sqlite, create_table=True)
        yield opened
    finally:
        for view in opened.values():
            view.close()


def service_activity(platform: Platform) -> dict[str, tuple[str, str, str, int]]:
    """Two services registered, one described anew and disabled; what their rows must say."""
    from kernel.cloud.services import DisableService, RegisterService

    for i, command in enumerate((
            RegisterService(name="billing", version="1.0", endpoints={"http": "http://b/"}),
            RegisterService(name="ec2", version="2.1", consumes=("cloudkernel.events.vm.>",)),
            RegisterService(name="billing", version="1.1", endpoints={"http": "http://b/"}),
            DisableService(name="billing", reason="month-end audit"))):
        platform.commands.execute(command, idempotency_key=f"svc-{i}", actor="ops")
    return {"billing": ("Disabled", "month-end audit", "1.1", 3),
            "ec2": ("Enabled", "", "2.1", 1)}


def get(platform: Platform, aggregate_id: Any) -> Any:
    return platform.app.repository.get(aggregate_id)


def test_every_model_on_both_stores_matches_the_aggregates_and_a_rebuild(
        platform: Platform, views: dict[tuple[str, str], RowView]) -> None:
    app = platform.app
    runners = {key: ProjectionRunner(app, view, page_size=13) for key, view in views.items()}
    outcome, _ = load_inventory_file(platform.commands, SAMPLE_INVENTORY, actor="admin")
    assert len(outcome.positions) == 22
    for runner in runners.values():  # live: follow the log as it grows
        runner.run_once()

    hosts = [get(platform, Host.create_id(n)) for n in HOSTS]
    zone_id = hosts[0].zone_id
    pools = (PrimaryStoragePool.create_id(zone_id, "primary-a"),
             PrimaryStoragePool.create_id(zone_id, "primary-b"))
    image_store = ImageStore.create_id("secondary-1")
    raw = get(platform, Template.create_id(zone_id, "empty-raw"))
    raw.start_download(image_store)
    raw.download_completed(4096)
    app.save(raw)
    story = Story()
    host_activity(app, story, hosts[:4])
    network_activity(app, story, zone_id)
    for runner in runners.values():
        runner.run_once()
    storage_activity(app, story, zone_id, pools, image_store)
    address_activity(app, story, zone_id)
    scripted_run(app)
    bulk_vms(app, 40)
    services = service_activity(platform)
    for runner in runners.values():
        assert runner.run_once() > 0
        assert runner.lag().positions == 0
    head = app.recorder.max_notification_id()

    # the same rows on both stores
    live = {key: view.all_rows() for key, view in views.items()}
    for name in MODELS:
        assert live["postgres", name], name
        assert live["postgres", name] == live["sqlite", name], name
    assert len(live["postgres", "audit"]) == head

    # each row equal to its aggregate as it is now in the store
    expected = expectations(story)
    expected["hosts"] = [(h.id, expected_host(get(platform, h.id))) for h in hosts]
    expected["templates"] += [  # empty-raw downloaded since; empty-qcow2 as loaded
        (t, expected_template(get(platform, t)))
        for t in (raw.id, Template.create_id(zone_id, "empty-qcow2"))]
    for store in STORES:
        for name, rows in expected.items():
            for agg_id, want in rows:
                assert views[store, name].get(agg_id) == want, (store, name)
    for store in STORES:
        rows = {r["name"]: r for r in views[store, "services"].all_rows()}
        assert {n: (r["state"], r["disabled_reason"], r["version"], r["revision"])
                for n, r in rows.items()} == services, store
    busy = views["postgres", "hosts"].get(hosts[0].id)
    assert busy is not None and busy["cpu_overprovisioning"] == 2.0
    assert (busy["total_cpu_cores"], busy["used_cpu_cores"]) == (32, 4)
    b1 = views["postgres", "hosts"].get(hosts[4].id)
    assert b1 is not None and (b1["total_cpu_cores"], b1["total_memory_mib"]) == (128, 196608)
    by_cluster = views["postgres", "hosts"].list(cluster_id=hosts[4].cluster_id).rows
    assert {r["name"] for r in by_cluster} == {"kvm-b1", "kvm-b2", "kvm-b3", "kvm-b4"}
    for store in STORES:  # typed as text, as the CLI and the API pass them
        hosts_view = views[store, "hosts"]
        assert hosts_view.list(cluster_id=str(hosts[4].cluster_id)).rows == by_cluster
        with pytest.raises(QueryError, match="zone_id must be a UUID, got 'zone-1'"):
            hosts_view.list(zone_id="zone-1")
        assert views[store, "audit"].list(after=str(head - 2)).rows == \
            views["postgres", "audit"].list(after=head - 2).rows

    # the audit index: an entity's events in log order, with their actor and correlation
    audit = views["postgres", "audit"]
    inventory = audit.list(actor="admin").rows
    assert [r["position"] for r in inventory] == list(outcome.positions)
    correlation = inventory[0]["correlation_id"]
    assert correlation is not None
    assert audit.list(correlation_id=correlation).rows == inventory
    assert {r["causation_id"] for r in inventory} == {inventory[0]["causation_id"]}
    history = audit.list(originator_id=hosts[0].id).rows
    assert [r["originator_version"] for r in history] == list(range(1, hosts[0].version + 1))
    assert [r["position"] for r in history] == sorted(r["position"] for r in history)
    assert history[0]["actor"] == "admin" and history[0]["topic"] == "host.Registered"
    assert {(r["actor"], r["correlation_id"]) for r in history[1:]} == \
        {("alice", story.correlation_id)}
    assert [r["topic"] for r in audit.list(correlation_id=story.correlation_id).rows] == \
        ["host.CapacityClaimed"] * 4 + ["host.CapacityReleased"] * 2 + ["host.CapacityClaimed"]

    # a fresh rebuild on each store gives the rows it followed live
    for key, runner in runners.items():
        report = runner.rebuild()
        assert report.position == head
        assert views[key].all_rows() == live[key], key


def test_json_pages_equal_decoded_pages_on_both_stores(
        platform: Platform, views: dict[tuple[str, str], RowView]) -> None:
    import msgspec

    load_inventory_file(platform.commands, SAMPLE_INVENTORY, actor="admin")
    scripted_run(platform.app)
    for view in views.values():
        ProjectionRunner(platform.app, view).run_once()
    for (store, name), view in views.items():
        for limit in (2, 500):
            after = None
            while True:
                rows = view.list(after=after, limit=limit)
                fast = view.list_json(after=after, limit=limit)
                assert msgspec.json.decode(fast.items) == msgspec.json.decode(
                    msgspec.json.encode(rows.rows)), (store, name)
                assert fast.next_after == rows.next_after, (store, name)
                if rows.next_after is None:
                    break
                after = rows.next_after
