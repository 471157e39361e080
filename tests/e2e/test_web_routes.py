"""The web page's server side without a browser: page and static files, login, the SSE
stream (fed by a real nats-server) with its per-account filter, and the first admin user."""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import nats
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from aggregates.errors import UnauthenticatedError
from gateways.api.context import CONTEXT, ApiContext
from gateways.api.errors import error_middleware
from gateways.web import add_web_routes, banner
from gateways.web.routes import sse_message
from kernel.contracts.access import Principal
from kernel.settings import Settings
from services.acl.first_admin import ensure_admin_user

ADMIN = Principal(key_id="token:a", actor="alice", role="admin")
TENANT = Principal(key_id="token:b", actor="bob", role="integrator", account="blue")
MINE, THEIRS = uuid4(), uuid4()
Scenario = Callable[[TestClient[Any, Any]], Awaitable[None]]


class FakeAccess:
    """Two bearer tokens: a platform admin's and a tenant's that sees account `blue`."""

    def authenticate_bearer(self, token: str) -> Principal:
        if token == "admin-token":
            return ADMIN
        if token == "tenant-token":
            return TENANT
        raise UnauthenticatedError("invalid token")

    def visible_accounts(self, principal: Principal) -> frozenset[str] | None:
        return None if principal is ADMIN else frozenset({"blue"})


class FakeView:
    def get(self, key: UUID) -> dict[str, Any] | None:
        return {MINE: {"account": "blue"}, THEIRS: {"account": "red"}}.get(key)


class FakeRunner:
    view = FakeView()


def test_sse_message_is_typed_by_topic_unless_asked_not_to() -> None:
    headers = {"Cloudkernel-Topic": "vm.Started", "Cloudkernel-Originator-Id": str(MINE),
               "Cloudkernel-Originator-Version": "4", "Cloudkernel-Position": "17"}
    topic, typed = sse_message(headers, "cloudkernel.events.vm.Started")
    assert topic == "vm.Started"
    assert typed.decode() == (f'id: 17\nevent: vm.Started\ndata: {{"topic":"vm.Started",'
                              f'"originator_id":"{MINE}","version":4,"position":17}}\n\n')
    _, untyped = sse_message(headers, "cloudkernel.events.vm.Started", typed=False)
    assert b"event:" not in untyped and untyped.startswith(b"id: 17\ndata: ")


@asynccontextmanager
async def web_client(nats_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    """The page's routes on a bare app (the API's error middleware, no API routes)."""
    ctx = ApiContext({}, FakeAccess(), None, {"vms": FakeRunner()},  # type: ignore[arg-type, dict-item]
                     threads=4)
    app = web.Application(middlewares=[error_middleware])
    app[CONTEXT] = ctx

    def login(username: str, password: str) -> str:
        if (username, password) != ("alice", "s3cret-pass"):
            raise UnauthenticatedError("invalid credentials")
        return "admin-token"

    add_web_routes(app, servers=[nats_url], login=login)
    async with TestClient(TestServer(app)) as c:
        yield c
    ctx.close()


def test_page_static_files_and_login(client_run: Callable[[Scenario], None]) -> None:
    async def scenario(c: TestClient[Any, Any]) -> None:
        page = await c.get("/")
        assert page.status == 200 and "<script type=\"module\"" in await page.text()
        for name, kind in (("app.js", "javascript"), ("app.css", "css")):
            r = await c.get(f"/static/{name}")
            assert r.status == 200 and kind in r.headers["Content-Type"]
        bad = await c.post("/v1/login", json={"username": "alice", "password": "nope"})
        assert bad.status == 401 and (await bad.json())["error"]["code"] == "unauthenticated"
        good = await c.post("/v1/login", json={"username": "alice", "password": "s3cret-pass"})
        assert good.status == 200 and await good.json() == {"token": "admin-token"}
        malformed = await c.post("/v1/login", data=b"{}",
                                 headers={"Content-Type": "application/json"})
        assert malformed.status == 422
        no_token = await c.get("/v1/stream")
        assert no_token.status == 401
        wrong = await c.get("/v1/stream?token=forged")
        assert wrong.status == 401

    client_run(scenario)


def test_stream_forwards_events_filtered_by_account(
        client_run: Callable[[Scenario], None], nats_url: str) -> None:
    async def read_events(c: TestClient[Any, Any], token: str, n: int) -> list[dict[str, Any]]:
        r = await c.get(f"/v1/stream?token={token}")
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        assert (await r.content.readuntil(b"\n\n")).startswith(b": connected")
        out: list[dict[str, Any]] = []
        while len(out) < n:
            block = (await asyncio.wait_for(r.content.readuntil(b"\n\n"), 10)).decode()
            fields = dict(line.split(": ", 1) for line in block.strip().split("\n")
                          if not line.startswith(":"))
            if "data" in fields:
                out.append({"event": fields.get("event"), **json.loads(fields["data"])})
        r.close()
        return out

    async def publish() -> None:
        await asyncio.sleep(0.5)  # both streams subscribed
        nc = await nats.connect(nats_url)
        for position, (topic, originator) in enumerate(
                (("vm.Started", THEIRS), ("host.CapacityClaimed", uuid4()),
                 ("vm.Stopped", MINE)), start=1):
            await nc.publish(f"cloudkernel.events.{topic}", b"{}", headers={
                "Cloudkernel-Topic": topic, "Cloudkernel-Originator-Id": str(originator),
                "Cloudkernel-Originator-Version": "1", "Cloudkernel-Position": str(position)})
        await nc.flush()
        await nc.close()

    async def scenario(c: TestClient[Any, Any]) -> None:
        admin, tenant, _ = await asyncio.gather(read_events(c, "admin-token", 3),
                                                read_events(c, "tenant-token", 1), publish())
        assert [(e["event"], e["position"]) for e in admin] == [
            ("vm.Started", 1), ("host.CapacityClaimed", 2), ("vm.Stopped", 3)]
        assert tenant == [{"event": "vm.Stopped", "topic": "vm.Stopped",
                           "originator_id": str(MINE), "version": 1, "position": 3}]

    client_run(scenario)


@pytest.fixture
def client_run(nats_url: str) -> Callable[[Scenario], None]:
    """Run `scenario(client)` on a fresh event loop."""
    def run(scenario: Scenario) -> None:
        async def main() -> None:
            async with web_client(nats_url) as c:
                await scenario(c)
        asyncio.run(main())
    return run


def test_first_admin_user_is_made_once_and_logs_in(tmp_path: Path) -> None:
    from services.acl.access import AclAccess
    from services.acl.service import AclService

    settings = Settings(data_dir=tmp_path / "data")
    (tmp_path / "data").mkdir()
    acl = AclService.open(settings, create_table=True)
    try:
        password = ensure_admin_user(acl)
        assert password is not None and len(password) >= 16
        assert ensure_admin_user(acl) is None  # the second start makes nothing
        principal = AclAccess(acl).authenticate_bearer(acl.login("admin", password))
        assert principal.actor == "admin" and AclAccess(acl).visible_accounts(principal) is None
        assert password in banner("http://127.0.0.1:8480", "admin", password)
    finally:
        acl.close()
