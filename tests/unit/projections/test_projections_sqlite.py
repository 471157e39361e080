"""Projections on SQLite: each read model in its own file under the data dir."""

from pathlib import Path

import pytest

from kernel.settings import Settings
from projections.catalog import MODELS

from .contract import ProjectionContract


class TestSQLiteProjections(ProjectionContract):
    @pytest.fixture
    def settings(self, tmp_path: Path) -> Settings:
        return Settings(data_dir=tmp_path / "data", store="sqlite")

    def test_each_read_model_has_its_own_file(self, settings: Settings, views: object) -> None:
        names = sorted(p.name for p in Path(settings.data_dir).glob("projection_*.db"))
        assert names == sorted(f"projection_{name}.db" for name in MODELS)
        assert "projection_audit.db" in names and "projection_hosts.db" in names
