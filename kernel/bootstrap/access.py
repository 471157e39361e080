"""Who decides access, wired: the platform's keyring and, in `up`, the ACL service behind the
`AccessControl` port (`kernel.contracts.access`), with the ACL's NATS answers and event relay."""

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from gateways.access import Keyring, KeyringAccess, LayeredAccess, keys_path
from gateways.stream.relay import EventRelay
from kernel.contracts.access import AccessControl
from kernel.event_feed import EventFeed
from kernel.settings import Settings
from kernel.store.application import KernelApplication
from services.acl.access import AclAccess
from services.acl.application import ACL_EVENTS_STREAM, ACL_SUBJECT_PREFIX
from services.acl.first_admin import ADMIN_USER, ensure_admin_user
from services.acl.responder import AclResponder
from services.acl.service import AclService


def admin_keyring(settings: Settings) -> Keyring:
    """The keyring; on the first start, with an admin key whose secret is printed once."""
    keyring = Keyring(keys_path(settings))
    now = datetime.now(UTC)
    if not any(k.role == "admin" and k.status(now) == "active" for k in keyring.entries()):
        key = keyring.create(actor="admin", role="admin")
        print(f"created an admin key for signed commands (shown once, kept in {keyring.path}):"
              f"\n  key id: {key.id}\n  secret: {key.secret}", flush=True)
    return keyring


@contextlib.contextmanager
def process_access(settings: Settings,
                   keyring: Keyring | None = None) -> Iterator[AccessControl]:
    """What the `intake` and `api` processes decide with, as `up` does: the ACL service's
    users, keys and tokens (its log followed at each decision, so what another process changed
    counts at once), and the keyring's own keys beside them."""
    acl = AclService.open(settings)
    try:
        yield LayeredAccess(AclAccess(acl),
                            KeyringAccess(keyring or Keyring(keys_path(settings))))
    finally:
        acl.close()


@dataclass
class PlatformAcl:
    """The ACL service as `up` runs it in its process: the access the edges ask, its first
    admin's password (None after the first start), its NATS answers and its event relay."""

    service: AclService
    access: AccessControl
    admin_password: str | None
    responder: AclResponder
    relay: EventRelay
    admin_user: str = ADMIN_USER

    def close(self) -> None:
        """Release the ACL's store."""
        self.service.close()


def open_platform_acl(settings: Settings, servers: Sequence[str]) -> PlatformAcl:
    """The ACL decides for its users' keys and tokens; the keyring's own keys (the admin key
    printed on the first start) keep working beside it."""
    acl = AclService.open(settings)
    access = LayeredAccess(AclAccess(acl), KeyringAccess(admin_keyring(settings)))
    return PlatformAcl(acl, access, ensure_admin_user(acl),
                       AclResponder(acl, servers),  # login, tokens and SigV4 for the services
                       acl_relay(acl.app, servers, replicas=settings.nats_replicas))


def acl_relay(app: KernelApplication, servers: Sequence[str],
              **kwargs: int | float) -> EventRelay:
    """An EventRelay that publishes the ACL log on the ACL's own stream (ACL_EVENTS) and
    subjects (cloudkernel.acl.events.>)."""
    return EventRelay(EventFeed(app, subject_prefix=ACL_SUBJECT_PREFIX), servers,
                      stream=ACL_EVENTS_STREAM, subject_prefix=ACL_SUBJECT_PREFIX,
                      **kwargs)  # type: ignore[arg-type]
