"""Public addresses under the ACL, through the gateways' one command decision (the NATS
intake's and the admin API's): a tenant allocates and releases its own account's addresses,
another tenant's allocation reads as missing, `publicrange.create` is a root admin's, and
`max_public_addresses` refuses an allocation past it, naming the limit, writing nothing."""

import json
from typing import Any
from uuid import UUID, uuid4

import pytest

from aggregates.errors import ForbiddenError, NotFoundError
from aggregates.public_address import AddressState, PublicAddress
from aggregates.zone import Zone
from gateways.decision import CommandDecision
from gateways.ownership import store_lookup
from gateways.quotas import quota_check
from kernel.cloud.addresses import ADDRESS_HANDLERS, CreatePublicRange
from kernel.commands import CommandService
from kernel.contracts.access import Principal
from kernel.store.testing import scratch_application
from tests.unit.acl.conftest import Acl, denials
from tests.unit.acl.test_access import login


class AddressRows:
    """The `addresses` read model as the quota check reads it, straight from the store."""

    def __init__(self, app: Any) -> None:
        self.app, self.ids = app, list[UUID]()

    def all_rows(self, account: str) -> list[dict[str, Any]]:
        found = [self.app.repository.get(i) for i in self.ids]
        return [{"state": a.state.value} for a in found if a.account == account]


@pytest.fixture
def platform(acl: Acl) -> Any:
    app = scratch_application()
    zone = Zone.create(name="z1")
    app.save(zone)
    service = CommandService(app, ADDRESS_HANDLERS)
    service.execute(CreatePublicRange(zone_id=zone.id, name="r", cidr="203.0.113.0/24",
                                      gateway="203.0.113.1", first="203.0.113.10",
                                      last="203.0.113.20"), idempotency_key="range")
    rows = AddressRows(app)
    catalog = {str(t.__struct_config__.tag): (t, service.execute)  # type: ignore[attr-defined]
               for t in ADDRESS_HANDLERS}
    decision = CommandDecision(catalog, acl.access,  # type: ignore[arg-type]
                               owner_lookup=store_lookup(app.repository),
                               quota=quota_check(acl.access, app, {"addresses": rows}))

    def send(who: Principal, tag: str, **body: Any) -> Any:
        data = json.dumps(body, default=str).encode()
        decided = decision.decide(who, tag, data, uuid4().hex)
        result = json.loads(bytes(decided.run().result))
        if tag == "address.allocate":
            rows.ids.append(UUID(result["address_id"]))
        return result

    send.app, send.zone_id = app, zone.id  # type: ignore[attr-defined]
    return send


def test_tenants_allocate_and_release_their_own_only(acl: Acl, platform: Any) -> None:
    alice, dadmin, root = login(acl, "alice"), login(acl, "dadmin"), login(acl, "root")
    zone = str(platform.zone_id)
    mine = platform(alice, "address.allocate", zone_id=zone, account="mine_acct",
                    purpose="web")
    assert mine["address"] == "203.0.113.10" and mine["account"] == "mine_acct"
    theirs = platform(root, "address.allocate", zone_id=zone, account="sib_acct")
    with pytest.raises(NotFoundError, match="no such resource"):  # as for any account's
        platform(alice, "address.allocate", zone_id=zone, account="sib_acct")
    head = platform.app.recorder.max_notification_id()
    # another tenant's allocation and a missing one read the same
    with pytest.raises(NotFoundError, match="no such resource"):
        platform(alice, "address.release", address_id=theirs["address_id"])
    with pytest.raises(NotFoundError):
        platform(alice, "address.release", address_id=str(uuid4()))
    with pytest.raises(ForbiddenError, match="only a root admin"):
        platform(dadmin, "publicrange.create", zone_id=zone, name="x", cidr="192.0.2.0/24",
                 gateway="192.0.2.1", first="192.0.2.5", last="192.0.2.6")
    assert platform.app.recorder.max_notification_id() == head
    held: PublicAddress = platform.app.repository.get(UUID(theirs["address_id"]))
    assert held.state is AddressState.ALLOCATED
    # the domain admin above alice's account may release it; the refusals were audited
    out = platform(dadmin, "address.release", address_id=mine["address_id"])
    assert out["state"] == "Released"
    refused = denials(acl)
    assert ("alice", "address.release", "sib_acct") in refused
    assert ("dadmin", "publicrange.create", None) in refused


def test_the_public_address_limit_refuses_past_it(acl: Acl, platform: Any) -> None:
    acl.service.set_limits("account", "mine_acct", {"max_public_addresses": 2})
    alice = login(acl, "alice")
    zone = str(platform.zone_id)
    first = platform(alice, "address.allocate", zone_id=zone, account="mine_acct")
    platform(alice, "address.allocate", zone_id=zone, account="mine_acct")
    head = platform.app.recorder.max_notification_id()
    with pytest.raises(ForbiddenError, match="account mine_acct would exceed its limit "
                                             r"max_public_addresses = 2 \(2 in use"):
        platform(alice, "address.allocate", zone_id=zone, account="mine_acct")
    assert platform.app.recorder.max_notification_id() == head
    platform(alice, "address.release", address_id=first["address_id"])
    again = platform(alice, "address.allocate", zone_id=zone, account="mine_acct")
    assert again["address"] == "203.0.113.12"  # fresh addresses before the released one
    # a domain limit counts every account of its subtree
    acl.service.set_limits("domain", "ROOT/par", {"max_public_addresses": 3})
    platform(login(acl, "root"), "address.allocate", zone_id=zone, account="sib_acct")
    with pytest.raises(ForbiddenError, match="domain ROOT/par would exceed its limit "
                                             "max_public_addresses = 3"):
        platform(login(acl, "root"), "address.allocate", zone_id=zone, account="sub_acct")
