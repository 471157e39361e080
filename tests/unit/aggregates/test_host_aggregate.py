"""Host: registration, resource state machine, status and capacity claims."""

from collections.abc import Callable
from uuid import UUID, uuid4

import pytest

from aggregates.base import audit_context
from aggregates.errors import (
    CapacityError,
    DomainRuleError,
    InvalidTransitionError,
    ValidationError,
)
from aggregates.host import Host, HostResourceState, HostStatus
from kernel.store.testing import roundtrip

Refused = Callable[..., InvalidTransitionError]
RS = HostResourceState


def make_host(**overrides: object) -> Host:
    """A valid host with 4 cores and 4 GiB."""
    args: dict = {"name": f"h-{uuid4().hex[:8]}", "uri": "test:///default", "zone_id": uuid4(),
                  "pod_id": uuid4(), "cluster_id": uuid4(), "cpu_cores": 4, "cpu_mhz": 2000,
                  "memory_mib": 4096}
    args.update(overrides)
    return Host.register(**args)


def test_register_defaults() -> None:
    host = make_host(name="kvm1")
    assert host.id == Host.create_id("kvm1")
    assert host.state is RS.ENABLED and host.status is HostStatus.UP
    assert (host.free_cpu_cores, host.free_memory_mib) == (4, 4096)


def test_overprovisioning_raises_totals() -> None:
    host = make_host(cpu_overprovisioning=2.0, memory_overprovisioning=1.5)
    assert (host.total_cpu_cores, host.total_memory_mib) == (8, 6144)


@pytest.mark.parametrize("overrides", [
    {"name": ""}, {"uri": "nowhere"}, {"cpu_cores": 0}, {"memory_mib": -1},
    {"cpu_overprovisioning": 0.5},
])
def test_bad_arguments_are_refused(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        make_host(**overrides)


def test_maintenance_cycle(refused: Refused) -> None:
    host = make_host()
    refused(host, lambda: host.change_resource_state(RS.MAINTENANCE),
            "move to Maintenance")
    for state in (RS.PREPARE_FOR_MAINTENANCE, RS.ERROR_IN_MAINTENANCE,
                  RS.PREPARE_FOR_MAINTENANCE, RS.MAINTENANCE, RS.ENABLED, RS.DISABLED):
        host.change_resource_state(state, "admin")
        assert host.state is state
    assert roundtrip(host) == host


def test_claims_respect_capacity_and_state(refused: Refused) -> None:
    host = make_host()
    first, vm = uuid4(), uuid4()
    host.claim(first, vm, 3, 1024)
    with pytest.raises(CapacityError):
        host.claim(uuid4(), vm, 2, 1024)
    with pytest.raises(DomainRuleError):
        host.claim(first, vm, 1, 1)
    with pytest.raises(ValidationError):
        host.claim(uuid4(), vm, 0, 1)
    host.change_resource_state(RS.DISABLED)
    refused(host, lambda: host.claim(uuid4(), vm, 1, 1), "accept a placement")
    host.change_resource_state(RS.ENABLED)
    host.change_status(HostStatus.DOWN, "no heartbeat")
    with pytest.raises(DomainRuleError):
        host.claim(uuid4(), vm, 1, 1)
    host.release(first)
    assert (host.used_cpu_cores, host.used_memory_mib) == (0, 0)
    with pytest.raises(DomainRuleError):
        host.release(first)
    assert roundtrip(host) == host


def test_status_records_only_changes() -> None:
    host = make_host()
    host.change_status(HostStatus.UP)
    assert host.version == 1
    host.change_status(HostStatus.DISCONNECTED)
    assert host.version == 2


def test_audit_metadata_lands_on_events() -> None:
    correlation = uuid4()
    with audit_context("planner", correlation, "step-9"):
        host = make_host()
        host.claim(uuid4(), uuid4(), 1, 1)
    for e in host.pending_events:
        assert (e.actor, e.correlation_id, e.causation_id) == ("planner", correlation, "step-9")


@pytest.mark.parametrize("uri", ["qemu:///system", "qemu+ssh://root@kvm-7.example/system",
                                 "qemu+tcp://10.0.0.7/system", "qemu+tls://kvm-7/system",
                                 "test:///default", "test:///tmp/host-1.xml",
                                 "test:/tmp/host-1.xml"])  # libvirt opens this form too
def test_real_and_simulated_libvirt_uris_register(uri: str) -> None:
    host = make_host(uri=uri)
    assert host.uri == uri and roundtrip(host).uri == uri


@pytest.mark.parametrize("uri", ["", "kvm-7", "/var/run/libvirt", "qemu"])
def test_what_is_no_libvirt_uri_is_refused(uri: str) -> None:
    with pytest.raises(ValidationError, match="libvirt URI"):
        make_host(uri=uri)


def test_state_changes_record_their_reasons() -> None:
    host = make_host()
    host.disable("rack 4 power work")
    assert host.resource_state is RS.DISABLED
    [event] = [e for e in host.collect_events() if type(e).__name__ == "ResourceStateChanged"]
    assert event.reason == "rack 4 power work"  # type: ignore[attr-defined]


def _reasons(host: Host) -> list[tuple[RS, str]]:
    """The resource states the host moved to, with the reason each change recorded."""
    return [(e.state, e.reason) for e in host.pending_events  # type: ignore[attr-defined]
            if isinstance(e, Host.ResourceStateChanged)]


def test_a_change_without_a_reason_records_an_empty_one() -> None:
    host = make_host()
    host.disable()
    host.enable()
    host.change_resource_state(RS.DISABLED)
    host.change_status(HostStatus.DOWN)
    host.start_maintenance(None)
    assert _reasons(host) == [(RS.DISABLED, ""), (RS.ENABLED, ""), (RS.DISABLED, ""),
                              (RS.PREPARE_FOR_MAINTENANCE, "")]
    [status] = [e for e in host.pending_events if isinstance(e, Host.StatusChanged)]
    assert (status.status, status.reason) == (HostStatus.DOWN, "")


def test_every_state_change_records_the_reason_it_was_given() -> None:
    host = make_host()
    host.disable("rack 4 power work")
    host.enable("power is back")
    host.change_status(HostStatus.DISCONNECTED, "no heartbeat for 60 s")
    host.start_maintenance(uuid4(), "kernel upgrade")
    host.cancel_maintenance("upgrade postponed")
    assert _reasons(host) == [(RS.DISABLED, "rack 4 power work"),
                              (RS.ENABLED, "power is back"),
                              (RS.PREPARE_FOR_MAINTENANCE, "kernel upgrade"),
                              (RS.ENABLED, "upgrade postponed")]
    [status] = [e for e in host.pending_events if isinstance(e, Host.StatusChanged)]
    assert status.reason == "no heartbeat for 60 s"
    [cancelled] = [e for e in host.pending_events if isinstance(e, Host.MaintenanceCancelled)]
    assert cancelled.reason == "upgrade postponed"
    assert roundtrip(host) == host


def test_maintenance_cancelled_without_a_reason_says_so() -> None:
    host = make_host()
    host.start_maintenance(None)
    host.cancel_maintenance()
    assert _reasons(host)[-1] == (RS.ENABLED, "maintenance cancelled")
    assert host.maintenance.operation_id is None and host.state is RS.ENABLED


def test_completed_maintenance_records_why_it_ended_as_it_did() -> None:
    moved = make_host()
    moved.start_maintenance(None)
    moved.complete_maintenance()
    assert _reasons(moved)[-1] == (RS.MAINTENANCE, "every VM moved away")


@pytest.mark.parametrize(("errors", "reason"), [
    (["vm-1 stayed"], "vm-1 stayed"),
    (["vm-1 stayed", "vm-2 stayed"], "vm-1 stayed (and 1 more)"),
    (["vm-1 stayed", "vm-2 stayed", "host down"], "vm-1 stayed (and 2 more)"),
])
def test_failed_maintenance_records_its_first_error_and_counts_the_rest(
        errors: list[str], reason: str) -> None:
    host = make_host()
    host.start_maintenance(uuid4())
    for error in errors:
        host.evacuation_failed(error)
    host.complete_maintenance()
    assert _reasons(host)[-1] == (RS.ERROR_IN_MAINTENANCE, reason)
    assert host.maintenance.errors == tuple(errors)


def test_an_evacuation_tracks_each_migration_to_its_end() -> None:
    host = make_host()
    op, vm_a, vm_b = uuid4(), uuid4(), uuid4()
    m_a, m_b = uuid4(), uuid4()
    host.start_maintenance(op, "drain")
    host.evacuate({m_a: vm_a, m_b: vm_b})
    assert host.maintenance.migrations == {m_a: vm_a, m_b: vm_b}
    host.vm_evacuated(m_a)
    [evacuated] = [e for e in host.pending_events if isinstance(e, Host.VmEvacuated)]
    assert (evacuated.operation_id, evacuated.vm_id) == (m_a, vm_a)
    with pytest.raises(DomainRuleError, match="1 migrations are still running"):
        host.complete_maintenance()
    host.evacuation_failed("vm-b could not move", operation_id=m_b)
    [failed] = [e for e in host.pending_events if isinstance(e, Host.EvacuationFailed)]
    # the failure names the VM of that migration, found by the host
    assert (failed.reason, failed.vm_id, failed.operation_id) == ("vm-b could not move", vm_b, m_b)
    assert host.maintenance.migrations == {} and host.maintenance.operation_id == op
    host.complete_maintenance()
    assert host.state is RS.ERROR_IN_MAINTENANCE
    assert roundtrip(host) == host


def test_an_evacuation_failure_without_a_migration_leaves_the_migrations_alone() -> None:
    host = make_host()
    m, vm = uuid4(), uuid4()
    host.start_maintenance(uuid4())
    host.evacuate({m: vm})
    host.evacuation_failed("host did not answer", vm_id=vm)
    assert host.maintenance.migrations == {m: vm}
    assert host.maintenance.errors == ("host did not answer",)


def test_migrations_are_recorded_once_and_only_theirs_may_end() -> None:
    host = make_host(name="kvm-9")
    m, other = uuid4(), uuid4()
    host.start_maintenance(uuid4())
    host.evacuate({})  # nothing to move: nothing recorded
    assert not [e for e in host.pending_events if isinstance(e, Host.EvacuationStarted)]
    host.evacuate({m: uuid4()})
    version = host.version
    with pytest.raises(DomainRuleError, match=rf"host kvm-9: migrations \['{m}'\] are already"):
        host.evacuate({m: uuid4(), uuid4(): uuid4()})
    with pytest.raises(DomainRuleError, match=f"host kvm-9: operation {other} is no migration"):
        host.vm_evacuated(other)
    with pytest.raises(DomainRuleError, match=f"operation {other} is no migration"):
        host.evacuation_failed("?", operation_id=other)
    assert host.version == version


def test_maintenance_steps_are_refused_outside_preparation(refused: Refused) -> None:
    host = make_host()
    refused(host, lambda: host.evacuate({uuid4(): uuid4()}), "evacuate")
    refused(host, lambda: host.vm_evacuated(uuid4()), "end a migration")
    refused(host, lambda: host.evacuation_failed("x"), "record a failed evacuation")
    refused(host, host.complete_maintenance, "complete maintenance")
    refused(host, host.cancel_maintenance, "cancel maintenance")
    host.start_maintenance(None)
    host.complete_maintenance()
    refused(host, lambda: host.start_maintenance(None), "prepare for maintenance")


def test_claim_refusals_say_why() -> None:
    host = make_host(name="kvm-3")
    claim, vm = uuid4(), uuid4()
    host.claim(claim, vm, 1, 512)
    with pytest.raises(DomainRuleError, match=f"host kvm-3: claim {claim} already exists"):
        host.claim(claim, vm, 1, 1)
    with pytest.raises(ValidationError, match="positive cpu_cores and memory_mib"):
        host.claim(uuid4(), vm, 1, 0)
    with pytest.raises(CapacityError,
                       match="host kvm-3: asked 4 cores/512 MiB, free 3 cores/3584 MiB"):
        host.claim(uuid4(), vm, 4, 512)
    host.change_status(HostStatus.DOWN)
    with pytest.raises(DomainRuleError, match="host kvm-3 is Down: cannot accept a placement"):
        host.claim(uuid4(), vm, 1, 1)
    missing = uuid4()
    with pytest.raises(DomainRuleError, match=f"host kvm-3: no claim {missing}"):
        host.release(missing)


def test_a_claim_may_take_exactly_what_is_free_but_no_more_of_either() -> None:
    host = make_host()  # 4 cores, 4096 MiB
    with pytest.raises(CapacityError):
        host.claim(uuid4(), uuid4(), 1, 4097)  # the cores fit, the memory does not
    with pytest.raises(CapacityError):
        host.claim(uuid4(), uuid4(), 5, 1)  # the memory fits, the cores do not
    vm = uuid4()
    host.claim(claim := uuid4(), vm, 4, 4096)
    assert host.claims == {claim: (vm, 4, 4096)}
    assert (host.free_cpu_cores, host.free_memory_mib) == (0, 0)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"name": ""}, "host name must not be empty"),
    ({"name": "kvm-2", "uri": "kvm-2"}, "host kvm-2: uri 'kvm-2' is not a libvirt URI"),
    ({"name": "kvm-2", "cpu_cores": 0}, "host kvm-2: cpu_cores must be positive, got 0"),
    ({"name": "kvm-2", "cpu_mhz": -1}, "host kvm-2: cpu_mhz must be positive, got -1"),
    ({"name": "kvm-2", "memory_mib": 0}, "host kvm-2: memory_mib must be positive, got 0"),
    ({"name": "kvm-2", "cpu_overprovisioning": 0.9},
     r"host kvm-2: cpu_overprovisioning must be >= 1\.0, got 0\.9"),
    ({"name": "kvm-2", "memory_overprovisioning": 0.5},
     r"host kvm-2: memory_overprovisioning must be >= 1\.0, got 0\.5"),
])
def test_a_refused_registration_names_the_field_and_its_value(overrides: dict,
                                                              message: str) -> None:
    with pytest.raises(ValidationError, match=f"^{message}$"):
        make_host(**overrides)


def test_registration_keeps_every_field_as_given() -> None:
    zone, pod, cluster, name = uuid4(), uuid4(), uuid4(), f"kvm-{uuid4().hex[:8]}"
    host = Host.register(name=name, uri="qemu+ssh://root@kvm-5/system", zone_id=zone,
                         pod_id=pod, cluster_id=cluster, cpu_cores=8, cpu_mhz=2400,
                         memory_mib=16384, cpu_overprovisioning=2, memory_overprovisioning=1,
                         tags=["ssd", "gpu"])
    assert (host.name, host.uri, host.zone_id, host.pod_id, host.cluster_id) == (
        name, "qemu+ssh://root@kvm-5/system", zone, pod, cluster)
    assert (host.cpu_cores, host.cpu_mhz, host.memory_mib, host.tags) == (
        8, 2400, 16384, ("ssd", "gpu"))
    assert isinstance(host.cpu_overprovisioning, float)
    assert (host.cpu_overprovisioning, host.memory_overprovisioning) == (2.0, 1.0)
    assert (host.claims, host.used_cpu_cores, host.used_memory_mib) == ({}, 0, 0)
    assert host.id == Host.create_id(name)
    assert roundtrip(host) == host


def test_a_hosts_id_is_its_name_for_good() -> None:
    """Stored logs and inventories refer to a host by this id."""
    assert Host.create_id("kvm-5") == UUID("0125b737-9847-5ce4-beee-2833c9ac861c")


@pytest.mark.parametrize("state", [RS.PREPARE_FOR_MAINTENANCE, RS.MAINTENANCE,
                                   RS.ERROR_IN_MAINTENANCE])
def test_maintenance_owns_the_resource_state_until_cancelled(state: RS) -> None:
    host = make_host(name="kvm-4")
    host.start_maintenance(None)
    if state is not RS.PREPARE_FOR_MAINTENANCE:
        if state is RS.ERROR_IN_MAINTENANCE:
            host.evacuation_failed("vm-1 stayed")
        host.complete_maintenance()
    assert host.state is state
    for action, call in (("disable", host.disable), ("enable", host.enable)):
        with pytest.raises(DomainRuleError,
                           match=f"^host kvm-4 is {state.value}: cancel maintenance to "
                                 f"{action} it$"):
            call("admin")
    host.cancel_maintenance()
    host.disable()
    assert host.state is RS.DISABLED
