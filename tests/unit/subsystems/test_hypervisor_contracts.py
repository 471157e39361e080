"""Hypervisor stop logic, step routing and plugin factories, without a libvirt host."""

from __future__ import annotations

from uuid import uuid4

import msgspec
import pytest

from aggregates.errors import ConfigError
from aggregates.plan import Compensation, PlannedStep
from kernel.steps import backup, hypervisor, snapshot, storage
from subsystems.hypervisor.domains import stop
from subsystems.hypervisor.plugin import make_hypervisor
from subsystems.registry import load_registry


class FakeDomain:
    """A domain whose guest goes down `down_after` seconds after shutdown() (None: never)."""

    def __init__(self, down_after: float | None, active: bool = True) -> None:
        self.now = 0.0
        self.active = active
        self.down_at: float | None = None
        self.down_after = down_after
        self.calls: list[str] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def isActive(self) -> bool:
        if self.down_at is not None and self.now >= self.down_at:
            self.active = False
        return self.active

    def shutdown(self) -> None:
        self.calls.append("shutdown")
        if self.down_after is not None:
            self.down_at = self.now + self.down_after

    def destroy(self) -> None:
        self.calls.append("destroy")
        self.active = False

    def state(self) -> list[int]:
        return [1 if self.active else 5, 0]

    def UUIDString(self) -> str:
        return "00000000-0000-0000-0000-000000000000"


def run_stop(dom: FakeDomain, force_after: float) -> str:
    return stop(dom, uuid4(), force_after, poll=0.5, clock=dom.clock,  # type: ignore[arg-type]
                sleep=dom.sleep).how


def test_a_guest_that_shuts_down_in_time_is_not_forced() -> None:
    dom = FakeDomain(down_after=2.0)
    assert run_stop(dom, 10) == "graceful"
    assert dom.calls == ["shutdown"] and dom.now < 10


def test_a_guest_that_ignores_shutdown_is_forced_after_the_timeout() -> None:
    dom = FakeDomain(down_after=None)
    assert run_stop(dom, 3) == "forced"
    assert dom.calls == ["shutdown", "destroy"] and dom.now == pytest.approx(3)


def test_zero_timeout_forces_at_once_and_a_stopped_domain_is_left_alone() -> None:
    dom = FakeDomain(down_after=1.0)
    assert run_stop(dom, 0) == "forced" and dom.calls == ["destroy"]
    idle = FakeDomain(down_after=1.0, active=False)
    assert run_stop(idle, 10) == "already" and idle.calls == []


@pytest.mark.parametrize("args", [
    hypervisor.StopDomain(vm_id=uuid4(), host_uri="test:///h.xml"),
    storage.DownloadTemplate(url="file:///t", directory="/is", file_name="t",
                             checksum="md5:" + "0" * 32),
    snapshot.DeleteSnapshot(snapshot_id=uuid4(), directory="/s"),
    backup.DeleteBackup(backup_id=uuid4(), target_dir="/b"),
])
def test_args_route_by_their_tag_and_round_trip(args: msgspec.Struct) -> None:
    tag = type(args).__struct_config__.tag
    step = PlannedStep.of(args, compensation=Compensation.of(args))
    assert f"{step.subsystem}.{step.action}" == tag
    assert step.decode_args(type(args)) == args


def test_every_action_of_the_four_plugins_is_registered() -> None:
    registry = load_registry(["hypervisor", "storage", "snapshot", "backup"])
    assert {k.split(".")[0] for k in registry.kinds} == {"hypervisor", "storage", "snapshot",
                                                         "backup"}
    assert "hypervisor.migrate" in registry.kinds and "storage.download_template" in \
        registry.kinds


def test_checksums_are_validated_on_decode() -> None:
    raw = msgspec.json.encode({"url": "file:///t", "directory": "/", "file_name": "t",
                               "checksum": "sha256:short", "type": "storage.download_template"})
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=storage.DownloadTemplate)


def test_factories_refuse_unknown_config() -> None:
    assert make_hypervisor({"poll_seconds": 1}).poll_seconds == 1.0
    for bad in ({"poll_seconds": 0}, {"poll_seconds": True}, {"uri": "x"}):
        with pytest.raises(ConfigError):
            make_hypervisor(bad)
    for name in ("storage", "snapshot", "backup"):
        with pytest.raises(ConfigError):
            load_registry([name], {name: {"x": 1}})
