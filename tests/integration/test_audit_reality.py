"""`cloudkernel audit reality` against a running cloud: the kernel and real workers over NATS,
PostgreSQL and libvirt's test driver. Drift is made behind the kernel's back through libvirt
and the file system, and the check (in process, and the CLI in its own process, which can
only ask the workers over NATS) names each difference."""

import asyncio
import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

from support.cloud import prepare, running_cloud, write_inventory
from support.split_platform import CLI, process_env

from aggregates.host import Host
from aggregates.vm import VirtualMachine
from gateways.audit.reality import check_reality
from kernel.bootstrap.migrations import migrate_all
from kernel.cloud.hosts import DisableHost
from kernel.cloud.vms import DeployVm, StartVm, StopVm
from kernel.settings import Settings
from subsystems.libvirt.connections import connection

STRAY_DOMAIN = """<domain type='test'><name>stray-1</name><uuid>{uuid}</uuid>
<memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>
</domain>"""
STRAY_NETWORK = "<network><name>ck-{hex}</name><bridge name='ckstray0'/></network>"


def audit(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "audit", "reality", *args], env=process_env(settings, **env),
                          capture_output=True, text=True, timeout=120)


def two_hosts(tmp_path: Path, pg_dsn: str, nats_url: str, factory: Callable[..., str]
              ) -> tuple[Settings, list[str], Path]:
    """Migrated settings on PostgreSQL and NATS, two simulated hosts and their inventory."""
    uris = [factory(f"kvm-{i}", cpus=4, memory_mib=8192) for i in range(2)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    return settings, uris, write_inventory(tmp_path, uris)


async def deploy_web(cloud: Any, ids: Any) -> VirtualMachine:
    """web-1 with a NIC on the prepared network, Running."""
    accepted = await cloud.command(DeployVm(
        name="web-1", account="alice", zone_id=ids.zone_id,
        service_offering_id=ids.offering_id, template_id=ids.template_id,
        network_ids=(ids.network_id,)))
    assert (await cloud.finished(accepted["operation_id"])).state.value == "Succeeded"
    vm: VirtualMachine = await cloud.get(UUID(accepted["vm_id"]))
    return vm


def test_audit_reality_names_each_difference_and_exits_by_them(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    settings, uris, inventory = two_hosts(tmp_path, pg_dsn, nats_url, libvirt_host_factory)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory)
            vm = await deploy_web(cloud, ids)
            host: Host = await cloud.get(vm.host_id)
            other = next(u for u in uris if u != host.uri)
            clean = await check_reality(cloud.app, [nats_url])
            assert clean.clean and clean.settled, clean.differences
            assert sorted(clean.hosts) == ["kvm-0", "kvm-1"]

            # drift behind the kernel's back
            stray_uuid = uuid.uuid4()
            connection(other).defineXML(STRAY_DOMAIN.format(uuid=stray_uuid))
            stray_net = f"ck-{uuid.uuid4().hex}"
            connection(other).networkDefineXML(
                STRAY_NETWORK.format(hex=stray_net.removeprefix("ck-")))
            stray_file = tmp_path / "pool" / f"{uuid.uuid4()}.qcow2"
            stray_file.write_bytes(b"leak")
            stray_image = tmp_path / "images" / "stray.iso"
            stray_image.write_bytes(b"leak")
            connection(host.uri).lookupByUUIDString(str(vm.id)).destroy()

            report = await check_reality(cloud.app, [nats_url])
            found = {(d.kind, d.host) for d in report.differences}
            other_name = "kvm-1" if host.name == "kvm-0" else "kvm-0"
            assert sorted((d.kind, d.subject) for d in report.differences
                          if d.kind == "file_without_entity") == sorted([
                              ("file_without_entity", str(stray_file)),
                              ("file_without_entity", str(stray_image))])
            assert {(k, h) for k, h in found if k != "file_without_entity"} == {
                ("domain_without_vm", other_name), ("network_without_entity", other_name),
                ("domain_state", host.name), ("claim_mismatch", host.name)}, \
                report.differences
            texts = "\n".join(map(str, report.differences))
            assert str(stray_uuid) in texts and stray_net in texts

            # the operator's command, in its own process: only NATS reaches the workers
            out = await asyncio.to_thread(audit, settings, "--json")
            assert out.returncode == 1, out.stderr
            listed = json.loads(out.stdout)
            assert {(d["kind"], d["host"]) for d in listed["differences"]} == found
            assert listed["clean"] is False
            one = await asyncio.to_thread(audit, settings, "--host", other)
            assert one.returncode == 1, one.stderr
            assert "domain_without_vm" in one.stdout and "domain_state" not in one.stdout
            unknown = await asyncio.to_thread(audit, settings, "--host", "kvm-9")
            assert unknown.returncode == 2 and "kvm-9" in unknown.stderr, unknown
            no_nats = await asyncio.to_thread(audit, settings, "--timeout", "2",
                                              CLOUDKERNEL_NATS_URLS="nats://127.0.0.1:1")
            assert no_nats.returncode == 3 and "NATS" in no_nats.stderr, no_nats

            # resolved, except the file, which the test declares
            connection(other).lookupByUUIDString(str(stray_uuid)).undefine()
            connection(other).networkLookupByName(stray_net).undefine()
            connection(host.uri).lookupByUUIDString(str(vm.id)).create()
            stray_image.unlink()
            out = await asyncio.to_thread(audit, settings)
            assert out.returncode == 1 and "file_without_entity" in out.stdout, out
            assert "1 difference(s) on 2 host(s)" in out.stdout
            cloud.expect_difference("file_without_entity", stray_file.name)

    asyncio.run(scenario())


def test_the_after_test_check_fails_on_an_undeclared_leak(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    settings, uris, inventory = two_hosts(tmp_path, pg_dsn, nats_url, libvirt_host_factory)

    async def leak() -> None:
        async with running_cloud(settings) as cloud:
            await prepare(cloud, inventory, network=False)
            connection(uris[0]).defineXML(STRAY_DOMAIN.format(uuid=uuid.uuid4()))

    try:
        asyncio.run(leak())
    except AssertionError as e:
        assert "domain_without_vm" in str(e) and "stray-1" in str(e), e
    else:
        raise AssertionError("a leaked domain passed the after-test check")


def test_audit_reality_says_when_the_store_cannot_serve_and_refuses_bad_options(
        tmp_path: Path) -> None:
    empty = Settings(data_dir=tmp_path / "nothing-here")  # SQLite, never migrated
    out = audit(empty)
    assert out.returncode == 3 and "not migrated" in out.stderr, out
    bad = audit(empty, "--timeout", "-1")
    assert bad.returncode == 2 and "--timeout" in bad.stderr, bad


def test_a_vm_started_on_another_host_leaves_no_dhcp_entry_behind(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    # Found by the after-test check of the split-process test: a VM stopped on one host and
    # started on another kept its NIC's DHCP entry on the first.
    settings, _, inventory = two_hosts(tmp_path, pg_dsn, nats_url, libvirt_host_factory)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory)
            vm = await deploy_web(cloud, ids)
            first = vm.host_id
            stopped = await cloud.command(StopVm(vm_id=vm.id, force_after_seconds=1))
            assert (await cloud.finished(stopped["operation_id"])).state.value == "Succeeded"
            assert first is not None
            await cloud.command(DisableHost(host_id=first, reason="the VM must move"))
            started = await cloud.command(StartVm(vm_id=vm.id))
            assert (await cloud.finished(started["operation_id"])).state.value == "Succeeded"
            vm = await cloud.get(vm.id)
            assert vm.state.value == "Running" and vm.host_id not in (None, first)
            report = await check_reality(cloud.app, [nats_url])
            assert report.clean, report.differences

    asyncio.run(scenario())
