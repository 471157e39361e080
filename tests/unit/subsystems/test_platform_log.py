"""The platform log the runner injects into the plugins that follow it (planner, networkguru)."""

from pathlib import Path
from uuid import uuid4

import pytest

from aggregates.errors import ConfigError
from aggregates.host import Host
from aggregates.mac_pool import MacPool
from aggregates.network import Network
from kernel.bootstrap.migrations import migrate_all
from kernel.bootstrap.plugins import LOG_FOLLOWERS, plugin_configs, with_platform_log
from kernel.platform_log import ApplicationLog
from kernel.settings import Settings
from kernel.steps.network import AllocateNic
from kernel.store.testing import scratch_application
from subsystems.base import PlatformLog, StepContext
from subsystems.networkguru import NetworkGuru, make_networkguru
from subsystems.planner import Planner, make_planner
from subsystems.planner.testing import cluster_id, pod_id, zone_id
from subsystems.registry import load_registry

ZONE = uuid4()


def host(name: str) -> Host:
    """A host the planner's index folds."""
    return Host.register(name=name, uri=f"test:///{name}.xml", zone_id=zone_id(),
                         pod_id=pod_id("p1"), cluster_id=cluster_id("c1"), cpu_cores=8,
                         cpu_mhz=2400, memory_mib=8192)


def test_an_application_log_reads_positions_and_events_by_topic() -> None:
    app = scratch_application()
    log = ApplicationLog(app)
    assert isinstance(log, PlatformLog)
    assert log.head() == 0 and log.read(0, 10) == []
    net = Network.create(name="n", zone_id=ZONE, cidr="10.3.0.0/29", gateway="10.3.0.1")
    app.save(host("h1"), net, MacPool.create(zone_id=ZONE))
    head = log.head()
    assert head == app.recorder.max_notification_id()
    every = log.read(0, 10)
    assert [p for p, _ in every] == sorted(p for p, _ in every) and every[-1][0] == head
    assert [type(e) for _, e in log.read(0, 10, topics=("network.Created",))] == [
        Network.Created]
    assert log.read(0, 1) == every[:1]
    assert log.read(every[0][0], 10, stop=every[1][0]) == every[1:2]


def test_both_followers_build_their_index_from_an_injected_in_memory_log() -> None:
    app = scratch_application()
    net = Network.create(name="n", zone_id=ZONE, cidr="10.4.0.0/30", gateway="10.4.0.1")
    app.save(host("h1"), host("h2"), net, MacPool.create(zone_id=ZONE))
    log = ApplicationLog(app)
    registry = load_registry(["planner", "networkguru"], with_platform_log({}, log))
    planner, guru = registry.plugin("planner").subsystem, registry.plugin("networkguru").subsystem
    assert isinstance(planner, Planner) and isinstance(guru, NetworkGuru)
    for plugin in (planner, guru):
        plugin.open()
    try:
        assert sorted(h.name for h in planner.index.hosts.values()) == ["h1", "h2"]
        got = guru.allocate(
            StepContext(step_id=uuid4(), operation_id=uuid4(), attempt=1,
                        subsystem="networkguru", action="allocate"),
            AllocateNic(network_id=net.id, nic_id=uuid4()))
        assert got.ip == "10.4.0.2"
        assert list(guru.index.networks) == [net.id]
        assert guru.index.position == log.head()
    finally:
        for plugin in (planner, guru):
            plugin.close()
    # the log is the runner's: closing the plugins left it readable
    assert log.head() == app.recorder.max_notification_id()


def test_the_runner_gives_the_log_to_the_followers_only(tmp_path: Path) -> None:
    log = ApplicationLog(scratch_application())
    configs = with_platform_log({"counter": {"path": "c.db"}, "planner": {"page_size": 5}}, log)
    assert configs == {"counter": {"path": "c.db"}, "planner": {"page_size": 5, "log": log},
                       "networkguru": {"log": log}}
    assert set(LOG_FOLLOWERS) == {"planner", "networkguru"}
    missing = Settings(store="sqlite", data_dir=tmp_path / "nothing")
    with plugin_configs(["echo"], {"echo": {}}, missing) as plain:  # no store is opened
        assert plain == {"echo": {}}
    with pytest.raises(ConfigError, match="not migrated"), \
            plugin_configs(["planner"], {"planner": {}}, missing):
        pass
    settings = Settings(store="sqlite", data_dir=tmp_path / "data")
    migrate_all(settings)
    with plugin_configs(["planner"], {"planner": {"page_size": 5}}, settings) as opened:
        planner = make_planner(opened["planner"])
        planner.open()
        assert planner.index.hosts == {}
        planner.close()
        assert make_networkguru(opened["networkguru"]).log is opened["planner"]["log"]
