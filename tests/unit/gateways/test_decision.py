"""The command decision the admin API and the NATS intake share."""

import asyncio
import json
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from support.tenants import two_tenants

from gateways.api.app import make_app
from gateways.api.context import ApiContext
from gateways.decision import MalformedError, decode_command
from gateways.ownership import store_lookup
from gateways.stream.intake import COMMANDS_PREFIX, CommandIntake
from kernel.bootstrap.processes import projection_runners
from kernel.cloud.vms import DeployVm
from kernel.commands import CommandOutcome
from kernel.contracts.access import IDEMPOTENCY_KEY_HEADER, Principal, SignedRequest
from kernel.settings import Settings
from projections.catalog import MODELS


class Everyone:
    """Access control that takes every request as an admin's and allows it."""

    def authenticate(self, request: SignedRequest) -> Principal:
        return Principal(key_id="k", actor="root", role="admin")

    def authenticate_bearer(self, token: str) -> Principal:
        return Principal(key_id="t", actor="root", role="admin")

    def authorize(self, principal: Principal, command_tag: str, *,
                  owner: str | None = None) -> None:
        return None

    def visible_accounts(self, principal: Principal) -> frozenset[str] | None:
        return None


def _deploy(name: str) -> dict[str, Any]:
    return {"name": name, "account": "acme", "zone_id": str(uuid4()),
            "service_offering_id": str(uuid4()), "template_id": str(uuid4())}


def test_a_nul_in_any_string_is_malformed_naming_its_field() -> None:
    decoder = msgspec.json.Decoder(DeployVm)
    for body, field in ((_deploy("web\x00"), "name"),
                        ({**_deploy("web"), "network_ids": ["\x00"]}, "network_ids[0]"),
                        ({**_deploy("web"), "k\x00": 1}, "k\x00")):
        with pytest.raises(MalformedError, match="must not contain NUL") as refused:
            decode_command("vm.deploy", DeployVm, decoder, json.dumps(body).encode())
        assert refused.value.field == field
    # an escaped backslash before "u0000" is text, not a NUL
    command = decode_command("vm.deploy", DeployVm, decoder,
                             json.dumps(_deploy("web\\u0000")).encode())
    assert isinstance(command, DeployVm) and command.name == "web\\u0000"


def test_the_intake_refuses_a_nul_as_the_admin_api_does() -> None:
    ran: list[str] = []

    def run(command: Any, *, idempotency_key: str, actor: str) -> CommandOutcome:
        ran.append(idempotency_key)
        return CommandOutcome(command="vm.deploy", idempotency_key=idempotency_key,
                              result=msgspec.Raw(b"{}"))

    intake = CommandIntake({"vm.deploy": (DeployVm, run)}, Everyone(), [])
    reply = intake.handle(COMMANDS_PREFIX + "vm.deploy", {IDEMPOTENCY_KEY_HEADER: "k-1"},
                          json.dumps(_deploy("web\x00")).encode())
    assert reply.error == "malformed"
    assert json.loads(reply.data)["error"]["message"] == \
        "name must not contain NUL characters (\\u0000)"
    assert ran == []


# --------------------------------------------------------------------------- both transports

# What the VM itself answers its owner: no worker ran its deploy
OWNER_ANSWER = "vm acme-web is Allocated: only a Running VM stops"


@pytest.mark.parametrize("target", ["acme's", "missing"])
def test_another_tenants_vm_is_not_found_over_http_and_nats_and_audited_on_both(
        tmp_path: Path, target: str) -> None:
    """bob (globex) stops acme's VM, signed and with a login token: the admin API (both its
    routes) and the NATS intake answer the same not_found, write nothing, and each records
    an AccessDenied naming bob, vm.stop and acme; alice (acme) passes access on both. A VM
    that does not exist is answered just the same (else the difference tells which exist),
    to alice too."""
    settings = Settings(data_dir=tmp_path / "data", store="sqlite")
    with two_tenants(settings) as t, projection_runners(settings, list(MODELS)) as runners:
        for runner in runners:
            runner.run_once()
            runner.start()
        ctx = ApiContext(t.catalog, t.access, t.platform.app, {r.name: r for r in runners},
                         wait_timeout=2.0)
        intake = CommandIntake(t.catalog, t.access, [],
                               owner_lookup=store_lookup(t.platform.app.repository))
        vm, owner = (str(t.vm_id), "acme") if target == "acme's" else (str(uuid4()), None)
        stop = json.dumps({"vm_id": vm}).encode()
        nats_subject = COMMANDS_PREFIX + "vm.stop"
        http_calls = ((f"/v1/vms/{vm}/stop", b"{}"), ("/v1/commands/vm.stop", stop))

        def headers(how: str, user: str, subject: str, data: bytes) -> dict[str, str]:
            return t.signed(user, subject, data) if how == "signed" else t.bearer(user)

        def over_nats(how: str, user: str) -> dict[str, Any]:
            reply = intake.handle(nats_subject, headers(how, user, nats_subject, stop), stop)
            answer: dict[str, Any] = json.loads(reply.data)
            return answer.get("error", {"code": "ok"})  # type: ignore[no-any-return]

        async def main() -> None:
            client = TestClient(TestServer(make_app(ctx, own_context=False)))
            await client.start_server()

            async def over_http(how: str, user: str, path: str,
                                data: bytes) -> tuple[int, dict[str, Any]]:
                r = await client.post(path, data=data, headers={
                    **headers(how, user, f"POST {path}", data),
                    "Content-Type": "application/json"})
                answer = await r.json()
                return r.status, answer.get("error", {"code": "ok"})

            try:
                for runner in runners:
                    await asyncio.to_thread(runner.wait, t.head(), 10)
                for how in ("signed", "bearer"):
                    answers = []
                    for path, data in http_calls:
                        head, denied = t.head(), len(t.denials())
                        status, error = await over_http(how, "bob", path, data)
                        assert status == 404, (how, path, error)
                        answers.append(error)
                        assert t.head() == head, (how, path, "wrote to the log")
                        assert t.denials()[denied:] == [("bob", "vm.stop", owner)], (how, path)
                    head, denied = t.head(), len(t.denials())
                    answers.append(over_nats(how, "bob"))
                    assert t.head() == head, (how, "NATS wrote to the log")
                    assert t.denials()[denied:] == [("bob", "vm.stop", owner)], how
                    assert {(e["code"], e["message"]) for e in answers} == {(
                        "not_found", "vm.stop: no such resource among the accounts bob may "
                        "see")}, (how, answers)

                    # the owner passes access control on both: the VM's own rule refuses
                    path, data = http_calls[0]
                    status, error = await over_http(how, "alice", path, data)
                    over = over_nats(how, "alice")
                    if target == "acme's":
                        assert (status, error["message"]) == (409, OWNER_ANSWER), (how, error)
                        assert (over["code"], over["message"]) == ("invalid", OWNER_ANSWER), how
                    else:
                        for answer in (error, over):
                            assert (answer["code"], answer["message"]) == (
                                "not_found", "vm.stop: no such resource among the accounts "
                                "alice may see"), (how, answer)
            finally:
                await client.close()
                for runner in runners:
                    runner.stop()
                ctx.close()

        asyncio.run(main())


def _raised(error: BaseException, cause: BaseException | None = None) -> BaseException:
    try:
        raise error from cause
    except BaseException as e:  # the chain as a driver leaves it
        return e


def test_a_store_that_cannot_serve_now_is_unavailable_and_a_bug_is_not() -> None:
    import sqlite3

    import psycopg
    from eventsourcing.persistence import OperationalError as StoreOperationalError
    from eventsourcing.persistence import ProgrammingError as StoreProgrammingError

    from gateways.decision import error_code, refusal

    down = [psycopg.OperationalError("connection refused"),
            _raised(StoreOperationalError("terminating connection"),
                    psycopg.errors.AdminShutdown("terminating connection")),
            _raised(StoreOperationalError("couldn't get a connection after 5.00 sec")),
            _raised(StoreOperationalError("database is locked"),
                    sqlite3.OperationalError("database is locked")),
            _raised(RuntimeError("batch failed"), psycopg.InterfaceError("closed"))]
    not_down = [RuntimeError("disk on fire"),
                _raised(StoreOperationalError("no such table: events"),
                        sqlite3.OperationalError("no such table: events")),
                _raised(StoreProgrammingError("relation does not exist"),
                        psycopg.errors.UndefinedTable("relation does not exist"))]
    assert [error_code(e) for e in down] == ["unavailable"] * len(down)
    assert [error_code(e) for e in not_down] == ["internal"] * len(not_down)
    body = refusal(down[1], where="api: POST /v1/vms", idempotency_key="key-1")
    assert (body.code, body.retry_after) == ("unavailable", 5)
    assert "same idempotency key (key-1)" in body.message
    assert "terminating" not in body.message  # the driver's words stay in the log
    read = refusal(down[0], where="api: GET /v1/vms")
    assert "nothing was changed" in read.message and read.retry_after == 5
