"""VM deploys end to end, placement latency, and the test driver's own limit, from one run.

Usage:
    .venv/bin/python bench/deploy.py [--deploys 1000] [--hosts 8] [--nics]

It starts a throwaway PostgreSQL and a nats-server, loads a fleet of libvirt test-driver
hosts, downloads a template, then runs the kernel with real planner, storage and hypervisor
workers (and networkguru / networkelement with --nics) in this process, and prints:
  * deploys/s end to end (all deploys submitted at once, until the last is Running), with
    p50/p99 deploy latency (accepted -> finished, from the operations' own timestamps);
  * placement latency at 1k, 10k and 25k hosts (FirstFit over the planner's index);
  * beside them, the limit: the test driver's define+start rate from a bare libvirt loop.

With --real the host is a private libvirtd + qemu (TCG) started as the real-qemu test tier
starts it (tests/fixtures/qemu_host.py), the template is the tier's tiny bootable guest
(tests/support/guest_image.py), and it prints deploys/s through the platform beside a bare
libvirt define+start loop of the same guest on the same daemon, measured in the same run
(default --deploys 10: every deployed guest boots and runs under TCG on the machine's cores).
"""

import argparse
import asyncio
import functools
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from aggregates.operation import Operation, OperationState  # noqa: E402
from gateways.stream.embedded import EmbeddedNatsServer  # noqa: E402
from gateways.stream.intake import DEFAULT_CONCURRENCY  # noqa: E402
from kernel.bootstrap.migrations import migrate_all  # noqa: E402
from kernel.cloud.vms import DeployVm  # noqa: E402
from kernel.operations import TERMINAL_TOPICS  # noqa: E402
from kernel.settings import Settings  # noqa: E402


class DeployRun(NamedTuple):
    """What one end-to-end run measured."""

    rate: float
    latencies: list[float]  # ms, accepted -> finished
    failed: int
    step_ms: dict[str, float]  # p50 of each step kind, dispatched -> applied
    kernel_cpu_ms: float  # this process's CPU per deploy (kernel, dispatcher, submitters)


async def deploy_run(settings: Settings, inventory: Path, deploys: int, nics: bool,
                     in_process: bool, submitters: int, *, leases: bool = False) -> DeployRun:
    """Submit every deploy at once from `submitters` threads, then wait for the log to hold
    every operation's end. `leases`: the kernel works the partitions it leases (every write
    fenced), as `cloudkernel kernel` does on PostgreSQL."""
    from support.cloud import prepare, running_cloud

    async with running_cloud(settings, worker_processes=not in_process,
                             leases=leases) as cloud:
        ids = await prepare(cloud, inventory, network=nics, cidr="10.1.0.0/17")
        networks = (ids.network_id,) if nics and ids.network_id else ()
        app = cloud.app
        since = app.recorder.max_notification_id() or 0
        pool = ThreadPoolExecutor(submitters, thread_name_prefix="submit")
        loop = asyncio.get_running_loop()
        cpu0, start = time.process_time(), time.perf_counter()
        accepted = await asyncio.gather(*(loop.run_in_executor(pool, functools.partial(
            cloud.engine.execute, DeployVm(
                name=f"vm-{i}", account=f"acct-{i % 10}", zone_id=ids.zone_id,
                service_offering_id=ids.offering_id, template_id=ids.template_id,
                network_ids=networks), idempotency_key=f"deploy-{i}")) for i in range(deploys)))
        wanted = {UUID(msgspec.json.decode(a.result)["operation_id"]) for a in accepted}
        ended: set[UUID] = set()
        position = since
        while not wanted <= ended:  # one topic-filtered read of the log per tick
            await asyncio.sleep(0.02)
            notes = await asyncio.to_thread(app.recorder.select_notifications, start=position,
                                            limit=10_000, topics=TERMINAL_TOPICS,
                                            inclusive_of_start=False)
            ended |= {UUID(str(n.originator_id)) for n in notes}
            position = notes[-1].id if notes else position
            if time.perf_counter() - start > 600:
                raise TimeoutError(f"{len(wanted - ended)} deploys did not finish")
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        pool.shutdown()
        ops: list[Operation] = [app.repository.get(op_id) for op_id in wanted]
    latencies = [(op.finished_at - op.accepted_at).total_seconds() * 1000
                 for op in ops if op.finished_at is not None]
    spans: dict[str, list[float]] = {}
    for op in ops:
        for run in op.runs.values():
            last = run.attempts[-1] if run.attempts else None
            if last is not None and last.finished_at is not None:
                spans.setdefault(f"{run.subsystem}.{run.action}", []).append(
                    (last.finished_at - last.dispatched_at).total_seconds() * 1000)
    failed = sum(op.state is not OperationState.SUCCEEDED for op in ops)
    return DeployRun(deploys / elapsed, latencies, failed,
                     {k: statistics.median(v) for k, v in spans.items()},
                     cpu * 1000 / deploys)


def placement_latency(sizes: list[int]) -> list[tuple[int, float, float]]:
    """p50/p99 ms of FirstFit placements at each fleet size (bench/placement.py's model)."""
    import random

    from placement import Inventory, fast, measure, pct, requests

    out = []
    for n in sizes:
        rng = random.Random(7)
        inv = Inventory(n, 1, rng)
        times = measure(inv, requests(inv, "FirstFit", 1000, rng), fast)
        out.append((n, pct(times, .5), pct(times, .99)))
    return out


def main() -> int:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deploys", type=int, default=None,
                        help="default 1000, or 10 with --real")
    parser.add_argument("--real", action="store_true",
                        help="one real libvirtd + qemu (TCG) host and a bootable guest")
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--nics", action="store_true", help="one NIC per VM (guru, element)")
    parser.add_argument("--in-process", action="store_true",
                        help="workers in the kernel's process (default: one process each)")
    parser.add_argument("--submitters", type=int, default=DEFAULT_CONCURRENCY,
                        help="threads submitting the deploys (default: the command intake's "
                             "concurrency)")
    args = parser.parse_args()
    if args.real:
        return real_main(args)
    args.deploys = args.deploys or 1000
    from fixtures import write_test_host
    from fixtures.postgres import PostgresServer, create_database, with_dbname
    from support.cloud import write_inventory

    from subsystems.libvirt.bench import bare_define_start_rate

    tmp = Path(tempfile.mkdtemp(prefix="ck-deploy-"))
    pg = PostgresServer()
    nats_server = EmbeddedNatsServer(tmp / "nats")
    try:
        pg.start()
        url = nats_server.start()
        dsn = with_dbname(pg.dsn, create_database(pg.dsn, prefix="bench_"))
        settings = Settings(store="postgres", postgres_dsn=dsn, nats_urls=(url,),
                            data_dir=tmp / "data", postgres_pool_size=4)
        migrate_all(settings)
        uris = [write_test_host(tmp / "hosts" / f"kvm-{i}.xml", cpus=512, memory_mib=2**21)
                for i in range(args.hosts)]
        inventory = write_inventory(tmp, uris, host_cores=512, host_memory_mib=2**21,
                                    vm_cores=1, vm_memory_mib=512)
        run = asyncio.run(deploy_run(settings, inventory, args.deploys, args.nics,
                                     args.in_process, args.submitters))
        bare = bare_define_start_rate(write_test_host(tmp / "hosts" / "bare.xml", cpus=512,
                                                      memory_mib=2**21), 1000)
        placements = placement_latency([1000, 10000, 25000])
    finally:
        nats_server.stop()
        pg.destroy()
    qs = statistics.quantiles(run.latencies, n=100)
    nic_note = "with one NIC each" if args.nics else "no NICs"
    where = "workers in the kernel's process" if args.in_process else "a process per worker"
    print(f"VM deploys end to end on PostgreSQL + nats-server + libvirt test driver "
          f"({args.deploys} at once, {args.hosts} hosts, {nic_note}, {where}, 2 cores)")
    print(f"{'deploys':<40}{run.rate:>10,.0f} /s   ({run.failed} failed, "
          f"{args.submitters} submitting threads)")
    print(f"{'deploy latency':<40}  p50 {qs[49]:,.0f} ms, p99 {qs[98]:,.0f} ms")
    for kind, ms in run.step_ms.items():
        print(f"{f'  step {kind}':<40}  p50 {ms:,.0f} ms (dispatched -> applied)")
    print(f"{'  kernel process CPU per deploy':<40}{run.kernel_cpu_ms:>10.2f} ms")
    print(f"{'  limit: bare libvirt define+start':<40}{bare.per_second:>10,.0f} /s")
    for n, p50, p99 in placements:
        print(f"{f'placement among {n:,} hosts (FirstFit)':<40}  p50 {p50:.3f} ms, "
              f"p99 {p99:.3f} ms")
    print("goals: >= 300 deploys/s; placement among 25k hosts <= 10 ms")
    return 0


def bare_qemu_rate(host: Any, template: Path, n: int, threads: int = 1) -> float:
    """Guests/s of plain libvirt defineXML + create calls on the real daemon, from `threads`
    threads sharing one connection: each guest a copy of the template (copied before the
    clock starts), destroyed and undefined after."""
    import shutil
    import uuid

    from support.guest_image import plain_domain_xml

    folder = host.storage_dir / f"bare-{threads}"
    folder.mkdir(mode=0o755)
    xmls = []
    for i in range(n):
        disk = folder / f"bare-{i}.qcow2"
        shutil.copyfile(template, disk)
        xmls.append(plain_domain_xml(f"bare-{threads}-{i}", str(uuid.uuid4()), disk))
    conn = host.connect()

    def define_start(xml: str) -> Any:
        dom = conn.defineXML(xml)
        dom.create()
        return dom

    try:
        with ThreadPoolExecutor(threads) as pool:
            t0 = time.perf_counter()
            started = list(pool.map(define_start, xmls))
            seconds = time.perf_counter() - t0
        for dom in started:
            dom.destroy()
            dom.undefine()
    finally:
        conn.close()
    shutil.rmtree(folder)
    return n / seconds


def real_main(args: argparse.Namespace) -> int:
    """--real: the platform's deploys/s on one private libvirtd + qemu (TCG), beside the bare
    define+start loop of the same guest on that daemon."""
    from fixtures.postgres import PostgresServer, create_database, with_dbname
    from fixtures.qemu_host import QemuHost
    from support.cloud import write_inventory
    from support.guest_image import build_guest_image

    deploys = args.deploys or 10
    guest = build_guest_image()
    tmp = Path(tempfile.mkdtemp(prefix="ck-deploy-"))
    pg = PostgresServer()
    nats_server = EmbeddedNatsServer(tmp / "nats")
    host = QemuHost("ck-bench-1")
    try:
        pg.start()
        url = nats_server.start()
        host.start()
        dsn = with_dbname(pg.dsn, create_database(pg.dsn, prefix="bench_"))
        settings = Settings(store="postgres", postgres_dsn=dsn, nats_urls=(url,),
                            data_dir=tmp / "data", postgres_pool_size=4)
        migrate_all(settings)
        folder = host.storage_dir / "platform"
        folder.mkdir(mode=0o755)
        inventory = write_inventory(folder, [host.uri], host_cores=512, host_memory_mib=2**20,
                                    vm_cores=1, vm_memory_mib=128, template_image=guest.root)
        run = asyncio.run(deploy_run(settings, inventory, deploys, args.nics,
                                     args.in_process, args.submitters))
        host.clean()  # the deployed guests go: the bare loop gets the cores the platform had
        bare = bare_qemu_rate(host, guest.root, deploys)
        bare_parallel = bare_qemu_rate(host, guest.root, deploys, threads=8)
    finally:
        host.destroy()
        nats_server.stop()
        pg.destroy()
    qs = statistics.quantiles(run.latencies, n=100) if len(run.latencies) > 1 else \
        [run.latencies[0]] * 99
    nic_note = "with one NIC each" if args.nics else "no NICs"
    where = "workers in the kernel's process" if args.in_process else "a process per worker"
    print(f"VM deploys end to end on PostgreSQL + nats-server + one real libvirtd + qemu "
          f"(TCG), guest {guest.kernel_version} ({deploys} at once, {nic_note}, {where})")
    print(f"{'deploys':<40}{run.rate:>10,.2f} /s   ({run.failed} failed)")
    print(f"{'deploy latency':<40}  p50 {qs[49]:,.0f} ms, p99 {qs[98]:,.0f} ms")
    for kind, ms in run.step_ms.items():
        print(f"{f'  step {kind}':<40}  p50 {ms:,.0f} ms (dispatched -> applied)")
    print(f"{'  kernel process CPU per deploy':<40}{run.kernel_cpu_ms:>10.2f} ms")
    print(f"{'bare libvirt define+start, same guest':<40}{bare:>10,.2f} /s   (same daemon, "
          f"{deploys} domains, one after another)")
    print(f"{'  the same from 8 threads':<40}{bare_parallel:>10,.2f} /s   (one connection; the "
          f"hypervisor worker runs 8 steps at once)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

