"""`cloudkernel audit replay`: the read models rebuilt from the log equal the live ones after a
normal run; a row changed by hand is found, with the model, the row and the field."""

import json
import sqlite3
from pathlib import Path

import pytest
from support.sample import load_sample_with_ready_template

from gateways.cli.main import main
from kernel.bootstrap import open_platform
from kernel.settings import load_settings
from projections.catalog import MODELS
from projections.runner import ProjectionRunner
from projections.views import open_view, sqlite_view_path

from ..operations.test_vm_deploy import Cloud, deploy


def test_replay_matches_then_finds_a_row_changed_by_hand(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLOUDKERNEL_DATA_DIR", str(tmp_path / "data"))
    assert main(["migrate"]) == 0
    settings = load_settings()
    platform = open_platform(settings)
    try:
        load_sample_with_ready_template(platform.app, platform.commands)
        cloud = Cloud(platform.app)
        deploy(cloud)
        cloud.run()  # a VM deployed, its steps answered: every model has rows
        for model in MODELS.values():
            view = open_view(model, settings)
            try:
                ProjectionRunner(platform.app, view).run_once()
            finally:
                view.close()
    finally:
        platform.close()
    capsys.readouterr()

    assert main(["audit", "replay", "--json"]) == 0
    clean = json.loads(capsys.readouterr().out)
    assert clean["clean"] and {m["model"] for m in clean["models"]} == set(MODELS)
    assert all(m["rows"] > 0 for m in clean["models"] if m["model"] in ("vms", "hosts"))

    # someone edits a host's row in the read model's file
    with sqlite3.connect(sqlite_view_path(settings, MODELS["hosts"])) as db:
        (host_id,) = db.execute("SELECT id FROM projection_hosts LIMIT 1").fetchone()
        db.execute("UPDATE projection_hosts SET used_cpu_cores = 999 WHERE id = ?", (host_id,))
    assert main(["audit", "replay", "hosts", "vms", "--json"]) == 1
    found = {m["model"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert found["vms"]["differences"] == []
    [diff] = found["hosts"]["differences"]
    assert diff["kind"] == "changed" and str(diff["key"]) == host_id
    assert diff["fields"]["used_cpu_cores"]["live"] == 999
    # the human output names it too; an unknown model is refused
    assert main(["audit", "replay", "hosts"]) == 1
    assert f"hosts {host_id}: changed: used_cpu_cores: live 999" in capsys.readouterr().out
    assert main(["audit", "replay", "nonsense"]) == 2
    assert "unknown read model" in capsys.readouterr().err
