"""Hypervisor stop logic, step routing and plugin factories, without a libvirt host."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import pytest

from aggregates.errors import ConfigError, StepFailedError
from aggregates.plan import Compensation, PlannedStep
from kernel.steps import backup, hypervisor, snapshot, storage
from subsystems.hypervisor.plugin import make_hypervisor
from subsystems.libvirt import disks
from subsystems.libvirt.domains import stop
from subsystems.libvirt.host_policy import DomainSettings
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


def test_the_hypervisors_domain_settings(tmp_path: Path) -> None:
    plain = make_hypervisor({})
    assert plain.settings == DomainSettings() and plain.detach_wait_seconds == 10.0
    assert (plain.settings.domain_type, plain.settings.machine, plain.settings.console_secret) \
        == ("auto", "q35", None)
    secret = tmp_path / "keys" / "console.secret"
    made = make_hypervisor({"domain_type": "qemu", "tcg_cpu_model": "Westmere", "machine": "",
                            "hotplug_ports": 0, "guest_agent": False,
                            "console_listen": "10.0.0.2", "qemu_user": "qemu",
                            "console_secret_file": str(secret), "detach_wait_seconds": 0})
    assert made.settings == DomainSettings(
        domain_type="qemu", tcg_cpu_model="Westmere", machine="", hotplug_ports=0,
        guest_agent=False, console_listen="10.0.0.2", qemu_user="qemu",
        console_secret=secret.read_text().strip().encode())
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) == 64
    assert make_hypervisor({"console_secret_file": str(secret)}).settings.console_secret == \
        made.settings.console_secret  # the file is read, not made again


@pytest.mark.parametrize(("config", "named"), [
    ({"domain_type": "xen"}, "domain_type"),
    ({"hotplug_ports": 33}, "hotplug_ports"),
    ({"hotplug_ports": 1.5}, "hotplug_ports"),
    ({"guest_agent": "yes"}, "guest_agent"),
    ({"tcg_cpu_model": ""}, "tcg_cpu_model"),
    ({"console_listen": 5}, "console_listen"),
    ({"detach_wait_seconds": -1}, "detach_wait_seconds"),
    ({"console_secret_file": ""}, "console_secret_file"),
])
def test_bad_domain_settings_are_refused_by_name(config: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        make_hypervisor(config)


def test_a_short_console_secret_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="shorter than 16"):
        make_hypervisor({"console_secret_file": str(short)})
    for name in ("storage", "snapshot", "backup"):
        with pytest.raises(ConfigError):
            load_registry([name], {name: {"x": 1}})


class FakeHolder(FakeDomain):
    """A running domain whose guest releases a detached disk `down_after` s later."""

    def XMLDesc(self, _flags: int = 0) -> str:
        disk = "" if self.down_at is not None and self.now >= self.down_at else \
            "<disk type='file'><source file='/p/data'/><target dev='vdb' bus='virtio'/></disk>"
        return f"<domain><devices>{disk}</devices></domain>"


def await_release(dom: FakeHolder, wait: float) -> None:
    dom.shutdown()  # here: the detach request, released after down_after
    disks._await_release(dom, uuid4(), "/p/data", wait, 0.5,  # type: ignore[arg-type]
                           dom.clock, dom.sleep)


def test_a_detach_counts_when_the_guest_releases_the_disk_in_time() -> None:
    dom = FakeHolder(down_after=2.0)
    await_release(dom, 10)
    assert 2 <= dom.now < 3


def test_a_detach_the_guest_ignores_fails_retryably_after_the_wait() -> None:
    dom = FakeHolder(down_after=None)
    with pytest.raises(StepFailedError) as info:
        await_release(dom, 4)
    assert (info.value.code, info.value.retryable) == ("detach_refused", True)
    assert dom.now == pytest.approx(4)


@pytest.mark.parametrize("name", ["snapshot", "backup"])
def test_copies_are_kept_on_remote_hosts_through_libvirt(name: str) -> None:
    plugin: Any = load_registry([name], {name: {}}).plugin(name).subsystem
    assert plugin._on_host("qemu+ssh://kvm-7.example/system")
    assert not plugin._on_host("qemu:///system") and not plugin._on_host("test:///h.xml")
    assert not plugin._on_host("")  # a step that names no host: the worker's files
    always: Any = load_registry([name], {name: {"on_host": "always"}}).plugin(name).subsystem
    assert always._on_host("qemu:///system")
    with pytest.raises(ConfigError, match="on_host"):
        load_registry([name], {name: {"on_host": "sometimes"}})
