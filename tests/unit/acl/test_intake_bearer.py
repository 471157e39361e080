"""The NATS command intake with `Authorization: Bearer <token>`: the token's user sends the
command, with the ACL's ownership checks and idempotency keys scoped by that user."""

import json
from typing import Any
from uuid import UUID, uuid4

import msgspec

from gateways.stream.intake import COMMANDS_PREFIX, CommandIntake
from kernel.cloud.vms import StopVm
from kernel.commands import CommandOutcome
from kernel.contracts.access import IDEMPOTENCY_KEY_HEADER, KEY_ID_HEADER
from tests.unit.acl.conftest import Acl, denials

MINE, SIBLING = uuid4(), uuid4()


def lookup(_field: str, target: UUID) -> str | None:
    return {MINE: "mine_acct", SIBLING: "sib_acct"}.get(target)


def test_a_bearer_token_sends_as_its_user(acl: Acl) -> None:
    ran: list[tuple[str, str]] = []

    def run(command: Any, *, idempotency_key: str, actor: str) -> CommandOutcome:
        ran.append((idempotency_key, actor))
        return CommandOutcome(command="vm.stop", idempotency_key=idempotency_key,
                              result=msgspec.Raw(b'{"stopped": true}'))

    intake = CommandIntake({"vm.stop": (StopVm, run)}, acl.access, [], owner_lookup=lookup)
    alice = acl.service.login("alice", "alicepass")
    root = acl.service.login("root", "rootpass1")

    def send(vm: UUID, headers: dict[str, str], key: str = "k-1") -> dict[str, Any]:
        reply = intake.handle(COMMANDS_PREFIX + "vm.stop",
                              {IDEMPOTENCY_KEY_HEADER: key, **headers},
                              msgspec.json.encode(StopVm(vm_id=vm)))
        return json.loads(reply.data)  # type: ignore[no-any-return]

    first = send(MINE, {"Authorization": f"Bearer {alice}"})
    assert first["ok"] is True, first
    # Header name and scheme in any case, as HTTP has them.
    assert send(MINE, {"AUTHORIZATION": f"bearer  {alice} "}, key="k-2")["ok"] is True
    # Keys are scoped by the token's user: root's k-1 is its own command.
    assert send(SIBLING, {"authorization": f"Bearer {root}"})["ok"] is True
    assert ran == [("alice/k-1", "alice"), ("alice/k-2", "alice"), ("root/k-1", "root")]

    # Another account's VM is not found (its answer must not tell it exists), and audited
    # as a refusal all the same, as the admin API does.
    refused = send(SIBLING, {"Authorization": f"Bearer {alice}"}, key="k-3")
    assert refused["error"]["code"] == "not_found"
    assert "no such resource among the accounts alice may see" in refused["error"]["message"]
    assert denials(acl) == [("alice", "vm.stop", "sib_acct")]
    for headers, message in [
            ({"Authorization": "Bearer ckt1.forged.token"}, "bearer token signature"),
            ({"Authorization": "Bearer nonsense"}, "malformed bearer token"),
            ({"Authorization": f"Basic {alice}"}, "must be 'Bearer <token>'"),
            ({"Authorization": "Bearer "}, "must be 'Bearer <token>'"),
            ({"Authorization": f"Bearer {alice}", KEY_ID_HEADER: "ak_1"}, "not both")]:
        reply = send(MINE, headers, key="k-4")
        assert reply["error"]["code"] == "unauthenticated", (headers, reply)
        assert message in reply["error"]["message"], (headers, reply)
    acl.clock.now += acl.service.token_lifetime + 1
    assert "expired" in send(MINE, {"Authorization": f"Bearer {alice}"}, key="k-5")[
        "error"]["message"]
    assert len(ran) == 3


def test_the_intake_refuses_a_deploy_past_the_accounts_limit(acl: Acl) -> None:
    """Limits hold at the NATS intake too (the end-user and EC2 services deploy through it)."""
    from types import SimpleNamespace

    from aggregates.offering import ServiceOffering
    from gateways.quotas import quota_check
    from kernel.cloud.vms import DeployVm

    offering = ServiceOffering.create(name="small", cpu_cores=2, cpu_mhz=1000, memory_mib=1024)
    app = SimpleNamespace(repository=SimpleNamespace(get=lambda _id: offering))
    held: list[dict[str, Any]] = []  # the vms read model's rows of mine_acct
    views = {"vms": SimpleNamespace(all_rows=lambda account: [
        r for r in held if r["account"] == account])}
    ran: list[str] = []

    def run(command: Any, *, idempotency_key: str, actor: str) -> CommandOutcome:
        ran.append(idempotency_key)
        held.append({"account": command.account, "state": "Running",
                     "offering_id": command.service_offering_id})
        return CommandOutcome(command="vm.deploy", idempotency_key=idempotency_key,
                              result=msgspec.Raw(b"{}"))

    intake = CommandIntake({"vm.deploy": (DeployVm, run)}, acl.access, [],
                           owner_lookup=lookup, quota=quota_check(acl.access, app, views))
    acl.service.set_limits("account", "mine_acct", {"max_vms": 1})
    token = acl.service.login("alice", "alicepass")

    def deploy(key: str) -> dict[str, Any]:
        body = DeployVm(name=key, account="mine_acct", zone_id=uuid4(),
                        service_offering_id=uuid4(), template_id=uuid4())
        reply = intake.handle(COMMANDS_PREFIX + "vm.deploy",
                              {IDEMPOTENCY_KEY_HEADER: key, "Authorization": f"Bearer {token}"},
                              msgspec.json.encode(body))
        return json.loads(reply.data)  # type: ignore[no-any-return]

    assert deploy("d-1")["ok"] is True
    refused = deploy("d-2")
    assert refused["error"]["code"] == "forbidden" and "max_vms" in refused["error"]["message"]
    assert ran == ["alice/d-1"]
