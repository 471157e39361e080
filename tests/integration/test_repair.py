"""`cloudkernel repair` on PostgreSQL: a VM left Starting by a failure outside the kernel is
repaired from the CLI, and the vms read model and the audit index show it after a run."""

import json
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from support.sample import load_sample_with_ready_template

from aggregates.host import Host
from aggregates.vm import VirtualMachine, VmState
from gateways.cli.main import main
from kernel.bootstrap import Platform, open_platform
from kernel.bootstrap.migrations import migrate_all
from kernel.cloud.vms import StartVm, StopVm, placement_claim_id
from kernel.settings import Settings
from projections.catalog import MODELS
from projections.runner import ProjectionRunner
from projections.views import open_view
from tests.unit.operations._volume_cloud import VolumeCloud, running_vm

REASON = "kvm host lost power while the domain was starting"


@pytest.fixture
def platform(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    monkeypatch.chdir(tmp_path)  # no cloudkernel.toml here: the CLI reads the environment
    monkeypatch.setenv("CLOUDKERNEL_STORE", "postgres")
    monkeypatch.setenv("CLOUDKERNEL_POSTGRES_DSN", pg_dsn)
    monkeypatch.setenv("CLOUDKERNEL_DATA_DIR", str(tmp_path / "data"))
    settings = Settings(store="postgres", postgres_dsn=pg_dsn)
    migrate_all(settings)
    opened = open_platform(settings)
    yield opened
    opened.close()


def cloud_on(platform: Platform) -> VolumeCloud:
    """The sample inventory with a Ready template, driven by the unit tests' harness."""
    app = platform.app
    load_sample_with_ready_template(app, platform.commands)
    return VolumeCloud(app)


def test_a_vm_left_starting_is_repaired_and_the_read_model_shows_it(
        platform: Platform, capsys: pytest.CaptureFixture[str]) -> None:
    cloud = cloud_on(platform)
    app = platform.app
    vm = running_vm(cloud)
    cloud.command(StopVm(vm_id=vm.id))
    cloud.run()

    # A start whose host never answers: while its operation runs, the repair is refused.
    accepted = cloud.command(StartVm(vm_id=vm.id))
    cloud.run_until("hypervisor.define")
    assert cloud.get(vm.id).state is VmState.STARTING
    capsys.readouterr()
    head = app.recorder.max_notification_id()
    assert main(["repair", "web-1", "--to", "Running", "--reason", REASON]) == 2
    assert f"cancel operation {accepted['operation_id']} first" in capsys.readouterr().err
    assert app.recorder.max_notification_id() == head

    # The outside failure: another VM left Starting on its host with its claim, and no
    # operation to end it (as a kernel that crashed between two versions leaves it).
    other = running_vm(cloud, "web-2")
    cloud.command(StopVm(vm_id=other.id))
    cloud.run()
    stuck: VirtualMachine = cloud.get(other.id)
    host: Host = cloud.get(next(h for h in cloud.host_ids if h != cloud.get(vm.id).host_id))
    host.claim(placement_claim_id(uuid4()), stuck.id, 1, 1024)
    stuck.start(host.id)
    app.save(stuck, host)

    assert main(["repair", str(stuck.id), "--to", "Running", "--reason", REASON,
                 "--actor", "oncall-dana", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["from_state"], printed["to_state"]) == ("Starting", "Running")
    repaired: VirtualMachine = cloud.get(stuck.id)
    assert repaired.state is VmState.RUNNING and repaired.host_id == host.id
    assert sum(1 for v, _, _ in cloud.get(host.id).claims.values() if v == stuck.id) == 1

    vms, audit = open_view(MODELS["vms"], platform.settings), \
        open_view(MODELS["audit"], platform.settings)
    try:
        for view in (vms, audit):
            ProjectionRunner(app, view).run_once()
        row = vms.get(stuck.id)
        assert row is not None
        assert (row["state"], row["host_id"], row["last_error"]) == ("Running", host.id, "")
        event = audit.get(printed["event_position"])
        assert event is not None
        assert (event["topic"], event["originator_id"], event["actor"]) == (
            "vm.Repaired", stuck.id, "oncall-dana")
    finally:
        vms.close()
        audit.close()
