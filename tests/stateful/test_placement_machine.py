"""Concurrent deploys never over-commit a host, whatever stale view the planner decided from.

Several deployers each hold their own capacity index, folded from the log up to the moment
they last caught up, plus a copy of the Host aggregates at that moment. A deployer decides
from its (possibly stale) index, and later the kernel's part runs: claim on the
authoritative Host aggregate, which refuses an over-commit or an unplaceable host; on a
refusal the deployer plans again with the host in its avoid list, caught up or not. Admin
state changes, status reports and releases interleave with all of it.
"""

import copy
from dataclasses import dataclass, field
from uuid import UUID

import msgspec
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from aggregates.errors import DomainRuleError, StepFailedError
from aggregates.host import Host, HostResourceState, HostStatus
from aggregates.vm import VirtualMachine
from kernel.steps.planner import PLANNERS, PlanPlacement
from subsystems.planner.index import CapacityIndex
from subsystems.planner.planners import place
from subsystems.planner.testing import cluster_id, pod_id, zone_id

from ._support import MACHINE_SETTINGS

DEPLOYERS = 3
RS = HostResourceState
ACCOUNTS = ("alice", "bob")


def fits(host: Host, args: PlanPlacement) -> bool:
    """Whether a Host aggregate passes the request's filters, written apart from the planner."""
    return (host.resource_state is HostResourceState.ENABLED and host.status is HostStatus.UP
            and host.id not in args.avoid_hosts and set(args.host_tags) <= set(host.tags)
            and host.cpu_mhz >= args.cpu_mhz and host.free_cpu_cores >= args.cpu_cores
            and host.free_memory_mib >= args.memory_mib and host.zone_id == args.zone_id)


@dataclass
class Deployer:
    """A planner instance with its own view of the log, and the deploy it is working on."""

    index: CapacityIndex = field(default_factory=CapacityIndex)
    position: int = 0
    snapshot: dict[UUID, Host] = field(default_factory=dict)
    request: PlanPlacement | None = None
    host_id: UUID | None = None


class PlacementMachine(RuleBasedStateMachine):
    """Deployers deciding from stale views; the Host aggregates keep the claims honest."""

    def __init__(self) -> None:
        super().__init__()
        self.hosts: dict[UUID, Host] = {}
        self.log: list[object] = []
        self.deployers = [Deployer() for _ in range(DEPLOYERS)]
        self.claims: dict[UUID, tuple[UUID, int, int]] = {}  # claim -> host, cores, MiB
        self.capacity: dict[UUID, tuple[int, int]] = {}  # from the specs, not from Host
        self.ids = 0

    def _id(self) -> UUID:
        """Ids from a counter, so that a replayed example is the same example."""
        self.ids += 1
        return UUID(int=self.ids)

    def _commit(self, aggregate: Host | VirtualMachine) -> None:
        self.log.extend(aggregate.collect_events())

    @initialize(specs=st.lists(st.tuples(
        st.integers(2, 12), st.sampled_from([3000, 8192, 16384]),
        st.sampled_from([1.0, 1.5, 2.0]), st.sampled_from([1.0, 1.25]),
        st.sampled_from([(), ("ssd",)]), st.sampled_from([2000, 2400]), st.integers(0, 2)),
        min_size=2, max_size=6))
    def register(self, specs: list[tuple[int, int, float, float, tuple[str, ...], int,
                                         int]]) -> None:
        """Register hosts in three clusters of two pods, and let every deployer catch up."""
        for i, (cores, memory, cf, mf, tags, mhz, c) in enumerate(specs):
            host = Host.register(
                name=f"h{i}", uri=f"test:///h{i}.xml", zone_id=zone_id(),
                pod_id=pod_id(f"p{c % 2}"), cluster_id=cluster_id(f"c{c}", f"p{c % 2}"),
                cpu_cores=cores, cpu_mhz=mhz, memory_mib=memory, cpu_overprovisioning=cf,
                memory_overprovisioning=mf, tags=tags)
            self.hosts[host.id] = host
            self.capacity[host.id] = (int(cores * cf), int(memory * mf))
            self._commit(host)
        for d in range(DEPLOYERS):
            self.catch_up(d)

    @rule(d=st.integers(0, DEPLOYERS - 1))
    def catch_up(self, d: int) -> None:
        """A deployer's index folds the log up to the head."""
        dep = self.deployers[d]
        dep.index.apply_all(self.log[dep.position:])
        dep.position = len(self.log)
        dep.snapshot = copy.deepcopy(self.hosts)

    @precondition(lambda self: any(dep.request is None for dep in self.deployers))
    @rule(d=st.integers(0, DEPLOYERS - 1), cpu=st.integers(1, 5),
          memory=st.sampled_from([256, 1024, 2048, 4096]), mhz=st.sampled_from([0, 2400]),
          tags=st.sampled_from([(), (), ("ssd",)]), planner=st.sampled_from(PLANNERS),
          account=st.sampled_from(ACCOUNTS))
    def decide(self, d: int, cpu: int, memory: int, mhz: int, tags: tuple[str, ...],
               planner: str, account: str) -> None:
        """A deployer starts a deploy: allocate the VM and plan from its current view."""
        dep = next(x for x in self.deployers[d:] + self.deployers[:d] if x.request is None)
        vm = VirtualMachine.allocate(name=f"vm-{len(self.log)}", account=account,
                                     zone_id=zone_id(), service_offering_id=self._id(),
                                     template_id=self._id(), id=self._id())
        self._commit(vm)
        dep.request = PlanPlacement(vm_id=vm.id, account=account, zone_id=zone_id(),
                                    cpu_cores=cpu, memory_mib=memory, cpu_mhz=mhz,
                                    host_tags=tags, planner=planner)  # type: ignore[arg-type]
        self._plan(dep)

    def _plan(self, dep: Deployer) -> None:
        assert dep.request is not None
        args = dep.request
        try:
            dep.host_id = place(dep.index, args).host_id
        except StepFailedError as e:
            assert e.code == "insufficient_capacity"
            if dep.position == len(self.log):  # a current view refuses only when nothing fits
                assert not any(fits(h, args) for h in self.hosts.values()), str(e)
            event("refused: no capacity")
            dep.request = dep.host_id = None
            return
        # what it proposes passed the filters in the state it last saw
        assert fits(dep.snapshot[dep.host_id], args)

    @precondition(lambda self: any(dep.host_id is not None for dep in self.deployers))
    @rule(d=st.integers(0, DEPLOYERS - 1), catch_up_first=st.booleans())
    def claim(self, d: int, catch_up_first: bool) -> None:
        """The kernel's part: claim on the authoritative host; refused means plan again."""
        index = next(i for i in [*range(d, DEPLOYERS), *range(d)]
                     if self.deployers[i].host_id is not None)
        dep = self.deployers[index]
        assert dep.request is not None and dep.host_id is not None
        args, host = dep.request, self.hosts[dep.host_id]
        claim_id = self._id()
        try:
            host.claim(claim_id, args.vm_id, args.cpu_cores, args.memory_mib)
        except DomainRuleError:
            assert not fits(host, args)  # refused only when the real host cannot take it
            event("claim refused, replanned")
            dep.request = msgspec.structs.replace(args, avoid_hosts=(*args.avoid_hosts, host.id))
            dep.host_id = None
            if catch_up_first:
                self.catch_up(index)
            self._plan(dep)
            return
        self._commit(host)
        self.claims[claim_id] = (host.id, args.cpu_cores, args.memory_mib)
        event("claimed")
        dep.request = dep.host_id = None

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        """A VM goes away; its room is offered again to a planner that caught up."""
        claim_id = data.draw(st.sampled_from(list(self.claims)))
        host_id, cpu, memory = self.claims.pop(claim_id)
        host = self.hosts[host_id]
        host.release(claim_id)
        self._commit(host)
        fresh = CapacityIndex()
        fresh.apply_all(self.log)
        args = PlanPlacement(vm_id=self._id(), account="x", zone_id=zone_id(), cpu_cores=cpu,
                             memory_mib=memory,
                             avoid_hosts=tuple(h for h in self.hosts if h != host_id))
        if host.resource_state is HostResourceState.ENABLED and host.status is HostStatus.UP:
            assert place(fresh, args).host_id == host_id

    @rule(h=st.integers(0, 5), state=st.sampled_from([*HostResourceState, RS.ENABLED, RS.ENABLED]))
    def change_state(self, h: int, state: HostResourceState) -> None:
        """An admin moves a host (allowed moves only)."""
        host = list(self.hosts.values())[h % len(self.hosts)]
        try:
            host.change_resource_state(state)
        except DomainRuleError:
            return
        self._commit(host)

    @rule(h=st.integers(0, 5), status=st.sampled_from([*HostStatus, HostStatus.UP, HostStatus.UP]))
    def change_status(self, h: int, status: HostStatus) -> None:
        """A host is seen Up, Down or Disconnected."""
        host = list(self.hosts.values())[h % len(self.hosts)]
        host.change_status(status)
        self._commit(host)

    @invariant()
    def no_host_is_over_committed(self) -> None:
        """Claims on each host never exceed its capacity after over-provisioning."""
        for host_id, (cpu_cap, mem_cap) in self.capacity.items():
            mine = [c for c in self.claims.values() if c[0] == host_id]
            cpu, mem = sum(c[1] for c in mine), sum(c[2] for c in mine)
            assert cpu <= cpu_cap and mem <= mem_cap
            host = self.hosts[host_id]
            assert (host.used_cpu_cores, host.used_memory_mib) == (cpu, mem)

    @invariant()
    def a_caught_up_index_agrees_with_the_hosts(self) -> None:
        """Folding the whole log gives the hosts' own free capacity."""
        fresh = CapacityIndex()
        fresh.apply_all(self.log)
        for host in self.hosts.values():
            slot = fresh.hosts[host.id]
            assert (slot.free_cpu, slot.free_mem) == (host.free_cpu_cores,
                                                      host.free_memory_mib)


PlacementMachine.TestCase.settings = settings(MACHINE_SETTINGS, stateful_step_count=50)
TestPlacementMachine = PlacementMachine.TestCase
