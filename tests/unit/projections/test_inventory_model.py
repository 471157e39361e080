"""The inventory read model: every zone, pod, cluster, pool, image store and offering of the
sample inventory, in its place, with its state following the aggregate."""

from collections import Counter
from pathlib import Path

from aggregates.offering import ServiceOffering
from aggregates.storage_pool import PrimaryStoragePool, StoragePoolState
from kernel.bootstrap import SAMPLE_INVENTORY
from kernel.commands import CommandService
from kernel.inventory.loader import LoadInventory, handle_load_inventory, load_inventory_file
from kernel.settings import Settings
from kernel.store.testing import scratch_application
from projections.inventory import InventoryModel
from projections.runner import ProjectionRunner
from projections.views import open_view


def test_the_sample_inventory_in_the_inventory_read_model(tmp_path: Path) -> None:
    app = scratch_application()
    load_inventory_file(CommandService(app, {LoadInventory: handle_load_inventory}),
                        SAMPLE_INVENTORY)
    view = open_view(InventoryModel, Settings(data_dir=tmp_path, store="sqlite"),
                     create_table=True)
    try:
        runner = ProjectionRunner(app, view)
        runner.run_once()
        rows = view.all_rows()
        assert Counter(r["kind"] for r in rows) == {
            "zone": 1, "pod": 2, "cluster": 2, "storage_pool": 2, "image_store": 1,
            "service_offering": 2, "disk_offering": 2}
        [zone] = view.list(kind="zone").rows
        assert zone["zone_id"] == zone["id"] and zone["state"] == "Enabled"
        pods = view.list(kind="pod").rows
        assert {p["zone_id"] for p in pods} == {zone["id"]}
        for cluster in view.list(kind="cluster").rows:
            assert cluster["pod_id"] in {p["id"] for p in pods}
        small = view.list(kind="service_offering", name="small").rows[0]
        offering: ServiceOffering = app.repository.get(small["id"])
        assert (small["details"]["cpu_cores"], small["details"]["memory_mib"]) == \
            (offering.cpu_cores, offering.memory_mib)
        # a state change follows the aggregate
        pool_row = view.list(kind="storage_pool").rows[0]
        pool: PrimaryStoragePool = app.repository.get(pool_row["id"])
        pool.change_state(StoragePoolState.PREPARE_FOR_MAINTENANCE, "test")
        app.save(pool)
        runner.run_once()
        assert view.get(pool_row["id"])["state"] == pool.state.value  # type: ignore[index]
    finally:
        view.close()
        app.close()
