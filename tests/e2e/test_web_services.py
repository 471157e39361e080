"""`GET /v1/web/services` (the Services panel's data) without a browser: registrations from a
read model joined with the heartbeats a real nats-server's KV bucket holds, each with its age;
registrations still listed when NATS is out of reach; the API's refusals."""

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import uuid4

import nats
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from aggregates.errors import UnauthenticatedError
from gateways.api.context import CONTEXT, ApiContext
from gateways.api.errors import error_middleware
from gateways.web import add_web_routes
from kernel.contracts.access import Principal
from kernel.contracts.liveness import Heartbeat, beat, open_bucket

ADMIN = Principal(key_id="token:a", actor="alice", role="admin")
AUTH = {"Authorization": "Bearer admin-token"}
NOW = "2026-11-24T10:00:00+00:00"


class FakeAccess:
    """One bearer token, an admin's."""

    def authenticate_bearer(self, token: str) -> Principal:
        if token != "admin-token":
            raise UnauthenticatedError("invalid token")
        return ADMIN

    def authenticate(self, request: Any) -> Principal:
        raise UnauthenticatedError("send a bearer token")

    def visible_accounts(self, principal: Principal) -> frozenset[str] | None:
        return None


def row(name: str, state: str = "Enabled", reason: str = "") -> dict[str, Any]:
    return {"id": uuid4(), "name": name, "version": "1.0",
            "endpoints": {"http": f"http://127.0.0.1:8490/{name}"}, "consumes": ["a.>"],
            "publishes": [], "description": "", "state": state, "enabled": state == "Enabled",
            "disabled_reason": reason, "registered_at": NOW, "revision": 1, "updated_at": NOW}


class FakeView:
    """The services read model: two registrations."""

    rows = [row("billing"), row("ec2", "Disabled", "maintenance")]

    def all_rows(self) -> list[dict[str, Any]]:
        return list(self.rows)


class FakeRunner:
    view = FakeView()


@asynccontextmanager
async def client(servers: list[str], models: tuple[str, ...] = ("services",)
                 ) -> AsyncIterator[TestClient[Any, Any]]:
    ctx = ApiContext({}, FakeAccess(), None,  # type: ignore[arg-type]
                     {m: FakeRunner() for m in models}, threads=2)  # type: ignore[misc]
    app = web.Application(middlewares=[error_middleware])
    app[CONTEXT] = ctx
    add_web_routes(app, servers=servers)
    async with TestClient(TestServer(app)) as c:
        yield c
    ctx.close()


def heartbeat(name: str, instance_id: str, age: float) -> Heartbeat:
    now = time.time()
    return Heartbeat(name=name, instance_id=instance_id, version="1.0", endpoints={}, pid=4242,
                     host="node-7", started_at=now - 60, at=now - age, enabled=True)


def test_registrations_are_joined_with_live_instances_and_their_ages(nats_url: str) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_url)
        kv = await open_bucket(nc.jetstream(), heartbeat_seconds=30)
        for hb in (heartbeat("billing", "b1", 4.0), heartbeat("billing", "b2", 0.0),
                   heartbeat("stranger", "s1", 0.0)):  # heartbeats of an unregistered name
            await beat(kv, hb)
        try:
            async with client([nats_url]) as c:
                r = await c.get("/v1/web/services", headers=AUTH)
                assert r.status == 200, await r.text()
                body = await r.json()
                assert body["liveness"] is None
                billing, ec2 = body["items"]
                assert [i["instance_id"] for i in billing["instances"]] == ["b1", "b2"]
                assert billing["live"] == 2
                first = billing["instances"][0]
                assert (first["host"], first["pid"]) == ("node-7", 4242)
                assert 4.0 <= first["age"] < 6.0 and billing["instances"][1]["age"] < 2.0
                assert (ec2["state"], ec2["disabled_reason"], ec2["instances"]) == \
                    ("Disabled", "maintenance", [])
                assert ec2["endpoints"] == {"http": "http://127.0.0.1:8490/ec2"}
                # the page's module is served as JavaScript (it is imported by app.js)
                js = await c.get("/static/services.js")
                assert js.status == 200 and "javascript" in js.headers["Content-Type"]
        finally:
            await nc.close()

    asyncio.run(scenario())


def test_registrations_are_listed_when_nats_is_out_of_reach() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there

    async def scenario() -> None:
        async with client([f"nats://127.0.0.1:{port}"]) as c:
            r = await c.get("/v1/web/services", headers=AUTH)
            assert r.status == 200, await r.text()
            body = await r.json()
            assert [s["name"] for s in body["items"]] == ["billing", "ec2"]
            assert all(s["instances"] == [] for s in body["items"])
            assert "NATS did not answer" in body["liveness"]

    asyncio.run(scenario())


def test_refusals(nats_url: str) -> None:
    async def scenario() -> None:
        async with client([nats_url]) as c:
            nobody = await c.get("/v1/web/services")
            assert nobody.status == 401
            assert (await nobody.json())["error"]["code"] == "unauthenticated"
            odd = await c.get("/v1/web/services?limit=5", headers=AUTH)
            assert odd.status == 422 and "limit" in (await odd.json())["error"]["message"]
        async with client([nats_url], models=("vms",)) as c:
            missing = await c.get("/v1/web/services", headers=AUTH)
            assert missing.status == 404
            assert "services read model" in (await missing.json())["error"]["message"]

    asyncio.run(scenario())
