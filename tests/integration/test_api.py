"""The admin API on a real stack: PostgreSQL, nats-server, the kernel and real workers in this
process, the read models followed by their runners, and the API served on loopback.

A VM is deployed and stopped through the API alone; idempotency keys, unauthenticated,
wrongly signed and forbidden calls are checked against the log head (a refusal writes
nothing)."""

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from fixtures import PostgresServer
from support.cloud import Cloud, prepare, running_cloud, write_inventory

from gateways.access import ApiKey, Keyring, KeyringAccess
from gateways.api.app import make_app
from gateways.api.context import ApiContext
from kernel.bootstrap import command_catalog, open_engine, open_platform
from kernel.bootstrap.migrations import migrate_all
from kernel.bootstrap.processes import projection_runners
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from kernel.settings import Settings
from projections.catalog import MODELS

FINISHED = ("Succeeded", "Failed", "Compensated", "Cancelled")


@dataclass
class SignedClient:
    """An HTTP client of the admin API that signs with a keyring key (CK1-HMAC-SHA256)."""

    client: TestClient
    key: ApiKey
    cloud: Cloud

    async def call(self, method: str, path: str, body: Any = None, *,
                   key: ApiKey | None = None, idem: str | None = None,
                   secret: str | None = None, signed: bool = True) -> ClientResponse:
        key = key or self.key
        data = b"" if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if idem is not None:
            headers[IDEMPOTENCY_KEY_HEADER] = idem
        if signed:
            ts = str(int(time.time()))
            headers.update({KEY_ID_HEADER: key.id, TIMESTAMP_HEADER: ts,
                            SIGNATURE_HEADER: sign(secret or key.secret, timestamp=ts,
                                                   subject=f"{method} {path}",
                                                   idempotency_key=idem or "", body=data)})
        return await self.client.request(method, path, data=data, headers=headers)

    async def json(self, method: str, path: str, body: Any = None,
                   **kw: Any) -> tuple[int, Any]:
        r = await self.call(method, path, body, **kw)
        return r.status, await r.json()

    async def head(self) -> int:
        """The log head: the position of the last event written."""
        return int(await self.cloud.call(self.cloud.app.recorder.max_notification_id) or 0)

    async def finished(self, url: str, timeout: float = 60) -> dict[str, Any]:
        """Follow `GET /v1/operations/{id}` until the operation ended."""
        deadline = time.monotonic() + timeout
        while True:
            status, op = await self.json("GET", url)
            assert status == 200, op
            if op["state"] in FINISHED or time.monotonic() > deadline:
                return op  # type: ignore[no-any-return]
            await asyncio.sleep(0.1)


@asynccontextmanager
async def serving_api(settings: Settings, cloud: Cloud,
                      keyring: Keyring) -> AsyncIterator[TestClient]:
    """The admin API on loopback over the cloud's engine, with every read model followed."""
    platform = await cloud.call(open_platform, settings)
    try:
        with projection_runners(settings, list(MODELS)) as runners:
            for runner in runners:
                runner.start()
            context = ApiContext(command_catalog(platform, cloud.engine), KeyringAccess(keyring),
                                 cloud.app, {r.name: r for r in runners}, engine=cloud.engine,
                                 wait_timeout=10.0)
            client = TestClient(TestServer(make_app(context), host="127.0.0.1"))
            await client.start_server()
            try:
                yield client
            finally:
                await client.close()
                for runner in runners:
                    await asyncio.to_thread(runner.stop)
    finally:
        platform.close()


def test_deploy_and_stop_a_vm_through_the_admin_api(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=4, memory_mib=8192) for i in range(2)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris)
    keyring = Keyring(tmp_path / "keys.json")
    admin = keyring.create(actor="admin", role="admin")
    integrator = keyring.create(actor="billing", role="integrator", allow=("operation.*",))

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory)
            async with serving_api(settings, cloud, keyring) as client:
                api = SignedClient(client, admin, cloud)
                deploy = {"name": "web-1", "account": "alice", "zone_id": str(ids.zone_id),
                          "service_offering_id": str(ids.offering_id),
                          "template_id": str(ids.template_id),
                          "network_ids": [str(ids.network_id)]}
                r = await api.call("POST", "/v1/vms", deploy, idem="deploy-web-1")
                accepted = await r.json()
                assert r.status == 202, accepted
                url = f"/v1/operations/{accepted['operation_id']}"
                assert r.headers["Location"] == url == accepted["operation_url"]
                assert int(r.headers["Cloudkernel-Position"]) == accepted["position"] > 0
                vm_id = accepted["result"]["vm_id"]

                # reads its own write: the read model has the VM at the answer's position
                status, page = await api.json(
                    "GET", f"/v1/vms?account=alice&wait_for={accepted['position']}")
                assert status == 200 and [v["id"] for v in page["items"]] == [vm_id], page

                op = await api.finished(url)
                assert op["state"] == "Succeeded", op
                assert op["kind"] and op["entity_ids"] and op["failure"] is None
                forward = [s for s in op["steps"] if s["phase"] == "forward"]
                assert {(s["subsystem"], s["action"]) for s in forward} >= {
                    ("planner", "plan"), ("storage", "create_volume"),
                    ("networkguru", "allocate"), ("hypervisor", "define")}, forward
                assert all(s["status"] == "Succeeded" for s in op["steps"]
                           if s["phase"] == "forward"), op["steps"]

                # the operation ended in the kernel, not in a call of ours: wait for the log
                # head as it was when the operation was seen ended
                head = await api.head()
                status, page = await api.json("GET", f"/v1/vms?account=alice&wait_for={head}")
                assert status == 200, page
                [vm] = page["items"]
                assert vm["id"] == vm_id and vm["state"] == "Running" and vm["host_id"], vm
                status, one = await api.json("GET", f"/v1/vms/{vm_id}?wait_for={head}")
                assert status == 200 and one["state"] == "Running"

                stop = {"force_after_seconds": 5}
                r = await api.call("POST", f"/v1/vms/{vm_id}/stop", stop, idem="stop-web-1")
                stopped = await r.json()
                assert r.status == 202 and stopped["replayed"] is False, stopped
                assert r.headers["Location"] == stopped["operation_url"]
                op = await api.finished(stopped["operation_url"])
                assert op["state"] == "Succeeded", op
                head = await api.head()
                status, one = await api.json("GET", f"/v1/vms/{vm_id}?wait_for={head}")
                assert status == 200 and one["state"] == "Stopped" and one["host_id"] is None

                # the same key and body replay the first answer and write nothing
                r = await api.call("POST", f"/v1/vms/{vm_id}/stop", stop, idem="stop-web-1")
                again = await r.json()
                assert r.status == 202 and again["replayed"] is True, again
                assert again["operation_id"] == stopped["operation_id"]
                # nothing written now; its position still covers the first run's writes
                assert again["positions"] == [] and again["position"] >= stopped["position"]
                assert await api.head() == head
                # the same key with another body is refused and writes nothing
                status, err = await api.json("POST", f"/v1/vms/{vm_id}/stop",
                                             {"force_after_seconds": 7}, idem="stop-web-1")
                assert status == 409, err
                assert err["error"]["code"] == "idempotency_key_reused"
                assert await api.head() == head

                # unauthenticated or wrongly signed: 401, nothing written
                another = {**deploy, "name": "web-2"}
                for kw in ({"signed": False}, {"secret": "not-the-secret"}):
                    status, err = await api.json("POST", "/v1/vms", another, idem="d2", **kw)
                    assert status == 401, (kw, err)
                    assert err["error"]["code"] == "unauthenticated"
                status, err = await api.json("POST", "/v1/vms", another, idem="d3",
                                             key=integrator, secret=admin.secret)
                assert status == 401 and err["error"]["code"] == "unauthenticated"
                status, err = await api.json("GET", "/v1/vms", signed=False)
                assert status == 401
                assert await api.head() == head

                # a NUL character (which PostgreSQL text cannot hold) is refused: 400
                status, err = await api.json("POST", "/v1/vms", {**deploy, "name": "web\x00"})
                assert status == 400 and err["error"]["field"] == "name", err
                assert await api.head() == head

                # forbidden for an integrator key (it may send operation.* only): 403
                for path, body in (("/v1/vms", another),
                                   (f"/v1/vms/{vm_id}/start", {}),
                                   ("/v1/commands/vm.destroy", {"vm_id": vm_id})):
                    status, err = await api.json("POST", path, body, key=integrator,
                                                 idem="i-1")
                    assert status == 403 and err["error"]["code"] == "forbidden", (path, err)
                assert await api.head() == head
                status, one = await api.json("GET", f"/v1/vms/{vm_id}")
                assert status == 200 and one["state"] == "Stopped"

    asyncio.run(scenario())


def _echo_operation() -> dict[str, Any]:
    step = {"step_id": str(uuid.uuid4()), "subsystem": "echo", "action": "echo",
            "args": {"message": "hi"}}
    return {"kind": "test.echo", "plan": {"steps": [step]}}


def test_a_postgresql_outage_answers_503_with_retry_after_and_a_retry_applies_once(
        tmp_path: Path, controllable_postgres: PostgresServer, pg_dsn: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL stopped under a serving API: a command and a read answer 503
    `unavailable` with Retry-After, logged in one line without a traceback; once it is
    back, the command retried with the same Idempotency-Key is applied once."""
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=2,
                        postgres_connect_timeout=1, data_dir=tmp_path / "data")
    migrate_all(settings)
    keyring = Keyring(tmp_path / "keys.json")
    admin = keyring.create(actor="admin", role="admin")
    platform, engine, _feed = open_engine(settings)
    body = _echo_operation()

    async def scenario() -> None:
        with projection_runners(settings, ["operations"]) as runners:
            context = ApiContext(command_catalog(platform, engine), KeyringAccess(keyring),
                                 platform.app, {r.name: r for r in runners}, engine=engine)
            client = TestClient(TestServer(make_app(context), host="127.0.0.1"))
            await client.start_server()
            try:
                api = SignedClient(client, admin, None)  # type: ignore[arg-type]
                await asyncio.to_thread(controllable_postgres.stop)
                caplog.clear()
                with caplog.at_level(logging.INFO):
                    r = await api.call("POST", "/v1/commands/operation.start", body,
                                       idem="outage-1")
                    refused = await r.json()
                assert r.status == 503, refused
                assert r.headers["Retry-After"] == "5"
                assert r.headers["Idempotency-Key"] == "outage-1"
                assert refused["error"]["code"] == "unavailable"
                assert "same idempotency key (outage-1)" in refused["error"]["message"]
                ours = [rec for rec in caplog.records if rec.name.startswith("gateways")]
                assert [rec.levelno for rec in ours] == [logging.WARNING], ours
                assert "unavailable" in ours[0].getMessage()
                assert not any(rec.exc_info for rec in caplog.records
                               if rec.name.startswith(("gateways", "aiohttp")))

                r = await api.call("GET", "/v1/operations")
                read = await r.json()
                assert r.status == 503 and r.headers["Retry-After"] == "5", read
                assert read["error"]["code"] == "unavailable"
                assert "nothing was changed" in read["error"]["message"]

                await asyncio.to_thread(controllable_postgres.start)
                deadline = time.monotonic() + 90
                while True:  # the pool reconnects on its own, after a backoff
                    r = await api.call("POST", "/v1/commands/operation.start", body,
                                       idem="outage-1")
                    if r.status != 503 or time.monotonic() > deadline:
                        break
                    assert int(r.headers["Retry-After"]) > 0
                    await asyncio.sleep(1)
                applied = await r.json()
                # An attempt answered 503 may still have been committed once the store came
                # back (the answer says so: "or ... was applied once"): a request that waited
                # past the API's store deadline goes on in its thread. The first success is
                # then that attempt's replay. Either way the command is applied once (below).
                assert r.status == 202, applied
                r = await api.call("POST", "/v1/commands/operation.start", body,
                                   idem="outage-1")
                again = await r.json()
                assert r.status == 202 and again["replayed"] is True, again
                assert again["result"] == applied["result"]
                started = [n for n in platform.app.recorder.select_notifications(
                    start=None, limit=1000) if n.topic.endswith("Accepted")]
                assert len(started) == 1, [n.topic for n in started]
            finally:
                await client.close()
                for runner in runners:
                    await asyncio.to_thread(runner.stop)

    try:
        asyncio.run(scenario())
    finally:
        platform.close()
