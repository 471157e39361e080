"""Projections on PostgreSQL: read models as tables in the platform's database."""

import pytest

from kernel.settings import Settings
from kernel.store.application import KernelApplication
from projections.runner import ProjectionRunner
from projections.views import RowView
from tests.unit.projections.contract import ProjectionContract
from tests.unit.projections.scenario import bulk_vms


class TestPostgresProjections(ProjectionContract):
    @pytest.fixture
    def settings(self, pg_dsn: str) -> Settings:
        return Settings(store="postgres", postgres_dsn=pg_dsn)

    def test_rebuild_throughput(self, app: KernelApplication,
                                views: dict[str, RowView]) -> None:
        bulk_vms(app, 6000, per_save=500)  # 30,000 events
        runner = ProjectionRunner(app, views["vms"])
        runner.run_once()  # warm up connections and prepared statements
        report = runner.rebuild()
        assert report.events == 30_000
        print(f"\nrebuild: {report.events} events in {report.seconds:.2f}s = "
              f"{report.events_per_second:,.0f} events/s")
        assert report.events_per_second > 10_000  # goal 30k; loose so a busy CI box passes
        assert len(views["vms"].all_rows()) == 6000
