"""vm.console and console.redeem on the in-memory store: minting for a Running VM with the
console service registered, redeeming once, and every refusal writing nothing; through the
intake, refused redemptions audited in the access control's denial log."""

import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.console_ticket import (
    ALREADY_USED,
    EXPIRED,
    NOT_VALID,
    ConsoleTicket,
    ConsoleTicketRefusedError,
)
from aggregates.errors import DomainRuleError, ForbiddenError, NotFoundError, ValidationError
from aggregates.host import Host
from aggregates.vm import VirtualMachine, VmState
from gateways.access import Keyring, KeyringAccess, LayeredAccess
from gateways.service_keys import SERVICE_ALLOW, issue_service_key, service_allow
from gateways.stream.intake import COMMANDS_PREFIX, CommandIntake
from kernel.cloud.consoles import (
    MOVED,
    NOT_AVAILABLE,
    NOT_RUNNING,
    OpenConsole,
    RedeemConsole,
    console_handlers,
)
from kernel.cloud.services import SERVICE_HANDLERS, DisableService, RegisterService
from kernel.commands import CommandService
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AccessControl,
    sign,
)
from kernel.contracts.console import (
    TICKET_SECONDS,
    ConsoleRedemption,
    ConsoleTicketGrant,
    make_token,
    read_token,
)
from kernel.contracts.services import ServiceCredentials
from kernel.settings import Settings
from kernel.store.testing import scratch_application

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@dataclass
class Clock:
    """A clock the tests move; `hook` runs once inside the next reading."""

    now: datetime = T0
    hook: Any = None

    def __call__(self) -> datetime:
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return self.now


@dataclass
class World:
    """A command service with a Running VM on a host and the console service registered."""

    service: CommandService
    clock: Clock
    vm_id: UUID
    host_id: UUID
    other_host_id: UUID
    keys: list[str] = field(default_factory=list)

    def run(self, command: Any, actor: str = "alice", key: str | None = None) -> Any:
        return self.service.execute(command, idempotency_key=key or f"k-{uuid4()}",
                                    actor=actor)

    def mint(self, kind: str = "graphics", key: str | None = None) -> ConsoleTicketGrant:
        return self.run(OpenConsole(vm_id=self.vm_id, kind=kind),  # type: ignore[arg-type]
                        key=key).decode(ConsoleTicketGrant)

    def redeem(self, token: str, actor: str = "service:console", key: str | None = None,
               **extra: Any) -> ConsoleRedemption:
        out = self.run(RedeemConsole(token=token, **extra), actor=actor, key=key)
        return out.decode(ConsoleRedemption)  # type: ignore[no-any-return]

    def head(self) -> int:
        return self.service.app.recorder.max_notification_id() or 0

    def vm(self) -> VirtualMachine:
        found: VirtualMachine = self.service.app.repository.get(self.vm_id)
        return found


def _host(name: str) -> Host:
    return Host.register(name=name, uri=f"test:///{name}", zone_id=uuid4(), pod_id=uuid4(),
                         cluster_id=uuid4(), cpu_cores=4, cpu_mhz=1000, memory_mib=4096)


@pytest.fixture
def world() -> World:
    app = scratch_application()
    clock = Clock()
    h1, h2 = _host("h1"), _host("h2")
    vm = VirtualMachine.allocate(name="web", account="acme", zone_id=uuid4(),
                                 service_offering_id=uuid4(), template_id=uuid4())
    vm.start(h1.id)
    vm.started()
    app.save(h1, h2, vm)
    service = CommandService(app, {**SERVICE_HANDLERS, **console_handlers(clock)})
    w = World(service, clock, vm.id, h1.id, h2.id)
    w.run(RegisterService(name="console", version="1",
                          endpoints={"web": "https://console.example/"}),
          actor="service:console")
    return w


def test_mint_answers_a_url_with_the_token_and_records_only_its_digest(world: World) -> None:
    grant = world.mint("serial")
    assert grant.url == f"https://console.example/serial?token={grant.token}"
    assert grant.expires_at == T0 + timedelta(seconds=TICKET_SECONDS)
    assert (grant.vm_id, grant.kind) == (world.vm_id, "serial")
    ticket: Any = world.service.app.repository.get(grant.ticket_id)
    assert isinstance(ticket, ConsoleTicket)
    assert (ticket.vm_id, ticket.host_id, ticket.host_uri) == (world.vm_id, world.host_id,
                                                               "test:///h1")
    assert (ticket.user, ticket.account, ticket.kind) == ("alice", "acme", "serial")
    assert read_token(grant.token) == (ticket.id, ticket.secret_digest)
    # the VM is neither changed nor locked
    assert world.vm().version == 3 and world.vm().state is VmState.RUNNING
    secret = grant.token.rsplit(".", 1)[1].encode()
    for note in world.service.app.recorder.select_notifications(start=1, limit=1000):
        assert secret not in note.state and grant.token.encode() not in note.state


def test_a_retried_mint_answers_the_same_grant(world: World) -> None:
    first = world.mint(key="m1")
    head = world.head()
    again = world.mint(key="m1")
    assert again == first and world.head() == head


def test_mint_refusals(world: World) -> None:
    head = world.head()
    with pytest.raises(NotFoundError):
        world.run(OpenConsole(vm_id=uuid4()))
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"command": "vm.console", "vm_id": "%s", "kind": "ssh"}'
                            % str(world.vm_id).encode(), type=OpenConsole)
    world.run(DisableService(name="console", reason="maintenance"), actor="root")
    head = world.head()
    with pytest.raises(DomainRuleError, match=NOT_AVAILABLE):
        world.mint()
    assert world.head() == head
    app = world.service.app
    vm = world.vm()
    vm.stop()
    app.save(vm)
    with pytest.raises(DomainRuleError, match="Stopping: a console needs a Running VM"):
        world.mint()


def test_mint_refused_without_a_console_service() -> None:
    app = scratch_application()
    host = _host("h1")
    vm = VirtualMachine.allocate(name="web", account="acme", zone_id=uuid4(),
                                 service_offering_id=uuid4(), template_id=uuid4())
    vm.start(host.id)
    vm.started()
    app.save(host, vm)
    service = CommandService(app, console_handlers())
    with pytest.raises(DomainRuleError, match=NOT_AVAILABLE):
        service.execute(OpenConsole(vm_id=vm.id), idempotency_key="k")
    assert not OpenConsole.waits_for_busy_entities


def test_redeem_once_then_replay_refused_and_nothing_written(world: World) -> None:
    grant = world.mint()
    done = world.redeem(grant.token, origin="https://console.example", remote="10.1.2.3")
    assert (done.ticket_id, done.vm_id, done.host_uri, done.kind, done.user, done.account) == (
        grant.ticket_id, world.vm_id, "test:///h1", "graphics", "alice", "acme")
    head = world.head()
    with pytest.raises(DomainRuleError) as refused:
        world.redeem(grant.token)
    assert str(refused.value) == ALREADY_USED and world.head() == head
    ticket: Any = world.service.app.repository.get(grant.ticket_id)
    assert ticket.redeemed_by == "service:console"


def test_expired_refused(world: World) -> None:
    grant = world.mint()
    world.clock.now = T0 + timedelta(seconds=TICKET_SECONDS)
    head = world.head()
    with pytest.raises(DomainRuleError, match=EXPIRED):
        world.redeem(grant.token)
    assert world.head() == head


def test_wrong_secret_and_unknown_ticket_read_the_same(world: World) -> None:
    grant = world.mint()
    forged, _ = make_token(grant.ticket_id)  # the right ticket, another secret
    unknown, _ = make_token(uuid4())
    vm_as_ticket, _ = make_token(world.vm_id)  # an id that exists, but no ticket's
    messages = set()
    for token in (forged, unknown, vm_as_ticket):
        with pytest.raises(DomainRuleError) as refused:
            world.redeem(token)
        messages.add((type(refused.value), str(refused.value)))
    assert messages == {(type(refused.value), NOT_VALID)}
    with pytest.raises(ValidationError, match="not a console token"):
        world.redeem("ckc1.nonsense")
    world.redeem(grant.token)  # the forgeries did not spend it


def test_redeem_refused_when_the_vm_stopped_or_moved(world: World) -> None:
    app = world.service.app
    stopped = world.mint()
    moved = world.mint()
    vm = world.vm()
    vm.migrate(world.other_host_id)
    app.save(vm)
    with pytest.raises(DomainRuleError, match=MOVED):
        world.redeem(moved.token)
    vm = world.vm()
    vm.migrated()
    app.save(vm)
    with pytest.raises(DomainRuleError, match=MOVED):
        world.redeem(moved.token)
    vm = world.vm()
    vm.stop()
    vm.stopped()
    app.save(vm)
    with pytest.raises(DomainRuleError, match=NOT_RUNNING):
        world.redeem(stopped.token)


def test_only_the_console_service_among_services_redeems(world: World) -> None:
    grant = world.mint()
    with pytest.raises(ForbiddenError, match="only service:console"):
        world.redeem(grant.token, actor="service:ec2")
    assert world.redeem(grant.token, actor="root").ticket_id == grant.ticket_id


def test_two_racing_redemptions_one_wins(world: World) -> None:
    """The first redemption reads the ticket, then (inside its clock) a second one redeems
    and commits: the first loses the race on the ticket's version, runs again and is refused
    as already used."""
    grant = world.mint()
    won: list[ConsoleRedemption] = []
    world.clock.hook = lambda: won.append(world.redeem(grant.token, key="second"))
    with pytest.raises(DomainRuleError, match=ALREADY_USED):
        world.run(RedeemConsole(token=grant.token), actor="service:console", key="first")
    assert [w.ticket_id for w in won] == [grant.ticket_id]
    ticket: Any = world.service.app.repository.get(grant.ticket_id)
    assert ticket.version == 2  # issued, redeemed once


# --------------------------------------------------------------------------- the intake


class DenialLog:
    """The primary access control's side of the layered access: only its denial log."""

    def __init__(self) -> None:
        self.refusals: list[dict[str, Any]] = []

    def audit_refusal(self, **refusal: Any) -> None:
        self.refusals.append(refusal)


def _request(tag: str, body: dict[str, Any], creds: ServiceCredentials,
             idem: str) -> tuple[str, dict[str, str], bytes]:
    subject, data, ts = COMMANDS_PREFIX + tag, json.dumps(body).encode(), str(int(time.time()))
    return subject, {IDEMPOTENCY_KEY_HEADER: idem, KEY_ID_HEADER: creds.key_id,
                     TIMESTAMP_HEADER: ts,
                     SIGNATURE_HEADER: sign(creds.secret, timestamp=ts, subject=subject,
                                            idempotency_key=idem, body=data)}, data


def test_through_the_intake_refused_redemptions_are_audited_not_logged(
        world: World, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    console = issue_service_key(settings, "console")
    ec2 = issue_service_key(settings, "ec2")
    keyring = Keyring(tmp_path / "keys.json")
    assert keyring.get(console.key_id).allow == service_allow("console")  # type: ignore[union-attr]
    assert keyring.get(ec2.key_id).allow == SERVICE_ALLOW  # type: ignore[union-attr]
    admin = keyring.create(actor="root", role="admin")
    root = ServiceCredentials(admin.id, admin.secret)
    denials = DenialLog()
    access: AccessControl = LayeredAccess(denials, KeyringAccess(keyring))  # type: ignore[arg-type]
    service = world.service
    catalog = {str(t.__struct_config__.tag): (t, service.execute) for t in service.handlers}
    intake = CommandIntake(catalog, access, ["nats://unused"])

    def send(tag: str, body: dict[str, Any], who: ServiceCredentials) -> dict[str, Any]:
        reply = json.loads(intake.handle(*_request(tag, body, who, f"i-{uuid4()}")).data)
        assert isinstance(reply, dict)
        return reply

    minted = send("vm.console", {"vm_id": str(world.vm_id)}, root)
    assert minted["ok"], minted
    token = minted["result"]["token"]
    assert minted["result"]["url"].endswith(f"/graphics?token={token}")
    bad_kind = send("vm.console", {"vm_id": str(world.vm_id), "kind": "ssh"}, root)
    assert bad_kind["error"]["field"] == "kind", bad_kind
    assert denials.refusals == []

    # the ec2 service's key may not redeem: refused by access control (audited there)
    refused = send("console.redeem", {"token": token}, ec2)
    assert refused["error"]["code"] == "forbidden"
    assert len(denials.refusals) == 1
    ok = send("console.redeem", {"token": token, "origin": "https://console.example"},
              console)
    assert ok["ok"] and ok["result"]["ticket_id"] == minted["result"]["ticket_id"], ok
    head = world.head()
    forged, _ = make_token(UUID(minted["result"]["ticket_id"]))
    again = send("console.redeem", {"token": token}, console)
    assert again["error"]["code"] == "invalid" and again["error"]["message"] == ALREADY_USED
    wrong = send("console.redeem", {"token": forged}, console)
    assert wrong["error"]["message"] == NOT_VALID
    assert world.head() == head  # refused redemptions moved no log head...
    # ...but are in the denial log, with the refusal's words
    assert [(r["principal"], r["command"], r["reason"], r["credentials"])
            for r in denials.refusals[1:]] == [
        ("service:console", "console.redeem", ALREADY_USED, False),
        ("service:console", "console.redeem", NOT_VALID, False)]
    for r in denials.refusals:
        assert token not in json.dumps(r)


def test_a_refusal_the_console_service_decided_is_refused_in_its_words_and_spends_nothing(
        world: World) -> None:
    grant = world.mint()
    head = world.head()
    for token in (grant.token, "junk"):
        with pytest.raises(ConsoleTicketRefusedError, match=re.escape("origin may not? open")):
            world.redeem(token, origin="https://evil.example",
                         refused="this page's origin may not\x07 open consoles here")
    assert world.head() == head  # nothing written
    with pytest.raises(ForbiddenError):  # only the console service reports its refusals
        world.redeem(grant.token, actor="service:ec2", refused="nope")
    assert world.redeem(grant.token).vm_id == world.vm_id  # the link is still good
