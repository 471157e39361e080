"""SigV4: the helpers agree with botocore's SigV4Auth, and the ACL responder checks signatures.

botocore signs each request (its clock pinned to the tests' clock); the request is then taken
apart as a server receives it (method, path and query as on the wire, headers, body), rebuilt
with `services.acl.sigv4`, and checked by `AclResponder.handle` as it answers on NATS.
"""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from aggregates.errors import UnauthenticatedError
from services.acl.client import (
    AUTHENTICATE_SUBJECT,
    AUTHORIZE_SUBJECT,
    LOGIN_SUBJECT,
    SIGV4_SUBJECT,
)
from services.acl.responder import AclResponder
from services.acl.sigv4 import (
    SigV4Request,
    parse_authorization,
    signature,
    signed_request,
)
from tests.unit.acl.conftest import NOW, Acl, denials

REGION, SERVICE = "cloudkernel-1", "ec2"


class Recording(SigV4Auth):
    """botocore's signer, remembering its canonical request and string to sign."""

    canonical = sts = ""

    def string_to_sign(self, request: Any, canonical_request: str) -> str:
        self.canonical = canonical_request
        self.sts = super().string_to_sign(request, canonical_request)
        return self.sts


@pytest.fixture
def responder(acl: Acl) -> Iterator[AclResponder]:
    responder = AclResponder(acl.service, [], clock=acl.clock)
    yield responder
    responder._executor.shutdown()


def sign(secret: str, key_id: str, method: str, url: str, *, at: float = NOW,
         region: str = REGION, **request: Any) -> tuple[SigV4Request, Recording]:
    """Sign with botocore at time `at`; the request as a server reads it, and the signer."""
    signer = Recording(Credentials(key_id, secret), SERVICE, region)
    aws = AWSRequest(method=method, url=url, **request)
    pinned = datetime.fromtimestamp(at, UTC).replace(tzinfo=None)
    original = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda: pinned  # type: ignore[attr-defined]
    try:
        signer.add_auth(aws)
    finally:
        botocore.auth.get_current_datetime = original  # type: ignore[attr-defined]
    wire = aws.prepare()
    parts = urlsplit(wire.url)
    headers = [("Host", parts.netloc), *wire.headers.items()]
    body = wire.body if isinstance(wire.body, bytes) else (wire.body or "").encode()
    return signed_request(wire.method, parts.path, parts.query, headers, body), signer


def ask(responder: AclResponder, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    return json.loads(responder.handle(subject, json.dumps(body).encode()))  # type: ignore[no-any-return]


def verify(responder: AclResponder, request: SigV4Request, **changes: Any) -> dict[str, Any]:
    return ask(responder, SIGV4_SUBJECT, {**request.verification(), **changes})


CASES: dict[str, dict[str, Any]] = {
    "GET with query": dict(method="GET", url="http://127.0.0.1:8482/v1/things",
                           params={"b": "x y", "a": "1~*", "Filter.1.Name": "é/+&=",
                                   "empty": ""}),
    "GET with a raw query": dict(method="GET", url="http://h/?Version=2016-11-15&Action=Describe"),
    "POST form body": dict(method="POST", url="http://127.0.0.1:8482/",
                           data=b"Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-1",
                           headers={"Content-Type":
                                    "application/x-www-form-urlencoded; charset=utf-8"}),
    "odd header spacing": dict(method="PUT", url="http://h:9/x",
                               headers={"X-Odd": "  a   b \t c  ", "X-Mixed-CASE": "Keep Case",
                                        "Content-Type": "text/plain"}, data=b"payload"),
    "unicode path": dict(method="GET", url="http://h/caf%C3%A9/%E2%82%AC%20x/a/./b/../c//d/"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_the_helpers_agree_with_botocore(acl: Acl, responder: AclResponder, case: str) -> None:
    key, secret = acl.service.create_key("alice")
    request, signer = sign(secret, key.key_id, **CASES[case])
    assert request.canonical_request == signer.canonical
    assert request.string_to_sign == signer.sts
    auth = request.authorization
    assert (auth.access_key_id, auth.region, auth.service) == (key.key_id, REGION, SERVICE)
    assert signature(secret, auth.date, REGION, SERVICE, request.string_to_sign) == \
        auth.signature
    reply = verify(responder, request)
    assert reply["ok"] is True, reply
    assert reply["principal"] == {"actor": "alice", "account": "mine_acct", "role": "user",
                                  "domain": "ROOT/par/mine", "key_id": key.key_id}
    # The token is an ordinary bearer token of alice, good for 15 minutes.
    assert acl.access.authenticate_bearer(reply["token"]).actor == "alice"
    acl.clock.now += 901
    with pytest.raises(UnauthenticatedError, match="expired"):
        acl.access.authenticate_bearer(reply["token"])


def test_every_refusal_is_refused_and_audited(acl: Acl, responder: AclResponder) -> None:
    url = "http://127.0.0.1:8482/"
    form: dict[str, Any] = {"data": b"Action=DescribeInstances&Version=2016-11-15",
            "headers": {"Content-Type": "application/x-www-form-urlencoded"}}

    def fresh(**kw: Any) -> tuple[Any, str]:
        return acl.service.create_key("alice", **kw)

    key, secret = fresh()
    revoked, revoked_secret = fresh()
    acl.service.revoke_key(revoked.key_id)
    expired, expired_secret = fresh(expires_in_days=1)
    read_only, read_only_secret = fresh(read_only=True)
    scoped, scoped_secret = fresh(scope=("vm.*",))
    acl.clock.now += 86400 + 100  # the `expired` key is past its day now
    cases: list[tuple[str, dict[str, Any], dict[str, str], str, str]] = [
        ("wrong secret", {"secret": "0" * 64}, {}, "unauthenticated",
         "signature does not match"),
        ("bad scope", {"region": "elsewhere"}, {"region": REGION}, "unauthenticated",
         "is not the credential's"),
        ("stale credential date", {"ago": 2 * 86400}, {}, "unauthenticated",
         "more than a day"),
        ("stale X-Amz-Date", {"ago": 1000}, {}, "unauthenticated", "behind the server clock"),
    ]
    for name, signing, changes, code, message in cases:
        acl.clock.now += 1.5  # past the one-a-second audit limit of the key
        request, _ = sign(signing.get("secret", secret), key.key_id, "POST", url,
                          at=acl.clock.now - signing.get("ago", 0),
                          region=signing.get("region", REGION), **form)
        reply = verify(responder, request, **changes)
        assert set(reply) == {"ok", "error"} and reply["error"]["code"] == code, (name, reply)
        assert message in reply["error"]["message"], (name, reply)
    for name, (k, s), code, message in [
            ("revoked", (revoked, revoked_secret), "unauthenticated", "was revoked"),
            ("expired", (expired, expired_secret), "unauthenticated", "expired at"),
            ("read-only", (read_only, read_only_secret), "forbidden", "is read-only"),
            ("scoped", (scoped, scoped_secret), "forbidden", "scoped to vm.*")]:
        request, _ = sign(s, k.key_id, "POST", url, at=acl.clock.now, **form)
        reply = verify(responder, request)
        assert reply["error"]["code"] == code and message in reply["error"]["message"], \
            (name, reply)
    # A replay: the very same signed request, once more.
    request, _ = sign(secret, key.key_id, "POST", url, at=acl.clock.now, **form)
    assert verify(responder, request)["ok"] is True
    acl.clock.now += 1.5
    reply = verify(responder, request)
    assert reply["error"]["code"] == "unauthenticated" and "used before" in \
        reply["error"]["message"]
    # A disabled user's keys stop working.
    acl.service.disable_user("alice")
    acl.clock.now += 1.5
    request, _ = sign(secret, key.key_id, "POST", url, at=acl.clock.now, **form)
    assert "is disabled" in verify(responder, request)["error"]["message"]
    assert [(p, c) for p, c, _owner in denials(acl)] == [("alice", "acl.sigv4 ec2")] * 10
    # Unknown keys and malformed requests are refused without an event (there is no user).
    assert verify(responder, request, access_key_id="ak_nobody")["error"]["code"] == \
        "unauthenticated"
    assert verify(responder, request, string_to_sign="AWS4-HMAC-SHA256\nx")["error"] == {
        "code": "invalid", "message": "string_to_sign must be 4 lines: AWS4-HMAC-SHA256, the "
        "X-Amz-Date, the credential scope and the canonical request's SHA-256"}
    assert verify(responder, request, signature="xyz")["error"]["code"] == "invalid"
    assert len(denials(acl)) == 10


def test_login_and_authenticate(acl: Acl, responder: AclResponder) -> None:
    reply = ask(responder, LOGIN_SUBJECT, {"username": "alice", "password": "alicepass"})
    assert reply["ok"] is True and reply["token"].startswith("ckt1.")
    principal = reply["principal"]
    assert (principal["actor"], principal["account"], principal["role"], principal["domain"]) \
        == ("alice", "mine_acct", "user", "ROOT/par/mine")
    assert principal["key_id"].startswith("token:")
    assert ask(responder, AUTHENTICATE_SUBJECT, {"token": reply["token"]})["principal"] == \
        principal
    root = ask(responder, LOGIN_SUBJECT, {"username": "root", "password": "rootpass1"})
    assert (root["principal"]["account"], root["principal"]["role"]) == (None, "root_admin")
    refused = ask(responder, LOGIN_SUBJECT, {"username": "alice", "password": "wrong-one"})
    assert refused == {"ok": False, "error": {"code": "unauthenticated",
                                              "message": "invalid credentials"}}
    assert ask(responder, AUTHENTICATE_SUBJECT, {"token": "ckt1.x.y"})["error"]["code"] == \
        "unauthenticated"
    assert responder.handle(LOGIN_SUBJECT, b"{nope").startswith(
        b'{"ok":false,"error":{"code":"invalid"')
    assert ask(responder, LOGIN_SUBJECT, {"username": "alice"})["error"]["code"] == "invalid"
    acl.service.disable_user("alice")
    assert "disabled" in ask(responder, AUTHENTICATE_SUBJECT,
                             {"token": reply["token"]})["error"]["message"]


@pytest.mark.parametrize(("header", "message"), [
    ("", "header Authorization is required"),
    ("AWS4-HMAC-SHA1 Credential=a", "must use AWS4-HMAC-SHA256"),
    ("AWS4-HMAC-SHA256 Credential=ak/20260101/r/ec2/aws4_request, SignedHeaders=host",
     "lacks Signature"),
    ("AWS4-HMAC-SHA256 Credential=ak/2026/r/ec2/aws4_request, SignedHeaders=host, "
     "Signature=" + "a" * 64, "YYYYMMDD"),
    ("AWS4-HMAC-SHA256 Credential=ak/20260101/r/ec2/aws4_request, "
     "SignedHeaders=x-amz-date;host, Signature=" + "a" * 64, "sorted"),
    ("AWS4-HMAC-SHA256 Credential=ak/20260101/r/ec2/aws4_request, SignedHeaders=host, "
     "Signature=abc", "64 hex digits"),
])
def test_bad_authorization_headers_are_named(header: str, message: str) -> None:
    with pytest.raises(UnauthenticatedError, match=message):
        parse_authorization(header)


def test_a_missing_signed_header_or_a_swapped_body_is_refused(acl: Acl) -> None:
    key, secret = acl.service.create_key("alice")
    request, _ = sign(secret, key.key_id, "GET", "http://h/")
    auth = ", ".join(f"{k}={v}" for k, v in (
        ("AWS4-HMAC-SHA256 Credential", f"{key.key_id}/{request.authorization.date}/{REGION}/"
                                        f"{SERVICE}/aws4_request"),
        ("SignedHeaders", "host;x-amz-date;x-custom"), ("Signature", "a" * 64)))
    headers = {"Authorization": auth, "Host": "h", "X-Amz-Date": request.amz_date}
    with pytest.raises(UnauthenticatedError, match="signed header 'x-custom' is not"):
        signed_request("GET", "/", "", headers, b"")
    with pytest.raises(UnauthenticatedError, match="X-Amz-Content-SHA256 does not match"):
        signed_request("GET", "/", "", {**headers, "X-Amz-Content-SHA256": "0" * 64}, b"")


def test_a_sigv4_token_ends_when_its_key_is_revoked(acl: Acl, responder: AclResponder) -> None:
    """The token carries the user's rights for 15 minutes, but only while its key is active."""
    key, secret = acl.service.create_key("alice")
    other, _ = acl.service.create_key("alice")
    request, _signer = sign(secret, key.key_id, "GET", f"https://ec2.{REGION}.example/?A=1")
    token = verify(responder, request)["token"]
    login = ask(responder, LOGIN_SUBJECT, {"username": "alice", "password": "alicepass"})
    assert acl.access.authenticate_bearer(token).actor == "alice"
    acl.service.revoke_key(other.key_id)  # another key of hers: no matter
    assert ask(responder, AUTHENTICATE_SUBJECT, {"token": token})["ok"] is True
    acl.service.revoke_key(key.key_id)
    with pytest.raises(UnauthenticatedError, match=f"issued for key {key.key_id}, which is "
                                                    "revoked or expired"):
        acl.access.authenticate_bearer(token)
    refused = ask(responder, AUTHENTICATE_SUBJECT, {"token": token})
    assert refused["error"]["code"] == "unauthenticated"
    # a token from her password login does not hang on any key
    assert acl.access.authenticate_bearer(login["token"]).actor == "alice"


def test_a_replay_is_reported_when_asked_and_the_key_is_checked_every_time(
        acl: Acl, responder: AclResponder) -> None:
    """With report_replay, a signature seen before is answered `replayed` (the service decides
    what a replay gets), but only while the key is live: a revocation ends it at once."""
    key, secret = acl.service.create_key("alice")
    request, _ = sign(secret, key.key_id, "POST", "http://h/", data=b"Action=RunInstances",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    first = verify(responder, request, report_replay=True)
    assert first["ok"] is True and "replayed" not in first
    again = verify(responder, request, report_replay=True)
    assert again["ok"] is True and again["replayed"] is True
    assert again["principal"] == first["principal"]
    refused = verify(responder, request)  # without report_replay: refused, as ever
    assert "used before" in refused["error"]["message"]
    # the same bytes under another key id: that key's secret signs otherwise
    other, _ = acl.service.create_key("alice")
    for key_id in (other.key_id, "ak_nobody"):
        wrong = verify(responder, request, access_key_id=key_id,
                       report_replay=True)
        assert wrong["error"]["code"] == "unauthenticated", wrong
    acl.service.revoke_key(key.key_id)
    revoked = verify(responder, request, report_replay=True)
    assert revoked["error"]["code"] == "unauthenticated"
    assert "was revoked" in revoked["error"]["message"]


def test_authorize_decides_as_the_intake_and_audits_a_denial(
        acl: Acl, responder: AclResponder) -> None:
    """`authorize` answers whether a token's user may send a command on an account's
    resources (EC2's DryRun asks it), runs nothing, and audits a denial."""
    token = ask(responder, LOGIN_SUBJECT, {"username": "alice", "password": "alicepass"})[
        "token"]

    def authorize(command: str, owner: str | None) -> dict[str, Any]:
        return ask(responder, AUTHORIZE_SUBJECT, {"token": token, "command": command,
                                                  "owner": owner})

    allowed = authorize("vm.deploy", "mine_acct")
    assert allowed["ok"] is True and allowed["principal"]["actor"] == "alice"
    assert authorize("vm.stop", "sib_acct")["error"]["code"] == "forbidden"
    acl.service.add_rule(target_kind="role", target="user", effect="deny",
                         pattern="vm.destroy")
    denied = authorize("vm.destroy", "mine_acct")
    assert denied["error"]["code"] == "forbidden" and "deny vm.destroy" in \
        denied["error"]["message"]
    assert authorize("vm.start", "mine_acct")["ok"] is True
    assert [(p, c, o) for p, c, o in denials(acl)] == [
        ("alice", "vm.stop", "sib_acct"), ("alice", "vm.destroy", "mine_acct")]
    bad = ask(responder, AUTHORIZE_SUBJECT, {"token": "ckt1.x.y", "command": "vm.start"})
    assert bad["error"]["code"] == "unauthenticated"
