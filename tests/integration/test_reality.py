"""Reality behind the kernel's back: each test changes a host directly through libvirt's API
(stops, starts, defines and undefines domains, or silences a host's reports) and checks that
the kernel notices it from the power reports that come over NATS, and handles it by policy.
The kernel, its workers, PostgreSQL, nats-server and libvirt's test driver are all real."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import libvirt
from support.cloud import Cloud, Prepared, prepare, running_cloud, write_inventory

from aggregates.host import Host, HostStatus
from aggregates.unmanaged import Disposition, UnmanagedDomain
from aggregates.vm import PowerState, VirtualMachine, VmState
from gateways.stream.observer import ObservationListener, PowerReporter
from kernel.bootstrap.migrations import migrate_all
from kernel.cloud.vms import DeployVm
from kernel.reality.reconciler import RealityPolicy, Reconciler
from kernel.settings import Settings
from subsystems.hypervisor.plugin import Hypervisor
from subsystems.libvirt.connections import connection

INTERVAL = 0.2


@dataclass
class Reality:
    """A running cloud, the hosts its reporter serves (change the set to silence one), and
    the ids of what was prepared."""

    cloud: Cloud
    ids: Prepared
    uris: list[str]
    reporting: set[str] = field(default_factory=set)

    async def deploy(self, name: str, *, ha: bool = False) -> VirtualMachine:
        accepted = await self.cloud.command(DeployVm(
            name=name, account="alice", zone_id=self.ids.zone_id,
            service_offering_id=self.ids.offering_id, template_id=self.ids.template_id,
            ha_enabled=ha))
        op = await self.cloud.finished(accepted["operation_id"])
        assert op.state.value == "Succeeded", op
        vm: VirtualMachine = await self.cloud.get(UUID(accepted["vm_id"]))
        return vm

    async def until(self, what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = await self.cloud.call(check)
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"never: {what}")
            await asyncio.sleep(0.05)

    def vm(self, vm_id: UUID) -> VirtualMachine:
        found: VirtualMachine = self.cloud.app.repository.get(vm_id)
        return found

    def host(self, host_id: UUID | None) -> Host:
        assert host_id is not None
        found: Host = self.cloud.app.repository.get(host_id)
        return found


@asynccontextmanager
async def reality(tmp_path: Path, pg_dsn: str, nats_url: str,
                  factory: Callable[..., str], **policy: Any) -> AsyncIterator[Reality]:
    uris = [factory(f"kvm-{i}", cpus=4, memory_mib=8192) for i in range(2)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris, vm_cores=1, vm_memory_mib=1024)
    async with running_cloud(settings) as cloud:
        ids = await prepare(cloud, inventory, network=False)
        world = Reality(cloud, ids, uris, set(uris))
        reconciler = Reconciler(cloud.engine, RealityPolicy(
            interval=INTERVAL, disconnected_after=2, down_after=4, missing_after=2, **policy))
        reporter = PowerReporter(Hypervisor().observe, lambda: sorted(world.reporting),
                                 [nats_url], INTERVAL)
        listener = ObservationListener(reconciler, [nats_url], batch_wait=0.05)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(reporter.run(stop)), asyncio.create_task(listener.run(stop))]
        try:
            yield world
        finally:
            stop.set()
            await asyncio.gather(*tasks)


def domain(uri: str, vm_id: UUID) -> libvirt.virDomain | None:
    try:
        return connection(uri).lookupByUUIDString(str(vm_id))
    except libvirt.libvirtError:
        return None


def running(uri: str, vm_id: UUID) -> bool:
    dom = domain(uri, vm_id)
    return dom is not None and dom.isActive() == 1


def stranger_xml(name: str, domain_uuid: UUID) -> str:
    return (f"<domain type='test'><name>{name}</name><uuid>{domain_uuid}</uuid>"
            "<memory unit='MiB'>512</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>")


def test_stopped_started_unknown_and_undefined_domains_by_the_adopt_and_quarantine_policy(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    async def scenario() -> None:
        async with reality(tmp_path, pg_dsn, nats_url, libvirt_host_factory) as world:
            web, db = await world.deploy("web"), await world.deploy("db")
            host = world.host(web.host_id)

            # stop a domain: adopted as Stopped, its claim given back, its definition removed
            xml = domain(host.uri, web.id).XMLDesc()  # type: ignore[union-attr]
            domain(host.uri, web.id).destroy()  # type: ignore[union-attr]
            await world.until("web adopted as stopped",
                              lambda: world.vm(web.id).state is VmState.STOPPED)
            assert world.vm(web.id).power_state is PowerState.OFF
            assert all(c[0] != web.id for c in world.host(host.id).claims.values())
            await world.until("its leftover definition removed",
                              lambda: domain(host.uri, web.id) is None)

            # start one on the other host: adopted as Running there, its capacity claimed
            other = next(u for u in world.uris if u != host.uri)
            connection(other).defineXML(xml).create()
            adopted = await world.until(
                "web adopted as running",
                lambda: (vm := world.vm(web.id)).state is VmState.RUNNING and vm)
            there = world.host(adopted.host_id)
            assert there.uri == other and web.id in [c[0] for c in there.claims.values()]

            # define an unknown domain: an entity, quarantined (powered off, kept)
            stranger = uuid.uuid4()
            connection(host.uri).defineXML(stranger_xml("intruder", stranger)).create()
            entity_id = UnmanagedDomain.create_id(host.id, stranger)
            found = await world.until(
                "the intruder quarantined",
                lambda: domain(host.uri, stranger) is not None
                and not running(host.uri, stranger)
                and world.cloud.app.repository.get(entity_id))
            assert found.disposition is Disposition.QUARANTINED and found.name == "intruder"

            # undefine a running VM's domain: PowerReportMissing, then Stopped (no HA)
            gone = domain(world.host(db.host_id).uri, db.id)
            assert gone is not None
            gone.destroy()
            gone.undefine()
            missing = await world.until(
                "db reported missing", lambda: (vm := world.vm(db.id)).state
                is VmState.STOPPED and vm)
            assert missing.power_state is PowerState.REPORT_MISSING
            assert world.host(db.host_id or missing.last_host_id).claims.get(db.id) is None

    asyncio.run(scenario())


def test_the_restart_stop_and_adopt_policies(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    async def scenario() -> None:
        async with reality(tmp_path, pg_dsn, nats_url, libvirt_host_factory,
                           on_stopped_out_of_band="restart", on_unexpected_running="stop",
                           on_unknown_domain="adopt") as world:
            web = await world.deploy("web")
            host = world.host(web.host_id)
            domain(host.uri, web.id).destroy()  # type: ignore[union-attr]
            await world.until("web powered on again where it was",
                              lambda: running(host.uri, web.id))
            assert (world.vm(web.id).state, world.vm(web.id).host_id) == \
                (VmState.RUNNING, host.id)

            # a domain no VM accounts for, adopted: its cpu and memory count on the host
            stranger = uuid.uuid4()
            connection(host.uri).defineXML(stranger_xml("legacy", stranger)).create()
            entity_id = UnmanagedDomain.create_id(host.id, stranger)
            await world.until("legacy adopted",
                              lambda: entity_id in world.host(host.id).claims)
            assert running(host.uri, stranger)
            assert world.host(host.id).claims[entity_id] == (entity_id, 1, 512)
            connection(host.uri).lookupByUUIDString(str(stranger)).destroy()
            connection(host.uri).lookupByUUIDString(str(stranger)).undefine()
            await world.until("legacy gone, its capacity given back",
                              lambda: entity_id not in world.host(host.id).claims)

    asyncio.run(scenario())


def test_a_silent_host_goes_down_and_only_ha_vms_restart_after_it_was_fenced(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    async def scenario() -> None:
        async with reality(tmp_path, pg_dsn, nats_url, libvirt_host_factory) as world:
            plain = await world.deploy("plain")
            host = world.host(plain.host_id)

            # HA off: the host goes Disconnected, then Down; the VM is left as it is
            world.reporting.discard(host.uri)
            await world.until("Disconnected", lambda: world.host(host.id).status
                              is HostStatus.DISCONNECTED, timeout=5)
            await world.until("Down", lambda: world.host(host.id).status is HostStatus.DOWN,
                              timeout=5)
            vm = world.vm(plain.id)
            assert (vm.state, vm.host_id, vm.power_state) == \
                (VmState.RUNNING, host.id, PowerState.UNKNOWN)
            await asyncio.sleep(5 * INTERVAL)
            assert running(host.uri, plain.id)  # nothing was fenced: it may well still run
            world.reporting.add(host.uri)
            await world.until("Up again", lambda: world.host(host.id).status is HostStatus.UP)
            # the pass that brings the host back may skip the VM (it changed since the last
            # look, when it went PowerUnknown): the next report observes it
            await world.until("seen on again",
                              lambda: world.vm(plain.id).power_state is PowerState.ON)

            # HA on: the host is fenced first; then the HA VM starts on the other host
            ha = await world.deploy("ha", ha=True)
            assert ha.host_id == host.id  # FirstFit: the same host
            world.reporting.discard(host.uri)
            moved = await world.until(
                "the HA VM running elsewhere",
                lambda: (vm := world.vm(ha.id)).state is VmState.RUNNING
                and vm.host_id not in (None, host.id) and vm, timeout=30)
            target = world.host(moved.host_id)
            assert running(target.uri, ha.id) and not running(host.uri, ha.id)
            stopped = world.vm(plain.id)  # fenced too: certainly stopped, and not HA
            assert stopped.state is VmState.STOPPED and not running(host.uri, plain.id)
            assert not world.host(host.id).claims

            # the fence kept both definitions; once the host reports again they are removed,
            # so that neither VM can be started a second time there
            world.reporting.add(host.uri)
            await world.until("the fenced host's definitions removed", lambda: domain(
                host.uri, ha.id) is None and domain(host.uri, plain.id) is None, timeout=10)
            assert running(target.uri, ha.id) and world.vm(ha.id).state is VmState.RUNNING

    asyncio.run(scenario())


def test_a_standalone_hypervisor_worker_reports_the_hosts_it_is_told_to(
        tmp_path: Path, nats_url: str, libvirt_host_factory: Callable[..., str]) -> None:
    import os
    import subprocess
    import sys

    import msgspec
    import nats

    from kernel.steps.hypervisor import PowerReport

    uri = libvirt_host_factory("kvm-0", cpus=4, memory_mib=8192)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "CLOUDKERNEL_OBSERVE_INTERVAL_SECONDS": "0.2",
           "CLOUDKERNEL_DATA_DIR": str(tmp_path / "data")}
    env.pop("CLOUDKERNEL_CONFIG", None)
    base = [sys.executable, "-m", "gateways.cli.main", "worker", "--nats-url", nats_url]
    refused = subprocess.run([*base, "--subsystem", "storage", "--observe", uri], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "only the hypervisor" in refused.stderr

    async def listen() -> PowerReport:
        nc = await nats.connect(nats_url)
        sub = await nc.subscribe("observations.power")
        proc = subprocess.Popen([*base, "--subsystem", "hypervisor", "--observe", uri], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            msg = await sub.next_msg(timeout=30)
            return msgspec.json.decode(msg.data, type=PowerReport)
        finally:
            proc.terminate()
            proc.wait(30)
            await nc.close()

    report = asyncio.run(listen())
    assert report.host_uri == uri and report.observed_at is not None
