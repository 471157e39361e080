"""The End User API service on a real stack: PostgreSQL, nats-server, the kernel with real
workers on libvirt's test driver, the event relay, the command intake (deciding with the ACL)
and the ACL responder, all in this process; the service itself runs as it does in
production (`serve`), talking to the platform over NATS only, on a loopback port.

Two tenants: alice (account acme) deploys, lists, stops, starts and destroys her VM and
creates, attaches, detaches and deletes a volume; bob (account globex) sees none of it and
cannot act on it. Disabled by the admin, the service answers 503 while a deploy through the
intake still runs to the end.
"""

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
from fixtures import PostgresServer
from support.cloud import ROOT, Cloud, Prepared, prepare, running_cloud, write_inventory
from support.services import free_port, platform_edges

from gateways.access import ApiKey, Keyring, KeyringAccess, LayeredAccess, keys_path
from gateways.service_keys import issue_service_key
from gateways.stream.intake import COMMANDS_PREFIX, CommandIntake
from kernel.bootstrap import command_catalog, open_engine
from kernel.bootstrap.migrations import migrate_all
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from kernel.settings import Settings
from services.acl.access import AclAccess
from services.acl.responder import AclResponder
from services.acl.service import AclService
from services.enduser import SERVICE_NAME, serve


@dataclass
class Tenant:
    """An HTTP client of the End User API, logged in as one user."""

    http: aiohttp.ClientSession
    base: str
    token: str = ""

    async def call(self, method: str, path: str, body: Any = None, *,
                   key: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        if key is not None:
            headers[IDEMPOTENCY_KEY_HEADER] = key
        data = None if body is None else json.dumps(body)
        async with self.http.request(method, self.base + path, data=data,
                                     headers=headers) as r:
            return r.status, await r.json()

    async def login(self, username: str, password: str) -> tuple[int, Any]:
        async with self.http.post(self.base + "/v1/login",
                                  json={"username": username, "password": password}) as r:
            answer = await r.json()
            if r.status == 200:
                self.token = answer["token"]
            return r.status, answer

    async def finished(self, accepted: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """Poll the operation until it ended."""
        deadline = time.monotonic() + timeout
        while True:
            status, op = await self.call("GET", accepted["operation_url"])
            if status == 200 and op["finished"]:
                return op  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, op
            await asyncio.sleep(0.1)

    async def until(self, path: str, check: Callable[[Any], bool],
                    timeout: float = 30) -> Any:
        """GET `path` until `check(answer)`; the view follows the events a little behind."""
        deadline = time.monotonic() + timeout
        while True:
            status, answer = await self.call("GET", path)
            if status == 200 and check(answer):
                return answer
            assert time.monotonic() < deadline, (status, answer)
            await asyncio.sleep(0.1)


async def bearer_command(url: str, tag: str, body: dict[str, Any], token: str) -> Any:
    """A command sent straight to the intake (not through the service)."""
    nc = await nats.connect(url)
    try:
        msg = await nc.request(COMMANDS_PREFIX + tag, json.dumps(body).encode(), timeout=20,
                               headers={IDEMPOTENCY_KEY_HEADER: uuid.uuid4().hex,
                                        "Authorization": f"Bearer {token}"})
        return json.loads(msg.data)
    finally:
        await nc.close()


def _in_state(state: str) -> Callable[[Any], bool]:
    return lambda answer: bool(answer["state"] == state)


async def tenant_story(alice: Tenant, bob: Tenant, ids: Prepared, cloud: Cloud) -> None:
    """Alice's VM and volume lifecycle, with bob refused at every step."""
    catalog = await alice.until("/v1/catalog", lambda c: bool(c["templates"]))
    assert [t["id"] for t in catalog["templates"]] == [str(ids.template_id)]
    deploy = {"name": "alice-web", "zone_id": str(ids.zone_id),
              "offering_id": str(ids.offering_id), "template_id": str(ids.template_id),
              "network_ids": [str(ids.network_id)]}
    status, error = await alice.call("POST", "/v1/vms", deploy)
    assert status == 400 and error["error"]["field"] == "Idempotency-Key"
    status, accepted = await alice.call("POST", "/v1/vms", deploy, key="deploy-1")
    assert status == 202, accepted
    vm_id = accepted["vm_id"]
    status, again = await alice.call("POST", "/v1/vms", deploy, key="deploy-1")
    assert status == 202 and again["replayed"] is True and again["vm_id"] == vm_id
    # Read-your-writes: the answer came once the service's view had the VM.
    status, page = await alice.call("GET", "/v1/vms")
    assert status == 200 and [v["id"] for v in page["items"]] == [vm_id]
    assert (await alice.finished(accepted))["status"] == "Succeeded"
    vm = await alice.until(f"/v1/vms/{vm_id}", lambda v: v["state"] == "Running")
    assert vm["account"] == "acme" and vm["root_volume_id"]
    assert (await cloud.get(uuid.UUID(vm_id))).state.value == "Running"

    # bob sees nothing of alice's and can do nothing to it: 404, ids do not leak
    assert (await bob.call("GET", "/v1/vms")) == (200, {"items": []})
    for method, path, body in (
            ("GET", f"/v1/vms/{vm_id}", None), ("POST", f"/v1/vms/{vm_id}/stop", None),
            ("POST", f"/v1/vms/{vm_id}/destroy", None),
            ("GET", accepted["operation_url"], None),
            ("POST", "/v1/volumes", {"name": "v", "zone_id": str(ids.zone_id),
                                     "size_bytes": 1 << 30, "vm_id": vm_id})):
        status, error = await bob.call(method, path, body, key=uuid.uuid4().hex)
        assert status == 404 and error["error"]["code"] == "not_found", (path, error)

    for action, state in (("stop", "Stopped"), ("start", "Running")):
        status, accepted = await alice.call("POST", f"/v1/vms/{vm_id}/{action}")
        assert status == 202, accepted
        assert (await alice.finished(accepted))["status"] == "Succeeded"
        await alice.until(f"/v1/vms/{vm_id}", _in_state(state))
        assert (await cloud.get(uuid.UUID(vm_id))).state.value == state

    # a data volume: create, attach, detach, delete
    status, made = await alice.call("POST", "/v1/volumes", {
        "name": "alice-data", "zone_id": str(ids.zone_id), "size_bytes": 1 << 30},
        key="volume-1")
    assert status == 202, made
    volume_id = made["volume_id"]
    assert (await alice.finished(made))["status"] == "Succeeded"
    await alice.until(f"/v1/volumes/{volume_id}", lambda v: v["state"] == "Ready")
    assert (await bob.call("GET", "/v1/volumes")) == (200, {"items": []})
    status, error = await bob.call("POST", f"/v1/volumes/{volume_id}/detach")
    assert status == 404, error
    status, attached = await alice.call("POST", f"/v1/volumes/{volume_id}/attach",
                                        {"vm_id": vm_id})
    assert status == 202, attached
    assert (await alice.finished(attached))["status"] == "Succeeded"
    await alice.until(f"/v1/volumes/{volume_id}", lambda v: v["vm_id"] == vm_id)
    vm = await alice.until(f"/v1/vms/{vm_id}", lambda v: len(v["volumes"]) == 2)
    assert (await cloud.get(uuid.UUID(volume_id))).vm_id == uuid.UUID(vm_id)
    status, detached = await alice.call("POST", f"/v1/volumes/{volume_id}/detach")
    assert status == 202 and (await alice.finished(detached))["status"] == "Succeeded"
    await alice.until(f"/v1/volumes/{volume_id}", lambda v: v["vm_id"] is None)
    status, deleted = await alice.call("DELETE", f"/v1/volumes/{volume_id}")
    assert status == 202, deleted
    if deleted.get("operation_id"):
        assert (await alice.finished(deleted))["status"] == "Succeeded"

    status, destroyed = await alice.call("POST", f"/v1/vms/{vm_id}/destroy")
    assert status == 202 and (await alice.finished(destroyed))["status"] == "Succeeded"
    await alice.until("/v1/vms", lambda p: p["items"] == [])
    assert (await cloud.get(uuid.UUID(vm_id))).state.value in ("Destroyed", "Expunged")


async def admin_command(url: str, tag: str, body: dict[str, Any], key: ApiKey) -> Any:
    """A command of the platform's admin, signed with a keyring key, over NATS."""
    subject, data, idem = COMMANDS_PREFIX + tag, json.dumps(body).encode(), uuid.uuid4().hex
    ts = str(int(time.time()))
    nc = await nats.connect(url)
    try:
        msg = await nc.request(subject, data, timeout=20, headers={
            IDEMPOTENCY_KEY_HEADER: idem, KEY_ID_HEADER: key.id, TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(key.secret, timestamp=ts, subject=subject,
                                   idempotency_key=idem, body=data)})
        return json.loads(msg.data)
    finally:
        await nc.close()


def test_two_tenants_through_the_end_user_api(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=4, memory_mib=8192) for i in range(2)]
    port = free_port()
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data", enduser_port=port,
                        service_heartbeat_seconds=0.5)
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris)
    acl = AclService.open(settings)
    for account, user in (("acme", "alice"), ("globex", "bob")):
        acl.create_account(account, domain="ROOT")
        acl.create_user(user, account=account, role="user", password=f"{user}-password")
    admin = Keyring(keys_path(settings)).create(actor="ops", role="admin")

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory)
            async with platform_edges(settings, cloud, acl), aiohttp.ClientSession() as http:
                stop, ready = asyncio.Event(), asyncio.Event()
                service = asyncio.create_task(serve(settings, stop, ready))
                await asyncio.wait([service, asyncio.create_task(ready.wait())],
                                   timeout=30, return_when=asyncio.FIRST_COMPLETED)
                assert ready.is_set(), service.exception() if service.done() else "not ready"
                base = f"http://127.0.0.1:{port}"
                alice, bob = Tenant(http, base), Tenant(http, base)
                try:
                    status, refused = await alice.login("alice", "wrong-password")
                    assert status == 401 and refused["error"]["code"] == "unauthenticated"
                    assert (await alice.login("alice", "alice-password"))[0] == 200
                    assert (await bob.login("bob", "bob-password"))[0] == 200
                    status, error = await Tenant(http, base, "forged").call("GET", "/v1/vms")
                    assert status == 401, error
                    await tenant_story(alice, bob, ids, cloud)

                    # Disabled by the admin: 503 naming the service; orchestration goes on.
                    done = await admin_command(nats_url, "service.disable",
                                               {"name": SERVICE_NAME, "reason": "upgrade"},
                                               admin)
                    assert done["ok"] is True, done
                    deadline = time.monotonic() + 15
                    while (status := (await alice.call("GET", "/v1/vms"))[0]) != 503:
                        assert time.monotonic() < deadline, status
                        await asyncio.sleep(0.1)
                    status, error = await bob.call("GET", "/v1/vms")
                    assert status == 503 and error["error"]["code"] == "service_disabled"
                    assert "enduser service is disabled" in error["error"]["message"]
                    deploy = {"name": "bob-web", "account": "globex",
                              "zone_id": str(ids.zone_id),
                              "service_offering_id": str(ids.offering_id),
                              "template_id": str(ids.template_id),
                              "network_ids": [str(ids.network_id)]}
                    accepted = await bearer_command(nats_url, "vm.deploy", deploy, bob.token)
                    assert accepted["ok"] is True, accepted
                    operation = await cloud.finished(accepted["result"]["operation_id"], 60)
                    assert operation.state.value == "Succeeded"

                    # Enabled again, it serves bob's new VM, which it followed meanwhile.
                    done = await admin_command(nats_url, "service.enable",
                                               {"name": SERVICE_NAME}, admin)
                    assert done["ok"] is True, done
                    page = await bob.until("/v1/vms", lambda p: [v["state"] for v in
                                                                 p["items"]] == ["Running"])
                    assert page["items"][0]["id"] == accepted["result"]["vm_id"]
                    assert (await alice.call("GET", "/v1/vms")) == (200, {"items": []})
                finally:
                    stop.set()
                    await asyncio.wait_for(service, 30)

    try:
        asyncio.run(scenario())
    finally:
        acl.close()


def test_the_service_process_serves_until_sigterm(tmp_path: Path, pg_dsn: str,
                                                  nats_url: str) -> None:
    data = tmp_path / "data"
    port = free_port()
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=data)
    migrate_all(settings)
    acl = AclService.open(settings)
    acl.create_account("acme", domain="ROOT")
    acl.create_user("alice", account="acme", role="user", password="alice-password")
    platform, engine, _feed = open_engine(settings)
    issue_service_key(settings, "enduser")  # as `up` does before it starts the service
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLOUDKERNEL_NATS_URLS": nats_url,
           "CLOUDKERNEL_DATA_DIR": str(data), "CLOUDKERNEL_ENDUSER_PORT": str(port)}
    env.pop("CLOUDKERNEL_CONFIG", None)

    async def scenario() -> None:
        servers = [nats_url]
        access = LayeredAccess(AclAccess(acl), KeyringAccess(Keyring(keys_path(settings))))
        intake = CommandIntake(command_catalog(platform, engine), access, servers)
        responder = AclResponder(acl, servers)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(intake.run(stop)), asyncio.create_task(responder.run(stop))]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.enduser", env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            assert proc.stdout is not None
            seen: list[str] = []
            while not any("enduser serving" in line for line in seen):
                line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
                assert line, "".join(seen)
                seen.append(line)
            async with aiohttp.ClientSession() as http:
                tenant = Tenant(http, f"http://127.0.0.1:{port}")
                assert (await tenant.login("alice", "alice-password"))[0] == 200
                assert await tenant.call("GET", "/v1/vms") == (200, {"items": []})
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, "".join(seen) + out.decode()
            assert "enduser stopped" in out.decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)

    try:
        asyncio.run(scenario())
    finally:
        platform.close()
        acl.close()


def test_a_postgresql_outage_answers_503_with_retry_after_and_a_retry_applies_once(
        tmp_path: Path, controllable_postgres: PostgresServer, pg_dsn: str, nats_url: str,
        libvirt_uri: str) -> None:
    """PostgreSQL stopped under the platform: a tenant's change answers 503 (the intake's
    `unavailable`, or the ACL's) with Retry-After; once it is back, the same request with
    the same Idempotency-Key is applied once."""
    port = free_port()
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data", enduser_port=port,
                        service_heartbeat_seconds=0.5, postgres_connect_timeout=1)
    migrate_all(settings)
    inventory = write_inventory(tmp_path, [libvirt_uri])
    acl = AclService.open(settings)
    acl.create_account("acme", domain="ROOT")
    acl.create_user("alice", account="acme", role="user", password="alice-password")

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory, network=False)
            async with platform_edges(settings, cloud, acl), aiohttp.ClientSession() as http:
                stop, ready = asyncio.Event(), asyncio.Event()
                service = asyncio.create_task(serve(settings, stop, ready))
                await asyncio.wait([service, asyncio.create_task(ready.wait())],
                                   timeout=30, return_when=asyncio.FIRST_COMPLETED)
                assert ready.is_set(), service.exception() if service.done() else "not ready"
                alice = Tenant(http, f"http://127.0.0.1:{port}")
                try:
                    assert (await alice.login("alice", "alice-password"))[0] == 200
                    await alice.until("/v1/catalog", lambda c: bool(c["zones"]))
                    volume = {"name": "outage-data", "zone_id": str(ids.zone_id),
                              "size_bytes": 1 << 30}
                    await asyncio.to_thread(controllable_postgres.stop)

                    async def create() -> tuple[int, Any, str | None]:
                        async with http.post(
                                f"{alice.base}/v1/volumes", json=volume,
                                headers={"Authorization": f"Bearer {alice.token}",
                                         IDEMPOTENCY_KEY_HEADER: "outage-1"}) as r:
                            return r.status, await r.json(), r.headers.get("Retry-After")

                    status, refused, retry_after = await create()
                    assert status == 503, refused
                    assert refused["error"]["code"] in ("unavailable", "acl_unavailable")
                    assert retry_after is not None and int(retry_after) > 0

                    await asyncio.to_thread(controllable_postgres.start)
                    deadline = time.monotonic() + 90
                    while status == 503 and time.monotonic() < deadline:
                        await asyncio.sleep(1)
                        status, made, retry_after = await create()
                        assert status in (202, 503), made
                    assert status == 202 and made["replayed"] is False, made
                    status, again, _ = await create()
                    assert status == 202 and again["replayed"] is True, again
                    assert again["volume_id"] == made["volume_id"]
                    created = [n for n in cloud.app.recorder.select_notifications(
                        start=None, limit=10_000) if n.topic == "volume.Allocated"]
                    assert [str(n.originator_id) for n in created] == [made["volume_id"]]
                finally:
                    stop.set()
                    await asyncio.wait_for(service, 30)

    try:
        asyncio.run(scenario())
    finally:
        acl.close()
