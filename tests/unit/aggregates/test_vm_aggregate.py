"""VirtualMachine: every (state, action) pair against an independent transition table."""

from collections.abc import Callable
from uuid import UUID, uuid4

import pytest

from aggregates.base import audit_context
from aggregates.errors import DomainRuleError, InvalidTransitionError, ValidationError
from aggregates.vm import PowerState, VirtualMachine, VmState
from kernel.store.testing import roundtrip

Refused = Callable[..., InvalidTransitionError]
S = VmState
HOST_A, HOST_B = uuid4(), uuid4()

# action -> (call, refused action text, states it may start from, state it lands in)
ACTIONS: dict[str, tuple[Callable[[VirtualMachine], None], str, set[VmState], VmState]] = {
    "start": (lambda vm: vm.start(HOST_A), "start", {S.ALLOCATED, S.STOPPED}, S.STARTING),
    "started": (lambda vm: vm.started(), "complete start", {S.STARTING}, S.RUNNING),
    "start_failed": (lambda vm: vm.start_failed("no"), "fail start", {S.STARTING}, S.STOPPED),
    "stop": (lambda vm: vm.stop(), "stop", {S.RUNNING}, S.STOPPING),
    "stopped": (lambda vm: vm.stopped(), "complete stop", {S.STOPPING}, S.STOPPED),
    "stop_failed": (lambda vm: vm.stop_failed("no"), "fail stop", {S.STOPPING}, S.RUNNING),
    "migrate": (lambda vm: vm.migrate(HOST_B), "migrate", {S.RUNNING}, S.MIGRATING),
    "migrated": (lambda vm: vm.migrated(), "complete migration", {S.MIGRATING}, S.RUNNING),
    "migration_failed": (lambda vm: vm.migration_failed("no"), "fail migration",
                         {S.MIGRATING}, S.RUNNING),
    "destroy": (lambda vm: vm.destroy(), "destroy", {S.ALLOCATED, S.STOPPED, S.ERROR},
                S.DESTROYED),
    "recover": (lambda vm: vm.recover(), "recover", {S.DESTROYED}, S.STOPPED),
    "expunge": (lambda vm: vm.expunge(), "expunge", {S.DESTROYED, S.ERROR}, S.EXPUNGING),
    "expunged": (lambda vm: vm.expunged(), "complete expunge", {S.EXPUNGING}, S.EXPUNGED),
    "fail": (lambda vm: vm.fail("boom"), "fail",
             {S.ALLOCATED, S.STARTING, S.STOPPED, S.STOPPING, S.MIGRATING, S.EXPUNGING},
             S.ERROR),
}

PATHS: dict[VmState, list[str]] = {
    S.ALLOCATED: [],
    S.STARTING: ["start"],
    S.RUNNING: ["start", "started"],
    S.STOPPING: ["start", "started", "stop"],
    S.STOPPED: ["start", "started", "stop", "stopped"],
    S.MIGRATING: ["start", "started", "migrate"],
    S.DESTROYED: ["destroy"],
    S.EXPUNGING: ["destroy", "expunge"],
    S.EXPUNGED: ["destroy", "expunge", "expunged"],
    S.ERROR: ["fail"],
}


def make_vm(id: UUID | None = None) -> VirtualMachine:
    """A freshly allocated VM."""
    return VirtualMachine.allocate(name="web-1", account="acme", zone_id=uuid4(),
                                   service_offering_id=uuid4(), template_id=uuid4(), id=id)


def vm_in(state: VmState) -> VirtualMachine:
    """A VM driven into `state` through allowed transitions."""
    vm = make_vm()
    for name in PATHS[state]:
        ACTIONS[name][0](vm)
    assert vm.state is state
    return vm


@pytest.mark.parametrize("state", list(VmState))
@pytest.mark.parametrize("action", list(ACTIONS))
def test_transition_table(state: VmState, action: str, refused: Refused) -> None:
    call, text, sources, target = ACTIONS[action]
    vm = vm_in(state)
    if state in sources:
        version = vm.version
        call(vm)
        assert vm.state is target and vm.version == version + 1
    else:
        refused(vm, lambda: call(vm), text)


def test_allocate_with_chosen_id_and_defaults() -> None:
    chosen = uuid4()
    vm = make_vm(id=chosen)
    assert vm.id == chosen and vm.state is S.ALLOCATED
    assert vm.power_state is PowerState.UNKNOWN and vm.host_id is None
    assert make_vm().id != make_vm().id


@pytest.mark.parametrize("name", ["", "1web", "web_1", "web-", "x" * 64])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        VirtualMachine.allocate(name=name, account="acme", zone_id=uuid4(),
                                service_offering_id=uuid4(), template_id=uuid4())


def test_refusal_names_vm_state_and_action(refused: Refused) -> None:
    vm = vm_in(S.RUNNING)
    error = refused(vm, vm.recover, "recover")
    assert str(error) == f"vm web-1 ({vm.id}) is Running: cannot recover"
    assert error.to_dict()["code"] == "invalid_transition"


def test_host_follows_start_migrate_stop() -> None:
    vm = vm_in(S.RUNNING)
    assert vm.host_id == HOST_A and vm.on_host
    with pytest.raises(DomainRuleError):
        vm.migrate(HOST_A)
    vm.migrate(HOST_B)
    assert vm.destination_host_id == HOST_B and vm.host_id == HOST_A
    vm.migrated()
    assert (vm.host_id, vm.last_host_id, vm.destination_host_id) == (HOST_B, HOST_A, None)
    vm.migrate(HOST_A)
    vm.migration_failed("target full")
    assert vm.host_id == HOST_B and vm.last_error == "target full"
    vm.stop(forced=True)
    vm.stopped()
    assert (vm.host_id, vm.last_host_id, vm.on_host) == (None, HOST_B, False)
    assert roundtrip(vm) == vm


def test_failed_start_leaves_the_host() -> None:
    vm = vm_in(S.STARTING)
    vm.start_failed("no capacity")
    assert vm.state is S.STOPPED and vm.host_id is None and vm.last_error == "no capacity"


def test_power_state_is_observed_apart_from_state() -> None:
    vm = vm_in(S.RUNNING)
    vm.observe_power(PowerState.ON, HOST_A)
    assert vm.state is S.RUNNING and not vm.power_drift
    version = vm.version
    vm.observe_power(PowerState.ON, HOST_A)
    assert vm.version == version
    vm.observe_power(PowerState.ON, HOST_B)
    assert vm.power_drift
    vm.observe_power(PowerState.REPORT_MISSING)
    assert vm.power_drift and vm.state is S.RUNNING
    vm.stop()
    vm.stopped()
    vm.observe_power(PowerState.ON, HOST_A)
    assert vm.power_drift
    vm.observe_power(PowerState.OFF, HOST_A)
    assert not vm.power_drift
    assert roundtrip(vm) == vm


def test_destroy_recover_expunge_roundtrip() -> None:
    vm = vm_in(S.STOPPED)
    vm.destroy()
    vm.recover()
    vm.destroy()
    vm.expunge()
    vm.expunged()
    assert vm.state is S.EXPUNGED
    assert roundtrip(vm) == vm


def test_audit_metadata_lands_on_events() -> None:
    correlation = uuid4()
    with audit_context("alice", correlation, "deploy-1"):
        vm = make_vm()
        vm.start(HOST_A)
    with audit_context("libvirt", correlation, "step-3"):
        vm.started()
    stamps = [(e.actor, e.correlation_id, e.causation_id) for e in vm.pending_events]
    assert stamps == [("alice", correlation, "deploy-1")] * 2 + [
        ("libvirt", correlation, "step-3")]
