"""Placement latency of the deployment planner at 1k, 10k and 25k hosts.

Usage:
    .venv/bin/python bench/placement.py [--sizes 1000 10000 25000] [--placements 2000]
                                        [--zones 1] [--seed 7]

For each size it builds a CapacityIndex in memory from the events of real Host and
VirtualMachine aggregates: pods of 8 clusters of 32 hosts (16-128 cores, 64-1024 GiB, cpu
over-provisioning 1-4), partly filled by claims of VMs of 300 accounts, 5% of hosts disabled
or in maintenance, 2% down, a fifth tagged `ssd`, a twentieth `gpu`. By default all hosts are
in one zone, so every placement chooses among all of them (the worst case; more zones only
shrink the scope). It then runs a stream of placements per planner: mixed sizes, some with
host tags, some with an avoid list or anti-affinity; after each, the chosen host is claimed
and, now and then, an older claim released, through the aggregates' events as the kernel
would, so every placement folds fresh changes first.

It prints p50/p99/max latency of `planners.place` (including the refresh of the clusters the
last claim touched), beside the baseline measured in the same run: a linear scan over every
host (`reference.linear_scan`) on the same requests; both must choose the same host. It also
prints the latency of a refused placement (no host fits; the reasons are counted from the
cluster summaries where they settle it) and how fast a fresh index folds the whole log.
"""

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from aggregates.errors import StepFailedError  # noqa: E402
from aggregates.host import Host, HostResourceState, HostStatus  # noqa: E402
from aggregates.vm import VirtualMachine  # noqa: E402
from kernel.steps.planner import PLANNERS, PlannerName, PlanPlacement  # noqa: E402
from subsystems.planner.index import CapacityIndex  # noqa: E402
from subsystems.planner.planners import place  # noqa: E402
from subsystems.planner.reference import linear_scan  # noqa: E402

HOSTS_PER_CLUSTER = 32
CLUSTERS_PER_POD = 8
ACCOUNTS = [f"acct-{i}" for i in range(300)]
SIZES = [(1, 1024), (2, 2048), (2, 4096), (4, 8192), (8, 16384), (16, 65536), (32, 131072)]


class Inventory:
    """Host aggregates, the claims on them, and the index folded from their events."""

    def __init__(self, n: int, zones: int, rng: random.Random) -> None:
        self.rng = rng
        self.index = CapacityIndex()
        self.hosts: list[Host] = []
        self.zone_ids = [uuid4() for _ in range(zones)]
        self.claims: list[tuple[Host, UUID]] = []
        self.vm_account: dict[UUID, str] = {}
        self.log: list[Any] = []
        start = time.perf_counter()
        pods_per_zone = max(1, n // (HOSTS_PER_CLUSTER * CLUSTERS_PER_POD * zones))
        for i in range(n):
            if i % HOSTS_PER_CLUSTER == 0:
                cluster = uuid4()
                cluster_no = i // HOSTS_PER_CLUSTER
                zone = self.zone_ids[cluster_no % zones]
                pod = _pod_id(zone, (cluster_no // zones // CLUSTERS_PER_POD) % pods_per_zone)
                cores = rng.choice([16, 32, 64, 128])
                memory = rng.choice([64, 256, 512, 1024]) * 1024
                cpu_factor = rng.choice([1.0, 2.0, 4.0])
            tags: tuple[str, ...] = ()
            roll = rng.random()
            if roll < 0.05:
                tags = ("ssd", "gpu")
            elif roll < 0.2:
                tags = ("ssd",)
            host = Host.register(name=f"h{i}", uri=f"qemu+ssh://h{i}/system", zone_id=zone,
                                 pod_id=pod, cluster_id=cluster, cpu_cores=cores, cpu_mhz=2400,
                                 memory_mib=memory, cpu_overprovisioning=cpu_factor, tags=tags)
            roll = rng.random()
            if roll < 0.03:
                host.change_resource_state(HostResourceState.DISABLED)
            elif roll < 0.05:
                host.change_resource_state(HostResourceState.PREPARE_FOR_MAINTENANCE)
                host.change_resource_state(HostResourceState.MAINTENANCE)
            elif roll < 0.07:
                host.change_status(HostStatus.DOWN)
            self.hosts.append(host)
            self._fold(host)
            fill = rng.random() * 0.9
            while host.used_memory_mib < fill * host.total_memory_mib:
                cpu, mem = rng.choice(SIZES[:5])
                if not self.claim(host, cpu, mem, rng.choice(ACCOUNTS)):
                    break
        self.build_seconds = time.perf_counter() - start

    def claim(self, host: Host, cpu: int, mem: int, account: str) -> bool:
        """Claim on the aggregate (as the kernel does) and fold the events; False if refused."""
        if host.resource_state is not HostResourceState.ENABLED or host.status is not \
                HostStatus.UP or cpu > host.free_cpu_cores or mem > host.free_memory_mib:
            return False
        vm = VirtualMachine.allocate(name=f"vm-{len(self.vm_account)}", account=account,
                                     zone_id=host.zone_id, service_offering_id=self.zone_ids[0],
                                     template_id=self.zone_ids[0])
        self.vm_account[vm.id] = account
        claim_id = uuid4()
        host.claim(claim_id, vm.id, cpu, mem)
        self.claims.append((host, claim_id))
        self._fold(vm)
        self._fold(host)
        return True

    def release_one(self) -> None:
        """Release a random older claim."""
        k = self.rng.randrange(len(self.claims))
        self.claims[k], self.claims[-1] = self.claims[-1], self.claims[k]
        host, claim_id = self.claims.pop()
        host.release(claim_id)
        self._fold(host)

    def _fold(self, aggregate: Any) -> None:
        events = aggregate.collect_events()
        self.log.extend(events)
        self.index.apply_all(events)


def _pod_id(zone: UUID, n: int) -> UUID:
    return UUID(int=(zone.int ^ (n + 1)))


def requests(inv: Inventory, planner: PlannerName, count: int,
             rng: random.Random) -> list[PlanPlacement]:
    """A stream of mixed requests in the first zone."""
    out = []
    host_ids = [h.id for h in inv.hosts]
    vms = list(inv.vm_account)
    for _ in range(count):
        cpu, mem = rng.choice(SIZES)
        roll = rng.random()
        tags: tuple[str, ...] = ("ssd",) if roll < 0.2 else ("gpu",) if roll < 0.25 else ()
        avoid = tuple(rng.sample(host_ids, 3)) if rng.random() < 0.1 else ()
        anti = tuple(rng.sample(vms, 4)) if rng.random() < 0.1 else ()
        out.append(PlanPlacement(vm_id=uuid4(), account=rng.choice(ACCOUNTS),
                                 zone_id=inv.zone_ids[0], cpu_cores=cpu, memory_mib=mem,
                                 host_tags=tags, planner=planner, avoid_hosts=avoid,
                                 anti_affinity_vm_ids=anti))
    return out


def measure(inv: Inventory, reqs: list[PlanPlacement],
            decide: Callable[[CapacityIndex, PlanPlacement], UUID | None]) -> list[float]:
    """Latency in ms of each decision; the chosen host is claimed before the next one."""
    by_id = {h.id: h for h in inv.hosts}
    times = []
    for args in reqs:
        t0 = time.perf_counter_ns()
        host_id = decide(inv.index, args)
        times.append((time.perf_counter_ns() - t0) / 1e6)
        if host_id is not None:
            inv.claim(by_id[host_id], args.cpu_cores, args.memory_mib, args.account)
            if inv.rng.random() < 0.7:
                inv.release_one()
    return times


def fast(index: CapacityIndex, args: PlanPlacement) -> UUID | None:
    """The planner's search."""
    try:
        return place(index, args).host_id
    except StepFailedError:
        return None


def naive(index: CapacityIndex, args: PlanPlacement) -> UUID | None:
    """The linear scan baseline."""
    host = linear_scan(index, args)
    return None if host is None else host.id


def pct(values: list[float], q: float) -> float:
    """The q-quantile."""
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def main() -> None:
    """Build each size, run each planner's stream twice (search, baseline), print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 25000])
    parser.add_argument("--placements", type=int, default=2000)
    parser.add_argument("--baseline-placements", type=int, default=300)
    parser.add_argument("--zones", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(f"{'hosts':>6} {'planner':<20} {'search p50':>10} {'p99':>7} {'max':>7} "
          f"{'scan p50':>9} {'p99':>7} {'x p50':>6}  same host")
    for n in args.sizes:
        rng = random.Random(args.seed)
        inv = Inventory(n, args.zones, rng)
        # This process holds the whole log and every aggregate, millions of objects a planner
        # does not keep; without freezing them, gen-2 collections add 10-30 ms outliers.
        gc.freeze()
        for planner in PLANNERS:
            reqs = requests(inv, planner, args.placements, rng)
            # the same requests on the same state: choices must agree
            sample = reqs[: args.baseline_placements]
            agree = sum(fast(inv.index, r) == naive(inv.index, r) for r in sample)
            search = measure(inv, reqs, fast)
            scan = measure(inv, requests(inv, planner, args.baseline_placements, rng), naive)
            print(f"{n:>6} {planner:<20} {pct(search, .5):>8.3f}ms {pct(search, .99):>7.3f} "
                  f"{max(search):>7.3f} {pct(scan, .5):>7.3f}ms {pct(scan, .99):>7.3f} "
                  f"{pct(scan, .5) / pct(search, .5):>5.0f}x  {agree}/{len(sample)}")
        refused = [PlanPlacement(vm_id=uuid4(), account="a", zone_id=inv.zone_ids[0],
                                 cpu_cores=4096, memory_mib=1024) for _ in range(50)]
        times = measure(inv, refused, fast)
        fold = _fold_rate(inv)
        print(f"{n:>6} refused placement p50 {pct(times, .5):.3f} ms; built from "
              f"{len(inv.log)} events in {inv.build_seconds:.1f}s; fold {fold:,.0f} events/s")


def _fold_rate(inv: Inventory) -> float:
    """Events/s of folding the whole recorded log into a fresh index (a planner's start)."""
    t0 = time.perf_counter()
    CapacityIndex().apply_all(inv.log)
    return len(inv.log) / max(time.perf_counter() - t0, 1e-9)


if __name__ == "__main__":
    main()
