"""The planner plugin on real PostgreSQL (and behind a real worker and nats-server).

The sample inventory is loaded as an admin command; the planner follows the platform log.
Claims saved on Host aggregates through the platform application must be seen by the next
plan, and concurrent deployers that claim what the planner proposes (as the kernel does,
retrying on a refused claim or a concurrent save) never over-commit a host.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import nats
import pytest
from eventsourcing.persistence import IntegrityError

from aggregates.errors import CapacityError, StepFailedError
from aggregates.host import Host
from aggregates.zone import Zone
from gateways.stream.streams import ensure_streams
from gateways.stream.worker import Worker
from kernel.bootstrap import SAMPLE_INVENTORY, Platform, open_platform
from kernel.bootstrap.migrations import migrate_all
from kernel.bootstrap.plugins import plugin_configs
from kernel.contracts.steps import RESULTS_STREAM, StepMessage, outcome_decoder, step_encoder
from kernel.inventory.loader import load_inventory_file
from kernel.platform_log import platform_log
from kernel.settings import Settings
from kernel.steps.planner import Placement, PlanPlacement
from subsystems.base import StepContext
from subsystems.planner import Planner, make_planner
from subsystems.registry import load_registry

ROOT = Path(__file__).resolve().parents[2]
ZONE = Zone.create_id("zone-1")
CLUSTER_A_HOSTS = ("kvm-a1", "kvm-a2", "kvm-a3", "kvm-a4")


@pytest.fixture
def platform(pg_dsn: str) -> Iterator[Platform]:
    """The migrated platform on a fresh database, with the sample inventory loaded."""
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=4)
    migrate_all(settings)
    platform = open_platform(settings)
    load_inventory_file(platform.commands, SAMPLE_INVENTORY)
    try:
        yield platform
    finally:
        platform.close()


@pytest.fixture
def planner(pg_dsn: str, platform: Platform) -> Iterator[Planner]:
    """The planner plugin from its entry point, given the platform log of the same database
    as `cloudkernel worker` gives it (its own application on the configured store)."""
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=2)
    with plugin_configs(["planner"], {}, settings) as configs:
        subsystem = load_registry(["planner"], configs).plugin("planner").subsystem
        assert isinstance(subsystem, Planner)
        subsystem.open()
        try:
            yield subsystem
        finally:
            subsystem.close()


def ctx() -> StepContext:
    """A fresh step attempt."""
    return StepContext(step_id=uuid4(), operation_id=uuid4(), attempt=1, subsystem="planner",
                       action="plan")


def request(**fields: Any) -> PlanPlacement:
    """A request in zone-1."""
    return PlanPlacement(**{"vm_id": uuid4(), "account": "alice", "zone_id": ZONE,
                            "cpu_cores": 4, "memory_mib": 8192, **fields})


def test_plans_from_the_log_and_sees_the_next_claim(platform: Platform,
                                                     planner: Planner) -> None:
    assert len(planner.index.hosts) == 8
    first = planner.plan(ctx(), request(host_tags=("ssd",)))
    # cluster-b has the most free cores (4 x 32 x 4.0): its first host
    assert (first.host_name, first.considered) == ("kvm-b1", 8)
    b1: Host = platform.app.repository.get(first.host_id)
    assert first.host_uri == b1.uri and first.cluster_id == b1.cluster_id
    b1.claim(uuid4(), uuid4(), 4, b1.free_memory_mib)  # fill its memory
    platform.app.save(b1)
    second = planner.plan(ctx(), request(host_tags=("ssd",)))
    assert second.host_name == "kvm-b2"
    assert second.filtered.memory == 1
    with pytest.raises(StepFailedError) as info:  # cluster-b has 128 GiB x 1.5 per host
        planner.plan(ctx(), request(host_tags=("gpu",), memory_mib=200_000))
    assert info.value.code == "insufficient_capacity"
    assert "0 of 8 hosts fit" in str(info.value)
    assert "6 tag mismatch, 2 lack memory" in str(info.value)


def test_concurrent_deploys_never_over_commit(platform: Platform, planner: Planner) -> None:
    """Two deployers fill cluster-a (4 hosts of 64 GiB) with 16 GiB VMs, 24 tries for 16
    places, claiming on the Host aggregate as the kernel does."""
    app = platform.app
    cluster_a: UUID = app.repository.get(Host.create_id("kvm-a1")).cluster_id
    placed: list[UUID] = []
    refused: list[str] = []
    retries = {"capacity": 0, "conflict": 0}
    lock = threading.Lock()

    def deploy() -> None:
        args = request(cpu_cores=1, memory_mib=16384, cluster_id=cluster_a)
        while True:
            try:
                placement = planner.plan(ctx(), args)
            except StepFailedError as e:
                with lock:
                    refused.append(str(e))
                return
            host: Host = app.repository.get(placement.host_id)
            try:
                host.claim(uuid4(), args.vm_id, args.cpu_cores, args.memory_mib)
                app.save(host)
            except CapacityError:
                with lock:
                    retries["capacity"] += 1
                args = msgspec.structs.replace(
                    args, avoid_hosts=(*args.avoid_hosts, placement.host_id))
                continue
            except IntegrityError:
                with lock:
                    retries["conflict"] += 1
                continue  # another deployer saved this host first: plan again
            with lock:
                placed.append(placement.host_id)
            return

    def deployer() -> None:
        for _ in range(12):
            deploy()

    threads = [threading.Thread(target=deployer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(placed) == 16 and len(refused) == 8, (placed, refused, retries)
    for name in CLUSTER_A_HOSTS:
        host: Host = app.repository.get(Host.create_id(name))
        assert host.used_memory_mib == host.total_memory_mib == 65536
        assert len(host.claims) == 4
    for r in refused:  # a deployer that lost a claim avoids that host on its next plan
        assert "0 of 4 hosts fit" in r, r
        lack = re.search(r"(\d) lack memory", r)
        avoided = re.search(r"(\d) avoided after a refused claim", r)
        assert lack is not None, r
        assert int(lack[1]) + (int(avoided[1]) if avoided else 0) == 4, r
    print(f"retries: {retries}")


async def _two_plans(nats_url: str, serve: Callable[[], Awaitable[Any]],
                     stop: Callable[[], Awaitable[None]]) -> list[Any]:
    """Publish a plan that fits and one that cannot to a planner worker `serve` starts; their
    outcomes, the refusal first."""
    nc = await nats.connect(nats_url, connect_timeout=5)
    js = nc.jetstream()
    await ensure_streams(js)
    await serve()
    try:
        steps = [StepMessage(step_id=uuid4(), operation_id=uuid4(), attempt=1,
                             subsystem="planner", action="plan",
                             args=msgspec.Raw(msgspec.json.encode(a)))
                 for a in (request(), request(cpu_cores=999))]
        for s in steps:
            await js.publish(s.subject, step_encoder.encode(s),
                             headers={"Nats-Msg-Id": s.msg_id})
        deadline = time.monotonic() + 20
        while (await js.stream_info(RESULTS_STREAM)).state.last_seq < 2:
            assert time.monotonic() < deadline, "no outcomes"
            await asyncio.sleep(0.05)
        found = [outcome_decoder.decode((await js.get_msg(RESULTS_STREAM, seq)).data or b"")
                 for seq in (1, 2)]
        return sorted(found, key=lambda o: o.ok)
    finally:
        await stop()
        await nc.close()


def _check_two_plans(refused: Any, ok: Any) -> None:
    assert ok.ok and msgspec.json.decode(ok.result, type=Placement).host_name == "kvm-b1"
    assert (refused.ok, refused.error_code, refused.retryable) == (
        False, "insufficient_capacity", False)
    assert "8 lack cpu" in refused.message


def test_worker_serves_plan_steps_over_nats(platform: Platform, pg_dsn: str,
                                            nats_url: str) -> None:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=2)
    with platform_log(settings) as log:
        plugin = make_planner({"log": log})
        worker = Worker(plugin, servers=[nats_url], concurrency=2)
        halt = asyncio.Event()
        tasks: list[asyncio.Task[Any]] = []

        async def serve() -> None:
            tasks.append(asyncio.create_task(worker.run(halt)))
            await asyncio.wait_for(worker.ready.wait(), 15)

        async def stop() -> None:
            halt.set()
            await asyncio.wait_for(tasks[0], 30)

        _check_two_plans(*asyncio.run(_two_plans(nats_url, serve, stop)))


def test_a_standalone_planner_worker_follows_the_configured_store(
        platform: Platform, pg_dsn: str, nats_url: str, tmp_path: Path) -> None:
    """`cloudkernel worker --subsystem planner` follows the log of its Settings' store
    (PostgreSQL here, from the environment), not a default SQLite store under ./data."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLOUDKERNEL_STORE": "postgres",
           "CLOUDKERNEL_POSTGRES_DSN": pg_dsn}
    env.pop("CLOUDKERNEL_CONFIG", None)
    procs: list[subprocess.Popen[str]] = []

    async def serve() -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateways.cli.main", "worker", "--subsystem", "planner",
             "--nats-url", nats_url], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # blocks until it serves or dies
            seen.append(line)
            if " serves " in line:
                return
        raise AssertionError("the planner worker did not start:\n" + "".join(seen))

    async def stop() -> None:
        procs[0].terminate()
        procs[0].wait(30)

    try:
        _check_two_plans(*asyncio.run(_two_plans(nats_url, serve, stop)))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert not (tmp_path / "data").exists()
