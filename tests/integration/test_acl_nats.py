"""The ACL over NATS on a real stack: PostgreSQL (the platform's log and the ACL's), a real
nats-server, the kernel with real workers on libvirt's test driver, the command intake and the
ACL responder, all in this process.

A service's view: `AclClient` logs in, checks tokens and has a botocore-signed request
verified; the token that SigV4 check answers then sends commands through the intake as the
key's user, who may act on its own account's VM and not on another account's.
"""

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.auth
import nats
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from nats.aio.client import Client
from support.cloud import prepare, running_cloud, write_inventory

from aggregates.errors import ForbiddenError, UnauthenticatedError, ValidationError
from gateways.ownership import store_lookup
from gateways.stream.intake import COMMANDS_PREFIX, CommandIntake
from kernel.bootstrap import command_catalog, open_platform
from kernel.bootstrap.migrations import migrate_all
from kernel.contracts.access import IDEMPOTENCY_KEY_HEADER
from kernel.contracts.events import ACTOR, CORRELATION_ID
from kernel.event_feed import EventFeed
from kernel.settings import Settings
from services.acl.access import AclAccess
from services.acl.client import AclClient, AclUnavailableError
from services.acl.model import AccessDenial
from services.acl.responder import AclResponder
from services.acl.service import AclService
from services.acl.sigv4 import signed_request

REGION, SERVICE = "cloudkernel-1", "ec2"


def botocore_signed(key_id: str, secret: str) -> dict[str, str]:
    """A DescribeInstances request signed by botocore, rebuilt as the EC2 service would."""
    aws = AWSRequest(method="POST", url="http://127.0.0.1:8482/",
                     data=f"Action=DescribeInstances&Version=2016-11-15&N={uuid.uuid4()}",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    botocore.auth.SigV4Auth(Credentials(key_id, secret), SERVICE, REGION).add_auth(aws)
    wire = aws.prepare()
    headers = [("Host", "127.0.0.1:8482"), *wire.headers.items()]
    body = wire.body if isinstance(wire.body, bytes) else str(wire.body).encode()
    return signed_request("POST", "/", "", headers, body).verification()


def denials(acl: AclService) -> list[tuple[str, str, str | None]]:
    """(principal, command, owner) of every AccessDenied event in the ACL's log."""
    notes = acl.app.recorder.select_notifications(start=1, limit=1_000_000,
                                                  topics=(AccessDenial.AccessDenied.TOPIC,))
    events = [acl.app.mapper.to_domain_event(n) for n in notes]
    return [(e.principal, e.command, e.owner) for e in events]  # type: ignore[attr-defined]


async def command(nc: Client, tag: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    """A command sent with a bearer token, as a service sends it for a user."""
    msg = await nc.request(COMMANDS_PREFIX + tag, json.dumps(body).encode(), timeout=20,
                           headers={IDEMPOTENCY_KEY_HEADER: uuid.uuid4().hex,
                                    "Authorization": f"Bearer {token}"})
    return json.loads(msg.data)  # type: ignore[no-any-return]


def test_login_tokens_and_sigv4_over_nats_then_commands_as_that_user(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=4, memory_mib=8192) for i in range(2)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris)
    acl = AclService.open(settings)
    for account, user in (("acme", "alice"), ("globex", "bob")):
        acl.create_account(account, domain="ROOT")
        acl.create_user(user, account=account, role="user", password=f"{user}-password")
    key, secret = acl.create_key("alice")
    read_only, read_only_secret = acl.create_key("alice", read_only=True)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory)
            platform = await cloud.call(open_platform, settings)
            stop = asyncio.Event()
            responder = AclResponder(acl, [nats_url])
            intake = CommandIntake(command_catalog(platform, cloud.engine), AclAccess(acl),
                                   [nats_url], owner_lookup=store_lookup(platform.app.repository))
            tasks = [asyncio.create_task(responder.run(stop)),
                     asyncio.create_task(intake.run(stop))]
            await asyncio.wait_for(asyncio.gather(responder.ready.wait(), intake.ready.wait()),
                                   10)
            nc = await nats.connect(nats_url)
            client = AclClient(nc)
            try:
                # login and authenticate
                token, principal = await client.login("alice", "alice-password")
                assert (principal.actor, principal.account, principal.role, principal.domain) \
                    == ("alice", "acme", "user", "ROOT")
                assert await client.authenticate(token) == principal
                with pytest.raises(UnauthenticatedError, match="invalid credentials"):
                    await client.login("alice", "not-her-password")
                with pytest.raises(UnauthenticatedError, match="malformed bearer token"):
                    await client.authenticate("garbage")
                bob_token, _ = await client.login("bob", "bob-password")

                # SigV4, signed by botocore: a short-lived token of the key's user
                sigv4_token, signer = await client.verify_sigv4(**botocore_signed(key.key_id,
                                                                                  secret))
                assert (signer.actor, signer.account, signer.key_id) == \
                    ("alice", "acme", key.key_id)
                assert (await client.authenticate(sigv4_token)).actor == "alice"
                with pytest.raises(UnauthenticatedError, match="signature does not match"):
                    await client.verify_sigv4(**botocore_signed(key.key_id, "0" * 64))
                signed = botocore_signed(key.key_id, secret)
                await client.verify_sigv4(**signed)
                with pytest.raises(UnauthenticatedError, match="used before"):
                    await client.verify_sigv4(**signed)
                with pytest.raises(ForbiddenError, match="is read-only"):
                    await client.verify_sigv4(**botocore_signed(read_only.key_id,
                                                                read_only_secret))
                with pytest.raises(ValidationError, match="64 hex digits"):
                    await client.verify_sigv4(**{**signed, "signature": "nope"})

                # commands with the SigV4 token run as alice, on acme's resources only
                deploy = {"name": "web", "zone_id": str(ids.zone_id),
                          "service_offering_id": str(ids.offering_id),
                          "template_id": str(ids.template_id),
                          "network_ids": [str(ids.network_id)]}
                mine = await command(nc, "vm.deploy",
                                     {**deploy, "name": "acme-web", "account": "acme"},
                                     sigv4_token)
                assert mine["ok"] is True, mine
                theirs = await command(nc, "vm.deploy", {**deploy, "name": "globex-web",
                                                         "account": "globex"},
                                       bob_token)
                assert theirs["ok"] is True, theirs
                actors = {e.headers[ACTOR] for e in EventFeed(cloud.app).read(0, 100_000)
                          if e.headers.get(CORRELATION_ID) == mine["correlation_id"]}
                assert actors == {"alice"}
                for op in (mine, theirs):
                    done = await cloud.finished(op["result"]["operation_id"], 60)
                    assert done.state.value == "Succeeded", done.state
                # another account's resource is not found, as over HTTP, and audited
                for tag, body in (("vm.stop", {"vm_id": theirs["result"]["vm_id"]}),
                                  ("vm.deploy", {**deploy, "account": "globex"})):
                    denied = len(denials(acl))
                    refused = await command(nc, tag, body, sigv4_token)
                    assert refused["error"]["code"] == "not_found", refused
                    assert "no such resource among the accounts alice may see" in \
                        refused["error"]["message"]
                    assert denials(acl)[denied:] == [("alice", tag, "globex")]
                stopped = await command(nc, "vm.stop", {"vm_id": mine["result"]["vm_id"]},
                                        sigv4_token)
                assert stopped["ok"] is True, stopped
                unsigned = await command(nc, "vm.stop", {"vm_id": mine["result"]["vm_id"]},
                                         "ckt1.forged.token")
                assert unsigned["error"]["code"] == "unauthenticated"
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 30)
            # No responder: the client says so instead of waiting forever.
            try:
                with pytest.raises(AclUnavailableError, match="did not answer"):
                    await AclClient(nc, timeout=1).authenticate(token)
            finally:
                await nc.close()
                platform.close()

    try:
        asyncio.run(scenario())
    finally:
        acl.close()
