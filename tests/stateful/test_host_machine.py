"""Host: resource states follow the table, claims stay within capacity, the store agrees."""

from uuid import UUID, uuid4

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from aggregates.errors import (
    CapacityError,
    DomainRuleError,
    InvalidTransitionError,
    ValidationError,
)
from aggregates.host import Host, HostResourceState, HostStatus

from ._support import MACHINE_SETTINGS, assert_roundtrips, attempt

RS = HostResourceState
# the resource-state machine CloudStack admins know, written down independently of host.py
ALLOWED: set[tuple[HostResourceState, HostResourceState]] = {
    (RS.ENABLED, RS.DISABLED),
    (RS.DISABLED, RS.ENABLED),
    (RS.ENABLED, RS.PREPARE_FOR_MAINTENANCE),
    (RS.DISABLED, RS.PREPARE_FOR_MAINTENANCE),
    (RS.PREPARE_FOR_MAINTENANCE, RS.MAINTENANCE),
    (RS.PREPARE_FOR_MAINTENANCE, RS.ERROR_IN_MAINTENANCE),
    (RS.PREPARE_FOR_MAINTENANCE, RS.ENABLED),
    (RS.MAINTENANCE, RS.ENABLED),
    (RS.ERROR_IN_MAINTENANCE, RS.ENABLED),
    (RS.ERROR_IN_MAINTENANCE, RS.PREPARE_FOR_MAINTENANCE),
}


class HostMachine(RuleBasedStateMachine):
    """Drives one host with random admin actions, status reports, claims and releases."""

    host: Host

    def __init__(self) -> None:
        super().__init__()
        self.state = RS.ENABLED
        self.status = HostStatus.UP
        self.claims: dict[UUID, tuple[int, int]] = {}

    @initialize(cores=st.integers(1, 16), memory=st.integers(256, 16384),
                cpu_factor=st.sampled_from([1.0, 1.5, 2.0, 4.0]),
                memory_factor=st.sampled_from([1.0, 1.25, 2.0]))
    def register(self, cores: int, memory: int, cpu_factor: float,
                 memory_factor: float) -> None:
        """Register a host of random size and over-provisioning."""
        self.host = Host.register(
            name=f"h-{uuid4().hex}", uri="test:///default", zone_id=uuid4(), pod_id=uuid4(),
            cluster_id=uuid4(), cpu_cores=cores, cpu_mhz=2000, memory_mib=memory,
            cpu_overprovisioning=cpu_factor, memory_overprovisioning=memory_factor)
        self.total_cpu = int(cores * cpu_factor)
        self.total_memory = int(memory * memory_factor)

    @rule(new_state=st.sampled_from(list(HostResourceState)))
    def change_resource_state(self, new_state: HostResourceState) -> None:
        """An admin asks for any resource state; only table moves succeed."""
        allowed = (self.state, new_state) in ALLOWED
        attempt(self.host, lambda: self.host.change_resource_state(new_state, "test"),
                None if allowed else InvalidTransitionError)
        if allowed:
            self.state = new_state

    @rule(status=st.sampled_from(list(HostStatus)))
    def change_status(self, status: HostStatus) -> None:
        """A status report; repeating the current status records nothing."""
        attempt(self.host, lambda: self.host.change_status(status), None,
                events=int(status is not self.status))
        self.status = status

    @rule(cpu=st.integers(-1, 8), memory=st.integers(-64, 4096))
    def claim(self, cpu: int, memory: int) -> None:
        """A placement claim, refused for the right reason when it must be."""
        used_cpu = sum(c for c, _ in self.claims.values())
        used_memory = sum(m for _, m in self.claims.values())
        expected: type[Exception] | None = None
        if cpu <= 0 or memory <= 0:
            expected = ValidationError
        elif self.state is not RS.ENABLED:
            expected = InvalidTransitionError
        elif self.status is not HostStatus.UP:
            expected = DomainRuleError
        elif used_cpu + cpu > self.total_cpu or used_memory + memory > self.total_memory:
            expected = CapacityError
        claim_id = uuid4()
        attempt(self.host, lambda: self.host.claim(claim_id, uuid4(), cpu, memory), expected)
        if expected is None:
            self.claims[claim_id] = (cpu, memory)

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data())
    def claim_again(self, data: st.DataObject) -> None:
        """A claim id may be used once."""
        # insertion order: the claim ids are random, so sorting them would make hypothesis
        # draw differently when it replays a case
        claim_id = data.draw(st.sampled_from(list(self.claims)))
        attempt(self.host, lambda: self.host.claim(claim_id, uuid4(), 1, 1), DomainRuleError)

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        """Give back a claim the host holds."""
        # insertion order: the claim ids are random, so sorting them would make hypothesis
        # draw differently when it replays a case
        claim_id = data.draw(st.sampled_from(list(self.claims)))
        attempt(self.host, lambda: self.host.release(claim_id), None)
        del self.claims[claim_id]

    @rule()
    def release_unknown(self) -> None:
        """Giving back a claim the host does not hold is refused."""
        attempt(self.host, lambda: self.host.release(uuid4()), DomainRuleError)

    @rule()
    def save_and_reload(self) -> None:
        """The host read back from the store equals the live one."""
        assert_roundtrips(self.host)

    @invariant()
    def refuses_what_the_table_forbids(self) -> None:
        """Every resource state the table does not reach from here is refused."""
        if hasattr(self, "host"):
            for new_state in HostResourceState:
                if (self.state, new_state) not in ALLOWED:
                    attempt(self.host, lambda s=new_state: self.host.change_resource_state(s),
                            InvalidTransitionError)

    @invariant()
    def matches_model(self) -> None:
        """State, status and claims are what the model expects."""
        assert self.host.state is self.state and self.host.status is self.status
        assert set(self.host.claims) == set(self.claims)

    @invariant()
    def capacity_within_bounds(self) -> None:
        """Used capacity never goes negative or past the totals."""
        host = self.host
        assert 0 <= host.used_cpu_cores <= host.total_cpu_cores == self.total_cpu
        assert 0 <= host.used_memory_mib <= host.total_memory_mib == self.total_memory
        assert host.used_cpu_cores == sum(c for c, _ in self.claims.values())
        assert host.used_memory_mib == sum(m for _, m in self.claims.values())
        assert host.free_cpu_cores >= 0 and host.free_memory_mib >= 0

    def teardown(self) -> None:
        """The final host still round-trips through the store."""
        if hasattr(self, "host"):
            assert_roundtrips(self.host)


TestHostMachine = HostMachine.TestCase
TestHostMachine.settings = MACHINE_SETTINGS
