"""Nic: allocation, reservation and release."""

from collections.abc import Callable
from uuid import uuid4

import pytest

from aggregates.base import audit_context
from aggregates.errors import InvalidTransitionError, ValidationError
from aggregates.nic import Nic, NicState
from kernel.store.testing import roundtrip

Refused = Callable[..., InvalidTransitionError]


def make_nic(**overrides: object) -> Nic:
    """A valid default NIC."""
    args: dict = {"vm_id": uuid4(), "network_id": uuid4(), "mac": "02:00:0A:01:01:02",
                  "device_id": 0, "is_default": True}
    args.update(overrides)
    return Nic.allocate(**args)


def test_allocate() -> None:
    chosen = uuid4()
    nic = make_nic(id=chosen)
    assert nic.id == chosen and nic.mac == "02:00:0a:01:01:02"
    assert nic.state is NicState.ALLOCATED and nic.ip is None and nic.is_default


@pytest.mark.parametrize("overrides", [
    {"mac": "02:00:0a:01:01"}, {"mac": "01:00:5e:00:00:01"}, {"mac": "zz:00:0a:01:01:02"},
    {"device_id": -1},
])
def test_bad_arguments_are_refused(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        make_nic(**overrides)


def test_reserve_release_cycle(refused: Refused) -> None:
    nic = make_nic()
    with pytest.raises(ValidationError):
        nic.reserve("10.1.1.300")
    nic.reserve("10.1.1.2")
    assert nic.state is NicState.RESERVED and nic.ip == "10.1.1.2"
    refused(nic, lambda: nic.reserve("10.1.1.3"), "reserve an address")
    nic.release()
    assert nic.state is NicState.RELEASED and nic.ip is None
    refused(nic, nic.release, "release")
    nic.reserve("10.1.1.4")
    assert roundtrip(nic) == nic


def test_refusal_message_names_the_nic(refused: Refused) -> None:
    nic = make_nic()
    nic.release()
    error = refused(nic, nic.release, "release")
    assert str(error) == f"nic {nic.id} is Released: cannot release"


def test_audit_metadata_lands_on_events() -> None:
    with audit_context("guru", None, "s-1"):
        nic = make_nic()
        nic.reserve("10.0.0.9")
    assert {(e.actor, e.causation_id) for e in nic.pending_events} == {("guru", "s-1")}
