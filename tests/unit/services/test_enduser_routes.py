"""The End User API's routes over a real TenantView (SQLite, fed events) with a fake runtime
and a fake ACL: tenancy, the error shape, idempotency keys and the admin's switch."""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aggregates.errors import UnauthenticatedError, ValidationError
from services.acl.client import AclPrincipal
from services.enduser.auth import Authenticator
from services.enduser.routes import EndUser, make_app
from services.framework.framework import CommandRefusedError
from services.framework.tenant_view import TenantView

ZONE, TEMPLATE, OFFERING = uuid4(), uuid4(), uuid4()
ALICE_VM, BOB_VM, ALICE_VOLUME, OPERATION = uuid4(), uuid4(), uuid4(), uuid4()
AT = "2026-01-01T00:00:00+00:00"


@dataclass
class Event:
    position: int
    topic: str
    originator_id: UUID
    payload: dict[str, Any]

    def data(self) -> dict[str, Any]:
        return self.payload


def events() -> list[Event]:
    vm = {"zone_id": str(ZONE), "template_id": str(TEMPLATE),
          "service_offering_id": str(OFFERING), "timestamp": AT}
    return [
        Event(1, "zone.Created", ZONE, {"name": "z1", "network_type": "Advanced"}),
        Event(2, "vm.Allocated", ALICE_VM, {**vm, "name": "a1", "account": "acme"}),
        Event(3, "vm.Allocated", BOB_VM, {**vm, "name": "b1", "account": "globex"}),
        Event(4, "volume.Allocated", ALICE_VOLUME, {
            "name": "data", "account": "acme", "volume_type": "DATADISK",
            "size_bytes": 1 << 30, "zone_id": str(ZONE), "timestamp": AT}),
        Event(5, "operation.Accepted", OPERATION, {"kind": "vm.deploy",
                                                   "entity_ids": [str(ALICE_VM)]}),
    ]


@dataclass
class Result:
    result: Any
    positions: tuple[int, ...] = ()
    replayed: bool = False


@dataclass
class FakeRuntime:
    enabled: bool = True
    sent: list[tuple[str, dict[str, Any], str, str | None]] = field(default_factory=list)
    refuse: CommandRefusedError | None = None

    async def command(self, tag: str, body: Any, *, idempotency_key: str,
                      bearer_token: str | None = None, timeout: float = 30) -> Result:
        if self.refuse is not None:
            raise self.refuse
        self.sent.append((tag, dict(body), idempotency_key, bearer_token))
        return Result({"operation_id": str(OPERATION), "vm_id": str(ALICE_VM)})


class FakeAcl:
    principals = {
        "t-alice": AclPrincipal(actor="alice", account="acme", role="user", domain="ROOT",
                                key_id="token:1"),
        "t-bob": AclPrincipal(actor="bob", account="globex", role="user", domain="ROOT",
                              key_id="token:2"),
        "t-root": AclPrincipal(actor="root", account=None, role="root_admin", domain="ROOT",
                               key_id="token:3")}
    asked = 0

    async def login(self, username: str, password: str) -> tuple[str, AclPrincipal]:
        if password != "right":
            raise UnauthenticatedError("invalid credentials")
        return f"t-{username}", self.principals[f"t-{username}"]

    async def authenticate(self, token: str) -> AclPrincipal:
        self.asked += 1
        if token not in self.principals:
            raise UnauthenticatedError("malformed bearer token")
        return self.principals[token]


Scenario = Callable[[TestClient, FakeRuntime, FakeAcl], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario) -> None:
    view = TenantView(tmp_path / "view.db")
    for event in events():
        view.apply(event)
    runtime, acl = FakeRuntime(), FakeAcl()

    async def main() -> None:
        app = make_app(EndUser(runtime=runtime, auth=Authenticator(acl), view=view))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            await scenario(client, runtime, acl)
        finally:
            await client.close()

    try:
        asyncio.run(main())
    finally:
        view.close()


async def call(client: TestClient, method: str, path: str, token: str | None = "t-alice",
               body: Any = None, key: str | None = None) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    data = None if body is None else json.dumps(body)
    response = await client.request(method, path, data=data, headers=headers)
    return response.status, await response.json()


def test_a_tenant_sees_and_acts_on_its_own_account_only(tmp_path: Path) -> None:
    async def scenario(client: TestClient, runtime: FakeRuntime, acl: FakeAcl) -> None:
        status, page = await call(client, "GET", "/v1/vms")
        assert status == 200 and [v["id"] for v in page["items"]] == [str(ALICE_VM)]
        assert (await call(client, "GET", "/v1/vms", "t-bob"))[1]["items"][0]["id"] == \
            str(BOB_VM)
        status, vm = await call(client, "GET", f"/v1/vms/{ALICE_VM}")
        assert status == 200 and vm["name"] == "a1" and vm["volumes"] == []
        assert "host_id" not in vm
        # Another account's VM, volume or operation: 404, as if missing.
        for method, path in (("GET", f"/v1/vms/{ALICE_VM}"),
                             ("POST", f"/v1/vms/{ALICE_VM}/stop"),
                             ("GET", f"/v1/volumes/{ALICE_VOLUME}"),
                             ("DELETE", f"/v1/volumes/{ALICE_VOLUME}"),
                             ("GET", f"/v1/operations/{OPERATION}"),
                             ("GET", f"/v1/vms/{uuid4()}"), ("GET", "/v1/vms/not-an-id")):
            status, error = await call(client, method, path, "t-bob")
            assert status == 404 and error["error"]["code"] == "not_found", (path, error)
        # Bob may not attach alice's volume to his VM, nor his volume to her VM.
        status, error = await call(client, "POST", f"/v1/volumes/{ALICE_VOLUME}/attach",
                                   "t-bob", {"vm_id": str(BOB_VM)})
        assert status == 404 and error["error"]["code"] == "not_found"
        assert runtime.sent == []
        assert (await call(client, "GET", f"/v1/operations/{OPERATION}"))[1]["status"] == \
            "Running"

        status, accepted = await call(client, "POST", f"/v1/vms/{ALICE_VM}/stop", key="s-1")
        assert status == 202 and accepted["operation_url"] == f"/v1/operations/{OPERATION}"
        assert runtime.sent[-1] == ("vm.stop", {"vm_id": str(ALICE_VM)}, "s-1", "t-alice")
        deploy = {"name": "web", "zone_id": str(ZONE), "offering_id": str(OFFERING),
                  "template_id": str(TEMPLATE)}
        status, error = await call(client, "POST", "/v1/vms", body=deploy)
        assert status == 400 and error["error"]["field"] == "Idempotency-Key"
        # The account is the caller's, whatever the body says.
        status, error = await call(client, "POST", "/v1/vms", body={**deploy,
                                                                     "account": "globex"},
                                   key="d-1")
        assert status == 400 and error["error"]["field"] == "account"
        status, _ = await call(client, "POST", "/v1/vms", body=deploy, key="d-1")
        assert status == 202
        tag, body, key, token = runtime.sent[-1]
        assert (tag, body["account"], body["service_offering_id"], key, token) == \
            ("vm.deploy", "acme", str(OFFERING), "d-1", "t-alice")
        status, _ = await call(client, "POST", "/v1/volumes/x/attach", body={"vm_id": 5})
        assert status == 404

    run(tmp_path, scenario)


def test_errors_are_json_and_a_disabled_service_answers_503(tmp_path: Path) -> None:
    async def scenario(client: TestClient, runtime: FakeRuntime, acl: FakeAcl) -> None:
        status, error = await call(client, "GET", "/v1/vms", token=None)
        assert status == 401 and error["error"]["code"] == "unauthenticated"
        status, error = await call(client, "GET", "/v1/vms", token="forged")
        assert (status, error["error"]["message"]) == (401, "malformed bearer token")
        status, error = await call(client, "GET", "/v1/vms", token="t-root")
        assert status == 403 and "admin API" in error["error"]["message"]
        status, login = await call(client, "POST", "/v1/login", None,
                                   {"username": "alice", "password": "right"})
        assert status == 200 and login["token"] == "t-alice"
        assert login["principal"]["account"] == "acme"
        status, error = await call(client, "POST", "/v1/login", None,
                                   {"username": "alice", "password": "wrong"})
        assert status == 401 and error["error"]["message"] == "invalid credentials"
        status, error = await call(client, "POST", "/v1/login", None, {"username": 5})
        assert status == 400 and error["error"]["field"] == "username"
        status, error = await call(client, "POST", "/v1/volumes", body={"name": "v"},
                                   key="v-1")
        assert status == 400 and "zone_id" in error["error"]["message"]
        # A refusal of the platform keeps its code, and names the field by the request's
        # own name (the path's id for the command's vm_id); a well-formed request the
        # platform refuses is a conflict with its state.
        runtime.refuse = CommandRefusedError("invalid", "template t is Downloading", "vm_id")
        status, error = await call(client, "POST", f"/v1/vms/{ALICE_VM}/start")
        assert (status, error) == (409, {"error": {"code": "invalid", "field": "id",
                                                   "message": "template t is Downloading"}})
        # Tokens are cached a few seconds: one ACL check for several calls.
        asked = acl.asked
        for _ in range(3):
            assert (await call(client, "GET", "/v1/volumes", "t-bob"))[0] == 200
        assert acl.asked == asked + 1

        runtime.enabled = False
        for method, path in (("GET", "/v1/vms"), ("POST", "/v1/login")):
            status, error = await call(client, method, path)
            assert status == 503, error
            assert error["error"]["code"] == "service_disabled"
            assert "enduser service is disabled" in error["error"]["message"]
        runtime.enabled = True
        assert (await call(client, "GET", "/v1/vms"))[0] == 200

    run(tmp_path, scenario)


DEPLOY = {"name": "web", "zone_id": str(ZONE), "offering_id": str(OFFERING),
          "template_id": str(TEMPLATE)}


def test_a_platform_refusal_names_the_requests_own_field_and_is_clipped(
        tmp_path: Path) -> None:
    async def scenario(client: TestClient, runtime: FakeRuntime, acl: FakeAcl) -> None:
        runtime.refuse = CommandRefusedError(
            "invalid", f"service_offering_id: {OFFERING} is not an active service offering",
            "service_offering_id")
        status, error = await call(client, "POST", "/v1/vms", body=DEPLOY, key="k-1")
        assert (status, error["error"]["code"], error["error"]["field"]) == \
            (409, "invalid", "offering_id"), error
        runtime.refuse = CommandRefusedError("invalid", "vm name " + repr("n" * 10_000) +
                                             " must be 1-63 letters", "name")
        status, error = await call(client, "POST", "/v1/vms", body=DEPLOY, key="k-2")
        assert (status, error["error"]["field"]) == (409, "name"), error
        assert len(error["error"]["message"]) < 200, error  # the value is not echoed whole
        runtime.refuse = CommandRefusedError("invalid", "a rule", "account")
        status, error = await call(client, "POST", "/v1/vms", body=DEPLOY, key="k-3")
        assert error["error"]["field"] is None, error  # not a field of the request
        runtime.refuse = None
        status, error = await call(client, "POST", "/v1/vms",
                                   body={**DEPLOY, "network_ids": [str(ZONE), 7]}, key="k-4")
        assert (status, error["error"]["field"]) == (400, "network_ids[1]"), error

    run(tmp_path, scenario)


def test_an_unavailable_platform_is_503_with_retry_after(tmp_path: Path) -> None:
    async def scenario(client: TestClient, runtime: FakeRuntime, acl: FakeAcl) -> None:
        runtime.refuse = CommandRefusedError("unavailable", "the event store cannot be "
                                             "reached now: retry with the same key")
        response = await client.post(f"/v1/vms/{ALICE_VM}/start",
                                     headers={"Authorization": "Bearer t-alice",
                                              "Idempotency-Key": "start-1"})
        assert response.status == 503 and response.headers["Retry-After"] == "5"
        assert (await response.json())["error"]["code"] == "unavailable"

    run(tmp_path, scenario)


def test_the_answers_agree_with_the_document(tmp_path: Path) -> None:
    """What schemathesis' checks found: an undeclared method is 405 with `Allow`, an empty or
    overlong Idempotency-Key is refused as the document's pattern says, a schema-valid value
    (an integral number written 3.0) is accepted, and a well-formed request the platform
    refuses is 409."""
    async def scenario(client: TestClient, runtime: FakeRuntime, acl: FakeAcl) -> None:
        for method, path, allow in (("PUT", "/v1/vms", "GET, HEAD, POST"),
                                    ("TRACE", "/healthz", "GET, HEAD"),
                                    ("PATCH", f"/v1/volumes/{ALICE_VOLUME}",
                                     "DELETE, GET, HEAD")):
            response = await client.request(method, path,
                                            headers={"Authorization": "Bearer t-alice"})
            assert response.status == 405, (method, path)
            assert response.headers["Allow"] == allow, (method, path)
            assert (await response.json())["error"]["code"] == "method_not_allowed"
        for key in ("", " ", "x" * 121, "a b", "é"):
            status, error = await call(client, "POST", "/v1/vms", body=DEPLOY, key=key)
            assert (status, error["error"]["field"]) == (400, "Idempotency-Key"), (key, error)
            status, error = await call(client, "POST", f"/v1/vms/{ALICE_VM}/stop", key=key)
            assert (status, error["error"]["field"]) == (400, "Idempotency-Key"), (key, error)
        assert runtime.sent == []
        status, _ = await call(client, "POST", "/v1/vms", body={**DEPLOY,
                                                                "root_size_bytes": 2048.0},
                               key="x" * 120)
        assert status == 202 and runtime.sent[-1][1]["root_size_bytes"] == 2048
        assert isinstance(runtime.sent[-1][1]["root_size_bytes"], int)
        status, error = await call(client, "POST", "/v1/vms", body={**DEPLOY,
                                                                    "root_size_bytes": 2.5},
                                   key="k-2")
        assert (status, error["error"]["field"]) == (400, "root_size_bytes"), error
        runtime.refuse = CommandRefusedError("invalid", "template t is Downloading")
        status, error = await call(client, "POST", "/v1/vms", body=DEPLOY, key="k-3")
        assert (status, error["error"]["code"]) == (409, "invalid"), error

    run(tmp_path, scenario)


def test_a_malformed_user_name_at_login_is_bad_credentials(tmp_path: Path) -> None:
    class StrictAcl(FakeAcl):
        async def login(self, username: str, password: str) -> tuple[str, AclPrincipal]:
            raise ValidationError(f"user name must be 1-100 letters, got {username!r}")

    view = TenantView(tmp_path / "view.db")

    async def main() -> None:
        app = make_app(EndUser(runtime=FakeRuntime(), auth=Authenticator(StrictAcl()),
                               view=view))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            status, error = await call(client, "POST", "/v1/login", None,
                                       {"username": "", "password": "p"})
            assert (status, error["error"]["field"]) == (401, "username"), error
        finally:
            await client.close()

    try:
        asyncio.run(main())
    finally:
        view.close()


def test_a_header_holding_a_control_character_is_one_warning_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(client: TestClient, runtime: FakeRuntime, acl: FakeAcl) -> None:
        server = client.server
        for header in (b"Authorization: Bearer t-alice\x00", b"Idempotency-Key: a\x01b"):
            caplog.clear()
            with caplog.at_level(logging.INFO):
                reader, writer = await asyncio.open_connection(server.host, server.port)
                writer.write(b"POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                             + header + b"\r\nConnection: close\r\n\r\n{}")
                await writer.drain()
                answer = await reader.read()
                writer.close()
                await asyncio.sleep(0.05)
            assert answer.startswith(b"HTTP/1.1 400") or answer.startswith(b"HTTP/1.0 400")
            assert b"Invalid header value char" in answer
            logged = [r for r in caplog.records if r.name == "aiohttp.server"]
            assert [r.levelno for r in logged] == [logging.WARNING], logged
            assert not logged[0].exc_info and "\x00" not in logged[0].getMessage()
        assert runtime.sent == []

    run(tmp_path, scenario)
