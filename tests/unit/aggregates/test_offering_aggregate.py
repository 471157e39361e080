"""ServiceOffering and DiskOffering."""

from collections.abc import Callable
from uuid import uuid4

import pytest

from aggregates.base import audit_context
from aggregates.errors import DomainRuleError, InvalidTransitionError, ValidationError
from aggregates.offering import DiskOffering, OfferingState, ServiceOffering
from kernel.store.testing import roundtrip

Refused = Callable[..., InvalidTransitionError]
GIB = 1 << 30


def make_service(**overrides: object) -> ServiceOffering:
    """A valid small service offering."""
    args: dict = {"name": f"small-{uuid4().hex[:8]}", "cpu_cores": 1, "cpu_mhz": 1000,
                  "memory_mib": 512}
    args.update(overrides)
    return ServiceOffering.create(**args)


def test_service_offering(refused: Refused) -> None:
    offering = make_service(name="small", host_tags=("b", "a"), ha_enabled=True)
    assert offering.id == ServiceOffering.create_id("small")
    assert offering.display_text == "small" and offering.host_tags == ("a", "b")
    assert offering.ha_enabled and offering.active
    offering.retire()
    assert offering.state is OfferingState.RETIRED and not offering.active
    refused(offering, offering.retire, "retire")


def test_service_offering_roundtrips() -> None:
    offering = make_service()
    offering.retire()
    assert roundtrip(offering) == offering


@pytest.mark.parametrize("overrides", [
    {"name": ""}, {"cpu_cores": 0}, {"cpu_mhz": -1}, {"memory_mib": 1.5},
    {"host_tags": (" x",)},
])
def test_service_offering_bad_arguments(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        make_service(**overrides)


def test_fixed_disk_offering(refused: Refused) -> None:
    offering = DiskOffering.create(name=f"d-{uuid4().hex[:8]}", size_bytes=5 * GIB)
    assert offering.volume_size() == 5 * GIB
    assert offering.volume_size(5 * GIB) == 5 * GIB
    with pytest.raises(DomainRuleError):
        offering.volume_size(6 * GIB)
    offering.retire()
    refused(offering, offering.retire, "retire")
    assert roundtrip(offering) == offering


def test_customizable_disk_offering() -> None:
    offering = DiskOffering.create(name="custom", customizable=True, tags=("ssd",))
    assert offering.id == DiskOffering.create_id("custom")
    assert offering.size_bytes is None
    assert offering.volume_size(7 * GIB) == 7 * GIB
    with pytest.raises(ValidationError):
        offering.volume_size()
    with pytest.raises(ValidationError):
        offering.volume_size(0)


def test_disk_offering_bad_arguments() -> None:
    with pytest.raises(ValidationError):
        DiskOffering.create(name="fixed")
    with pytest.raises(ValidationError):
        DiskOffering.create(name="neg", size_bytes=-1)


def test_audit_metadata_lands_on_events() -> None:
    with audit_context("catalog", None, "c-7"):
        offering = make_service()
        offering.retire()
    assert {(e.actor, e.causation_id) for e in offering.pending_events} == {("catalog", "c-7")}
