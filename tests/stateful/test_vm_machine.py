"""VirtualMachine: only table transitions happen, placement follows them, the store agrees."""

from collections.abc import Callable
from uuid import UUID, uuid4

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aggregates.errors import DomainRuleError, InvalidTransitionError
from aggregates.vm import PowerState, VirtualMachine, VmState

from ._support import MACHINE_SETTINGS, assert_roundtrips, attempt

S = VmState
HOSTS = [uuid4() for _ in range(3)]
# CloudStack's VM state machine, written down independently of vm.py:
# action -> (states it may start from, state it lands in)
TABLE: dict[str, tuple[frozenset[VmState], VmState]] = {
    "start": (frozenset({S.ALLOCATED, S.STOPPED}), S.STARTING),
    "started": (frozenset({S.STARTING}), S.RUNNING),
    "start_failed": (frozenset({S.STARTING}), S.STOPPED),
    "stop": (frozenset({S.RUNNING}), S.STOPPING),
    "stopped": (frozenset({S.STOPPING}), S.STOPPED),
    "stop_failed": (frozenset({S.STOPPING}), S.RUNNING),
    "migrate": (frozenset({S.RUNNING}), S.MIGRATING),
    "migrated": (frozenset({S.MIGRATING}), S.RUNNING),
    "migration_failed": (frozenset({S.MIGRATING}), S.RUNNING),
    "destroy": (frozenset({S.ALLOCATED, S.STOPPED, S.ERROR}), S.DESTROYED),
    "recover": (frozenset({S.DESTROYED}), S.STOPPED),
    "expunge": (frozenset({S.DESTROYED, S.ERROR}), S.EXPUNGING),
    "expunged": (frozenset({S.EXPUNGING}), S.EXPUNGED),
    "fail": (frozenset({S.ALLOCATED, S.STARTING, S.STOPPED, S.STOPPING, S.MIGRATING,
                        S.EXPUNGING}),
             S.ERROR),
}
ON_HOST = {S.STARTING, S.RUNNING, S.STOPPING, S.MIGRATING}


class VmMachine(RuleBasedStateMachine):
    """Drives one VM with random commands, subsystem results and power reports."""

    def __init__(self) -> None:
        super().__init__()
        self._allocate()

    def _allocate(self) -> None:
        self.vm = VirtualMachine.allocate(name="vm-1", account="acme", zone_id=uuid4(),
                                          service_offering_id=uuid4(), template_id=uuid4())
        self.state = S.ALLOCATED
        self.host: UUID | None = None
        self.last_host: UUID | None = None
        self.destination: UUID | None = None
        self.power: tuple[PowerState, UUID | None] = (PowerState.UNKNOWN, None)

    def _calls(self, host: UUID) -> dict[str, Callable[[], None]]:
        vm = self.vm
        return {
            "start": lambda: vm.start(host),
            "started": vm.started,
            "start_failed": lambda: vm.start_failed("no capacity"),
            "stop": lambda: vm.stop(),
            "stopped": vm.stopped,
            "stop_failed": lambda: vm.stop_failed("agent timeout"),
            "migrate": lambda: vm.migrate(host),
            "migrated": vm.migrated,
            "migration_failed": lambda: vm.migration_failed("target refused"),
            "destroy": vm.destroy,
            "recover": vm.recover,
            "expunge": vm.expunge,
            "expunged": vm.expunged,
            "fail": lambda: vm.fail("boom"),
        }

    def _act(self, action: str, host: UUID) -> None:
        sources, target = TABLE[action]
        expected: type[Exception] | None = None
        if self.state not in sources:
            expected = InvalidTransitionError
        elif action == "migrate" and host == self.host:
            expected = DomainRuleError
        attempt(self.vm, self._calls(host)[action], expected)
        if expected is None:
            self._follow(action, host)
            self.state = target

    def _draw(self, data: st.DataObject, choices: list[str]) -> str:
        # hypothesis favours the first choice; rotating by version spreads it deterministically
        turn = self.vm.version % len(choices)
        return data.draw(st.sampled_from(choices[turn:] + choices[:turn]), label="action")

    @rule(data=st.data(), host=st.sampled_from(HOSTS))
    def progress(self, data: st.DataObject, host: UUID) -> None:
        """A move the model allows (Expunged allows none), so that deep states are reached."""
        allowed = [a for a, (sources, _) in TABLE.items() if self.state in sources]
        self._act(self._draw(data, allowed or list(TABLE)), host)

    @rule(data=st.data(), host=st.sampled_from(HOSTS))
    def anything(self, data: st.DataObject, host: UUID) -> None:
        """Any move, mostly refused ones."""
        self._act(self._draw(data, list(TABLE)), host)

    def _follow(self, action: str, host: UUID) -> None:
        """Where the VM should be placed after an allowed action."""
        if action == "start":
            self.host = host
        elif action == "start_failed":
            self.host = None
        elif action in ("stopped", "destroy", "expunge") and self.host is not None:
            self.last_host, self.host = self.host, None
        elif action == "migrate":
            self.destination = host
        elif action == "migrated":
            self.last_host, self.host, self.destination = self.host, self.destination, None
        elif action in ("migration_failed", "fail"):
            self.destination = None

    @rule(power=st.sampled_from(list(PowerState)),
          host=st.sampled_from([None, *HOSTS]))
    def observe_power(self, power: PowerState, host: UUID | None) -> None:
        """A power report; the same report again records nothing."""
        changed = (power, host) != self.power
        attempt(self.vm, lambda: self.vm.observe_power(power, host), None, events=int(changed))
        self.power = (power, host)

    @rule()
    def save_and_reload(self) -> None:
        """The VM read back from the store equals the live one."""
        assert_roundtrips(self.vm)

    @precondition(lambda self: self.state is S.EXPUNGED)
    @rule()
    def next_vm(self) -> None:
        """An expunged VM accepts nothing more; carry on with a new one."""
        assert_roundtrips(self.vm)
        self._allocate()

    @invariant()
    def refuses_what_the_table_forbids(self) -> None:
        """Every action the table does not allow from here is refused and changes nothing."""
        for action, (sources, _) in TABLE.items():
            if self.state not in sources:
                attempt(self.vm, self._calls(HOSTS[0])[action], InvalidTransitionError)

    @invariant()
    def matches_model(self) -> None:
        """State, placement and power are what the model expects."""
        vm = self.vm
        assert vm.state is self.state
        assert (vm.host_id, vm.destination_host_id) == (self.host, self.destination)
        assert vm.last_host_id == self.last_host
        assert (vm.power_state, vm.power_host_id) == self.power
        assert vm.on_host == (self.state in ON_HOST)

    @invariant()
    def placement_is_consistent(self) -> None:
        """A VM holds a host exactly while it is on one."""
        vm = self.vm
        if vm.state in ON_HOST:
            assert vm.host_id is not None
        if vm.state in (S.ALLOCATED, S.STOPPED, S.DESTROYED, S.EXPUNGING, S.EXPUNGED):
            assert vm.host_id is None
        assert (vm.destination_host_id is not None) == (vm.state is S.MIGRATING)
        assert vm.destination_host_id is None or vm.destination_host_id != vm.host_id

    def teardown(self) -> None:
        """The final VM still round-trips through the store."""
        assert_roundtrips(self.vm)


TestVmMachine = VmMachine.TestCase
TestVmMachine.settings = MACHINE_SETTINGS
