"""The planner plugin: config, registry, step contract, following a store, memo, errors."""

import threading
import time
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.errors import ConfigError, StepFailedError
from aggregates.host import Host
from aggregates.plan import PlannedStep
from kernel.bootstrap.migrations import migrate_all
from kernel.contracts.steps import StepMessage
from kernel.platform_log import ApplicationLog, platform_log
from kernel.settings import Settings
from kernel.steps.planner import Placement, PlanPlacement
from kernel.store.application import PlatformApplication, open_application
from kernel.store.testing import scratch_application
from subsystems.base import StepContext
from subsystems.planner import Planner, make_planner
from subsystems.planner.testing import World, cluster_id, pod_id, zone_id
from subsystems.registry import load_registry
from subsystems.runner import Disposal, StepRunner


def ctx(step_id: UUID | None = None, attempt: int = 1) -> StepContext:
    """A step context for the plan action."""
    return StepContext(step_id=step_id or uuid4(), operation_id=uuid4(), attempt=attempt,
                       subsystem="planner", action="plan")


def register(name: str, cores: int = 8) -> Host:
    """A host in zone-1/p1/c1."""
    return Host.register(name=name, uri=f"test:///{name}.xml", zone_id=zone_id(),
                         pod_id=pod_id("p1"), cluster_id=cluster_id("c1"), cpu_cores=cores,
                         cpu_mhz=2400, memory_mib=8192)


@pytest.mark.parametrize(("config", "message"), [
    ({"nope": 1}, "unknown config keys ['nope']"),
    ({"poll_interval": -1}, "'poll_interval' must be seconds >= 0"),
    ({"poll_interval": True}, "'poll_interval' must be seconds >= 0"),
    ({"page_size": 0}, "'page_size' must be 1..100000"),
    ({"settings": {"store": "sqlite"}}, "the process that runs the planner injects the "
                                        "platform log"),
    ({"log": "x"}, "config 'log' must be a PlatformLog (head() and read()), got str"),
])
def test_factory_rejects_bad_config(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        make_planner(config)
    assert message in str(info.value)


class _CountingLog:
    """A PlatformLog that counts its reads."""

    def __init__(self) -> None:
        self.calls = 0

    def head(self) -> int:
        self.calls += 1
        return 0

    def read(self, after: int, limit: int, *, topics: Any = (),
             stop: int | None = None) -> list[tuple[int, Any]]:
        self.calls += 1
        return []


def test_factory_builds_without_io() -> None:
    log = _CountingLog()
    planner = make_planner({"log": log, "poll_interval": 0.5, "page_size": 10})
    assert planner.log is log and (planner.poll_interval, planner.page_size) == (0.5, 10)
    assert log.calls == 0
    with pytest.raises(ConfigError, match="no platform log to follow"):
        make_planner({}).open()


def test_factory_takes_an_injected_log_and_builds_its_index_from_it() -> None:
    """The process that runs the planner injects the platform log; here an in-memory store's."""
    app = scratch_application()
    app.save(register("h1"), register("h2", cores=2))
    planner = make_planner({"log": ApplicationLog(app)})
    planner.open()
    try:
        assert sorted(h.name for h in planner.index.hosts.values()) == ["h1", "h2"]
        assert planner.plan(ctx(), World.request(cpu_cores=4)).host_name == "h1"
        app.save(register("h3", cores=16))
        assert planner.plan(ctx(), World.request(cpu_cores=12)).host_name == "h3"
    finally:
        planner.close()


def test_registry_finds_the_entry_point() -> None:
    registry = load_registry(["planner"], {"planner": {}})
    assert registry.kinds == ["planner.plan"]
    act = registry.plugin("planner").actions["plan"]
    assert act.args_type is PlanPlacement


def test_plan_step_routes_by_tag_and_decodes() -> None:
    args = World.request(host_tags=("ssd",), avoid_hosts=(uuid4(),))
    step = PlannedStep.of(args)
    assert (step.subsystem, step.action) == ("planner", "plan")
    assert step.compensation is None
    assert msgspec.json.decode(step.args, type=PlanPlacement) == args


def test_plan_before_open_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not open"):
        Planner().plan(ctx(), World.request())


def test_plan_follows_the_log_and_memoizes_a_step_attempt() -> None:
    app = scratch_application()
    h1 = register("h1", cores=2)
    app.save(h1, register("h2"))
    planner = Planner(log=ApplicationLog(app))
    planner.open()
    args = World.request(cpu_cores=2)
    step = uuid4()
    first = planner.plan(ctx(step), args)
    assert first.host_name == "h1"
    h1.claim(uuid4(), uuid4(), 2, 1024)
    app.save(h1)
    # the same attempt again: the same answer, though the log moved
    assert planner.plan(ctx(step), args) == first
    # the next attempt (or another step) sees the claim
    assert planner.plan(ctx(step, attempt=2), args).host_name == "h2"
    assert planner.plan(ctx(), args).host_name == "h2"
    planner.close()


def test_runner_reports_placement_and_refusal() -> None:
    app = scratch_application()
    app.save(register("h1"))
    planner = Planner(log=ApplicationLog(app))
    planner.open()
    runner = StepRunner(planner, worker="t")

    def run(args: PlanPlacement) -> Any:
        step = PlannedStep.of(args)
        msg = StepMessage(step_id=step.step_id, operation_id=uuid4(), attempt=1,
                          subsystem=step.subsystem, action=step.action, args=step.args)
        return runner.run(msgspec.json.encode(msg))

    ok = run(World.request(cpu_cores=8))
    assert ok.disposal is Disposal.ACK and ok.outcome.ok
    assert msgspec.json.decode(ok.outcome.result, type=Placement).host_name == "h1"
    refused = run(World.request(cpu_cores=9))
    assert not refused.outcome.ok
    assert (refused.outcome.error_code, refused.outcome.retryable) == (
        "insufficient_capacity", False)
    assert "0 of 1 hosts fit" in refused.outcome.message
    assert "1 lack cpu" in refused.outcome.message
    bad = runner.run(msgspec.json.encode(StepMessage(
        step_id=uuid4(), operation_id=uuid4(), attempt=1, subsystem="planner", action="plan",
        args=msgspec.Raw(msgspec.json.encode(
            {"vm_id": str(uuid4()), "account": "a", "zone_id": str(zone_id()),
             "cpu_cores": 0, "memory_mib": 1})))))
    assert bad.disposal is Disposal.TERM
    assert bad.outcome is not None and bad.outcome.error_code == "bad_args"
    planner.close()


def test_invalid_request_built_in_process_is_refused() -> None:
    app = scratch_application()
    planner = Planner(log=ApplicationLog(app))
    planner.open()
    with pytest.raises(StepFailedError) as info:
        planner.plan(ctx(), World.request(cpu_cores=0))
    assert info.value.code == "invalid_request" and not info.value.retryable


class _BrokenLog(_CountingLog):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def head(self) -> int:
        super().head()
        if self.calls > self.after:
            raise OSError("connection refused")
        return 0


def test_store_errors_are_retryable_step_failures() -> None:
    planner = Planner(log=_BrokenLog(after=1))
    planner.open()
    with pytest.raises(StepFailedError) as info:
        planner.plan(ctx(), World.request())
    assert info.value.retryable and info.value.code == "store_unavailable"
    with pytest.raises(ConfigError, match="cannot read the platform log"):
        Planner(log=_BrokenLog(after=0)).open()


def test_follows_a_migrated_sqlite_store_and_polls_in_the_background(tmp_path: Path) -> None:
    settings = Settings(store="sqlite", data_dir=tmp_path)
    migrate_all(settings)
    app = open_application(PlatformApplication, settings)
    app.save(register("h1"))
    with platform_log(settings) as log:  # as `cloudkernel worker` opens it
        planner = make_planner({"log": log, "poll_interval": 0.02})
        planner.open()
        try:
            assert len(planner.index.hosts) == 1
            app.save(register("h2"))
            deadline = time.monotonic() + 10
            while len(planner.index.hosts) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(planner.index.hosts) == 2  # folded without a plan asking for it
            assert any(t.name == "planner-follower" for t in threading.enumerate())
        finally:
            planner.close()
            app.close()
    assert not any(t.name == "planner-follower" for t in threading.enumerate())


def test_an_unmigrated_store_has_no_platform_log(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not migrated"), \
            platform_log(Settings(store="sqlite", data_dir=tmp_path)):
        pass
