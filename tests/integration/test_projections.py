"""Projections on PostgreSQL: read models as tables in the platform's database."""

import pytest

from kernel.settings import Settings
from kernel.store.application import KernelApplication
from projections.audit import AuditModel
from projections.runner import ProjectionRunner
from projections.views import RowView, open_view
from tests.unit.projections.contract import ProjectionContract
from tests.unit.projections.scenario import bulk_vms


class TestPostgresProjections(ProjectionContract):
    @pytest.fixture
    def settings(self, pg_dsn: str) -> Settings:
        return Settings(store="postgres", postgres_dsn=pg_dsn)

    def test_rebuild_of_a_large_log(self, settings: Settings, app: KernelApplication,
                                views: dict[str, RowView]) -> None:
        bulk_vms(app, 6000, per_save=500)  # 30,000 events
        audit = open_view(AuditModel, settings)  # one row per event: the heaviest writer
        try:
            for view, rows in ((views["vms"], 6000), (audit, 30_000)):
                runner = ProjectionRunner(app, view)
                runner.run_once()  # warm up connections and prepared statements
                report = runner.rebuild()
                assert report.events == 30_000
                # Speed is measured by bench/stream.py, never asserted here.
                assert len(view.all_rows()) == rows
        finally:
            audit.close()
