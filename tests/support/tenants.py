"""Two tenants on one platform, each with an ACL user, a key and a login: what the tests of the
one command decision (the admin API's and the NATS intake's) share.

Account acme (user alice) owns a deployed VM; account globex (user bob) owns nothing. No
worker runs, so the VM stays where its deploy left it: a command on it that passes access
control is then refused by the VM's own rules, never by access control.
"""

import itertools
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID

import msgspec
from support.sample import first_id, load_sample_with_ready_template

from gateways.decision import Catalog
from kernel.bootstrap import Platform, command_catalog, open_engine
from kernel.bootstrap.migrations import migrate_all
from kernel.cloud.vms import DeployVm
from kernel.contracts.access import (
    IDEMPOTENCY_KEY_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from kernel.settings import Settings
from services.acl.access import AclAccess
from services.acl.model import AccessDenial
from services.acl.service import AclService

USERS = {"alice": "acme", "bob": "globex"}
_nonce = itertools.count()


@dataclass
class Tenants:
    """The platform, its command catalog, the ACL and its access control, each user's key
    and login token, and acme's VM."""

    platform: Platform
    catalog: Catalog
    acl: AclService
    access: AclAccess
    keys: dict[str, tuple[str, str]]  # user -> (key id, secret)
    tokens: dict[str, str]  # user -> bearer token
    vm_id: UUID

    def head(self) -> int:
        """The platform log's head."""
        return int(self.platform.app.recorder.max_notification_id() or 0)

    def denials(self) -> list[tuple[str, str, str | None]]:
        """(principal, command, owner) of every AccessDenied event in the ACL's log."""
        notes = self.acl.app.recorder.select_notifications(
            start=1, limit=1_000_000, topics=(AccessDenial.AccessDenied.TOPIC,))
        events = [self.acl.app.mapper.to_domain_event(n) for n in notes]
        return [(e.principal, e.command, e.owner) for e in events]  # type: ignore[attr-defined]

    def signed(self, user: str, subject: str, body: bytes) -> dict[str, str]:
        """The headers of a request `user` signs with its key, under a fresh idempotency key
        (the ACL accepts a signature once)."""
        key_id, secret = self.keys[user]
        idem = f"t-{next(_nonce)}-{uuid.uuid4().hex[:8]}"
        ts = str(int(time.time()))
        return {IDEMPOTENCY_KEY_HEADER: idem, KEY_ID_HEADER: key_id, TIMESTAMP_HEADER: ts,
                SIGNATURE_HEADER: sign(secret, timestamp=ts, subject=subject,
                                       idempotency_key=idem, body=body)}

    def bearer(self, user: str) -> dict[str, str]:
        """The headers of a request `user` sends with its login token."""
        return {IDEMPOTENCY_KEY_HEADER: f"t-{next(_nonce)}-{uuid.uuid4().hex[:8]}",
                "Authorization": f"Bearer {self.tokens[user]}"}


@contextmanager
def two_tenants(settings: Settings) -> Iterator[Tenants]:
    """acme (alice) with a deployed VM and globex (bob), on a freshly migrated store."""
    migrate_all(settings)
    platform, engine, _feed = open_engine(settings)
    acl = AclService.open(settings, create_table=True)
    try:
        app = platform.app
        template = load_sample_with_ready_template(app, platform.commands)
        catalog = command_catalog(platform, engine)
        keys, tokens = {}, {}
        for user, account in USERS.items():
            acl.create_account(account, domain="ROOT")
            acl.create_user(user, account=account, role="user", password=f"{user}-password")
            key, secret = acl.create_key(user)
            keys[user] = (key.key_id, secret)
            tokens[user] = acl.login(user, f"{user}-password")
        deploy = DeployVm(name="acme-web", account="acme",
                          zone_id=first_id(app, "zone.Created"),
                          service_offering_id=first_id(app, "service_offering.Created"),
                          template_id=template.id)
        outcome = catalog["vm.deploy"][1](deploy, idempotency_key="setup", actor="setup")
        vm_id = UUID(msgspec.json.decode(outcome.result)["vm_id"])
        yield Tenants(platform, catalog, acl, AclAccess(acl), keys, tokens, vm_id)
    finally:
        acl.close()
        platform.close()
