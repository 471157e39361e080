"""The directory's commands on the in-memory store, and who may send them through the intake."""

import json
import time
from pathlib import Path
from typing import Any

import pytest

from aggregates.errors import ConfigError, ForbiddenError, NotFoundError, ValidationError
from gateways.access import Keyring, KeyringAccess, keys_path
from gateways.service_keys import SERVICE_ALLOW, issue_service_key
from gateways.stream.intake import COMMANDS_PREFIX, CommandIntake
from kernel.bootstrap import PLATFORM_HANDLERS
from kernel.cloud.services import (
    DeregisterService,
    DisableService,
    EnableService,
    RegisterService,
    ServiceChanged,
    find_service,
)
from kernel.commands import CommandService
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from kernel.contracts.services import ServiceCredentials, credentials_path
from kernel.settings import Settings
from kernel.store.testing import scratch_application
from services.framework.credentials import service_credentials

SPEC: dict[str, Any] = {"name": "ec2", "version": "1.0",
                        "endpoints": {"http": "http://127.0.0.1:8482/"},
                        "consumes": ["cloudkernel.events.vm.>"]}


@pytest.fixture
def service() -> CommandService:
    return CommandService(scratch_application(), PLATFORM_HANDLERS)


def run(service: CommandService, command: Any, actor: str = "admin",
        key: str | None = None) -> tuple[ServiceChanged, tuple[int, ...]]:
    out = service.execute(command, idempotency_key=key or f"k-{time.monotonic_ns()}",
                          actor=actor)
    return out.decode(ServiceChanged), out.positions


def test_register_writes_once_then_updates_and_the_switch_is_the_admins(
        service: CommandService) -> None:
    done, positions = run(service, RegisterService(**SPEC), actor="service:ec2")
    assert (done.change, done.state, done.enabled, len(positions)) == \
        ("registered", "Enabled", True, 1)
    again, positions = run(service, RegisterService(**SPEC), actor="service:ec2")
    assert again.change == "unchanged" and positions == ()
    newer, positions = run(service, RegisterService(**{**SPEC, "version": "2"}),
                           actor="service:ec2")
    assert newer.change == "updated" and len(positions) == 1 and newer.version == "2"

    off, _ = run(service, DisableService(name="ec2", reason="maintenance"))
    assert (off.change, off.enabled, off.state) == ("disabled", False, "Disabled")
    # a re-registration (a restart) does not switch a disabled service back on
    restart, _ = run(service, RegisterService(**{**SPEC, "version": "2"}), actor="service:ec2")
    assert restart.change == "unchanged" and restart.enabled is False
    on, _ = run(service, EnableService(name="ec2"))
    assert on.change == "enabled" and on.enabled
    gone, _ = run(service, DeregisterService(name="ec2"))
    assert gone.state == "Deregistered" and not gone.enabled
    reg = find_service(service.app, "ec2")
    assert reg is not None and reg.version == 5


def test_a_service_registers_only_its_own_name_and_switches_nothing(
        service: CommandService) -> None:
    head = service.app.recorder.max_notification_id()
    with pytest.raises(ForbiddenError, match="only its own name 'billing'"):
        run(service, RegisterService(**SPEC), actor="service:billing")
    run(service, RegisterService(**SPEC), actor="service:ec2")
    for verb, command in (("disable", DisableService(name="ec2", reason="x")),
                          ("enable", EnableService(name="ec2")),
                          ("deregister", DeregisterService(name="ec2"))):
        with pytest.raises(ForbiddenError, match=f"may not {verb} services: that is an admin"):
            run(service, command, actor="service:ec2")
    assert service.app.recorder.max_notification_id() == (head or 0) + 1


def test_unknown_and_bad_names_are_refused(service: CommandService) -> None:
    with pytest.raises(NotFoundError, match="no service 'nobody'"):
        run(service, EnableService(name="nobody"))
    with pytest.raises(ValidationError, match="name"):
        run(service, DisableService(name="Bad Name", reason="x"))
    with pytest.raises(ValidationError, match="endpoints"):
        run(service, RegisterService(**{**SPEC, "endpoints": {"http": "nope"}}))
    assert service.app.recorder.max_notification_id() in (None, 0)


def _request(tag: str, body: dict[str, Any], creds: ServiceCredentials,
             idem: str) -> tuple[str, dict[str, str], bytes]:
    subject, data, ts = COMMANDS_PREFIX + tag, json.dumps(body).encode(), str(int(time.time()))
    return subject, {IDEMPOTENCY_KEY_HEADER: idem, KEY_ID_HEADER: creds.key_id,
                     TIMESTAMP_HEADER: ts,
                     SIGNATURE_HEADER: sign(creds.secret, timestamp=ts, subject=subject,
                                            idempotency_key=idem, body=data)}, data


def test_through_the_intake_a_service_key_registers_itself_and_an_admin_switches(
        tmp_path: Path, service: CommandService) -> None:
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(ConfigError, match="cloudkernel services key ec2"):
        service_credentials(settings, "ec2")  # the service reads what the platform issued
    creds = issue_service_key(settings, "ec2")
    assert service_credentials(settings, "ec2") == creds
    keyring = Keyring(keys_path(settings))
    key = keyring.get(creds.key_id)
    assert key is not None and key.actor == "service:ec2" and key.role == "integrator"
    assert key.allow == SERVICE_ALLOW
    assert credentials_path(tmp_path, "ec2").stat().st_mode & 0o777 == 0o600
    assert issue_service_key(settings, "ec2") == creds  # kept, not made again
    other = issue_service_key(settings, "billing")
    admin = keyring.create(actor="root", role="admin")
    admin_creds = ServiceCredentials(admin.id, admin.secret)
    catalog = {str(t.__struct_config__.tag): (t, service.execute) for t in service.handlers}
    intake = CommandIntake(catalog, KeyringAccess(keyring), ["nats://unused"])

    def send(tag: str, body: dict[str, Any], who: ServiceCredentials,
             idem: str) -> dict[str, Any]:
        reply = json.loads(intake.handle(*_request(tag, body, who, idem)).data)
        assert isinstance(reply, dict)
        return reply

    ok = send("service.register", SPEC, creds, "r1")
    assert ok["ok"] and ok["result"]["change"] == "registered", ok
    stolen = send("service.register", SPEC, other, "r2")
    assert stolen["error"]["code"] == "forbidden" and "own name" in stolen["error"]["message"]
    refused = send("service.disable", {"name": "ec2", "reason": "x"}, creds, "d1")
    assert refused["error"]["code"] == "forbidden", refused
    done = send("service.disable", {"name": "ec2", "reason": "maintenance"}, admin_creds, "d2")
    assert done["ok"] and done["result"]["enabled"] is False

    # a revoked key is replaced by a new one on the next start
    keyring.revoke(creds.key_id)
    renewed = issue_service_key(settings, "ec2")
    assert renewed.key_id != creds.key_id
