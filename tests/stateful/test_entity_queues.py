"""Per-entity queues: random overlapping operations never deadlock and are served FIFO.

Operations ask for random subsets of a few entities, and random running operations finish (or
waiting ones are cancelled) in random order. Always: one owner per entity, an operation runs
only when it owns every entity it changes, a waiting one holds exactly the entities before the
one it waits for, each entity is handed over in arrival order, and while anything waits
something runs. At the end, finishing whatever runs until nothing does must finish everything.
"""

from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aggregates.entity_queue import Admission, EntityBusyError, EntityQueue, admit, release_all
from kernel.store.testing import roundtrip

N_ENTITIES = 5
PICK = st.integers(0, N_ENTITIES - 1)  # entities are drawn by index: their ids are fresh
QUEUE_SETTINGS = settings(max_examples=150, stateful_step_count=50, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])


class EntityQueues(RuleBasedStateMachine):
    """Many operations contending for a handful of entities."""

    def __init__(self) -> None:
        super().__init__()
        # fresh per example (queues are known by entity, and the scratch store is shared),
        # sorted so that index order is acquisition order
        self.entities = sorted(uuid4() for _ in range(N_ENTITIES))
        self.queues: dict[UUID, EntityQueue] = {}
        self.wants: dict[UUID, tuple[UUID, ...]] = {}  # operation -> its entities, sorted
        self.admissions: dict[UUID, Admission] = {}  # live operations only
        self.done: set[UUID] = set()  # finished after running, or cancelled while waiting
        self.ran: set[UUID] = set()
        self.arrivals: dict[UUID, list[UUID]] = {e: [] for e in self.entities}
        self.grants: dict[UUID, list[UUID]] = {e: [] for e in self.entities}
        self.withdrawn: dict[UUID, set[UUID]] = {e: set() for e in self.entities}
        self.counter = 0

    # ------------------------------------------------------------------ helpers

    def running(self) -> list[UUID]:
        return sorted(op for op, a in self.admissions.items() if a.ready)

    def waiting(self) -> list[UUID]:
        return sorted(op for op, a in self.admissions.items() if not a.ready)

    def observe(self) -> None:
        """Note who joined each queue and who got each entity, in order."""
        for entity, queue in self.queues.items():
            present = ([queue.owner] if queue.owner else []) + queue.waiting
            for op in present:
                if op not in self.arrivals[entity]:
                    self.arrivals[entity].append(op)
            grants = self.grants[entity]
            if queue.owner is not None and (not grants or grants[-1] != queue.owner):
                grants.append(queue.owner)

    def admit(self, op: UUID) -> None:
        self.admissions[op] = admit(self.queues, op, self.wants[op])
        if self.admissions[op].ready:
            self.ran.add(op)
        self.observe()

    def leave(self, op: UUID) -> None:
        """The operation finished or was cancelled: free its entities, admit who got one."""
        admission = self.admissions.pop(op)
        if admission.waiting_on is not None:
            self.withdrawn[admission.waiting_on].add(op)
        promoted = release_all(self.queues, op, self.wants[op],
                               waiting_on=admission.waiting_on)
        self.done.add(op)
        self.observe()
        for other in promoted:
            assert other in self.admissions and not self.admissions[other].ready
            self.admit(other)

    # ------------------------------------------------------------------ rules

    @rule(picked=st.sets(PICK, max_size=4))
    def submit(self, picked: set[int]) -> None:
        self.counter += 1
        op = UUID(int=self.counter)
        self.wants[op] = tuple(sorted(self.entities[i] for i in picked))
        self.admit(op)

    @rule(picked=st.sets(PICK, min_size=1, max_size=3))
    def submit_refusing_to_wait(self, picked: set[int]) -> None:
        self.counter += 1
        op = UUID(int=self.counter)
        chosen = {self.entities[i] for i in picked}
        busy = [e for e in sorted(chosen) if e in self.queues and self.queues[e].is_busy]
        versions = {e: q.version for e, q in self.queues.items()}
        if busy:
            with pytest.raises(EntityBusyError) as info:
                admit(self.queues, op, chosen, refuse_when_busy=True)
            assert info.value.entity_id == busy[0]
            assert info.value.owner_id == self.queues[busy[0]].owner
            assert all(self.queues[e].version == v for e, v in versions.items())
            return
        self.wants[op] = tuple(sorted(chosen))
        self.admissions[op] = admit(self.queues, op, chosen, refuse_when_busy=True)
        assert self.admissions[op].ready
        self.ran.add(op)
        self.observe()

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        self.leave(data.draw(st.sampled_from(self.running())))

    @precondition(lambda self: bool(self.waiting()))
    @rule(data=st.data())
    def cancel_waiting(self, data: st.DataObject) -> None:
        self.leave(data.draw(st.sampled_from(self.waiting())))

    @precondition(lambda self: bool(self.queues))
    @rule(data=st.data())
    def save_and_reload(self, data: st.DataObject) -> None:
        opened = [e for e in self.entities if e in self.queues]  # in index order, as drawn
        queue = self.queues[data.draw(st.sampled_from(opened))]
        loaded = roundtrip(queue)
        assert loaded == queue and loaded.version == queue.version

    # ------------------------------------------------------------------ invariants

    @invariant()
    def one_owner_and_well_formed_queues(self) -> None:
        for entity, queue in self.queues.items():
            members = ([queue.owner] if queue.owner else []) + queue.waiting
            assert len(members) == len(set(members))  # nobody twice, owner not waiting
            assert queue.waiting == [] or queue.owner is not None  # no line before a free entity
            for op in members:
                assert op in self.admissions and entity in self.wants[op]

    @invariant()
    def runs_only_owning_everything_and_holds_in_order(self) -> None:
        for op, admission in self.admissions.items():
            wants = self.wants[op]
            held = tuple(e for e in wants if e in self.queues and self.queues[e].holds(op))
            assert held == admission.owned
            if admission.ready:
                assert held == wants
            else:
                cut = wants.index(admission.waiting_on)  # type: ignore[arg-type]
                assert held == wants[:cut]  # exactly the entities before the awaited one
                assert self.queues[wants[cut]].is_waiting(op)
                assert sum(q.is_waiting(op) for q in self.queues.values()) == 1

    @invariant()
    def served_in_arrival_order(self) -> None:
        for entity in self.entities:
            served = [op for op in self.arrivals[entity] if op not in self.withdrawn[entity]]
            grants = self.grants[entity]
            assert grants == served[:len(grants)]

    @invariant()
    def no_deadlock(self) -> None:
        """Every waiting operation's chain of owners ends at a running one, awaited ids rising."""
        for op in self.waiting():
            seen, current, last = set(), op, None
            while not self.admissions[current].ready:
                assert current not in seen, "a cycle of waiting operations"
                seen.add(current)
                awaited = self.admissions[current].waiting_on
                assert awaited is not None and (last is None or awaited > last)
                owner = self.queues[awaited].owner
                assert owner is not None and owner in self.admissions
                current, last = owner, awaited

    def teardown(self) -> None:
        """Finish whatever runs until nothing does: then nothing may be left waiting."""
        for _ in range(10 * len(self.wants) + 1):
            running = self.running()
            if not running:
                break
            self.leave(running[0])
            self.one_owner_and_well_formed_queues()
            self.runs_only_owning_everything_and_holds_in_order()
            self.served_in_arrival_order()
        assert not self.admissions, f"deadlock: {self.waiting()} wait with nothing running"
        assert self.ran | self.done == set(self.wants)
        cancelled = set().union(*self.withdrawn.values())
        assert self.ran == set(self.wants) - cancelled  # every operation not cancelled ran
        for queue in self.queues.values():
            assert queue.owner is None and queue.waiting == []


TestEntityQueues = EntityQueues.TestCase
TestEntityQueues.settings = QUEUE_SETTINGS
