"""`cloudkernel repair`: a stuck VM repaired from the command line on the embedded SQLite
store; what it prints; bad input exits 2, names the problem and writes nothing."""

import json
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from support.sample import load_sample_with_ready_template

from aggregates.vm import VirtualMachine, VmState
from gateways.cli.main import main
from gateways.cli.repair import os_user
from kernel.settings import Settings, load_settings
from kernel.store.application import KernelApplication, PlatformApplication, open_application
from projections.catalog import MODELS
from projections.runner import ProjectionRunner
from projections.views import open_view
from tests.unit.operations._volume_cloud import VolumeCloud, running_vm

REASON = "hypervisor rebooted during the stop"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> Settings:
    monkeypatch.chdir(tmp_path)  # no cloudkernel.toml here
    monkeypatch.setenv("CLOUDKERNEL_DATA_DIR", str(tmp_path / "data"))
    assert main(["migrate"]) == 0
    capsys.readouterr()
    return load_settings()


@pytest.fixture
def app(settings: Settings) -> Iterator[KernelApplication]:
    opened = open_application(PlatformApplication, settings)
    yield opened
    opened.close()


@pytest.fixture
def stuck_vm(app: KernelApplication) -> VirtualMachine:
    """web-1 deployed (steps answered by the test harness), then left Stopping: the stop
    operation's outcome never came."""
    load_sample_with_ready_template(app)
    vm = running_vm(VolumeCloud(app))
    vm.stop()
    app.save(vm)
    return vm


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_stuck_vm_is_repaired_from_the_cli(app: KernelApplication, settings: Settings,
                                             stuck_vm: VirtualMachine,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    host = app.repository.get(stuck_vm.host_id)
    code, out, err = run(capsys, "repair", str(stuck_vm.id), "--to", "stopped",
                         "--reason", REASON, "--actor", "carol")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"vm web-1 ({stuck_vm.id}): Stopping -> Stopped"
    assert lines[1:3] == [f"  reason: {REASON}", "  actor:  carol"]
    assert lines[3].startswith("  event:  vm.Repaired at log position ")
    position = int(lines[3].rsplit(" ", 1)[1])
    # the "small" offering's claim on its host, given back as vm.stop would have
    assert lines[4:] == [f"  also:   released 1 cores/1024 MiB on host {host.name}"]

    vm: VirtualMachine = app.repository.get(stuck_vm.id)
    assert vm.state is VmState.STOPPED and vm.host_id is None
    note = app.recorder.select_notifications(start=position, limit=1)[0]
    event = app.mapper.to_domain_event(note)
    assert isinstance(event, VirtualMachine.Repaired) and event.originator_id == vm.id
    assert (event.actor, event.reason, event.from_state) == ("carol", REASON, VmState.STOPPING)
    assert event.causation_id and event.causation_id.startswith("command:entity.repair:repair-")

    view = open_view(MODELS["vms"], settings)  # the vms read model shows it
    try:
        ProjectionRunner(app, view).run_once()
        row = view.get(vm.id)
        assert row is not None and (row["state"], row["host_id"]) == ("Stopped", None)
    finally:
        view.close()

    # repairing it again is refused: it is settled now
    head = app.recorder.max_notification_id()
    code, _, err = run(capsys, "repair", str(vm.id), "--to", "Running", "--reason", REASON)
    assert code == 2
    assert "vm web-1 is Stopped, a settled state: nothing is stuck" in err
    assert "use vm.start or vm.destroy" in err
    assert app.recorder.max_notification_id() == head


def test_by_name_as_json_with_the_os_user_as_actor(app: KernelApplication,
                                                   stuck_vm: VirtualMachine,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "repair", "web-1", "--to", "Running", "--reason", REASON,
                       "--json")
    assert code == 0
    printed = json.loads(out)
    assert {k: printed[k] for k in ("entity_id", "kind", "name", "from_state", "to_state",
                                    "reason", "actor", "also")} == {
        "entity_id": str(stuck_vm.id), "kind": "vm", "name": "web-1",
        "from_state": "Stopping", "to_state": "Running", "reason": REASON,
        "actor": os_user(), "also": []}
    assert printed["event_position"] in printed["positions"]
    assert printed["idempotency_key"].startswith("repair-")
    assert app.repository.get(stuck_vm.id).state is VmState.RUNNING


@pytest.mark.parametrize(("argv", "message"), [
    (["--to", "Runing", "--reason", REASON],
     "'Runing' is not a vm state; a vm is repaired to one of Running, Stopped, Error"),
    (["--to", "Starting", "--reason", REASON],
     "a repair sets only Running, Stopped, Error; Starting is reached through vm.start"),
    (["--to", "Expunged", "--reason", REASON], "a repair never removes an entity"),
    (["--to", "Running", "--reason", "oops"], "in at least 8 characters"),
    (["--to", "Running", "--reason", "  "], "--reason: say why the entity is repaired"),
    (["--to", "Running", "--reason", REASON, "--actor", " "], "--actor: a printable name"),
], ids=["bad-state", "transition", "expunged", "short-reason", "empty-reason", "actor"])
def test_bad_input_exits_2_and_writes_nothing(app: KernelApplication, stuck_vm: VirtualMachine,
                                              capsys: pytest.CaptureFixture[str],
                                              argv: list[str], message: str) -> None:
    head = app.recorder.max_notification_id()
    code, out, err = run(capsys, "repair", str(stuck_vm.id), *argv)
    assert (code, out) == (2, "")
    assert err.startswith("cloudkernel: error: ") and message in err
    assert app.recorder.max_notification_id() == head


def test_unknown_or_unrepairable_entities_exit_2(app: KernelApplication,
                                                 stuck_vm: VirtualMachine,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    head = app.recorder.max_notification_id()
    missing = uuid4()
    cases = [
        (str(missing), f"no entity {missing}"),
        ("web-9", "no VM or volume is named 'web-9' (give its id)"),
        (str(stuck_vm.host_id), "is a host: only VMs and volumes are repaired"),
    ]
    for entity, message in cases:
        code, _, err = run(capsys, "repair", entity, "--to", "Stopped", "--reason", REASON)
        assert code == 2 and message in err, err
    assert app.recorder.max_notification_id() == head


def test_missing_arguments_exit_2_with_usage(stuck_vm: VirtualMachine,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["repair", str(stuck_vm.id), "--to", "Stopped"])
    assert exited.value.code == 2
    assert "the following arguments are required: --reason" in capsys.readouterr().err


def test_help_explains_the_refused_cases(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["repair", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for text in ("Refused", "cancel that operation first (operation.cancel)",
                 "a settled entity", "Expunged", "a reason shorter than 8 characters"):
        assert text in out
