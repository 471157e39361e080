"""The capacity index equals the aggregates, and the fast search equals a linear scan.

Random operations drive real Host and VirtualMachine aggregates; the index is folded from
their events, directly and through the real store (mapper, recorder, follower), and must
agree with the aggregates' own state. On random worlds and requests the planner's search must
propose the host the reference linear scan ranks best, and a refusal must count the same
reasons as checking every host one by one.
"""

from collections import Counter
from typing import Any
from uuid import UUID, uuid4

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregates.errors import DomainRuleError, KernelError
from aggregates.host import HostResourceState, HostStatus
from aggregates.vm import VirtualMachine, VmState
from kernel.platform_log import ApplicationLog
from kernel.steps.planner import PLANNERS
from kernel.store.testing import scratch_application
from subsystems.planner.follower import LogFollower
from subsystems.planner.index import CapacityIndex
from subsystems.planner.planners import (
    REASONS,
    Need,
    filter_counts,
    place,
    reject_reason,
    scope,
)
from subsystems.planner.reference import linear_scan
from subsystems.planner.testing import World, cluster_id, pod_id, zone_id

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ACCOUNTS = ("alice", "bob", "carol")

host_spec = st.tuples(
    st.integers(1, 8),  # cores
    st.sampled_from([512, 1000, 4096]),  # memory
    st.sampled_from([1.0, 1.3, 2.0, 4.0]),  # cpu factor
    st.sampled_from([1.0, 1.25, 1.5]),  # memory factor
    st.sampled_from([(), ("ssd",), ("ssd", "gpu")]),
    st.integers(0, 4),  # cluster number
)
op = st.tuples(st.sampled_from([
    "claim", "claim", "claim", "release", "release", "state", "status", "start", "started",
    "stop", "stopped", "start_failed", "migrate", "migrated", "migration_failed", "destroy",
    "expunge", "expunged", "fail"]), st.integers(0, 10**6), st.integers(0, 10**6))


def build(hosts: list[tuple[Any, ...]], ops: list[tuple[str, int, int]],
          world: World | None = None) -> World:
    """Register the hosts in 2 zones, 3 pods, 5 clusters, then run the ops, ignoring refusals."""
    w = world or World()
    for i, (cores, memory, cf, mf, tags, c) in enumerate(hosts):
        w.host(f"h{i}-{uuid4().hex[:6]}", cluster=f"c{c}", pod=f"p{c % 3}",
               zone="zone-1" if c < 4 else "zone-2", cpu_cores=cores, memory_mib=memory,
               cpu_factor=cf, memory_factor=mf, tags=tags)
    host_list = list(w.hosts.values())
    vms = [w.vm(ACCOUNTS[i % 3]) for i in range(5)]
    claims: list[tuple[Any, UUID]] = []
    for name, a, b in ops:
        host, vm = host_list[a % len(host_list)], vms[b % len(vms)]
        try:
            if name == "claim":
                if vm.state is VmState.EXPUNGED:
                    continue  # never placed again: the index has forgotten its account
                claim_id = uuid4()
                host.claim(claim_id, vm.id, 1 + a % 3, 128 * (1 + b % 8))
                claims.append((host, claim_id))
            elif name == "release" and claims:
                h, claim_id = claims.pop(a % len(claims))
                h.release(claim_id)
            elif name == "state":
                host.change_resource_state(list(HostResourceState)[b % 5])
            elif name == "status":
                host.change_status(list(HostStatus)[b % 3])
            elif name in ("start", "migrate"):
                getattr(vm, name)(host.id)
            elif name in ("start_failed", "stop_failed", "migration_failed", "fail"):
                getattr(vm, name)("test")
            elif name != "release":
                getattr(vm, name)()
        except (DomainRuleError, KernelError):
            pass
        w.commit(*host_list, vm)  # a release may touch another host
    return w


def assert_index_matches(index: CapacityIndex, w: World) -> None:
    """Every host's capacity, usage, claims and state, and every VM's hosts and tallies."""
    for host in w.hosts.values():
        slot = index.hosts[host.id]
        assert (slot.total_cpu, slot.total_mem) == (host.total_cpu_cores, host.total_memory_mib)
        assert (slot.free_cpu, slot.free_mem) == (host.free_cpu_cores, host.free_memory_mib)
        assert (slot.used_cpu, slot.used_mem) == (host.used_cpu_cores, host.used_memory_mib)
        assert slot.claims == host.claims
        assert (slot.resource_state, slot.status) == (host.resource_state, host.status)
        assert slot.placeable == (host.resource_state is HostResourceState.ENABLED
                                  and host.status is HostStatus.UP)
        assert (slot.zone_id, slot.pod_id, slot.cluster_id) == (
            host.zone_id, host.pod_id, host.cluster_id)
        assert slot.tags == frozenset(host.tags)
    expected: dict[str, Counter[UUID]] = {a: Counter() for a in ACCOUNTS}
    for vm in w.vms.values():
        on = {h.id for h in w.hosts.values() for v, _, _ in h.claims.values() if v == vm.id}
        if vm.host_id is not None:
            on.add(vm.host_id)
        assert index.vm_hosts(vm.id) == on
        expected[vm.account].update(on)
    for account in ACCOUNTS:
        assert index.tally(account).host == dict(expected[account])
        by_pod: Counter[UUID] = Counter()
        for host_id, n in expected[account].items():
            by_pod[w.hosts[host_id].pod_id] += n
        assert index.tally(account).pod == dict(by_pod)


@FAST
@given(st.lists(host_spec, min_size=1, max_size=6), st.lists(op, max_size=60))
def test_fold_equals_the_aggregates(hosts: list[tuple[Any, ...]],
                                    ops: list[tuple[str, int, int]]) -> None:
    w = build(hosts, ops)
    assert_index_matches(w.index, w)


_app = scratch_application()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(host_spec, min_size=1, max_size=4), st.lists(op, max_size=30),
       st.integers(1, 7))
def test_follower_folds_the_stored_log(hosts: list[tuple[Any, ...]],
                                       ops: list[tuple[str, int, int]], page: int) -> None:
    """Saved through the real mapper and recorder, read back in pages of any size."""
    head = _app.recorder.max_notification_id() or 0
    index = CapacityIndex()
    follower = LogFollower(ApplicationLog(_app), index, page_size=page, position=head)

    class Saving(World):
        def commit(self, *aggregates: Any) -> None:
            _app.save(*aggregates)  # the events reach the log, and only the log
            for a in aggregates:
                self.log.extend(a.collect_events())

    w = build(hosts, ops, Saving())
    # an unrelated event in the log is skipped by topic
    _app.save(VirtualMachine.allocate(name="other", account="x", zone_id=uuid4(),
                                      service_offering_id=uuid4(), template_id=uuid4()))
    follower.catch_up()
    assert follower.position == _app.recorder.max_notification_id()
    assert_index_matches(index, w)
    assert follower.catch_up() == 0


requests = st.fixed_dictionaries({
    "planner": st.sampled_from(PLANNERS),
    "account": st.sampled_from(ACCOUNTS),
    "cpu_cores": st.integers(1, 12),
    "memory_mib": st.sampled_from([128, 512, 1024, 3000, 8000]),
    "cpu_mhz": st.sampled_from([0, 0, 2400, 2500]),
    "host_tags": st.sampled_from([(), (), ("ssd",), ("gpu",)]),
    "avoid": st.lists(st.integers(0, 20), max_size=3),
    "affinity": st.lists(st.integers(0, 4), max_size=2),
    "anti": st.lists(st.integers(0, 4), max_size=2),
    "where": st.sampled_from(["zone", "zone", "zone2", "pod", "cluster"]),
})


@FAST
@given(st.lists(host_spec, min_size=1, max_size=14), st.lists(op, max_size=60),
       st.lists(requests, min_size=1, max_size=5))
def test_search_proposes_what_a_linear_scan_ranks_best(
        hosts: list[tuple[Any, ...]], ops: list[tuple[str, int, int]],
        reqs: list[dict[str, Any]]) -> None:
    w = build(hosts, ops)
    host_ids = list(w.hosts)
    vm_ids = list(w.vms)
    for r in reqs:
        fields: dict[str, Any] = {k: r[k] for k in (
            "planner", "account", "cpu_cores", "memory_mib", "cpu_mhz", "host_tags")}
        fields["avoid_hosts"] = tuple(host_ids[i % len(host_ids)] for i in r["avoid"])
        fields["affinity_vm_ids"] = tuple(vm_ids[i] for i in r["affinity"])
        fields["anti_affinity_vm_ids"] = tuple(vm_ids[i] for i in r["anti"])
        if r["where"] == "zone2":
            fields["zone_id"] = zone_id("zone-2")
        elif r["where"] == "pod":
            fields["pod_id"] = pod_id("p1")
        elif r["where"] == "cluster":
            fields["cluster_id"] = cluster_id("c1", "p1")
        args = w.request(**fields)
        best = linear_scan(w.index, args)
        need = Need.of(w.index, args)
        try:
            placement = place(w.index, args)
        except KernelError as e:
            assert best is None, f"refused, but {best.name} fits: {e}"
            # the summary shortcuts count exactly what checking each host counts
            naive = [0] * len(REASONS)
            clusters = scope(w.index, args)
            for c in clusters:
                for h in c.hosts:
                    reason = reject_reason(h, need)
                    assert reason is not None
                    naive[reason] += 1
            assert filter_counts(w.index, clusters, need) == naive
            continue
        assert best is not None
        assert placement.host_id == best.id
        host = w.hosts[best.id]
        # independent of the index: the aggregate would accept the claim
        assert host.resource_state is HostResourceState.ENABLED
        assert host.status is HostStatus.UP
        assert host.free_cpu_cores >= args.cpu_cores
        assert host.free_memory_mib >= args.memory_mib
        assert set(args.host_tags) <= set(host.tags)
        assert host.id not in args.avoid_hosts
        assert host.zone_id == args.zone_id
