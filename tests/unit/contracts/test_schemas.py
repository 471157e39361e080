"""The JSON Schemas: valid schemas, found from the code, and real stored payloads match them."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError as SchemaError

from aggregates.base import audit_context
from aggregates.host import Host, HostStatus
from aggregates.network import Network
from aggregates.nic import Nic
from aggregates.plan import Compensation, Plan, PlannedStep, RetryPolicy
from aggregates.snapshot import Snapshot
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.vm import PowerState, VirtualMachine
from aggregates.volume import Volume, VolumeType
from gateways.contracts.catalog import public_commands, public_events
from gateways.contracts.documents import DEFAULT_DIR, render
from kernel.bootstrap import PLATFORM_HANDLERS, SAMPLE_INVENTORY
from kernel.bootstrap.catalog import CLOUD_COMMANDS
from kernel.commands import Command, CommandService
from kernel.contracts.steps import StepOutcome
from kernel.dispatch_feed import DispatchFeed
from kernel.inventory.loader import LoadInventory, load_inventory_file
from kernel.inventory.spec import parse_inventory
from kernel.operation_commands import CancelOperation, StartOperation, StartOperations
from kernel.operations import OperationEngine
from kernel.store.application import KernelApplication
from kernel.store.testing import scratch_application

ARGS = msgspec.Raw(b'{"n":1}')
NO_RETRY = RetryPolicy(max_attempts=1, jitter=0.0)


class PrivateCommand(Command, frozen=True, kw_only=True, tag="test.private"):
    """A command defined outside the public command modules."""

    x: int


def validator(path: str) -> Draft202012Validator:
    schema = json.loads((DEFAULT_DIR / path).read_text())
    return Draft202012Validator(schema, format_checker=FormatChecker())


def test_every_generated_document_is_a_valid_json_schema() -> None:
    documents = render()
    assert len(documents) == len(public_events()) + len(public_commands()) + 2
    for path, data in documents.items():
        if path != "asyncapi.json":
            Draft202012Validator.check_schema(json.loads(data))


def test_events_are_found_by_topic_without_bases_or_unused_created_copies() -> None:
    topics = [e.topic for e in public_events()]
    assert topics == sorted(set(topics))
    assert {"host.Registered", "vm.Started", "operation.StepDispatched",
            "entity_queue.Acquired", "zone.Created"} <= set(topics)
    # the base events, and the Created copies of aggregates created by another event
    assert not {"host.Event", "host.Created", "vm.Created", "operation.Created"} & set(topics)
    schema = json.loads(render()["events/vm.StartRequested.json"])
    assert schema["x-cloudkernel-subject"] == "cloudkernel.events.vm.StartRequested"
    assert schema["x-cloudkernel-class-version"] == 1
    assert {"timestamp", "actor", "correlation_id", "causation_id", "host_id"} <= \
        set(schema["required"])
    headers = schema["x-cloudkernel-headers"]
    assert headers["properties"]["Cloudkernel-Topic"]["const"] == "vm.StartRequested"
    assert "Cloudkernel-Position" in headers["required"]


def test_commands_come_from_the_command_modules_only() -> None:
    tags = [c.tag for c in public_commands()]
    cloud = sorted(str(t.__struct_config__.tag) for t in CLOUD_COMMANDS)
    assert tags == sorted(["inventory.load", "operation.cancel", "operation.start",
                           "operation.start_many", "service.deregister", "service.disable",
                           "service.enable", "service.register", "vm.console",
                           "console.redeem", "address.allocate", "address.release",
                           "publicrange.create", *cloud])
    assert "vm.deploy" in tags and "network.create" in tags
    assert PrivateCommand.__struct_config__.tag not in tags


def test_the_documented_commands_are_the_ones_the_intake_serves() -> None:
    app = scratch_application()
    try:
        engine = OperationEngine(app, operation_commands=CLOUD_COMMANDS)
        served = {**PLATFORM_HANDLERS, **engine.commands.handlers}
    finally:
        app.close()
    assert {c.cls for c in public_commands()} == set(served)


# ------------------------------------------------------------------ real stored payloads


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def app() -> Iterator[KernelApplication]:
    app = scratch_application()
    load_inventory_file(CommandService(app, PLATFORM_HANDLERS), SAMPLE_INVENTORY)
    _entities(app)
    _operations(app)
    yield app
    app.close()


def _first(app: KernelApplication, topic: str) -> UUID:
    for note in app.recorder.select_notifications(start=None, limit=10_000, topics=(topic,)):
        return UUID(str(note.originator_id))
    raise AssertionError(f"no {topic} in the log")


def _entities(app: KernelApplication) -> None:
    zone_id = _first(app, "zone.Created")
    host: Host = app.repository.get(_first(app, "host.Registered"))
    pool: PrimaryStoragePool = app.repository.get(_first(app, "storage_pool.Created"))
    with audit_context(actor="alice", correlation_id=uuid4(), causation_id="test:contracts"):
        vm = VirtualMachine.allocate(
            name="web-1", account="acme", zone_id=zone_id,
            service_offering_id=_first(app, "service_offering.Created"),
            template_id=_first(app, "template.Registered"))
        host.claim(uuid4(), vm.id, 1, 512)
        host.change_status(HostStatus.DOWN, "no heartbeat")
        vm.start(host.id)
        vm.started()
        vm.observe_power(PowerState.ON, host.id)
        vm.stop()
        vm.stopped()
        vol = Volume.allocate(name="data-1", account="acme", zone_id=zone_id,
                              volume_type=VolumeType.DATADISK, size_bytes=2**30)
        pool.claim(uuid4(), vol.id, 2**30)
        vol.create(pool.id)
        vol.created("/pool/data-1")
        vol.attach(vm.id, 1)
        vol.attached()
        vol.resize(2**31)
        vol.resized()
        net = Network.create(name="guests", zone_id=zone_id, cidr="10.1.0.0/24",
                             gateway="10.1.0.1", reserved_ranges=(("10.1.0.2", "10.1.0.9"),))
        net.implement()
        net.implemented(vlan=100)
        nic = Nic.allocate(vm_id=vm.id, network_id=net.id, mac="02:00:00:00:00:01",
                           device_id=0, is_default=True)
        nic.reserve(net.allocate_ip(nic.id))
        snap = Snapshot.allocate(name="s1", account="acme", zone_id=zone_id,
                                 volume_id=vol.id, volume_size_bytes=2**31)
        snap.create()
        snap.created("/pool/s1")
    app.save(host, pool, vm, vol, net, nic, snap)


def _step(undo: bool) -> PlannedStep:
    comp = Compensation(subsystem="echo", action="undo", args=ARGS, retry=NO_RETRY) \
        if undo else None
    return PlannedStep(step_id=uuid4(), subsystem="echo", action="run", args=ARGS,
                       retry=NO_RETRY, compensation=comp)


def _operations(app: KernelApplication) -> None:
    """One operation rolled back (a step failed), one cancelled while waiting for its entity."""
    engine, feed = OperationEngine(app, clock=Clock()), DispatchFeed(app)
    entity = uuid4()
    first, second = _step(undo=True), _step(undo=False)
    engine.submit("test.op", Plan(steps=(first, second)), (entity,), idempotency_key="op-1")
    waiting = engine.submit("test.op", Plan(steps=(_step(undo=False),)), (entity,),
                            idempotency_key="op-2")
    op_id = UUID(msgspec.json.decode(waiting.result)["operation_id"])
    engine.cancel(op_id, "not needed", idempotency_key="cancel-2")
    for _ in range(5):
        messages, position = feed.read(feed.position())
        feed.commit(position)
        if not messages:
            break
        engine.apply_outcomes([StepOutcome(
            step_id=m.step_id, operation_id=m.operation_id, attempt=m.attempt,
            subsystem=m.subsystem, ok=m.step_id != second.step_id,
            error_code="" if m.step_id != second.step_id else "boom", message="it broke")
            for m in messages])


def test_every_stored_payload_validates_against_its_topics_schema(
        app: KernelApplication) -> None:
    notes = list(app.recorder.select_notifications(start=None, limit=100_000))
    topics = {n.topic for n in notes}
    # the sample inventory, entities of each kind, and a rolled-back and a cancelled operation
    assert {"vm.Started", "volume.Resized", "network.IpAllocated", "nic.Reserved",
            "snapshot.CreatedOnPrimary", "operation.StepAttemptFailed",
            "operation.CompensationStarted", "operation.RolledBack", "operation.Cancelled",
            "entity_queue.Enqueued", "host.CapacityClaimed"} <= topics, sorted(topics)
    assert len(topics) >= 45
    validators = {t: validator(f"events/{t}.json") for t in topics}
    for note in notes:
        validators[note.topic].validate(json.loads(note.state))


def test_a_wrong_payload_does_not_validate(app: KernelApplication) -> None:
    note = next(iter(app.recorder.select_notifications(
        start=None, limit=1, topics=("host.Registered",))))
    payload = json.loads(note.state)
    check = validator("events/host.Registered.json")
    check.validate(payload)
    for broken in ({**payload, "cpu_cores": "eight"}, {**payload, "zone_id": "not-a-uuid"},
                   {k: v for k, v in payload.items() if k != "actor"}):
        with pytest.raises(SchemaError):
            check.validate(broken)


def _body(command: Command) -> Any:
    body = json.loads(msgspec.json.encode(command))
    del body["command"]  # the subject names the command
    return body


def test_commands_encoded_by_msgspec_validate_and_wrong_ones_do_not() -> None:
    start = StartOperation(kind="vm.deploy", plan=Plan(steps=(_step(undo=True),)),
                           entity_ids=(uuid4(),))
    cases: list[tuple[str, Command]] = [
        ("operation.start", start),
        ("operation.start_many", StartOperations(operations=(start, start))),
        ("operation.cancel", CancelOperation(operation_id=uuid4())),
        ("inventory.load", LoadInventory(source="inv.toml",
                                         inventory=parse_inventory(SAMPLE_INVENTORY)[0])),
    ]
    for tag, command in cases:
        validator(f"commands/{tag}.json").validate(_body(command))
    # the tag may be sent too, if it is the right one
    validator("commands/operation.cancel.json").validate(json.loads(msgspec.json.encode(cases[2][1])))
    wrong = [
        ("operation.cancel", {"reason": "no id"}),
        ("operation.cancel", {"operation_id": "42"}),
        ("operation.cancel", {"operation_id": str(uuid4()), "force": True}),  # unknown field
        ("operation.cancel", {"operation_id": str(uuid4()), "command": "operation.start"}),
        ("operation.start", {**_body(start), "plan": {"steps": "none"}}),
        ("operation.start_many", {"operations": [{"kind": "x"}]}),
    ]
    for tag, body in wrong:
        with pytest.raises(SchemaError):
            validator(f"commands/{tag}.json").validate(body)


def test_command_replies_validate() -> None:
    check = validator("command-reply.json")
    check.validate({"ok": True, "command": "operation.cancel", "idempotency_key": "k1",
                    "replayed": False, "positions": [7, 8], "result": None,
                    "correlation_id": str(uuid4())})
    check.validate({"ok": False, "error": {"code": "conflict", "message": "busy"}})
    check.validate({"ok": False, "error": {"code": "invalid", "message": "no", "reason":
                                           "invalid_transition", "detail": {"state": "Up"}}})
    for bad in ({"ok": False, "error": {"code": "oops", "message": "?"}},
                {"ok": True, "command": "x"}):
        with pytest.raises(SchemaError):
            check.validate(bad)


def test_the_committed_folder_is_the_default() -> None:
    assert Path(__file__).resolve().parents[3] / "docs" / "contracts" == DEFAULT_DIR
