"""The End User API's routes over a real TenantView (SQLite, fed events) with a fake runtime
and a fake ACL: tenancy, the error shape, idempotency keys and the admin's switch."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from aiohttp.test_utils import TestClient, TestServer

from aggregates.errors import UnauthenticatedError
from gateways.acl.client import AclPrincipal
from gateways.services.enduser.auth import Authenticator
from gateways.services.enduser.routes import EndUser, make_app
from gateways.services.framework import CommandRefusedError
from gateways.services.tenant_view import TenantView

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
        # A refusal of the platform keeps its code and field.
        runtime.refuse = CommandRefusedError("invalid", "template t is Downloading", "x")
        status, error = await call(client, "POST", f"/v1/vms/{ALICE_VM}/start")
        assert (status, error) == (400, {"error": {"code": "invalid", "field": "x",
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
