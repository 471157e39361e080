"""What the services' integration tests share: the platform's NATS edges a service talks to
(the event relay, the command intake with ACL users and keyring keys, the ACL responder)."""

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from support.cloud import Cloud

from gateways.access import Keyring, KeyringAccess, LayeredAccess, keys_path
from gateways.ownership import store_lookup
from gateways.service_keys import issue_service_key
from gateways.stream.intake import CommandIntake
from gateways.stream.relay import EventRelay
from kernel.bootstrap import command_catalog, open_platform
from kernel.event_feed import EventFeed
from kernel.settings import Settings
from services.acl.access import AclAccess
from services.acl.responder import AclResponder
from services.acl.service import AclService


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def platform_edges(settings: Settings, cloud: Cloud,
                         acl: AclService | None = None) -> AsyncIterator[None]:
    """The relay, the intake (ACL users and keyring keys) and the ACL responder, running
    until the block ends; the ACL service is opened here unless given. The services' keys are
    issued first, as `up` does before it starts them."""
    for name in ("enduser", "ec2", "console"):
        await cloud.call(issue_service_key, settings, name)
    platform = await cloud.call(open_platform, settings)
    own_acl = acl is None
    acl = acl if acl is not None else await cloud.call(AclService.open, settings)
    servers = list(settings.nats_urls)
    access = LayeredAccess(AclAccess(acl), KeyringAccess(Keyring(keys_path(settings))))
    intake = CommandIntake(command_catalog(platform, cloud.engine), access, servers,
                           owner_lookup=store_lookup(platform.app.repository))
    responder = AclResponder(acl, servers)
    relay = EventRelay(EventFeed(cloud.app), servers)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(t.run(stop)) for t in (intake, responder, relay)]
    try:
        await asyncio.wait_for(asyncio.gather(intake.ready.wait(), responder.ready.wait()), 20)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        if own_acl:
            acl.close()
        platform.close()
