"""Public address pools on a real stack (issue 20, part 1): PostgreSQL, nats-server, the
command intake deciding with the ACL and the keyring, and the admin API following every read
model on PostgreSQL.

An inventory with public ranges loads twice and adds nothing the second time; concurrent
allocations, over NATS and through the API, never get the same address; a tenant allocates
and releases its own, and another tenant's allocation reads as missing; `publicrange.create`
is a root admin's; the account's `max_public_addresses` refuses the allocation past it with a
403 naming the limit. At the end: every refusal left the log head where it was, every held
address has exactly one live allocation and the reverse, the read models equal the pools,
and no projection lags and every read model equals a replay (PROOF.md 5).
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
from aiohttp.test_utils import TestClient, TestServer
from support.invariants import platform_findings, read_model_findings
from support.services import platform_edges

from aggregates.public_address_pool import PublicAddressPool
from aggregates.zone import Zone
from gateways.access import Keyring, KeyringAccess, LayeredAccess, keys_path
from gateways.api.app import make_app
from gateways.api.context import ApiContext
from gateways.stream.intake import COMMANDS_PREFIX
from kernel.bootstrap import command_catalog, open_engine
from kernel.bootstrap.migrations import migrate_all
from kernel.bootstrap.processes import projection_runners
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings
from projections.catalog import MODELS
from services.acl.access import AclAccess
from services.acl.service import AclService

INVENTORY = """
[[zones]]
name = "edge-1"

[[public_ranges]]
name = "doc-3"
zone = "edge-1"
cidr = "203.0.113.0/24"
gateway = "203.0.113.1"
first = "203.0.113.10"
last = "203.0.113.40"
"""


class Light:
    """The platform and its engine without kernel loops or workers: these commands start
    no operation, so nothing needs a host."""

    def __init__(self, settings: Settings) -> None:
        self.platform, self.engine, _feed = open_engine(settings)
        self.app = self.platform.app

    async def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kw)

    def head(self) -> int:
        return int(self.app.recorder.max_notification_id() or 0)


async def nats_command(url: str, tag: str, body: dict[str, Any], *, key: Any = None,
                       token: str | None = None) -> dict[str, Any]:
    """A command sent to the intake, signed with a keyring key or with a bearer token."""
    subject, data, idem = COMMANDS_PREFIX + tag, json.dumps(body).encode(), uuid.uuid4().hex
    headers = {IDEMPOTENCY_KEY_HEADER: idem}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    else:
        ts = str(int(time.time()))
        headers.update({KEY_ID_HEADER: key.id, TIMESTAMP_HEADER: ts,
                        SIGNATURE_HEADER: sign(key.secret, timestamp=ts, subject=subject,
                                               idempotency_key=idem, body=data)})
    nc = await nats.connect(url)
    try:
        msg = await nc.request(subject, data, timeout=30, headers=headers)
        answer: dict[str, Any] = json.loads(msg.data)
        return answer
    finally:
        await nc.close()


@asynccontextmanager
async def admin_api(settings: Settings, cloud: Light,
                    access: LayeredAccess) -> AsyncIterator[TestClient]:
    """The admin API on loopback, every read model followed on PostgreSQL."""
    with projection_runners(settings, list(MODELS)) as runners:
        for runner in runners:
            runner.start()
        context = ApiContext(command_catalog(cloud.platform, cloud.engine), access, cloud.app,
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


async def api_call(client: TestClient, key: Any, method: str, path: str,
                   body: Any = None) -> tuple[int, Any]:
    """A signed call of the admin API."""
    data = b"" if body is None else json.dumps(body).encode()
    ts = str(int(time.time()))
    headers = {KEY_ID_HEADER: key.id, TIMESTAMP_HEADER: ts,
               SIGNATURE_HEADER: sign(key.secret, timestamp=ts, subject=f"{method} {path}",
                                      idempotency_key="", body=data)}
    if body is not None:
        headers["Content-Type"] = "application/json"
    r = await client.request(method, path, data=data, headers=headers)
    return r.status, await r.json()


def test_public_addresses_on_postgres_and_nats(tmp_path: Path, pg_dsn: str,
                                               nats_url: str) -> None:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    acl = AclService.open(settings)
    for account, user in (("acme", "alice"), ("globex", "bob")):
        acl.create_account(account, domain="ROOT")
        acl.create_user(user, account=account, role="user", password=f"{user}-password")
    acl.set_limits("account", "acme", {"max_public_addresses": 3})
    keyring = Keyring(keys_path(settings))
    admin = keyring.create(actor="ops", role="admin")
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(INVENTORY)
    zone_id = Zone.create_id("edge-1")

    async def scenario() -> None:
        cloud = await asyncio.to_thread(Light, settings)
        try:
            # -- the inventory: loaded, then again (a replay), then from another file
            _, loaded = await cloud.call(load_inventory_file, cloud.platform.commands,
                                         inventory)
            assert loaded.registered["public_ranges"] == ["doc-3"], loaded
            head = cloud.head()
            again, reloaded = await cloud.call(load_inventory_file, cloud.platform.commands,
                                               inventory)
            assert again.replayed and reloaded == loaded
            copy = tmp_path / "copy.toml"
            copy.write_text(INVENTORY)
            _, same = await cloud.call(load_inventory_file, cloud.platform.commands, copy)
            assert same.registered["public_ranges"] == [] and \
                same.unchanged["public_ranges"] == ["doc-3"]
            assert cloud.head() == head
            pool = await cloud.call(cloud.app.repository.get,
                                    PublicAddressPool.create_id(zone_id))
            assert [r.name for r in pool.ranges] == ["doc-3"] and pool.size == 31

            alice = await asyncio.to_thread(acl.login, "alice", "alice-password")
            bob = await asyncio.to_thread(acl.login, "bob", "bob-password")
            access = LayeredAccess(AclAccess(acl), KeyringAccess(keyring))
            async with platform_edges(settings, cloud, acl):  # type: ignore[arg-type]
                zone = str(zone_id)
                # -- two tenants' allocations at once over NATS: different addresses
                mine, theirs = await asyncio.gather(
                    nats_command(nats_url, "address.allocate",
                                 {"zone_id": zone, "account": "acme", "purpose": "web"},
                                 token=alice),
                    nats_command(nats_url, "address.allocate",
                                 {"zone_id": zone, "account": "globex"}, token=bob))
                assert mine["ok"] and theirs["ok"], (mine, theirs)
                assert mine["result"]["address"] != theirs["result"]["address"]
                # -- twelve at once from the admin: they race on the pool's version, the
                # losers run again, and every one gets its own address
                burst = await asyncio.gather(*(
                    nats_command(nats_url, "address.allocate",
                                 {"zone_id": zone, "account": "globex"}, key=admin)
                    for _ in range(12)))
                assert all(b["ok"] for b in burst), burst
                won = {b["result"]["address"] for b in burst}
                assert len(won) == 12 and not won & {mine["result"]["address"],
                                                     theirs["result"]["address"]}

                # -- a tenant cannot release another's, nor add a range; nothing written
                head = cloud.head()
                stolen = await nats_command(nats_url, "address.release",
                                            {"address_id": mine["result"]["address_id"]},
                                            token=bob)
                assert stolen["error"]["code"] == "not_found", stolen
                ranged = await nats_command(
                    nats_url, "publicrange.create",
                    {"zone_id": zone, "name": "mine", "cidr": "192.0.2.0/24",
                     "gateway": "192.0.2.1", "first": "192.0.2.10", "last": "192.0.2.20"},
                    token=bob)
                assert ranged["error"]["code"] == "forbidden", ranged
                assert cloud.head() == head
                released = await nats_command(nats_url, "address.release",
                                              {"address_id": theirs["result"]["address_id"]},
                                              token=bob)
                assert released["ok"] and released["result"]["state"] == "Released"
                twice = await nats_command(nats_url, "address.release",
                                           {"address_id": theirs["result"]["address_id"]},
                                           token=bob)
                assert twice["error"]["reason"] == "domain_rule", twice
                assert "already released" in twice["error"]["message"]

                async with admin_api(settings, cloud, access) as client:
                    # -- the limit: acme holds one; two more pass, the fourth is refused
                    positions = []
                    for _ in range(2):
                        status, out = await api_call(client, admin, "POST", "/v1/addresses",
                                                     {"zone_id": zone, "account": "acme"})
                        assert status == 200, out
                        positions.append(out["position"])
                        # the limit counts the read model: let it see this allocation
                        status, rows = await api_call(
                            client, admin, "GET",
                            f"/v1/addresses?account=acme&wait_for={out['position']}")
                        assert status == 200, rows
                    assert len(rows["items"]) == 3, rows
                    head = cloud.head()
                    status, refused = await api_call(client, admin, "POST", "/v1/addresses",
                                                     {"zone_id": zone, "account": "acme"})
                    assert status == 403, refused
                    assert "max_public_addresses = 3" in refused["error"]["message"], refused
                    assert cloud.head() == head
                    # -- a root admin adds a range through the API; the pool shows it
                    status, added = await api_call(
                        client, admin, "POST", f"/v1/zones/{zone}/public_ranges",
                        {"name": "doc-1", "cidr": "192.0.2.0/24", "gateway": "192.0.2.1",
                         "first": "192.0.2.100", "last": "192.0.2.109"})
                    assert status == 200 and added["result"]["pool_size"] == 41, added
                    status, pools = await api_call(
                        client, admin, "GET",
                        f"/v1/address_pools?zone_id={zone}&wait_for={added['position']}")
                    assert status == 200, pools
                    (row,) = pools["items"]
                    live: PublicAddressPool = await cloud.call(
                        cloud.app.repository.get, PublicAddressPool.create_id(zone_id))
                    assert (row["address_count"], row["allocated_count"], row["free_count"]) \
                        == (live.size, live.allocated_count, live.free_count)
                    assert [r["name"] for r in row["ranges"]] == ["doc-3", "doc-1"]
                    status, doc = await api_call(client, admin, "GET", "/v1/openapi.json")
                    assert "post" in doc["paths"]["/v1/addresses"]
                    assert "get" in doc["paths"]["/v1/addresses"]
            assert not await cloud.call(platform_findings, cloud.app)  # PROOF.md 1, 2
        finally:
            await asyncio.to_thread(cloud.platform.close)

    try:
        asyncio.run(scenario())
    finally:
        acl.close()
    # the admin API's runners stopped with it; what the log got after their last pass (a
    # host's power report, say) is projected now, as a restarted runner would
    with projection_runners(settings, list(MODELS)) as runners:
        for runner in runners:
            runner.run_once()
    assert not read_model_findings(settings)
