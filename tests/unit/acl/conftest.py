"""An ACL service on an in-memory store, with a small tree and a controllable clock."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kernel.store.testing import scratch_application
from services.acl.access import AclAccess
from services.acl.secrets import CredentialStore, MasterKey
from services.acl.service import AclService

NOW = 1_900_000_000.0


@dataclass
class Clock:
    """A clock the tests move."""

    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Acl:
    """The service, its access control and clock."""

    service: AclService
    access: AclAccess
    clock: Clock


@pytest.fixture
def acl(tmp_path: Path) -> Iterator[Acl]:
    """ROOT{ops: root}, ROOT/par{par_acct}, ROOT/par/mine{mine_acct: dadmin, alice},
    ROOT/par/mine/sub{sub_acct}, ROOT/par/sib{sib_acct}."""
    clock = Clock()
    service = AclService(scratch_application(), MasterKey(b"m" * 32),
                         CredentialStore(tmp_path / "creds.json"), clock=clock)
    service.create_account("ops", domain="ROOT")
    service.create_user("root", account="ops", role="root_admin", password="rootpass1")
    service.create_domain("par")
    service.create_domain("mine", parent="ROOT/par")
    service.create_domain("sub", parent="ROOT/par/mine")
    service.create_domain("sib", parent="ROOT/par")
    for name, domain in (("par_acct", "ROOT/par"), ("mine_acct", "ROOT/par/mine"),
                         ("sub_acct", "ROOT/par/mine/sub"), ("sib_acct", "ROOT/par/sib")):
        service.create_account(name, domain=domain)
    service.create_user("dadmin", account="mine_acct", role="domain_admin", password="dadmin123")
    service.create_user("alice", account="mine_acct", role="user", password="alicepass")
    yield Acl(service, AclAccess(service, clock=clock), clock)
    service.close()


def denials(acl: Acl) -> list[tuple[str, str, str | None]]:
    """(principal, command, owner) of every AccessDenied event in the ACL log, in order."""
    from services.acl.model import AccessDenial

    out = []
    for note in acl.service.app.recorder.select_notifications(start=1, limit=100000):
        if note.topic == AccessDenial.AccessDenied.TOPIC:
            event = acl.service.app.mapper.to_domain_event(note)
            out.append((event.principal, event.command, event.owner))  # type: ignore[attr-defined]
    return out
