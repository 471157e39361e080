"""The framework's pure parts: the spec's checks, events as consumers get them, and how a
registration's events move the runtime's switch."""

import json
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import pytest

from aggregates.errors import ValidationError
from services.framework import ServiceSpec
from services.framework.following import TERMINAL, RegistrationFollower
from services.framework.system_vms import system_vm_id, system_vm_name
from services.framework.wire import ServiceEvent


@dataclass
class FakeMsg:
    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


def event(topic: str, originator: Any, version: int, **data: Any) -> ServiceEvent:
    return ServiceEvent.from_msg(FakeMsg(  # type: ignore[arg-type]
        f"cloudkernel.events.{topic}", json.dumps(data).encode(),
        {"Cloudkernel-Position": str(version * 10), "Cloudkernel-Topic": topic,
         "Cloudkernel-Originator-Id": str(originator),
         "Cloudkernel-Originator-Version": str(version)}))


def test_a_spec_is_checked_before_anything_connects() -> None:
    spec = ServiceSpec(name="ec2", version="1", endpoints={"http": "http://127.0.0.1:8482/"})
    assert spec.body()["consumes"] == [] and spec.body()["name"] == "ec2"
    with pytest.raises(ValidationError, match="name"):
        ServiceSpec(name="EC2", version="1", endpoints={})
    with pytest.raises(ValidationError, match="consumes"):
        ServiceSpec(name="ec2", version="1", endpoints={}, consumes=("a b",))


def test_an_event_as_a_consumer_gets_it() -> None:
    oid = uuid4()
    e = event("vm.Started", oid, 3, host_id="h1")
    assert (e.position, e.topic, e.originator_id, e.data()) == (30, "vm.Started", oid,
                                                                 {"host_id": "h1"})
    assert e.subject == "cloudkernel.events.vm.Started"


def test_the_switch_follows_newer_events_of_its_own_registration_only() -> None:
    mine, other = uuid4(), uuid4()
    seen: list[tuple[str, str]] = []
    follower = RegistrationFollower(mine, lambda state, reason: seen.append((state, reason)))
    follower.known("Enabled", 2)  # what the register command answered
    follower.apply(event("service_registration.Disabled", mine, 2, reason="old"))  # not newer
    follower.apply(event("service_registration.Disabled", other, 5, reason="not mine"))
    assert seen == [("Enabled", "")]
    follower.apply(event("service_registration.Disabled", mine, 3, reason="maintenance"))
    follower.apply(event("service_registration.Updated", mine, 4))  # stays disabled
    follower.apply(event("service_registration.Deregistered", mine, 5))
    follower.apply(event("service_registration.Updated", mine, 6))  # registered anew
    assert seen[1:] == [("Disabled", "maintenance"), ("Disabled", "maintenance"),
                        ("Deregistered", ""),
                        ("Enabled", "")]


def test_terminal_operation_events_and_system_vm_names() -> None:
    assert TERMINAL == {"operation.Succeeded": "Succeeded", "operation.Failed": "Failed",
                        "operation.RolledBack": "Compensated",
                        "operation.Cancelled": "Cancelled"}
    assert system_vm_id("ec2", "proxy") == system_vm_id("ec2", "proxy") \
        != system_vm_id("enduser", "proxy")
    assert system_vm_name("ec2", "proxy") == "s-ec2-proxy"
