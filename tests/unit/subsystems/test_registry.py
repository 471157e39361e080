"""The subsystem registry: entry points, one handler per step kind, the listing."""

from importlib.metadata import EntryPoint

import pytest

from aggregates.errors import ConfigError
from gateways.cli.main import main
from subsystems.registry import ENTRY_POINT_GROUP, discover, load_registry

MOD = "tests.unit.subsystems.sample_plugins"
BUILT_INS = {"echo": ["echo.echo"], "sleep": ["sleep.sleep"], "flaky": ["flaky.fail"],
             "silent": ["silent.ignore"], "counter": ["counter.add"]}


def ep(name: str, factory: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"{MOD}:{factory}", group=ENTRY_POINT_GROUP)


def test_built_ins_are_found_through_the_installed_entry_points() -> None:
    names = {e.name for e in discover()}
    assert set(BUILT_INS) <= names
    registry = load_registry()
    for name, kinds in BUILT_INS.items():
        plugin = registry.plugin(name)
        assert plugin.kinds == kinds
        assert plugin.subsystem.version == "1.0"
        assert plugin.source.distribution.startswith("cloudkernel ")
    assert registry.handler_of("echo.echo") is registry.plugin("echo")
    assert registry.handler_of("echo.nope") is None


def test_outside_plugins_load_with_their_config() -> None:
    registry = load_registry(configs={"storage": {"pool": "p1"}},
                             entry_points=[ep("storage", "make_storage"),
                                           ep("echo", "make_other_echo")])
    assert registry.kinds == ["echo.echo", "echo.shout", "storage.create_volume"]
    storage = registry.plugin("storage")
    assert storage.subsystem.config == {"pool": "p1"}  # type: ignore[attr-defined]
    assert str(storage.source) == f"storage ({MOD}:make_storage)"
    assert storage.actions["create_volume"].args_type.__name__ == "Args"
    assert registry.plugin("echo").actions["shout"].description == "Upper-case the text."


def test_two_plugins_claiming_one_step_kind_fail_naming_both() -> None:
    with pytest.raises(ConfigError) as e:
        load_registry(entry_points=[ep("echo", "make_other_echo"),
                                    EntryPoint("echo", "subsystems.testing.basic:make_echo",
                                               ENTRY_POINT_GROUP)])
    message = str(e.value)
    assert "'echo.echo' is claimed by two plugins" in message
    assert f"{MOD}:make_other_echo" in message
    assert "subsystems.testing.basic:make_echo" in message


def test_a_duplicate_is_found_even_when_only_that_subsystem_is_loaded() -> None:
    installed = [*discover(), ep("echo", "make_other_echo")]
    with pytest.raises(ConfigError, match="claimed by two plugins"):
        load_registry(["echo"], entry_points=installed)
    assert load_registry(["sleep"], entry_points=installed).kinds == ["sleep.sleep"]


def test_only_the_named_subsystems_are_built() -> None:
    registry = load_registry(["storage"], entry_points=[ep("storage", "make_storage"),
                                                        ep("broken", "make_broken")])
    assert [p.name for p in registry.plugins] == ["storage"]


@pytest.mark.parametrize(("entry", "expected"), [
    (ep("broken", "make_broken"), "factory failed: RuntimeError: driver library missing"),
    (EntryPoint("gone", "no_such_module:make", ENTRY_POINT_GROUP), "cannot load"),
    (ep("other", "make_misnamed"), "entry point name must be the subsystem's name 'storage'"),
    (ep("bad", "make_bad_action"), "action name in subsystem 'bad'"),
    (ep("thing", "make_not_a_subsystem"), "not a Subsystem"),
])
def test_a_bad_plugin_fails_at_start_naming_it(entry: EntryPoint, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_registry(entry_points=[entry])
    assert expected in str(e.value)
    assert f"plugin {entry.name} ({entry.value}" in str(e.value)


def test_an_unknown_subsystem_lists_what_is_installed() -> None:
    with pytest.raises(ConfigError, match=r"no plugin provides subsystem 'nope'.*echo"):
        load_registry(["nope"])


def test_a_plugin_config_error_names_the_plugin() -> None:
    with pytest.raises(ConfigError, match=r"plugin echo \(.*takes no configuration"):
        load_registry(["echo"], {"echo": {"x": 1}})


def test_cli_lists_plugins_versions_and_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["subsystems"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["SUBSYSTEM", "VERSION", "STEP", "KINDS", "PLUGIN"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    for name, kinds in BUILT_INS.items():
        assert rows[name][1] == "1.0"
        assert rows[name][2] == kinds[0]
    assert "subsystems.testing.counter:make_counter" in " ".join(rows["counter"])


def test_cli_worker_refuses_an_unknown_subsystem_and_bad_config(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--subsystem", "nope"]) == 2
    assert "no plugin provides subsystem 'nope'" in capsys.readouterr().err
    assert main(["worker", "--subsystem", "counter", "--config-json", "[1]"]) == 2
    assert "--config-json must be a JSON object" in capsys.readouterr().err
    assert main(["worker", "--subsystem", "counter", "--config-json", '{"file": "x"}']) == 2
    assert "unknown config keys ['file']" in capsys.readouterr().err
