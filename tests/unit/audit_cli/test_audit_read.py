"""`cloudkernel audit history / as-of / diff` on the embedded SQLite store.

A scripted run (hosts going down and disabled, a VM deployed and stopped by the deploy test's
harness) records a snapshot of the live state and the moment (time and log position) after
each step; `as-of` each moment must print exactly that snapshot, `diff` exactly the entities
that changed between two, and `history` a VM's events in order with their actors.
"""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from support.sample import load_sample_with_ready_template

from aggregates.host import HostResourceState, HostStatus
from gateways.cli.audit_read import fields_of, fleet_counts, summary_of
from gateways.cli.main import main
from kernel.cloud.vms import StopVm
from kernel.settings import Settings, load_settings
from kernel.store.application import KernelApplication, PlatformApplication, open_application
from tests.unit.operations.test_vm_deploy import Cloud, deploy


@dataclass
class Snapshot:
    """The live state after a step: every entity's fields, the listing and the counts."""

    step: str
    time: datetime
    position: int
    fields: dict[str, dict[str, Any]]
    listing: list[dict[str, Any]]
    counts: dict[str, dict[str, int]]


@dataclass
class Run:
    snapshots: list[Snapshot]
    vm_id: UUID
    hosts: dict[str, UUID]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> Settings:
    monkeypatch.chdir(tmp_path)  # no cloudkernel.toml here
    monkeypatch.setenv("CLOUDKERNEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLOUDKERNEL_STORE", "sqlite")
    assert main(["migrate"]) == 0
    capsys.readouterr()
    return load_settings()


@pytest.fixture
def app(settings: Settings) -> Iterator[KernelApplication]:
    opened = open_application(PlatformApplication, settings)
    yield opened
    opened.close()


def live(app: KernelApplication, step: str) -> Snapshot:
    """The live state now, read from the repository (not from the audit commands)."""
    time.sleep(0.002)  # the next step's events get later timestamps than this moment
    position = int(app.recorder.max_notification_id() or 0)
    now = datetime.now(UTC)
    ids = {UUID(str(n.originator_id)) for n in app.recorder.select_notifications(
        start=None, limit=100_000)}
    aggs = {i: app.repository.get(i) for i in ids}
    time.sleep(0.002)
    listing = sorted((summary_of(a) for a in aggs.values()), key=lambda r: (r["kind"], r["id"]))
    return Snapshot(step, now, position, {str(i): fields_of(a) for i, a in aggs.items()},
                    listing, fleet_counts(aggs))


@pytest.fixture
def run(app: KernelApplication) -> Run:
    snaps = []
    load_sample_with_ready_template(app)
    cloud = Cloud(app)
    hosts = {cloud.get(h).name: h for h in cloud.host_ids}
    snaps.append(live(app, "inventory"))
    a1 = cloud.get(hosts["kvm-a1"])
    a1.change_status(HostStatus.DOWN, "lost heartbeat")
    app.save(a1)
    snaps.append(live(app, "kvm-a1 down"))
    a2 = cloud.get(hosts["kvm-a2"])
    a2.change_resource_state(HostResourceState.DISABLED, "disk replacement")
    app.save(a2)
    snaps.append(live(app, "kvm-a2 disabled"))
    vm_id = UUID(deploy(cloud, "web-1")["vm_id"])
    cloud.run()
    snaps.append(live(app, "web-1 deployed"))
    cloud.command(StopVm(vm_id=vm_id))
    cloud.run()
    snaps.append(live(app, "web-1 stopped"))
    a1 = cloud.get(hosts["kvm-a1"])
    a1.change_status(HostStatus.UP, "heartbeat back")
    app.save(a1)
    snaps.append(live(app, "kvm-a1 up"))
    return Run(snaps, vm_id, hosts)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_as_of_each_recorded_moment_equals_the_live_state_then(
        run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert run.snapshots[3].counts["vm"] == {"Running": 1}
    assert run.snapshots[4].counts["vm"] == {"Stopped": 1}
    for snap in run.snapshots:
        for moment in (snap.time.isoformat(), f"@{snap.position}"):
            fleet = as_json(capsys, "audit", "as-of", moment)
            assert fleet["counts"] == snap.counts, (snap.step, moment)
            assert fleet["entities"] == snap.listing, (snap.step, moment)
            assert fleet["total"] == len(snap.fields)
        for entity in (run.hosts["kvm-a1"], run.hosts["kvm-a2"], run.vm_id):
            if str(entity) not in snap.fields:
                continue
            for moment in (snap.time.isoformat(), f"@{snap.position}"):
                got = as_json(capsys, "audit", "as-of", moment, str(entity))
                assert got["fields"] == snap.fields[str(entity)], (snap.step, moment)


def test_as_of_an_entity_shows_its_main_fields(run: Run,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    down = run.snapshots[1]
    got = as_json(capsys, "audit", "as-of", down.time.isoformat(), "kvm-a1")
    assert (got["kind"], got["name"], got["state"]) == ("host", "kvm-a1", "Enabled/Down")
    assert got["fields"]["status"] == "Down"
    vm = as_json(capsys, "audit", "as-of", f"@{run.snapshots[3].position}", "web-1")
    assert vm["fields"]["state"] == "Running" and vm["fields"]["host_id"]
    code, out, _ = cli(capsys, "audit", "as-of", down.time.isoformat(), "kvm-a1")
    assert code == 0 and "kvm-a1" in out and "Down" in out
    code, out, _ = cli(capsys, "audit", "as-of", down.time.isoformat())
    assert code == 0 and "host" in out and "Enabled/Down" in out and "kvm-b4" in out


def test_history_lists_a_vms_events_in_order_with_actors(
        run: Run, app: KernelApplication, capsys: pytest.CaptureFixture[str]) -> None:
    got = as_json(capsys, "audit", "history", "web-1")
    assert got["entity"]["id"] == str(run.vm_id) and got["entity"]["state"] == "Stopped"
    events = got["events"]
    stored = list(app.repository.event_store.get(run.vm_id))
    assert [e["version"] for e in events] == [e.originator_version for e in stored]
    assert events[0]["topic"] == "vm.Allocated"
    assert "vm.Stopped" in [e["topic"] for e in events]
    positions = [e["position"] for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert all(e["actor"] for e in events)
    assert all(e["correlation_id"] for e in events)  # each belongs to an operation
    assert [e["time"] for e in events] == [s.timestamp.isoformat() for s in stored]
    assert as_json(capsys, "audit", "history", str(run.vm_id)) == got
    code, out, _ = cli(capsys, "audit", "history", "web-1")
    assert code == 0 and "vm.Allocated" in out and "vm.Stopped" in out


def changed_between(a: Snapshot, b: Snapshot) -> set[str]:
    return {i for i, f in b.fields.items()
            if i not in a.fields or a.fields[i]["version"] != f["version"]}


def test_diff_lists_exactly_the_entities_changed_between_two_moments(
        run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    s = run.snapshots
    one = as_json(capsys, "audit", "diff", s[1].time.isoformat(), s[2].time.isoformat())
    assert one["created"] == [] and one["removed"] == []
    assert [(c["name"], c["from_state"], c["to_state"]) for c in one["changed"]] == [
        ("kvm-a2", "Enabled/Up", "Disabled/Up")]
    assert one["counts"]["changed"] == {"host": 1}
    for a, b in ((s[0], s[5]), (s[2], s[3]), (s[3], s[4])):
        for t1, t2 in ((a.time.isoformat(), b.time.isoformat()),
                       (f"@{a.position}", f"@{b.position}")):
            got = as_json(capsys, "audit", "diff", t1, t2)
            listed = {r["id"] for k in ("created", "changed", "removed") for r in got[k]}
            assert listed == changed_between(a, b), (a.step, b.step)
            assert {r["id"] for r in got["created"]} == set(b.fields) - set(a.fields)
    stop = as_json(capsys, "audit", "diff", f"@{s[3].position}", f"@{s[4].position}")
    vm = next(r for r in stop["changed"] if r["id"] == str(run.vm_id))
    assert (vm["from_state"], vm["to_state"]) == ("Running", "Stopped")
    assert as_json(capsys, "audit", "diff", "@3", "@3")["changed"] == []
    code, out, _ = cli(capsys, "audit", "diff", f"@{s[3].position}", f"@{s[4].position}")
    assert code == 0 and "Running -> Stopped" in out and "changed:" in out


@pytest.mark.parametrize(("argv", "problem"), [
    (["history", "no-such-vm"], "unknown entity 'no-such-vm'"),
    (["history", "00000000-0000-0000-0000-000000000000"], "no entity has the id"),
    (["as-of", "@1", "nothing-here"], "unknown entity 'nothing-here'"),
    (["as-of", "yesterday"], "not an ISO 8601 time"),
    (["as-of", "2026-01-01T00:00:00"], "has no timezone"),
    (["as-of", "@0"], "log position"),
    (["as-of", "@x"], "log position"),
    (["as-of", "2001-01-01T00:00:00Z"], "before the log's first event"),
    (["as-of", "@99999999"], "after the log's last event"),
    (["diff", "2026-13-01T00:00:00Z", "@2"], "T1 '2026-13-01T00:00:00Z'"),
    (["diff", "@5", "@2"], "T2 @2 is before T1 @5"),
])
def test_bad_input_exits_2_naming_the_problem(run: Run, capsys: pytest.CaptureFixture[str],
                                              argv: list[str], problem: str) -> None:
    code, out, err = cli(capsys, "audit", *argv)
    assert code == 2 and out == ""
    assert problem in err


def test_times_are_compared_as_moments(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    s = run.snapshots
    later, earlier = s[4].time.isoformat(), s[1].time.isoformat()
    code, _, err = cli(capsys, "audit", "diff", later, earlier)
    assert code == 2 and "is before T1" in err
    code, _, err = cli(capsys, "audit", "diff", f"@{s[4].position}", earlier)
    assert code == 2 and "is before T1" in err
    # an entity that did not exist yet at the moment
    first = s[0].time.isoformat()
    code, _, err = cli(capsys, "audit", "as-of", first, str(run.vm_id))
    assert code == 2 and "did not exist yet" in err
    # a future time shows the state now
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert as_json(capsys, "audit", "as-of", future)["entities"] == s[-1].listing


def test_audit_without_an_action_prints_help_and_exits_2(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "audit")
    assert code == 2 and "history" in out


def test_every_entity_as_of_a_moment_equals_its_live_fields(
        run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    for snap in (run.snapshots[3], run.snapshots[4]):
        for entity, fields in snap.fields.items():
            got = as_json(capsys, "audit", "as-of", f"@{snap.position}", entity)
            assert got["fields"] == fields, (snap.step, got["kind"])


def test_a_long_log_shows_a_progress_bar_on_stderr(
        run: Run, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from gateways.cli import audit

    monkeypatch.setattr(audit, "PROGRESS_OVER", 0)
    code, out, _ = cli(capsys, "audit", "as-of", f"@{run.snapshots[2].position}")
    assert code == 0 and "Disabled/Up" in out
    code, out, _ = cli(capsys, "audit", "history", "kvm-a1")
    assert code == 0 and "host.StatusChanged" in out
    assert as_json(capsys, "audit", "as-of", f"@{run.snapshots[2].position}")["counts"] == \
        run.snapshots[2].counts
