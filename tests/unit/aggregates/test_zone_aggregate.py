"""Zone: creation, allocation state and DNS."""

from collections.abc import Callable
from uuid import uuid4

import pytest

from aggregates.allocation import AllocationState
from aggregates.base import audit_context, natural_id
from aggregates.errors import InvalidTransitionError, ValidationError
from aggregates.zone import NetworkType, Zone
from kernel.store.testing import roundtrip

Refused = Callable[..., InvalidTransitionError]


def make_zone(**overrides: object) -> Zone:
    """A valid zone."""
    args: dict = {"name": f"zone-{uuid4().hex[:8]}", "dns_servers": ("8.8.8.8",),
                  "internal_dns_servers": ("10.0.0.2",), "guest_cidr": "10.1.1.0/24"}
    args.update(overrides)
    return Zone.create(**args)


def test_create_is_enabled_and_known_by_name() -> None:
    zone = make_zone(name="zone1")
    assert zone.id == natural_id("zone", "zone1") == Zone.create_id("zone1")
    assert zone.state is AllocationState.ENABLED and zone.enabled
    assert zone.network_type is NetworkType.ADVANCED
    assert zone.dns_servers == ("8.8.8.8",) and zone.guest_cidr == "10.1.1.0/24"


def test_disable_then_enable(refused: Refused) -> None:
    zone = make_zone()
    refused(zone, zone.enable, "enable")
    zone.disable()
    assert zone.state is AllocationState.DISABLED and not zone.enabled
    refused(zone, zone.disable, "disable")
    zone.enable()
    assert zone.enabled
    assert roundtrip(zone) == zone


def test_refusal_names_zone_state_and_action(refused: Refused) -> None:
    zone = make_zone()
    error = refused(zone, zone.enable, "enable")
    assert str(error) == f"zone {zone.name} ({zone.id}) is Enabled: cannot enable"


@pytest.mark.parametrize("overrides", [
    {"name": ""},
    {"name": " padded "},
    {"dns_servers": ("not-an-ip",)},
    {"internal_dns_servers": ("300.1.1.1",)},
    {"guest_cidr": "10.1.1.1/24"},
    {"network_type": NetworkType.BASIC},
])
def test_bad_arguments_are_refused(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        make_zone(**overrides)


def test_basic_zone_has_no_guest_cidr() -> None:
    zone = make_zone(network_type=NetworkType.BASIC, guest_cidr=None)
    assert zone.guest_cidr is None and zone.network_type is NetworkType.BASIC


def test_change_dns_records_only_changes() -> None:
    zone = make_zone()
    zone.change_dns(("8.8.8.8",), ("10.0.0.2",))
    assert zone.version == 1
    zone.change_dns(("1.1.1.1", "8.8.4.4"), ("10.0.0.3",))
    assert zone.version == 2 and zone.dns_servers == ("1.1.1.1", "8.8.4.4")
    with pytest.raises(ValidationError):
        zone.change_dns(("x",), ())
    assert roundtrip(zone) == zone


def test_audit_metadata_lands_on_events() -> None:
    correlation = uuid4()
    with audit_context("admin", correlation, "cmd-1"):
        zone = make_zone()
        zone.disable()
    for e in zone.pending_events:
        assert (e.actor, e.correlation_id, e.causation_id) == ("admin", correlation, "cmd-1")
