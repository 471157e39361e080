"""Planner filters and planners, one behaviour per test, on real Host/VM aggregates' events."""

from uuid import uuid4

import pytest

from aggregates.cluster import Cluster
from aggregates.errors import StepFailedError
from aggregates.host import HostResourceState
from aggregates.pod import Pod
from aggregates.zone import Zone
from kernel.steps.planner import FilterCounts, Placement
from subsystems.planner.planners import place
from subsystems.planner.testing import World, cluster_id, pod_id, zone_id


def chosen(world: World, **fields: object) -> str:
    """The name of the host the planner proposes."""
    return place(world.index, world.request(**fields)).host_name


def refusal(world: World, **fields: object) -> str:
    """The message of the insufficient_capacity failure."""
    with pytest.raises(StepFailedError) as info:
        place(world.index, world.request(**fields))
    assert info.value.code == "insufficient_capacity"
    assert info.value.retryable is False
    return str(info.value)


def test_disabled_maintenance_and_down_hosts_are_skipped() -> None:
    w = World()
    h1, h2, h3, _ = (w.host(f"h{i}") for i in range(1, 5))
    w.disable(h1)
    h2.change_resource_state(HostResourceState.PREPARE_FOR_MAINTENANCE)
    h2.change_resource_state(HostResourceState.MAINTENANCE)
    w.commit(h2)
    w.down(h3)
    assert chosen(w) == "h4"
    msg = refusal(w, cpu_cores=17)
    assert "0 of 4 hosts fit" in msg
    assert "2 disabled, 1 down, 1 lack cpu" in msg


def test_a_host_up_again_is_placeable_again() -> None:
    w = World()
    h1 = w.host("h1")
    w.down(h1)
    refusal(w)
    h1.change_status(h1.status.UP)
    w.commit(h1)
    assert chosen(w) == "h1"


@pytest.mark.parametrize(("cores", "factor", "claimed", "fits", "misses"), [
    (4, 1.0, 1, 3, 4),
    (4, 2.0, 5, 3, 4),
    (3, 1.5, 0, 4, 5),  # int(3 * 1.5) = 4 cores, as Host.total_cpu_cores rounds down
    (6, 1.7, 2, 8, 9),  # int(10.2) - 2
])
def test_cpu_filter_uses_overprovisioned_capacity(cores: int, factor: float, claimed: int,
                                                  fits: int, misses: int) -> None:
    w = World()
    host = w.host("h1", cpu_cores=cores, cpu_factor=factor)
    if claimed:
        w.claim(host, cpu=claimed)
    slot = w.index.hosts[host.id]
    assert (slot.total_cpu, slot.free_cpu) == (host.total_cpu_cores, host.free_cpu_cores)
    assert host.free_cpu_cores == fits
    assert chosen(w, cpu_cores=fits) == "h1"
    assert "1 lack cpu" in refusal(w, cpu_cores=misses)


@pytest.mark.parametrize(("memory", "factor", "claimed"), [
    (1000, 1.0, 0), (1000, 1.25, 250), (4097, 1.5, 1), (3, 1.9, 1)])
def test_memory_filter_uses_overprovisioned_capacity(memory: int, factor: float,
                                                     claimed: int) -> None:
    w = World()
    host = w.host("h1", memory_mib=memory, memory_factor=factor)
    if claimed:
        w.claim(host, memory=claimed)
    slot = w.index.hosts[host.id]
    assert (slot.total_mem, slot.free_mem) == (host.total_memory_mib, host.free_memory_mib)
    free = host.free_memory_mib
    assert chosen(w, memory_mib=free) == "h1"
    assert "1 lack memory" in refusal(w, memory_mib=free + 1)


def test_slow_cores_fail_the_cpu_filter() -> None:
    w = World()
    w.host("slow", cpu_mhz=2000)
    w.host("fast", cpu_mhz=3000)
    assert chosen(w, cpu_mhz=2400) == "fast"
    assert "2 lack cpu" in refusal(w, cpu_mhz=3200)


def test_host_must_carry_every_offering_tag() -> None:
    w = World()
    w.host("plain")
    w.host("ssd", tags=("ssd",))
    w.host("both", tags=("ssd", "gpu"))
    assert chosen(w) == "plain"
    assert chosen(w, host_tags=("ssd",)) == "ssd"
    assert chosen(w, host_tags=("gpu", "ssd")) == "both"
    assert "3 tag mismatch" in refusal(w, host_tags=("fpga",))


def test_avoid_list_skips_refused_hosts() -> None:
    w = World()
    h1, h2, _ = w.host("h1"), w.host("h2"), w.host("h3")
    assert chosen(w, avoid_hosts=(h1.id,)) == "h2"
    assert chosen(w, avoid_hosts=(h1.id, h2.id)) == "h3"
    msg = refusal(w, avoid_hosts=tuple(w.hosts))
    assert "3 avoided after a refused claim" in msg


def test_affinity_places_with_the_group() -> None:
    w = World()
    w.host("h1")
    h2, h3 = w.host("h2"), w.host("h3")
    friend = w.place_vm(h2)
    assert chosen(w) == "h1"
    assert chosen(w, affinity_vm_ids=(friend.id,)) == "h2"
    # a group VM that is not placed yet does not restrict
    loner = w.vm()
    assert chosen(w, affinity_vm_ids=(loner.id,)) == "h1"
    assert chosen(w, affinity_vm_ids=(loner.id, friend.id)) == "h2"
    # the group's host is full: nothing else will do
    assert "2 off the affinity group's host, 1 lack memory" in refusal(
        w, affinity_vm_ids=(friend.id,), memory_mib=65536)
    # group VMs on two hosts: no host holds them all
    other = w.place_vm(h3)
    assert "3 off the affinity group's host" in refusal(
        w, affinity_vm_ids=(friend.id, other.id))


def test_affinity_ignores_the_vm_being_placed() -> None:
    w = World()
    w.host("h1")
    h2 = w.host("h2")
    me = w.place_vm(h2)
    # the kernel may pass the whole group, this VM included
    assert chosen(w, vm_id=me.id, affinity_vm_ids=(me.id,)) == "h1"
    assert chosen(w, vm_id=me.id, anti_affinity_vm_ids=(me.id,)) == "h1"


def test_anti_affinity_keeps_group_vms_apart() -> None:
    w = World()
    h1, h2 = w.host("h1"), w.host("h2")
    a = w.place_vm(h1)
    assert chosen(w, anti_affinity_vm_ids=(a.id,)) == "h2"
    b = w.place_vm(h2)
    assert "2 hold an anti-affinity VM" in refusal(w, anti_affinity_vm_ids=(a.id, b.id))


def test_vm_leaving_a_host_frees_it_for_anti_affinity() -> None:
    w = World()
    h1, h2 = w.host("h1"), w.host("h2")
    a = w.vm()
    claim = w.claim(h1, a)
    a.start(h1.id)
    w.commit(a)
    assert chosen(w, anti_affinity_vm_ids=(a.id,)) == "h2"
    a.started()
    a.stop()
    a.stopped()
    w.commit(a)
    assert chosen(w, anti_affinity_vm_ids=(a.id,)) == "h2"  # still holds its claim
    w.release(h1, claim)
    assert chosen(w, anti_affinity_vm_ids=(a.id,)) == "h1"
    # and a migration moves it
    a.start(h2.id)
    a.started()
    w.commit(a)
    assert chosen(w, anti_affinity_vm_ids=(a.id,)) == "h1"
    a.migrate(h1.id)
    a.migrated()
    w.commit(a)
    assert chosen(w, anti_affinity_vm_ids=(a.id,)) == "h2"


def test_pod_and_cluster_restrictions() -> None:
    w = World()
    w.host("a1", cluster="ca", pod="pa")
    w.host("b1", cluster="cb", pod="pb")
    w.host("b2", cluster="cc", pod="pb", cpu_cores=32)
    assert chosen(w, pod_id=pod_id("pb")) == "b2"  # pb's roomier cluster
    assert chosen(w, cluster_id=cluster_id("cb", "pb")) == "b1"
    assert chosen(w, pod_id=pod_id("pa"), cluster_id=cluster_id("ca", "pa")) == "a1"
    assert "0 of 0 hosts fit" in refusal(w, pod_id=pod_id("pa"),
                                         cluster_id=cluster_id("cb", "pb"))
    assert "no hosts there" in refusal(w, pod_id=pod_id("nowhere"))
    assert "no hosts there" in refusal(w, zone_id=zone_id("zone-2"))


def test_disabled_cluster_pod_or_zone_hides_its_hosts() -> None:
    w = World()
    w.host("a1", cluster="ca", pod="pa")
    w.host("b1", cluster="cb", pod="pb")
    ca = Cluster.add(name="ca", zone_id=zone_id(), pod_id=pod_id("pa"))
    w.commit(ca)
    assert chosen(w, pod_id=pod_id("pa")) == "a1"
    ca.disable()
    w.commit(ca)
    assert chosen(w) == "b1"
    assert "1 disabled" in refusal(w, pod_id=pod_id("pa"))
    pb = Pod.create(name="pb", zone_id=zone_id(), gateway="10.0.0.1", cidr="10.0.0.0/24",
                    start_ip="10.0.0.10", end_ip="10.0.0.20")
    pb.disable()
    w.commit(pb)
    assert "2 disabled" in refusal(w)
    ca.enable()
    w.commit(ca)
    assert chosen(w) == "a1"
    zone = Zone.create(name="zone-1")
    zone.disable()
    w.commit(zone)
    assert "1 disabled" in refusal(w, pod_id=pod_id("pa"))


def test_placement_reports_where_and_what_was_looked_at() -> None:
    w = World()
    full = w.host("full", cpu_cores=2)
    w.claim(full, cpu=2)
    ok = w.host("ok", cpu_cores=2)
    w.disable(w.host("off"))
    p = place(w.index, w.request(cpu_cores=1))
    assert p == Placement(host_id=ok.id, host_name="ok", host_uri="test:///ok.xml",
                          cluster_id=cluster_id("c1"), pod_id=pod_id("p1"), zone_id=zone_id(),
                          planner="FirstFit", considered=3, examined=2,
                          filtered=FilterCounts(cpu=1))


def test_refusal_message_counts_every_reason() -> None:
    w = World()
    w.disable(w.host("h1"))
    w.down(w.host("h2"))
    w.host("h3", tags=("ssd",), memory_mib=1024)
    w.host("h4", tags=("hdd",))
    w.host("h5", tags=("ssd",), cpu_cores=2)
    msg = refusal(w, cpu_cores=4, memory_mib=2048, host_tags=("ssd",))
    assert msg.startswith("0 of 5 hosts fit vm ")
    assert msg.endswith("(4 cores, 2048 MiB, tags ['ssd']; FirstFit in zone "
                        f"{zone_id()}): 1 disabled, 1 down, 1 tag mismatch, 1 lack cpu, "
                        "1 lack memory")


def test_first_fit_orders_clusters_by_free_capacity_then_hosts_by_registration() -> None:
    w = World()
    w.host("small-1", cluster="small", cpu_cores=24, memory_mib=8192)
    big1 = w.host("big-1", cluster="big", cpu_cores=32)
    big2 = w.host("big-2", cluster="big", cpu_cores=64)
    # big has 96 free cores: its first registered host wins, though big-2 is roomier
    assert chosen(w) == "big-1"
    w.claim(big1, cpu=30)
    w.claim(big2, cpu=44)
    # big now has 22 free cores, small 24
    assert chosen(w) == "small-1"
    assert chosen(w, cpu_cores=3) == "small-1"  # big-1 has 2 left anyway
    # small cannot hold 16 GiB: skipped; big-1 is first in its cluster and fits
    assert chosen(w, memory_mib=16384) == "big-1"
    assert chosen(w, memory_mib=16384, cpu_cores=3) == "big-2"


def test_user_dispersing_spreads_an_accounts_vms() -> None:
    w = World()
    a1 = w.host("a1", cluster="ca", pod="pa", cpu_cores=64)
    w.host("a2", cluster="ca", pod="pa", cpu_cores=64)
    w.host("b1", cluster="cb", pod="pb", cpu_cores=16)
    w.place_vm(a1, account="alice")
    # alice already has a VM in pod pa: the smaller pod pb gets the next one
    assert chosen(w, planner="UserDispersing", account="alice") == "b1"
    # bob has none anywhere: capacity decides
    assert chosen(w, planner="UserDispersing", account="bob") == "a2"
    # inside pa, the host without alice's VM, though a1 comes first
    assert chosen(w, planner="UserDispersing", account="alice",
                  pod_id=pod_id("pa")) == "a2"
    assert chosen(w, planner="FirstFit", account="alice", pod_id=pod_id("pa")) == "a1"


def test_user_concentrated_pod_keeps_an_account_together() -> None:
    w = World()
    w.host("a1", cluster="ca", pod="pa", cpu_cores=16)
    b1 = w.host("b1", cluster="cb", pod="pb", cpu_cores=8)
    w.host("c1", cluster="cc", pod="pc", cpu_cores=64)
    w.place_vm(b1, account="alice")
    assert chosen(w, planner="UserConcentratedPod", account="alice") == "b1"
    # a new account starts in the pod registered first; FirstFit would take the roomiest
    assert chosen(w, planner="UserConcentratedPod", account="carol") == "a1"
    assert chosen(w, planner="FirstFit", account="carol") == "c1"
    # alice's pod cannot hold it: the next pod in order
    assert chosen(w, planner="UserConcentratedPod", account="alice", cpu_cores=8) == "a1"


def test_releases_make_room_again() -> None:
    w = World()
    h = w.host("h1", cpu_cores=4)
    claim = w.claim(h, cpu=4)
    assert "1 lack cpu" in refusal(w, cpu_cores=1)
    w.release(h, claim)
    assert chosen(w, cpu_cores=4) == "h1"


def test_unknown_claims_and_hosts_are_ignored() -> None:
    w = World()
    h = w.host("h1", cpu_cores=4)
    claim = w.claim(h, cpu=2)
    before = w.index.hosts[h.id].free_cpu
    ev = w.log[-1]
    assert w.index.apply(ev)  # the same claim again: no double count
    assert w.index.hosts[h.id].free_cpu == before
    assert not w.index.apply(object())
    w.release(h, claim)
    assert w.index.hosts[h.id].free_cpu == 4
    assert uuid4() not in w.index.hosts
