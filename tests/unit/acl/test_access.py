"""AclAccess: the access matrix, denials as events, signatures, bearer tokens, quotas."""

from pathlib import Path

import pytest

from aggregates.errors import ForbiddenError, UnauthenticatedError
from gateways.access import Keyring, KeyringAccess, LayeredAccess
from gateways.contracts.catalog import public_commands
from kernel.contracts.access import Principal, SignedRequest, sign
from tests.unit.acl.conftest import Acl, denials

TAGS = sorted({c.tag for c in public_commands()} | {"vm.list", "volume.get"})
TENANT = {"vm.backup", "vm.console", "vm.deploy", "vm.destroy", "vm.reboot", "vm.restore",
          "vm.start",
          "vm.stop", "volume.attach", "volume.create", "volume.delete", "volume.detach",
          "volume.resize", "volume.revert", "volume.snapshot", "network.create",
          "network.implement", "network.shutdown", "operation.cancel", "vm.list", "volume.get",
          "address.allocate", "address.release"}
OWNERS = ("mine_acct", "sub_acct", "sib_acct", "par_acct", "ops")


def expected(role: str, tag: str, owner: str) -> bool:
    if role == "root":
        return True
    if tag not in TENANT:
        return False
    if role == "dadmin":
        return owner in ("mine_acct", "sub_acct")
    return owner == "mine_acct"


def login(acl: Acl, who: str) -> Principal:
    password = {"root": "rootpass1", "dadmin": "dadmin123", "alice": "alicepass"}[who]
    return acl.access.authenticate_bearer(acl.service.login(who, password))


def test_the_access_matrix_and_every_denial_is_an_event(acl: Acl) -> None:
    assert "vm.deploy" in TAGS and "host.disable" in TAGS and len(TAGS) > 20
    table: dict[tuple[str, str, str], bool] = {}
    refused: list[tuple[str, str, str | None]] = []
    for who in ("root", "dadmin", "alice"):
        principal = login(acl, who)
        for tag in TAGS:
            for owner in OWNERS:
                try:
                    acl.access.authorize(principal, tag, owner=owner)
                    table[who, tag, owner] = True
                except ForbiddenError:
                    table[who, tag, owner] = False
                    refused.append((who, tag, owner))
    wrong = {k: v for k, v in table.items() if v != expected(*k)}
    assert not wrong
    # Every cross-tenant access is denied.
    assert not any(table["alice", t, o] for t in TAGS for o in OWNERS if o != "mine_acct")
    assert not any(table["dadmin", t, o] for t in TAGS for o in ("sib_acct", "par_acct", "ops"))
    assert denials(acl) == refused and len(refused) > 100


def test_no_owner_mutations_are_root_only_reads_are_filtered(acl: Acl) -> None:
    alice, dadmin, root = login(acl, "alice"), login(acl, "dadmin"), login(acl, "root")
    acl.access.authorize(root, "inventory.load")
    acl.access.authorize(alice, "vm.list")
    with pytest.raises(ForbiddenError, match="without naming the owning account"):
        acl.access.authorize(alice, "vm.deploy")
    with pytest.raises(ForbiddenError, match="only a root admin"):
        acl.access.authorize(dadmin, "host.disable")
    assert acl.access.visible_accounts(root) is None
    assert acl.access.visible_accounts(dadmin) == {"mine_acct", "sub_acct"}
    assert acl.access.visible_accounts(alice) == {"mine_acct"}
    assert alice.account == "mine_acct" and root.account is None


def test_rules_deny_wins_and_allow_grants(acl: Acl) -> None:
    alice = login(acl, "alice")
    acl.service.add_rule(target_kind="role", target="user", effect="deny", pattern="vm.destroy")
    with pytest.raises(ForbiddenError, match=r"denied by rule .deny vm.destroy."):
        acl.access.authorize(alice, "vm.destroy", owner="mine_acct")
    acl.service.add_rule(target_kind="account", target="mine_acct", effect="allow",
                         pattern="vm.destroy")
    with pytest.raises(ForbiddenError, match="denied by rule"):  # deny wins
        acl.access.authorize(alice, "vm.destroy", owner="mine_acct")
    acl.service.add_rule(target_kind="account", target="mine_acct", effect="allow",
                         pattern="template.download")
    acl.access.authorize(alice, "template.download", owner="mine_acct")
    acl.service.add_rule(target_kind="role", target="root_admin", effect="deny",
                         pattern="entity.repair")
    with pytest.raises(ForbiddenError):
        acl.access.authorize(login(acl, "root"), "entity.repair")


# --------------------------------------------------------------------------- signatures


def signed(acl: Acl, key_id: str, secret: str, *, subject: str = "POST /v1/vms",
           body: bytes = b'{"name":"w"}', idem: str = "k1", at: float | None = None
           ) -> SignedRequest:
    ts = str(int(acl.clock.now if at is None else at))
    return SignedRequest(subject=subject, idempotency_key=idem, body=body, key_id=key_id,
                         timestamp=ts, signature=sign(secret, timestamp=ts, subject=subject,
                                                      idempotency_key=idem, body=body))


def test_a_good_signature_works_once(acl: Acl) -> None:
    key, secret = acl.service.create_key("alice")
    request = signed(acl, key.key_id, secret)
    principal = acl.access.authenticate(request)
    assert (principal.actor, principal.account, principal.key_id) == \
        ("alice", "mine_acct", key.key_id)
    acl.access.authorize(principal, "vm.deploy", owner="mine_acct")
    with pytest.raises(UnauthenticatedError, match="replayed"):
        acl.access.authenticate(request)
    acl.access.authenticate(signed(acl, key.key_id, secret, idem="k2"))  # a new request is fine


@pytest.mark.parametrize("change", ["body", "subject", "idem", "key", "secret"])
def test_tampered_requests_are_rejected(acl: Acl, change: str) -> None:
    key, secret = acl.service.create_key("alice")
    other, _ = acl.service.create_key("dadmin")
    good = signed(acl, key.key_id, secret)
    bad = {
        "body": SignedRequest(**{**good.__dict__, "body": b'{"name":"x"}'}),
        "subject": SignedRequest(**{**good.__dict__, "subject": "DELETE /v1/vms/1"}),
        "idem": SignedRequest(**{**good.__dict__, "idempotency_key": "k9"}),
        "key": SignedRequest(**{**good.__dict__, "key_id": other.key_id}),
        "secret": signed(acl, key.key_id, "0" * 64),
    }[change]
    with pytest.raises(UnauthenticatedError, match="does not match"):
        acl.access.authenticate(bad)


def test_expired_skewed_revoked_unknown_keys(acl: Acl) -> None:
    key, secret = acl.service.create_key("alice", expires_in_days=1)
    with pytest.raises(UnauthenticatedError, match="behind"):
        acl.access.authenticate(signed(acl, key.key_id, secret, at=acl.clock.now - 301))
    with pytest.raises(UnauthenticatedError, match="ahead"):
        acl.access.authenticate(signed(acl, key.key_id, secret, at=acl.clock.now + 301))
    with pytest.raises(UnauthenticatedError, match="unknown key"):
        acl.access.authenticate(signed(acl, "ak_nope", secret))
    acl.clock.now += 2 * 86400
    with pytest.raises(UnauthenticatedError, match="expired"):
        acl.access.authenticate(signed(acl, key.key_id, secret))
    key2, secret2 = acl.service.create_key("alice")
    acl.service.revoke_key(key2.key_id)
    with pytest.raises(UnauthenticatedError, match="revoked"):
        acl.access.authenticate(signed(acl, key2.key_id, secret2))
    audited = [d for d in denials(acl) if d[0] == "alice"]
    assert len(audited) >= 2  # refusals of known keys are audited too


def test_wrongly_scoped_keys_are_forbidden(acl: Acl) -> None:
    key, secret = acl.service.create_key("alice", scope=("vm.start", "vm.stop"))
    principal = acl.access.authenticate(signed(acl, key.key_id, secret))
    acl.access.authorize(principal, "vm.start", owner="mine_acct")
    with pytest.raises(ForbiddenError, match=r"scoped to vm.start, vm.stop: it may not send "
                                             r"vm.destroy"):
        acl.access.authorize(principal, "vm.destroy", owner="mine_acct")
    ro, ro_secret = acl.service.create_key("root", read_only=True)
    root = acl.access.authenticate(signed(acl, ro.key_id, ro_secret))
    acl.access.authorize(root, "vm.list")
    with pytest.raises(ForbiddenError, match="read-only"):
        acl.access.authorize(root, "vm.deploy", owner="ops")
    assert ("alice", "vm.destroy", "mine_acct") in denials(acl)
    assert ("root", "vm.deploy", "ops") in denials(acl)


# --------------------------------------------------------------------------- bearer tokens


def test_bearer_tokens_tampered_expired_and_bad_login(acl: Acl) -> None:
    token = acl.service.login("alice", "alicepass")
    assert acl.access.authenticate_bearer(token).actor == "alice"
    head, payload, mac = token.split(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    for bad in (f"{head}.{forged}.{mac}", token[:-3] + "abc", "nonsense", ""):
        with pytest.raises(UnauthenticatedError):
            acl.access.authenticate_bearer(bad)
    acl.clock.now += 8 * 3600 + 1
    with pytest.raises(UnauthenticatedError, match="expired"):
        acl.access.authenticate_bearer(token)
    with pytest.raises(UnauthenticatedError, match="invalid credentials"):
        acl.service.login("alice", "wrongpass")
    with pytest.raises(UnauthenticatedError, match="invalid credentials"):
        acl.service.login("nobody", "whatever1")
    assert ("alice", "acl.login", None) in denials(acl)


def test_secrets_never_reach_the_log(acl: Acl) -> None:
    _, secret = acl.service.create_key("alice")
    log = b"".join(bytes(n.state) for n in
                   acl.service.app.recorder.select_notifications(start=1, limit=100000))
    assert secret.encode() not in log and b"scrypt" not in log and b"alicepass" not in log


# --------------------------------------------------------------------------- quotas


def test_limits_of_account_and_ancestor_domains(acl: Acl) -> None:
    acl.service.set_limits("account", "mine_acct", {"max_vms": 3})
    acl.service.set_limits("domain", "ROOT/par", {"max_cpu_cores": 10})
    alice = login(acl, "alice")
    acl.access.check_limits(alice, {"vms": 2, "cpu_cores": 4}, {"vms": 1, "cpu_cores": 2})
    with pytest.raises(ForbiddenError, match="account mine_acct would exceed its limit "
                                             "max_vms = 3"):
        acl.access.check_limits(alice, {"vms": 3}, {"vms": 1})
    with pytest.raises(ForbiddenError, match="domain ROOT/par would exceed its limit "
                                             "max_cpu_cores = 10"):
        acl.access.check_limits("mine_acct", {"cpu_cores": 2}, {"cpu_cores": 2},
                                domain_usage={"ROOT/par": {"cpu_cores": 9}})
    acl.access.check_limits("sib_acct", {"vms": 100}, {"vms": 1})  # no account limit there
    # whose usage counts against a limited domain: every account of its subtree
    assert acl.access.domain_accounts("sub_acct") == {
        "ROOT/par": ("mine_acct", "par_acct", "sib_acct", "sub_acct")}
    assert acl.access.domain_accounts("ops") == {}  # ROOT has no limits


def test_only_accounts_under_some_limit_are_governed(acl: Acl) -> None:
    """No limit on the account or above it: nothing to check, so usage is never counted."""
    assert not acl.access.governs("mine_acct") and not acl.access.governs("nobody")
    acl.service.set_limits("domain", "ROOT/par", {"max_vms": 9})
    assert acl.access.governs("mine_acct") and acl.access.governs("sub_acct")
    assert not acl.access.governs("ops")  # ROOT itself has no limits
    acl.service.set_limits("account", "ops", {"max_volumes": 1})
    assert acl.access.governs("ops")


def test_refused_keyring_keys_and_unknown_keys_are_audited(acl: Acl, tmp_path: Path) -> None:
    """The platform's own keys (the keyring beside the ACL) are audited as the ACL's are: a
    bad signature, a refused command; and a made-up key id is audited, one a second."""
    keyring = Keyring(tmp_path / "keys.json")
    admin = keyring.create(actor="ops-admin", role="admin")
    narrow = keyring.create(actor="ci-bot", role="integrator", allow=["vm.start"])
    access = LayeredAccess(acl.access, KeyringAccess(keyring, clock=acl.clock))
    before = len(denials(acl))

    with pytest.raises(UnauthenticatedError, match="does not match"):
        access.authenticate(signed(acl, admin.id, "0" * 64))
    principal = access.authenticate(signed(acl, narrow.id, narrow.secret))
    access.authorize(principal, "vm.start")  # allowed: nothing audited
    with pytest.raises(ForbiddenError, match=r"may not send vm\.stop"):
        access.authorize(principal, "vm.stop")
    with pytest.raises(UnauthenticatedError, match="unknown key"):
        access.authenticate(signed(acl, "ck_made_up_1", "0" * 64))
    with pytest.raises(UnauthenticatedError, match="unknown key"):
        access.authenticate(signed(acl, "ck_made_up_2", "0" * 64))  # the same second
    assert denials(acl)[before:] == [("ops-admin", "POST /v1/vms", None),
                                     ("ci-bot", "vm.stop", None),
                                     ("", "POST /v1/vms", None)]
    acl.clock.now += 1.5
    with pytest.raises(UnauthenticatedError, match="unknown key"):
        access.authenticate(signed(acl, "ck_made_up_3", "0" * 64))
    assert len(denials(acl)) == before + 4
