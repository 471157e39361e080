"""Pod: creation with its management range, allocation state."""

from collections.abc import Callable
from uuid import uuid4

import pytest

from aggregates.allocation import AllocationState
from aggregates.base import audit_context
from aggregates.errors import InvalidTransitionError, ValidationError
from aggregates.pod import Pod
from kernel.store.testing import roundtrip

Refused = Callable[..., InvalidTransitionError]

ZONE = uuid4()


def make_pod(**overrides: object) -> Pod:
    """A valid pod."""
    args: dict = {"name": f"pod-{uuid4().hex[:8]}", "zone_id": ZONE, "gateway": "192.168.0.1",
                  "cidr": "192.168.0.0/24", "start_ip": "192.168.0.10",
                  "end_ip": "192.168.0.50"}
    args.update(overrides)
    return Pod.create(**args)


def test_create_is_enabled_and_known_by_zone_and_name() -> None:
    pod = make_pod(name="pod1")
    assert pod.id == Pod.create_id(ZONE, "pod1")
    assert pod.id != Pod.create_id(uuid4(), "pod1")
    assert pod.state is AllocationState.ENABLED and pod.enabled
    assert (pod.zone_id, pod.cidr, pod.gateway) == (ZONE, "192.168.0.0/24", "192.168.0.1")


def test_enable_disable(refused: Refused) -> None:
    pod = make_pod()
    refused(pod, pod.enable, "enable")
    pod.disable()
    refused(pod, pod.disable, "disable")
    assert pod.state is AllocationState.DISABLED
    pod.enable()
    assert roundtrip(pod) == pod


@pytest.mark.parametrize("overrides", [
    {"name": ""},
    {"cidr": "192.168.0.0/33"},
    {"gateway": "10.0.0.1"},
    {"start_ip": "192.168.1.10"},
    {"end_ip": "192.168.0.5"},
    {"gateway": "192.168.0.20"},
    {"start_ip": "bogus"},
])
def test_bad_arguments_are_refused(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        make_pod(**overrides)


def test_audit_metadata_lands_on_events() -> None:
    with audit_context("ops", None, "cmd-2"):
        pod = make_pod()
        pod.disable()
    assert [(e.actor, e.causation_id) for e in pod.pending_events] == [("ops", "cmd-2")] * 2
