"""ServiceRegistration: checked registration, idempotent re-registration, the admin's switch."""

import pytest

from aggregates.base import natural_id
from aggregates.errors import InvalidTransitionError, ValidationError
from aggregates.service import ServiceRegistration, ServiceState
from kernel.contracts.services import check_disable_reason, check_registration, registration_id
from kernel.store.testing import scratch_application


def roundtrip(reg: ServiceRegistration) -> ServiceRegistration:
    app = scratch_application()  # natural ids: one store per test
    app.save(reg)
    loaded: ServiceRegistration = app.repository.get(reg.id)
    return loaded


SPEC = {"name": "ec2", "version": "1.0", "endpoints": {"http": "http://127.0.0.1:8482/"},
        "consumes": ("cloudkernel.events.vm.>",), "publishes": ("cloudkernel.commands.vm.*",),
        "description": "EC2 Query API"}


def test_a_registration_is_known_by_name_and_starts_enabled() -> None:
    reg = ServiceRegistration.register(**check_registration(**SPEC))
    assert reg.id == natural_id("service", "ec2") == ServiceRegistration.create_id("ec2")
    assert reg.enabled and reg.state is ServiceState.ENABLED
    assert reg.service_version == "1.0" and reg.version == 1
    assert getattr(type(reg.pending_events[0]), "TOPIC", None) == \
        "service_registration.Registered"
    loaded = roundtrip(reg)
    assert (loaded.name, loaded.endpoints, loaded.consumes, loaded.publishes) == (
        "ec2", {"http": "http://127.0.0.1:8482/"}, ("cloudkernel.events.vm.>",),
        ("cloudkernel.commands.vm.*",))


def test_registering_the_same_thing_again_records_nothing_and_a_change_records_updated(
        ) -> None:
    reg = ServiceRegistration.register(**check_registration(**SPEC))
    reg.collect_events()
    assert reg.reregister(**check_registration(**SPEC)) is False and reg.pending_events == []
    assert reg.reregister(**check_registration(**{**SPEC, "version": "1.1"})) is True
    [event] = reg.collect_events()
    assert getattr(type(event), "TOPIC", None) == "service_registration.Updated"
    assert getattr(event, "version", None) == "1.1"
    assert reg.service_version == "1.1"
    with pytest.raises(ValidationError, match="this registration is 'ec2'"):
        reg.reregister(**check_registration(**{**SPEC, "name": "enduser"}))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("name", "EC2", "lowercase letter"),
    ("name", "x" * 41, "lowercase letter"),
    ("version", "", "non-empty"),
    ("endpoints", {"http": "not a url"}, "a URL"),
    ("endpoints", {"Bad Name": "http://x/"}, "lowercase letter"),
    ("consumes", ("cloudkernel.>.vm",), "not a NATS subject"),
    ("consumes", ("has space",), "not a NATS subject"),
    ("publishes", "cloudkernel.events.>", "a list"),
    ("description", "x" * 501, "at most 500"),
])
def test_bad_registrations_are_refused_naming_the_field(field: str, value: object,
                                                         message: str) -> None:
    with pytest.raises(ValidationError, match=message) as refused:
        check_registration(**{**SPEC, field: value})
    assert str(refused.value).startswith(field)


def test_the_admin_switch_and_deregistration() -> None:
    reg = ServiceRegistration.register(**check_registration(**SPEC))
    assert reg.disable("maintenance") is True and not reg.enabled
    assert reg.disabled_reason == "maintenance"
    assert reg.disable("again") is False  # already off: nothing recorded
    with pytest.raises(ValidationError, match="reason"):
        reg.disable(check_disable_reason(""))
    assert reg.enable() is True and reg.enabled and reg.disabled_reason == ""
    assert reg.enable() is False
    assert reg.deregister() is True and reg.state is ServiceState.DEREGISTERED
    assert not reg.enabled and reg.deregister() is False
    with pytest.raises(InvalidTransitionError):
        reg.enable()
    # registering again brings it back, enabled
    assert reg.reregister(**check_registration(**SPEC)) is True and reg.enabled
    topics = [getattr(type(e), "TOPIC", "").split(".")[1] for e in reg.collect_events()]
    assert topics == ["Registered", "Disabled", "Enabled", "Deregistered", "Updated"]


def test_a_replayed_registration_has_the_same_state() -> None:
    reg = ServiceRegistration.register(**check_registration(**SPEC))
    reg.disable("paused for billing")
    loaded = roundtrip(reg)
    assert loaded.state is ServiceState.DISABLED and loaded.disabled_reason == \
        "paused for billing" and loaded.version == 2


def test_the_contract_names_a_registration_as_the_platform_does() -> None:
    assert registration_id("ec2") == ServiceRegistration.create_id("ec2")
