"""The account a command acts for, and the NATS intake asking access control about it."""

from typing import Any
from uuid import UUID, uuid4

import msgspec

from gateways.ownership import owner_of
from gateways.stream.intake import COMMANDS_PREFIX, CommandIntake
from kernel.cloud.vms import DeployVm, StopVm
from kernel.commands import CommandOutcome
from kernel.contracts.access import IDEMPOTENCY_KEY_HEADER, Principal, SignedRequest

VM, ZONE = uuid4(), uuid4()


def lookup(field: str, target: UUID) -> str | None:
    return "alice" if (field, target) == ("vm_id", VM) else None


def test_a_new_resource_is_its_accounts_and_an_existing_one_its_owners() -> None:
    deploy = DeployVm(name="web", account="bob", zone_id=ZONE, service_offering_id=uuid4(),
                      template_id=uuid4())
    assert owner_of(deploy, lookup) == "bob"
    assert owner_of(StopVm(vm_id=VM), lookup) == "alice"
    assert owner_of(StopVm(vm_id=uuid4()), lookup) is None  # unknown: the command says so


class Recording:
    """Access control that lets everything through and remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    def authenticate(self, request: SignedRequest) -> Principal:
        return Principal(key_id="k", actor="carol", role="integrator", account="carol")

    def authenticate_bearer(self, token: str) -> Principal:
        raise AssertionError

    def authorize(self, principal: Principal, command_tag: str, *,
                  owner: str | None = None) -> None:
        self.asked.append((command_tag, owner))

    def visible_accounts(self, principal: Principal) -> frozenset[str] | None:
        return None  # every account: another tenant's would be answered as not found


def test_the_intake_asks_about_the_owner_of_the_commands_target() -> None:
    def run(command: Any, *, idempotency_key: str, actor: str) -> CommandOutcome:
        return CommandOutcome(command="vm.stop", idempotency_key=idempotency_key,
                              result=msgspec.Raw(b"{}"))

    access = Recording()
    intake = CommandIntake({"vm.stop": (StopVm, run)}, access, [], owner_lookup=lookup)
    reply = intake.handle(COMMANDS_PREFIX + "vm.stop", {IDEMPOTENCY_KEY_HEADER: "k-1"},
                          msgspec.json.encode(StopVm(vm_id=VM)))
    assert reply.error is None
    assert access.asked == [("vm.stop", "alice")]
