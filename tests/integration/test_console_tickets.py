"""Console tickets on a real stack (issue 19, part 1): PostgreSQL, nats-server, the kernel with
real workers on libvirt's test driver, the relay, the command intake deciding with the ACL
and the keyring, the admin API and the End User API.

Tickets are minted through the admin API, NATS and the End User API, and redeemed by the
console service's key over NATS: once; a replay, a late, a forged or an unknown one refused
(forged and unknown in the same words); after the VM stopped refused; of concurrent
redemptions exactly one wins. Refused redemptions move no log head but are in the ACL's
denial log, and no stored event holds a token or its secret.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import nats
from aiohttp.test_utils import TestClient, TestServer
from support.cloud import Cloud, prepare, running_cloud, write_inventory
from support.services import free_port, platform_edges

from aggregates.console_ticket import ALREADY_USED, EXPIRED, NOT_VALID
from gateways.access import Keyring, KeyringAccess, LayeredAccess, keys_path
from gateways.api.app import make_app
from gateways.api.context import ApiContext
from gateways.service_keys import issue_service_key
from gateways.stream.intake import COMMANDS_PREFIX
from kernel.bootstrap import command_catalog, open_platform
from kernel.bootstrap.migrations import migrate_all
from kernel.bootstrap.processes import projection_runners
from kernel.cloud.consoles import NOT_RUNNING, OpenConsole
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from kernel.contracts.console import ConsoleTicketGrant, make_token
from kernel.settings import Settings
from projections.catalog import MODELS
from services.acl.access import AclAccess
from services.acl.model import AccessDenial
from services.acl.service import AclService
from services.enduser import serve

CONSOLE_WEB = "https://console.test:8483/"


async def signed_command(url: str, tag: str, body: dict[str, Any], key_id: str,
                         secret: str, idem: str | None = None) -> dict[str, Any]:
    """A command over NATS signed with a keyring key (an admin's or a service's)."""
    subject, data = COMMANDS_PREFIX + tag, json.dumps(body).encode()
    idem = idem or uuid.uuid4().hex
    ts = str(int(time.time()))
    nc = await nats.connect(url)
    try:
        msg = await nc.request(subject, data, timeout=20, headers={
            IDEMPOTENCY_KEY_HEADER: idem, KEY_ID_HEADER: key_id, TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(secret, timestamp=ts, subject=subject,
                                   idempotency_key=idem, body=data)})
        answer: dict[str, Any] = json.loads(msg.data)
        return answer
    finally:
        await nc.close()


async def bearer_command(url: str, tag: str, body: dict[str, Any], token: str) -> Any:
    """A command sent to the intake with an ACL bearer token."""
    nc = await nats.connect(url)
    try:
        msg = await nc.request(COMMANDS_PREFIX + tag, json.dumps(body).encode(), timeout=20,
                               headers={IDEMPOTENCY_KEY_HEADER: uuid.uuid4().hex,
                                        "Authorization": f"Bearer {token}"})
        return json.loads(msg.data)
    finally:
        await nc.close()


@asynccontextmanager
async def admin_api(settings: Settings, cloud: Cloud,
                    access: LayeredAccess) -> AsyncIterator[TestClient]:
    """The admin API on loopback over the cloud's engine, with every read model followed."""
    platform = await cloud.call(open_platform, settings)
    try:
        with projection_runners(settings, list(MODELS)) as runners:
            for runner in runners:
                runner.start()
            context = ApiContext(command_catalog(platform, cloud.engine), access, cloud.app,
                                 {r.name: r for r in runners}, engine=cloud.engine,
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


async def api_call(client: TestClient, key_id: str, secret: str, method: str, path: str,
                   body: Any = None, idem: str = "") -> tuple[int, Any]:
    """A signed call of the admin API."""
    data = b"" if body is None else json.dumps(body).encode()
    ts = str(int(time.time()))
    headers = {KEY_ID_HEADER: key_id, TIMESTAMP_HEADER: ts,
               SIGNATURE_HEADER: sign(secret, timestamp=ts, subject=f"{method} {path}",
                                      idempotency_key=idem, body=data)}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if idem:
        headers[IDEMPOTENCY_KEY_HEADER] = idem
    r = await client.request(method, path, data=data, headers=headers)
    return r.status, await r.json()


def denials(acl: AclService) -> list[tuple[str, str, str]]:
    """(principal, command, reason) of every AccessDenied event of the ACL log."""
    out = []
    for note in acl.app.recorder.select_notifications(start=1, limit=100_000):
        if note.topic == AccessDenial.AccessDenied.TOPIC:
            e = acl.app.mapper.to_domain_event(note)
            out.append((e.principal, e.command, e.reason))  # type: ignore[attr-defined]
    return out


def test_console_tickets_minted_redeemed_once_and_refused_unheard(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=4, memory_mib=8192) for i in range(2)]
    port = free_port()
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data", enduser_port=port,
                        service_heartbeat_seconds=0.5)
    short = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                     data_dir=tmp_path / "data", console_ticket_seconds=1.0)
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris)
    acl = AclService.open(settings)
    for account, user in (("acme", "alice"), ("globex", "bob")):
        acl.create_account(account, domain="ROOT")
        acl.create_user(user, account=account, role="user", password=f"{user}-password")
    keyring = Keyring(keys_path(settings))
    admin = keyring.create(actor="ops", role="admin")
    console = issue_service_key(settings, "console")  # as `up` does before starting it
    tokens: list[str] = []

    async def as_admin(tag: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return await signed_command(nats_url, tag, body, admin.id, admin.secret, **kw)

    async def redeem(token: str, **extra: Any) -> dict[str, Any]:
        return await signed_command(nats_url, "console.redeem", {"token": token, **extra},
                                    console.key_id, console.secret)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory)

            async def head() -> int:
                return int(await cloud.call(cloud.app.recorder.max_notification_id) or 0)

            async with platform_edges(settings, cloud, acl), aiohttp.ClientSession() as http:
                # no console service registered yet: minting is refused, writing nothing
                deploy = {"name": "alice-web", "account": "acme", "zone_id": str(ids.zone_id),
                          "service_offering_id": str(ids.offering_id),
                          "template_id": str(ids.template_id),
                          "network_ids": [str(ids.network_id)]}
                accepted = await as_admin("vm.deploy", deploy)
                assert accepted["ok"], accepted
                vm_id = accepted["result"]["vm_id"]
                op = await cloud.finished(accepted["result"]["operation_id"], 60)
                assert op.state.value == "Succeeded"
                vm = await cloud.get(uuid.UUID(vm_id))
                host_uri = (await cloud.get(vm.host_id)).uri
                refused = await as_admin("vm.console", {"vm_id": vm_id})
                assert refused["error"]["message"] == "the console service is not available"

                registered = await signed_command(
                    nats_url, "service.register",
                    {"name": "console", "version": "1", "endpoints": {"web": CONSOLE_WEB}},
                    console.key_id, console.secret)
                assert registered["ok"], registered

                access = LayeredAccess(AclAccess(acl), KeyringAccess(keyring))
                async with admin_api(settings, cloud, access) as client:
                    async def api(method: str, path: str, body: Any = None,
                                  idem: str = "") -> tuple[int, Any]:
                        return await api_call(client, admin.id, admin.secret, method, path,
                                              body, idem)

                    # -- minted through the admin API: 201 with the grant; a retry the same
                    status, minted = await api("POST", f"/v1/vms/{vm_id}/console",
                                               {"kind": "graphics"}, idem="mint-1")
                    assert status == 201, minted
                    grant = minted["result"]
                    assert grant["url"] == (f"https://console.test:8483/graphics?token="
                                            f"{grant['token']}")
                    assert grant["vm_id"] == vm_id and grant["kind"] == "graphics"
                    assert datetime.fromisoformat(grant["expires_at"]) > datetime.now(UTC)
                    tokens.append(grant["token"])
                    status, again = await api("POST", f"/v1/vms/{vm_id}/console",
                                              {"kind": "graphics"}, idem="mint-1")
                    assert status == 201 and again["replayed"] is True, again
                    assert again["result"] == grant
                    status, bad = await api("POST", f"/v1/vms/{vm_id}/console",
                                            {"kind": "ssh"})
                    assert status == 400 and bad["error"]["field"] == "kind", bad
                    status, missing = await api("POST", f"/v1/vms/{uuid.uuid4()}/console")
                    assert status == 404, missing
                    status, doc = await api("GET", "/v1/openapi.json")
                    operation = doc["paths"]["/v1/vms/{id}/console"]["post"]
                    assert "201" in operation["responses"], operation

                    # -- minted over NATS
                    serial = await as_admin("vm.console", {"vm_id": vm_id, "kind": "serial"})
                    assert serial["ok"], serial
                    assert serial["result"]["url"].startswith(
                        "https://console.test:8483/serial?token=")
                    tokens.append(serial["result"]["token"])

                    # -- redeemed once by the console service
                    done = await redeem(grant["token"], origin="https://console.test:8483",
                                        remote="192.0.2.7")
                    assert done["ok"], done
                    assert done["result"] == {
                        "ticket_id": grant["ticket_id"], "vm_id": vm_id, "host_uri": host_uri,
                        "kind": "graphics", "user": "ops", "account": "acme",
                        "expires_at": grant["expires_at"]}
                    # a tenant may not redeem, even its own VM's link (forbidden, audited)
                    alice_token = acl.login("alice", "alice-password")
                    by_tenant = await bearer_command(nats_url, "console.redeem",
                                                     {"token": serial["result"]["token"]},
                                                     alice_token)
                    assert by_tenant["error"]["code"] == "forbidden", by_tenant

                    # -- refused: replayed, forged, unknown, expired; nothing written
                    short_platform = await cloud.call(open_platform, short)
                    try:
                        late = await cloud.call(
                            short_platform.commands.execute,
                            OpenConsole(vm_id=uuid.UUID(vm_id)), idempotency_key="short-1",
                            actor="ops")
                    finally:
                        short_platform.close()
                    late_token = late.decode(ConsoleTicketGrant).token
                    tokens.append(late_token)
                    await asyncio.sleep(1.2)
                    forged, _ = make_token(uuid.UUID(grant["ticket_id"]))
                    unknown, _ = make_token(uuid.uuid4())
                    before, audited = await head(), len(denials(acl))
                    replayed = await redeem(grant["token"])
                    assert replayed["error"]["message"] == ALREADY_USED, replayed
                    assert replayed["error"]["code"] == "invalid"
                    expired = await redeem(late_token)
                    assert expired["error"]["message"] == EXPIRED, expired
                    wrong, nobody = await redeem(forged), await redeem(unknown)
                    assert wrong["error"] == nobody["error"], (wrong, nobody)
                    assert wrong["error"]["message"] == NOT_VALID
                    assert await head() == before  # no refusal moved the log head
                    assert [(p, c, r) for p, c, r in denials(acl)[audited:]] == [
                        ("service:console", "console.redeem", ALREADY_USED),
                        ("service:console", "console.redeem", EXPIRED),
                        ("service:console", "console.redeem", NOT_VALID),
                        ("service:console", "console.redeem", NOT_VALID)]

                    # -- concurrent redemptions of one token: exactly one wins
                    contested = await as_admin("vm.console", {"vm_id": vm_id})
                    token = contested["result"]["token"]
                    tokens.append(token)
                    answers = await asyncio.gather(*(redeem(token) for _ in range(4)))
                    assert sum(a["ok"] for a in answers) == 1, answers
                    assert sorted(a["error"]["message"] for a in answers if not a["ok"]) == \
                        [ALREADY_USED] * 3, answers

                    # -- the End User API: the tenant's own VM, another's as unknown
                    await end_user(http, vm_id)

                    # -- the VM stopped after minting: refused; minting refused too
                    pending = await as_admin("vm.console", {"vm_id": vm_id})
                    tokens.append(pending["result"]["token"])
                    status, stopped = await api("POST", f"/v1/vms/{vm_id}/stop",
                                                {"force_after_seconds": 5})
                    assert status == 202, stopped
                    op = await cloud.finished(stopped["operation_id"], 60)
                    assert op.state.value == "Succeeded"
                    gone = await redeem(pending["result"]["token"])
                    assert gone["error"]["message"] == NOT_RUNNING, gone
                    status, refused = await api("POST", f"/v1/vms/{vm_id}/console")
                    assert status == 409 and "Running" in refused["error"]["message"], refused

            # -- no token and no secret in any stored event (platform and ACL logs)
            assert len(tokens) == 6
            for app in (cloud.app, acl.app):
                stored = [n.state for n in await cloud.call(
                    app.recorder.select_notifications, start=1, limit=100_000)]
                for t in tokens:
                    secret = t.rsplit(".", 1)[1].encode()
                    assert not any(secret in s for s in stored), "a token's secret is stored"
            topics = [n.topic for n in await cloud.call(
                cloud.app.recorder.select_notifications, start=1, limit=100_000)
                if n.topic.startswith("console_ticket.")]
            assert topics.count("console_ticket.Issued") == 6
            assert topics.count("console_ticket.Redeemed") == 2  # the first, and the race's

    async def end_user(http: aiohttp.ClientSession, vm_id: str) -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        service = asyncio.create_task(serve(settings, stop, ready))
        await asyncio.wait([service, asyncio.create_task(ready.wait())],
                           timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert ready.is_set(), service.exception() if service.done() else "not ready"
        base = f"http://127.0.0.1:{port}"
        try:
            tokens_of: dict[str, str] = {}
            for user in ("alice", "bob"):
                async with http.post(f"{base}/v1/login", json={
                        "username": user, "password": f"{user}-password"}) as r:
                    assert r.status == 200
                    tokens_of[user] = (await r.json())["token"]

            async def post(user: str, path: str, body: Any = None) -> tuple[int, Any]:
                async with http.post(base + path, json=body, headers={
                        "Authorization": f"Bearer {tokens_of[user]}"}) as r:
                    return r.status, await r.json()

            deadline = time.monotonic() + 30
            while True:  # the service's view follows the events a little behind
                status, own = await post("alice", f"/v1/vms/{vm_id}/console",
                                         {"kind": "screenshot"})
                if status != 404 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert status == 201, own
            assert own["vm_id"] == vm_id and own["kind"] == "screenshot"
            assert own["url"] == f"https://console.test:8483/screenshot?token={own['token']}"
            tokens.append(own["token"])
            stranger = str(uuid.uuid4())
            status, theirs = await post("bob", f"/v1/vms/{vm_id}/console")
            status_unknown, unknown = await post("bob", f"/v1/vms/{stranger}/console")
            assert status == status_unknown == 404, (theirs, unknown)
            assert json.dumps(theirs).replace(vm_id, "X") == \
                json.dumps(unknown).replace(stranger, "X")
            status, bad = await post("alice", f"/v1/vms/{vm_id}/console", {"kind": "ssh"})
            assert status == 400 and bad["error"]["field"] == "kind", bad
        finally:
            stop.set()
            await asyncio.wait_for(service, 30)

    try:
        asyncio.run(scenario())
    finally:
        acl.close()
