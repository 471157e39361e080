"""The committed documents match the code; `contracts check` and `write` find and fix drift."""

import ast
import json
import sys
from pathlib import Path

import pytest

from aggregates.host import Host
from gateways.cli.main import main
from gateways.contracts.documents import DEFAULT_DIR, _breaking, check, render, write

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "integrator" / "watch_events.py"


def test_the_committed_documents_are_what_the_code_generates() -> None:
    """CI runs this: a changed event or command without regenerated documents fails here."""
    assert check(DEFAULT_DIR) == [], "run `cloudkernel contracts write` and commit the result"


def test_rendering_is_deterministic() -> None:
    assert render() == render()


def test_check_names_every_difference(tmp_path: Path) -> None:
    assert check(tmp_path / "nowhere") == [f"no contracts folder at {tmp_path / 'nowhere'}"]
    write(tmp_path)
    assert check(tmp_path) == []
    changed = tmp_path / "events" / "vm.Started.json"
    schema = json.loads(changed.read_text())
    schema["properties"]["host_id"] = {"type": "string"}  # as if the code dropped a field
    changed.write_text(json.dumps(schema))
    (tmp_path / "commands" / "operation.cancel.json").unlink()
    (tmp_path / "events" / "vm.Renamed.json").write_text("{}")
    assert sorted(check(tmp_path)) == [
        "missing: commands/operation.cancel.json",
        "not generated from the code (a removed or renamed contract?): events/vm.Renamed.json",
        "out of date: events/vm.Started.json (BREAKING without a class version bump: "
        "field host_id removed)",
    ]
    changes = write(tmp_path)
    assert sorted(changes) == ["created commands/operation.cancel.json",
                               "removed events/vm.Renamed.json",
                               "updated events/vm.Started.json"]
    assert check(tmp_path) == [] and write(tmp_path) == []


def test_check_tells_compatible_from_breaking_changes(tmp_path: Path) -> None:
    write(tmp_path)
    path = tmp_path / "events" / "host.Registered.json"
    original = json.loads(path.read_text())

    def check_with(change: dict[str, object]) -> str:
        path.write_text(json.dumps({**original, **change}))
        [problem] = check(tmp_path)
        return problem

    props, required = original["properties"], original["required"]
    # no event has an optional field yet: adding one is compatible
    added = {**original, "properties": {**props, "note": {"type": "string", "default": ""}}}
    assert _breaking(original, added) == []
    assert _breaking(added, original) == ["field note removed"]
    assert "field cpu_cores changed type" in check_with(
        {"properties": {**props, "cpu_cores": {"type": "string"}}})
    assert "new field tags is required" in check_with(
        {"required": [r for r in required if r != "tags"]})
    assert check_with({"properties": {**props, "name": {"type": "string", "default": ""}}}) \
        == "out of date: events/host.Registered.json"


def test_write_leaves_other_files_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "x.json").write_text("{}")
    write(tmp_path)
    assert (tmp_path / "notes.json").read_text() == "{}"
    assert (tmp_path / "extra" / "x.json").exists()
    assert check(tmp_path) == []


def test_a_class_version_bump_freezes_the_old_schema(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path)
    v1 = (tmp_path / "events" / "host.StatusChanged.json").read_bytes()
    monkeypatch.setattr(Host.StatusChanged, "class_version", 2, raising=False)
    problems = check(tmp_path)
    assert problems == [
        "out of date: events/host.StatusChanged.json (class version 1 -> 2; "
        "`contracts write` freezes v1)",
        "out of date: asyncapi.json",
        "missing frozen schema of class version 1: events/host.StatusChanged.v1.json"]
    assert "froze events/host.StatusChanged.v1.json" in write(tmp_path)
    assert (tmp_path / "events" / "host.StatusChanged.v1.json").read_bytes() == v1
    v2 = json.loads((tmp_path / "events" / "host.StatusChanged.json").read_text())
    assert v2["x-cloudkernel-class-version"] == 2
    assert "class_version" in v2["required"]
    assert v2["properties"]["class_version"] == {"enum": [2]}
    assert check(tmp_path) == []
    (tmp_path / "events" / "host.StatusChanged.v1.json").unlink()
    assert check(tmp_path) == [
        "missing frozen schema of class version 1: events/host.StatusChanged.v1.json"]


def test_cli_check_exits_1_with_a_summary_and_write_fixes_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["contracts", "write", str(tmp_path)]) == 0
    assert f"{len(render())} change(s)" in capsys.readouterr().out
    assert main(["contracts", "check", str(tmp_path)]) == 0
    assert "up to date" in capsys.readouterr().out
    (tmp_path / "asyncapi.json").write_text("{}")
    assert main(["contracts", "check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "out of date: asyncapi.json" in err
    assert "1 contract document(s) differ" in err and "contracts write" in err
    assert main(["contracts", "write", str(tmp_path)]) == 0
    assert "updated asyncapi.json" in capsys.readouterr().out
    assert main(["contracts", "check", str(tmp_path)]) == 0


def test_the_example_imports_only_nats_and_the_standard_library() -> None:
    tree = ast.parse(EXAMPLE.read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree)
               if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    assert "nats" in modules
    assert modules - {"nats"} <= set(sys.stdlib_module_names), modules
