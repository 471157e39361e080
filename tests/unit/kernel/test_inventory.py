"""Inventory load: line-and-field errors, all or nothing, and running it twice changes nothing."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregates.host import Host
from gateways.cli.main import main
from kernel.bootstrap import PLATFORM_HANDLERS, SAMPLE_INVENTORY
from kernel.commands import CommandService
from kernel.inventory.loader import load_inventory_file
from kernel.inventory.spec import InventoryError, parse_inventory_text
from kernel.store.testing import scratch_application

MINIMAL = """\
[[zones]]
name = "z1"

[[pods]]
name = "p1"
zone = "z1"
gateway = "10.0.0.1"
cidr = "10.0.0.0/24"
start_ip = "10.0.0.10"
end_ip = "10.0.0.20"

[[clusters]]
name = "c1"
pod = "p1"
cpu_overprovisioning = 3.0

[[hosts]]
name = "h1"
cluster = "c1"
uri = "test:///default"
cpu_cores = 8
cpu_mhz = 2000
memory_mib = 8192
"""


@pytest.fixture
def service() -> Iterator[CommandService]:
    app = scratch_application()
    yield CommandService(app, PLATFORM_HANDLERS)
    app.close()


def head(service: CommandService) -> int:
    return service.app.recorder.max_notification_id() or 0


def write(tmp_path: Path, text: str, name: str = "inv.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_sample_inventory_loads_and_a_second_load_changes_nothing(
        service: CommandService) -> None:
    outcome, result = load_inventory_file(service, SAMPLE_INVENTORY)
    counts = {k: len(v) for k, v in result.registered.items()}
    assert counts == {"zones": 1, "pods": 2, "clusters": 2, "hosts": 8, "storage_pools": 2,
                      "image_stores": 1, "templates": 2, "service_offerings": 2,
                      "disk_offerings": 2, "public_ranges": 0}
    written = head(service)
    assert written == 22 and len(outcome.positions) == 22
    again, result2 = load_inventory_file(service, SAMPLE_INVENTORY)
    assert again.replayed and result2 == result
    assert head(service) == written


def test_hosts_get_their_clusters_overprovisioning_and_a_test_driver_file(
        service: CommandService) -> None:
    load_inventory_file(service, SAMPLE_INVENTORY)
    host: Host = service.app.repository.get(Host.create_id("kvm-b1"))
    assert host.cpu_overprovisioning == 4.0 and host.total_cpu_cores == 128
    assert host.uri == f"test://{SAMPLE_INVENTORY.parent}/hosts/kvm-b1.xml"
    assert Path(host.uri.removeprefix("test://")).is_file()


def test_same_entities_from_another_file_are_left_unchanged(
        service: CommandService, tmp_path: Path) -> None:
    load_inventory_file(service, write(tmp_path, MINIMAL))
    written = head(service)
    outcome, result = load_inventory_file(service, write(tmp_path, MINIMAL + "\n", "b.toml"))
    assert not outcome.replayed
    assert sum(map(len, result.registered.values())) == 0
    assert sum(map(len, result.unchanged.values())) == 4
    assert head(service) == written


def test_a_file_can_add_hosts_to_existing_clusters(service: CommandService,
                                                   tmp_path: Path) -> None:
    load_inventory_file(service, write(tmp_path, MINIMAL))
    more = MINIMAL + MINIMAL[MINIMAL.index("[[hosts]]"):].replace('"h1"', '"h2"')
    _, result = load_inventory_file(service, write(tmp_path, more, "more.toml"))
    assert result.registered["hosts"] == ["h2"]
    assert result.unchanged["hosts"] == ["h1"]


def test_a_changed_entity_is_refused_and_nothing_is_half_loaded(
        service: CommandService, tmp_path: Path) -> None:
    load_inventory_file(service, write(tmp_path, MINIMAL))
    written = head(service)
    changed = MINIMAL.replace("cpu_cores = 8", "cpu_cores = 16") + """
[[service_offerings]]
name = "tiny"
cpu_cores = 1
cpu_mhz = 500
memory_mib = 512
"""
    with pytest.raises(InventoryError) as info:
        load_inventory_file(service, write(tmp_path, changed, "c.toml"))
    assert str(info.value).endswith(
        "c.toml:21: hosts[0].cpu_cores: 'h1' is already registered with cpu_cores=8, the file "
        "gives 16; loading an inventory never changes registered entities")
    assert head(service) == written


def test_a_bad_entry_late_in_the_file_leaves_nothing_loaded(service: CommandService,
                                                           tmp_path: Path) -> None:
    bad = MINIMAL + """
[[disk_offerings]]
name = "d1"
size_gib = -5
"""
    with pytest.raises(InventoryError,
                       match=r"inv.toml:27: disk_offerings\[0\].size_gib: Expected `int` >= 0"):
        load_inventory_file(service, write(tmp_path, bad))
    assert head(service) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("cpu_cores = 8", 'cpu_cores = "eight"'),
         "inv.toml:21: hosts[0].cpu_cores: Expected `int`, got `str`"),
        (("cpu_cores = 8\n", ""),
         "inv.toml:17: hosts[0].cpu_cores: Object missing required field `cpu_cores`"),
        (("cpu_mhz = 2000", "cpu_mhz = 2000\ncpus = 3"),
         "inv.toml:23: hosts[0].cpus: Object contains unknown field `cpus`"),
        (('cluster = "c1"', 'cluster = "c9"'),
         "inv.toml:19: hosts[0].cluster: cluster 'c9' is not among this file's clusters"),
        (('gateway = "10.0.0.1"', 'gateway = "10.9.0.1"'),
         "inv.toml:7: pods[0].gateway: pod p1: gateway 10.9.0.1 is outside 10.0.0.0/24"),
        (('uri = "test:///default"', 'uri = "nowhere"'),
         "inv.toml:20: hosts[0].uri: host h1: uri 'nowhere' is not a libvirt URI"),
        (("[[zones]]", "[[zone]]"), "inv.toml: unknown section 'zone'"),
        (('name = "z1"', "name = "), "inv.toml: not valid TOML: Invalid value (at line 2"),
    ],
)
def test_errors_name_the_line_and_field(service: CommandService, tmp_path: Path,
                                        change: tuple[str, str], message: str) -> None:
    text = MINIMAL.replace(*change, 1)
    with pytest.raises(InventoryError) as info:
        load_inventory_file(service, write(tmp_path, text))
    assert message in str(info.value)
    assert head(service) == 0


def test_duplicate_names_in_a_section() -> None:
    text = MINIMAL + '\n[[zones]]\nname = "z1"\n'
    with pytest.raises(InventoryError, match=r"inv:26: zones\[1\].name: 'z1' is already used "
                                             r"by zones\[0\]"):
        parse_inventory_text(text, "inv")


def test_cli_exits_2_with_the_message_on_a_bad_file(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLOUDKERNEL_DATA_DIR", str(tmp_path / "data"))
    assert main(["migrate"]) == 0
    bad = write(tmp_path, MINIMAL.replace("cpu_mhz = 2000", "cpu_mhz = 0"))
    assert main(["inventory", "load", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cloudkernel: error: ") and "inv.toml:22: hosts[0].cpu_mhz" in err
    assert main(["inventory", "load", str(write(tmp_path, MINIMAL))]) == 0
    assert "registered 4 entities" in capsys.readouterr().out
    assert main(["inventory", "load", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_cli_refuses_an_unmigrated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLOUDKERNEL_DATA_DIR", str(tmp_path / "data"))
    assert main(["inventory", "load", str(write(tmp_path, MINIMAL))]) == 2
    assert "run `cloudkernel migrate` first" in capsys.readouterr().err
