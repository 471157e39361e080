"""Request signing and the file-backed keyring: who may send what, and everything else refused."""

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregates.errors import (
    ConfigError,
    ForbiddenError,
    NotFoundError,
    UnauthenticatedError,
    ValidationError,
)
from gateways.access import Keyring, KeyringAccess, keys_path
from kernel.contracts.access import Principal, SignedRequest, canonical_string, sign, verify
from kernel.settings import Settings

NOW = 1_700_000_000.0
SUBJECT = "cloudkernel.commands.operation.cancel"


def signed(secret: str, key_id: str = "", *, ts: float = NOW, subject: str = SUBJECT,
           key: str = "k-1", body: bytes = b"{}") -> SignedRequest:
    timestamp = str(int(ts))
    return SignedRequest(subject=subject, idempotency_key=key, body=body, key_id=key_id,
                         timestamp=timestamp, signature=sign(secret, timestamp=timestamp,
                                                             subject=subject,
                                                             idempotency_key=key, body=body))


# --------------------------------------------------------------------------- signing


def test_signature_matches_the_published_vector() -> None:
    # Computed independently: printf '<canonical>' | openssl dgst -sha256 -hmac s3cret
    assert canonical_string(timestamp="1700000000", subject=SUBJECT, idempotency_key="k-1",
                            body=b"{}") == (
        "CK1-HMAC-SHA256\n1700000000\ncloudkernel.commands.operation.cancel\nk-1\n"
        "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
    assert sign("s3cret", timestamp=1700000000, subject=SUBJECT, idempotency_key="k-1",
                body=b"{}") == "ce680af626dc84daca4ec675369773917cb16516267d85d39dbb63d59092a896"


def test_verify_accepts_the_signed_request_and_refuses_any_change() -> None:
    good = signed("s3cret")
    verify("s3cret", good, now=NOW)
    changed = [
        SignedRequest(**{**vars(good), "subject": "cloudkernel.commands.operation.start"}),
        SignedRequest(**{**vars(good), "idempotency_key": "k-2"}),
        SignedRequest(**{**vars(good), "body": b'{"x":1}'}),
        SignedRequest(**{**vars(good), "timestamp": str(int(NOW) + 1)}),
    ]
    for request in changed:
        with pytest.raises(UnauthenticatedError, match="Cloudkernel-Signature does not match"):
            verify("s3cret", request, now=NOW)
    with pytest.raises(UnauthenticatedError, match="does not match"):
        verify("another", good, now=NOW)


@pytest.mark.parametrize(("offset", "fresh"), [(-300, True), (299, True), (-301, False),
                                                (301, False), (-86400, False)])
def test_timestamps_more_than_300s_off_the_clock_are_refused(offset: int, fresh: bool) -> None:
    request = signed("s3cret", ts=NOW + offset)
    if fresh:
        verify("s3cret", request, now=NOW)
    else:
        with pytest.raises(UnauthenticatedError, match="server clock"):
            verify("s3cret", request, now=NOW)


@pytest.mark.parametrize("timestamp", ["", "abc", "1.5", "-1", "1" * 13])
def test_a_timestamp_that_is_not_unix_seconds_is_refused(timestamp: str) -> None:
    request = SignedRequest(**{**vars(signed("s3cret")), "timestamp": timestamp})
    with pytest.raises(UnauthenticatedError, match="unix seconds"):
        verify("s3cret", request, now=NOW)


# --------------------------------------------------------------------------- keyring file


def test_keys_are_written_privately_and_atomically(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "sub" / "keys.json")
    admin = keyring.create(actor="ops", role="admin")
    billing = keyring.create(actor="billing", role="integrator", allow=["operation.*"],
                             expires_in_days=30)
    assert stat.S_IMODE(os.stat(keyring.path).st_mode) == 0o600
    assert len(admin.secret) == 64 and int(admin.secret, 16) >= 0
    assert admin.secret != billing.secret and admin.id != billing.id
    on_disk = json.loads(keyring.path.read_text())
    assert [k["id"] for k in on_disk["keys"]] == [admin.id, billing.id]
    assert Keyring(keyring.path).entries() == [admin, billing]
    assert billing.expires is not None
    assert billing.expires - billing.created == timedelta(days=30)
    leftovers = {p.name for p in keyring.path.parent.iterdir()} - {"keys.json", "keys.json.lock"}
    assert leftovers == set()


def test_revoke_marks_the_key_and_is_idempotent(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keys.json")
    key = keyring.create(actor="ops", role="admin")
    revoked, changed = keyring.revoke(key.id)
    assert changed and revoked.revoked and revoked.revoked_at is not None
    assert keyring.revoke(key.id)[1] is False
    assert keyring.entries()[0].status(datetime.now(UTC)) == "revoked"
    with pytest.raises(NotFoundError, match="no key 'ck_nope'"):
        keyring.revoke("ck_nope")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"actor": "", "role": "admin"}, "actor must be"),
    ({"actor": "a b", "role": "admin"}, "actor must be"),
    ({"actor": "system", "role": "admin"}, "reserved"),
    ({"actor": "subsystem:echo", "role": "admin"}, "reserved"),
    ({"actor": "x", "role": "root"}, "role must be one of admin, integrator"),
    ({"actor": "x", "role": "integrator"}, "needs at least one --allow"),
    ({"actor": "x", "role": "admin", "allow": ["operation.*"]}, "only to integrator keys"),
    ({"actor": "x", "role": "integrator", "allow": ["op cancel"]}, "--allow 'op cancel'"),
    ({"actor": "x", "role": "admin", "expires_in_days": 0}, "--expires-in"),
    ({"actor": "x", "role": "admin", "expires_in_days": float("nan")}, "--expires-in"),
])
def test_bad_new_keys_are_refused_and_nothing_is_written(tmp_path: Path, kwargs: dict,
                                                         message: str) -> None:
    keyring = Keyring(tmp_path / "keys.json")
    with pytest.raises(ValidationError, match=message):
        keyring.create(**kwargs)
    assert not keyring.path.exists()


def test_a_keyring_open_to_others_or_corrupt_is_a_config_error(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keys.json")
    keyring.create(actor="ops", role="admin")
    os.chmod(keyring.path, 0o644)
    with pytest.raises(ConfigError, match=r"open to other users .*chmod 600"):
        keyring.entries()
    keyring.path.write_text('{"keys": [{"id": 1}]}')
    os.chmod(keyring.path, 0o600)
    with pytest.raises(ConfigError, match=r"not a valid keyring file.*\$\.keys\[0\]"):
        keyring.entries()


def test_the_default_path_is_in_the_data_dir_unless_set(tmp_path: Path) -> None:
    assert keys_path(Settings(data_dir=tmp_path)) == tmp_path / "keys.json"
    assert keys_path(Settings(keys_file=str(tmp_path / "k.json"))) == tmp_path / "k.json"


# --------------------------------------------------------------------------- decisions


def test_authenticate_gives_the_principal_of_an_active_key(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keys.json")
    key = keyring.create(actor="billing", role="integrator", allow=["operation.*"])
    access = KeyringAccess(keyring, clock=lambda: NOW)
    principal = access.authenticate(signed(key.secret, key.id))
    assert principal == Principal(key_id=key.id, actor="billing", role="integrator",
                                  allowed=("operation.*",))


def test_unknown_revoked_expired_and_badly_signed_keys_are_unauthenticated(
        tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keys.json")
    access = KeyringAccess(keyring, clock=lambda: NOW)
    good = keyring.create(actor="ops", role="admin")
    expired = keyring.create(actor="old", role="admin", expires_in_days=1,
                             now=datetime.fromtimestamp(NOW, UTC) - timedelta(days=2))
    revoked = keyring.create(actor="gone", role="admin")
    keyring.revoke(revoked.id)
    cases = [
        (signed(good.secret, "ck_unknown"), "unknown key id 'ck_unknown'"),
        (signed(good.secret, ""), "header Cloudkernel-Key-Id is required"),
        (SignedRequest(**{**vars(signed(good.secret, good.id)), "signature": ""}),
         "header Cloudkernel-Signature is required"),
        (signed("not-the-secret", good.id), "does not match"),
        (signed(good.secret, good.id, ts=NOW - 600), "server clock"),
        (signed(expired.secret, expired.id), f"key {expired.id} expired at"),
        (signed(revoked.secret, revoked.id), f"key {revoked.id} was revoked"),
        # Without the secret nobody learns that a key is revoked.
        (signed("guess", revoked.id), "does not match"),
    ]
    for request, message in cases:
        with pytest.raises(UnauthenticatedError, match=message):
            access.authenticate(request)
    assert access.authenticate(signed(good.secret, good.id)).actor == "ops"


def test_a_revocation_reaches_a_running_access_control(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keys.json")
    key = keyring.create(actor="ops", role="admin")
    access = KeyringAccess(Keyring(keyring.path), clock=lambda: NOW)  # its own reader
    access.authenticate(signed(key.secret, key.id))
    keyring.revoke(key.id)  # another process, e.g. `cloudkernel keys revoke`
    with pytest.raises(UnauthenticatedError, match="was revoked"):
        access.authenticate(signed(key.secret, key.id))


def test_admins_may_send_everything_integrators_what_their_key_lists() -> None:
    access = KeyringAccess(Keyring(Path("/nonexistent/keys.json")))
    admin = Principal(key_id="ck_a", actor="ops", role="admin")
    billing = Principal(key_id="ck_b", actor="billing", role="integrator",
                        allowed=("operation.*", "inventory.load"))
    canceller = Principal(key_id="ck_c", actor="c", role="integrator",
                          allowed=("operation.cancel",))
    for tag in ("inventory.load", "operation.start", "anything.else"):
        access.authorize(admin, tag)
    for tag in ("operation.start", "operation.cancel", "inventory.load"):
        access.authorize(billing, tag)
    access.authorize(canceller, "operation.cancel")
    with pytest.raises(ForbiddenError, match=r"may not send operation\.start; it allows "
                                             r"operation\.cancel"):
        access.authorize(canceller, "operation.start")
    with pytest.raises(ForbiddenError, match=r"may not send vm\.deploy"):
        access.authorize(billing, "vm.deploy")


class _Primary:
    """A stand-in for the ACL service: one key id, account-scoped, bearer tokens."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    def authenticate(self, request: SignedRequest) -> Principal:
        if request.key_id != "acl-key":
            raise UnauthenticatedError(f"unknown key id {request.key_id!r}")
        return Principal(key_id="acl-key", actor="dave", role="integrator",
                         allowed=("*",), account="dave")

    def authenticate_bearer(self, token: str) -> Principal:
        if token != "good-token":
            raise UnauthenticatedError("bad token")
        return Principal(key_id="", actor="erin", role="integrator", account="erin")

    def authorize(self, principal: Principal, command_tag: str, *,
                  owner: str | None = None) -> None:
        self.asked.append((command_tag, owner))
        if owner not in (None, principal.account):
            raise ForbiddenError("not yours")

    def visible_accounts(self, principal: Principal) -> frozenset[str] | None:
        return frozenset({principal.account or ""})


def test_layered_access_asks_the_keyring_for_its_keys_and_the_acl_for_the_rest(
        tmp_path: Path) -> None:
    from gateways.access import LayeredAccess

    keyring = Keyring(tmp_path / "keys.json")
    admin = keyring.create(actor="admin", role="admin")
    primary = _Primary()
    access = LayeredAccess(primary, KeyringAccess(keyring, clock=lambda: NOW))
    platform = access.authenticate(signed(admin.secret, admin.id))
    assert platform.role == "admin" and access.visible_accounts(platform) is None
    access.authorize(platform, "vm.stop", owner="anyone")  # the keyring's admin: everything
    assert primary.asked == []
    tenant = access.authenticate(signed("whatever", "acl-key"))
    assert access.visible_accounts(tenant) == frozenset({"dave"})
    access.authorize(tenant, "vm.stop", owner="dave")
    with pytest.raises(ForbiddenError):
        access.authorize(tenant, "vm.stop", owner="alice")
    assert primary.asked == [("vm.stop", "dave"), ("vm.stop", "alice")]
    assert access.authenticate_bearer("good-token").actor == "erin"
    with pytest.raises(UnauthenticatedError):
        access.authenticate_bearer("forged")
    with pytest.raises(UnauthenticatedError):
        access.authenticate(signed("whatever", "nobody"))
