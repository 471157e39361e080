"""ACL aggregates: the domain tree, limits, keys, rules; explicit topics; no secrets in events."""

import dataclasses
from datetime import UTC, datetime

import pytest
from eventsourcing.domain import CanMutateAggregate
from eventsourcing.utils import get_topic, resolve_topic

from aggregates.errors import ValidationError
from kernel.store.testing import roundtrip
from services.acl.model import ACL_AGGREGATES, AclAccount, AclApiKey, AclDomain, AclRule, AclUser

EVENTS = [(agg, cls) for agg in ACL_AGGREGATES for cls in vars(agg).values()
          if isinstance(cls, type) and issubclass(cls, CanMutateAggregate)]


@pytest.mark.parametrize(("agg", "cls"), EVENTS, ids=[c.TOPIC for _, c in EVENTS])
def test_topics_are_explicit_and_carry_no_secret(agg: type, cls: type) -> None:
    assert f"{agg.TOPIC}.{cls.__name__}" == cls.TOPIC  # type: ignore[attr-defined]
    assert get_topic(cls) == cls.TOPIC  # type: ignore[attr-defined]
    assert resolve_topic(cls.TOPIC) is cls  # type: ignore[attr-defined]
    names = {f.name for f in dataclasses.fields(cls)}
    assert not names & {"secret", "password", "password_hash", "hash", "salt"}


def test_domain_tree_paths_and_ancestry() -> None:
    root = AclDomain.create_root()
    eng = AclDomain.create(name="eng", parent=root)
    web = roundtrip(AclDomain.create(name="web", parent=eng))
    assert (web.path, web.parent_path) == ("ROOT/eng/web", "ROOT/eng")
    assert web.ancestry() == ("ROOT/eng/web", "ROOT/eng", "ROOT")
    assert eng.contains("ROOT/eng/web") and eng.contains("ROOT/eng")
    assert not eng.contains("ROOT/engineering") and not web.contains("ROOT/eng")
    with pytest.raises(ValidationError, match="domain name"):
        AclDomain.create(name="a/b", parent=root)


def test_limits_validate_and_replace() -> None:
    account = AclAccount.create(name="acme", domain=AclDomain.create_root())
    account.set_limits({"max_vms": 3, "max_volume_gib": 100})
    account = roundtrip(account)
    assert account.limits == {"max_vms": 3, "max_volume_gib": 100}
    account.set_limits({"max_vms": -1, "max_cpu_cores": 8})
    assert account.limits == {"max_cpu_cores": 8}
    for bad, message in (({"max_cats": 1}, "unknown limit"), ({"max_vms": -5}, "whole number"),
                         ({"max_vms": True}, "whole number")):
        with pytest.raises(ValidationError, match=message):
            account.set_limits(bad)


def test_user_key_rule_rules() -> None:
    root = AclDomain.create_root()
    sub = AclDomain.create(name="eng", parent=root)
    acct = AclAccount.create(name="acme", domain=sub)
    with pytest.raises(ValidationError, match="root_admin must belong"):
        AclUser.create(username="boss", account=acct, role="root_admin")
    with pytest.raises(ValidationError, match="role must be one of"):
        AclUser.create(username="bob", account=acct, role="god")
    bob = AclUser.create(username="bob", account=acct, role="user")
    now = datetime(2030, 1, 1, tzinfo=UTC)
    key = AclApiKey.issue(key_id="ak_1", user=bob, scope=("vm.*",), expires_in_days=1, now=now)
    assert key.status(now) == "active"
    assert key.revoke(now) and not key.revoke(now)
    key = roundtrip(key)
    assert key.status(now) == "revoked"
    with pytest.raises(ValidationError, match="expiry"):
        AclApiKey.issue(key_id="ak_2", user=bob, expires_in_days=0, now=now)
    with pytest.raises(ValidationError, match="command pattern"):
        AclApiKey.issue(key_id="ak_3", user=bob, scope=("vm deploy",), now=now)
    bob.disable()
    with pytest.raises(ValidationError, match="disabled"):
        AclApiKey.issue(key_id="ak_4", user=bob, now=now)
    with pytest.raises(ValidationError, match="effect"):
        AclRule.add(target_kind="role", target="user", effect="maybe", pattern="vm.*")
    assert AclRule.add(target_kind="role", target="user", effect="deny", pattern="vm.*").id == \
        AclRule.create_id("role", "user", "deny", "vm.*")
