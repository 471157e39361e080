"""A running cloud for tests: the kernel with real workers, over a written inventory."""

import asyncio
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec

from aggregates.operation import Operation
from gateways.stream.kernel_runner import KernelRunner
from gateways.stream.worker import Worker
from kernel.bootstrap import open_engine
from kernel.bootstrap.plugins import console_desks, with_platform_log
from kernel.leases import LeaseTable
from kernel.platform_log import ApplicationLog
from kernel.settings import Settings
from subsystems.registry import load_registry

from .invariants import reality_findings

ROOT = Path(__file__).resolve().parents[2]

PLUGINS = ("planner", "storage", "hypervisor", "networkguru", "networkelement", "snapshot",
           "backup")


def write_inventory(tmp: Path, host_uris: list[str], *, host_cores: int = 4,
                    host_memory_mib: int = 8192, vm_cores: int = 2,
                    vm_memory_mib: int = 2048, second_pool: bool = False,
                    template_image: Path | None = None) -> Path:
    """Two hosts, a file pool, a file image store and a checksummed file template; with
    `second_pool`, another file pool of the cluster (`primary-2`, at `tmp/pool-2`). The
    template is a tiny header-only qcow2 that nothing can boot, or a copy of `template_image`
    (the real-qemu tier's guest)."""
    source = tmp / "source" / "tiny.qcow2"
    source.parent.mkdir(parents=True)
    if template_image is not None:
        shutil.copyfile(template_image, source)
    else:
        source.write_bytes(b"QFI\xfb" + b"\0" * 65532)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    hosts = "".join(f'''
[[hosts]]
name = "kvm-{i}"
cluster = "c1"
uri = "{uri}"
cpu_cores = {host_cores}
cpu_mhz = 2000
memory_mib = {host_memory_mib}
''' for i, uri in enumerate(host_uris))
    pool_2 = f'''
[[storage_pools]]
name = "primary-2"
cluster = "c1"
uri = "file://{tmp / 'pool-2'}"
capacity_gib = 100''' if second_pool else ""
    path = tmp / "inventory.toml"
    path.write_text(f'''
[[zones]]
name = "z1"
network_type = "Advanced"
dns = ["192.0.2.53"]
guest_cidr = "10.1.0.0/16"
[[pods]]
name = "p1"
zone = "z1"
gateway = "10.0.0.1"
cidr = "10.0.0.0/24"
start_ip = "10.0.0.10"
end_ip = "10.0.0.200"
[[clusters]]
name = "c1"
pod = "p1"
hypervisor = "KVM"
{hosts}
[[storage_pools]]
name = "primary"
cluster = "c1"
uri = "file://{tmp / 'pool'}"
capacity_gib = 100{pool_2}
[[image_stores]]
name = "images"
zone = "z1"
url = "file://{tmp / 'images'}"
protocol = "nfs"
[[templates]]
name = "tiny"
zone = "z1"
url = "file://{source}"
format = "QCOW2"
os_type = "Other Linux (64-bit)"
checksum = "{{SHA-256}}{digest}"
[[service_offerings]]
name = "small"
cpu_cores = {vm_cores}
cpu_mhz = 1000
memory_mib = {vm_memory_mib}
''')
    return path


class Cloud:
    """The running kernel with its workers; blocking calls go to threads.

    When the test's body ends without an error, `running_cloud` checks reality (PROOF.md 3,
    `cloudkernel audit reality`) and fails the test on any difference a test did not declare
    with `expect_difference`.
    """

    def __init__(self, engine: Any, settings: Settings) -> None:
        self.engine, self.settings, self.app = engine, settings, engine.app
        self.expected_differences: list[tuple[str, str]] = []

    def expect_difference(self, kind: str, text: str) -> None:
        """Declare a difference the test leaves on purpose: of `kind`, with `text` in its
        subject or detail. It must be found, and nothing else may be."""
        self.expected_differences.append((kind, text))

    async def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kw)

    async def command(self, command: Any) -> dict[str, Any]:
        out = await self.call(self.engine.execute, command, idempotency_key=f"k-{uuid4()}")
        return msgspec.json.decode(out.result)  # type: ignore[no-any-return]

    async def get(self, aggregate_id: UUID) -> Any:
        return await self.call(self.app.repository.get, aggregate_id)

    async def finished(self, operation_id: str, timeout: float = 30) -> Operation:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            op: Operation = await self.get(UUID(operation_id))
            if op.is_finished:
                return op
            await asyncio.sleep(0.05)
        raise AssertionError(f"operation {operation_id} did not finish: {op.state}")

    def ids(self, topic: str) -> list[UUID]:
        return [UUID(str(n.originator_id)) for n in self.app.recorder.select_notifications(
            start=None, limit=10_000, topics=(topic,))]


@asynccontextmanager
async def running_cloud(settings: Settings, *, worker_processes: bool = False,
                        leases: bool = False,
                        configs: Mapping[str, dict[str, Any]] | None = None
                        ) -> AsyncIterator[Cloud]:
    """The kernel in this process; the workers too, or each in its own `cloudkernel worker`
    process (as in production: then each has its own interpreter and libvirt connections).
    `leases` (PostgreSQL): the kernel works the partitions it leases, as `cloudkernel kernel`
    does, so that other kernels may share them. `configs`: plugin configs by name (the
    hypervisor's `console_secret_file` also starts its console desk beside it)."""
    configs = dict(configs or {})
    platform, engine, feed = await asyncio.to_thread(open_engine, settings)
    stop = asyncio.Event()
    workers: list[Worker] = []
    desks: list[Any] = []
    processes: list[subprocess.Popen[str]] = []
    if worker_processes:  # each follows the store of the settings it is given (env)
        processes = [_worker_process(name, configs.get(name, {}), settings)
                     for name in PLUGINS]
    else:  # as `up` does: the followers read the kernel's own platform application
        registry = load_registry(PLUGINS, with_platform_log(configs,
                                                            ApplicationLog(platform.app)))
        workers = [Worker(registry.plugin(name).subsystem, servers=list(settings.nats_urls),
                          concurrency=4, fetch_timeout=0.25) for name in PLUGINS]
        desks = console_desks([w.subsystem for w in workers], list(settings.nats_urls))
    table = LeaseTable(settings.postgres_dsn, settings.postgres_schema,
                       partitions=settings.kernel_partitions,
                       period=settings.lease_seconds) if leases else None
    runner = KernelRunner(engine, feed, list(settings.nats_urls), leases=table,
                          name=f"test-{uuid4().hex[:8]}")
    tasks = [asyncio.create_task(w.run(stop)) for w in [*workers, *desks]]
    tasks.append(asyncio.create_task(runner.run(stop)))
    try:
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in [*workers, *desks])),
                               30)
        while table is not None and runner.ownership is not None \
                and not runner.ownership.held():
            await asyncio.sleep(0.05)  # its first leases taken
        for proc in processes:
            await asyncio.to_thread(_wait_ready, proc)
        cloud = Cloud(engine, settings)
        yield cloud
        findings = await reality_findings(cloud.app, list(settings.nats_urls),
                                          tuple(cloud.expected_differences))
        assert not findings, "reality differs from the model:\n" + "\n".join(findings)
    finally:
        stop.set()
        for proc in processes:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        for proc in processes:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        platform.close()


def _worker_process(name: str, config: dict[str, Any],
                    settings: Settings) -> "subprocess.Popen[str]":
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLOUDKERNEL_STORE": settings.store,
           "CLOUDKERNEL_DATA_DIR": str(settings.data_dir),
           "CLOUDKERNEL_POSTGRES_SCHEMA": settings.postgres_schema,
           "CLOUDKERNEL_POSTGRES_POOL_SIZE": str(settings.postgres_pool_size)}
    if settings.postgres_dsn:
        env["CLOUDKERNEL_POSTGRES_DSN"] = settings.postgres_dsn
    env.pop("CLOUDKERNEL_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "gateways.cli.main", "worker", "--subsystem", name,
         "--concurrency", "8", "--config-json", json.dumps(config),
         *(arg for url in settings.nats_urls for arg in ("--nats-url", url))],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_ready(proc: "subprocess.Popen[str]") -> None:
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if " serves " in line:
            threading.Thread(target=lambda: proc.stdout and proc.stdout.read(),
                             daemon=True).start()  # keep its pipe drained
            return
    raise AssertionError("worker process did not start:\n" + "".join(seen))


class Prepared:
    """The ids a prepared cloud has: zone, offering, ready template, implemented network."""

    def __init__(self, zone_id: UUID, offering_id: UUID, template_id: UUID,
                 network_id: UUID | None) -> None:
        self.zone_id, self.offering_id = zone_id, offering_id
        self.template_id, self.network_id = template_id, network_id


async def prepare(cloud: Cloud, inventory: Path, *, network: bool = True,
                  cidr: str = "10.1.1.0/24") -> Prepared:
    """Load the inventory, download the template, create and implement a network."""
    from kernel.bootstrap import open_platform
    from kernel.cloud.networks import CreateNetworkCommand, ImplementNetworkCommand
    from kernel.cloud.templates import DownloadTemplateCommand
    from kernel.inventory.loader import load_inventory_file

    platform = await cloud.call(open_platform, cloud.settings)
    try:
        await cloud.call(load_inventory_file, platform.commands, inventory)
    finally:
        platform.close()
    [template_id] = cloud.ids("template.Registered")
    [store_id] = cloud.ids("image_store.Added")
    [zone_id] = cloud.ids("zone.Created")
    [offering_id] = cloud.ids("service_offering.Created")
    download = await cloud.command(DownloadTemplateCommand(template_id=template_id,
                                                           image_store_id=store_id))
    await cloud.finished(download["operation_id"])
    network_id = None
    first = ipaddress.ip_network(cidr).network_address
    if network:
        created = await cloud.command(CreateNetworkCommand(
            zone_id=zone_id, name="guests", cidr=cidr,
            reserved_ranges=((str(first + 1), str(first + 8)),)))
        await cloud.finished(created["operation_id"])
        network_id = UUID(created["network_id"])
        implemented = await cloud.command(ImplementNetworkCommand(network_id=network_id))
        await cloud.finished(implemented["operation_id"])
    return Prepared(zone_id, offering_id, template_id, network_id)
