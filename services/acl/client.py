"""The ACL service over NATS: its wire messages, and `AclClient` for services.

Core NATS request/reply with JSON bodies (served by `services.acl.responder.AclResponder`):

* `cloudkernel.acl.login` `{"username", "password"}` -> `{"ok": true, "token", "principal"}`
* `cloudkernel.acl.authenticate` `{"token"}` -> `{"ok": true, "principal"}`
* `cloudkernel.acl.authorize` `{"token", "command", "owner"}` -> `{"ok": true, "principal"}`
  when the token's user may send the command (a tag, e.g. `vm.deploy`) on the owner account's
  resources, as the platform's intake would decide it; refused `forbidden` otherwise (and the
  denial audited). Nothing is run: a service asks before it acts (EC2's DryRun)
* `cloudkernel.acl.sigv4` `{"access_key_id", "date", "region", "service", "string_to_sign",
  "signature", "report_replay"}` -> `{"ok": true, "principal", "token", "replayed"}`: a
  signature seen before is refused, unless `report_replay` (default false) asks for the answer
  with `"replayed": true` instead
* a refusal: `{"ok": false, "error": {"code": "unauthenticated"|"forbidden"|"invalid"|
  "internal", "message"}}`

The principal is `{"actor", "account", "role", "domain", "key_id"}`: `role` is the ACL role
(`root_admin`, `domain_admin`, `user`), `account` and `domain` the user's (a root admin's
`account` is null: it acts for the whole platform). The token `sigv4` answers is a short-lived
bearer token for the key's user, to send commands as that user (`Authorization: Bearer`).
Secrets never travel: the ACL service derives the key's secret and checks the signature itself.
"""

from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from aggregates.errors import (
    ForbiddenError,
    KernelError,
    UnauthenticatedError,
    ValidationError,
)

SUBJECT_PREFIX = "cloudkernel.acl."
LOGIN_SUBJECT = SUBJECT_PREFIX + "login"
AUTHENTICATE_SUBJECT = SUBJECT_PREFIX + "authenticate"
AUTHORIZE_SUBJECT = SUBJECT_PREFIX + "authorize"
SIGV4_SUBJECT = SUBJECT_PREFIX + "sigv4"
DEFAULT_TIMEOUT = 10.0


class AclUnavailableError(KernelError):
    """The ACL service did not answer (not running, or too slow)."""

    code = "acl_unavailable"


class AclPrincipal(msgspec.Struct, frozen=True, kw_only=True):
    """Who a token or a signature belongs to, as the ACL service says."""

    actor: str
    account: str | None
    role: str
    domain: str | None
    key_id: str


class LoginRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The body of `cloudkernel.acl.login`."""

    username: str
    password: str


class AuthenticateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The body of `cloudkernel.acl.authenticate`."""

    token: str


class AuthorizeRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The body of `cloudkernel.acl.authorize`."""

    token: str
    command: str
    owner: str | None = None


class SigV4Verification(msgspec.Struct, frozen=True, kw_only=True):
    """The body of `cloudkernel.acl.sigv4`: what a service rebuilt from a signed request."""

    access_key_id: str
    date: str
    region: str
    service: str
    string_to_sign: str
    signature: str
    report_replay: bool = False  # answer a replay (`replayed`) rather than refuse it


class SigV4Check(msgspec.Struct, frozen=True, kw_only=True):
    """A verified SigV4 signature: a bearer token for the key's user, the principal, and
    whether the ACL saw this signature before (a replay of a request it verified)."""

    token: str
    principal: AclPrincipal
    replayed: bool


class AclError(msgspec.Struct, frozen=True, kw_only=True):
    """Why the ACL refused."""

    code: str
    message: str


class AclReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every answer of the ACL responder."""

    ok: bool
    principal: AclPrincipal | None = None
    token: str | None = None
    replayed: bool = False  # sigv4 with report_replay: the signature was seen before
    error: AclError | None = None


_ERRORS: dict[str, type[KernelError]] = {"unauthenticated": UnauthenticatedError,
                                          "forbidden": ForbiddenError,
                                          "invalid": ValidationError}
_encode = msgspec.json.Encoder().encode
_reply = msgspec.json.Decoder(AclReply)


class AclClient:
    """Asks the ACL service over NATS; refusals raise UnauthenticatedError, ForbiddenError
    or ValidationError with the ACL's message, no answer AclUnavailableError."""

    def __init__(self, nc: Client, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.nc, self.timeout = nc, timeout

    async def login(self, username: str, password: str) -> tuple[str, AclPrincipal]:
        """A bearer token and its principal for a user name and password."""
        reply = await self._ask(LOGIN_SUBJECT, LoginRequest(username=username,
                                                            password=password))
        return _token(reply), _principal(reply)

    async def authenticate(self, token: str) -> AclPrincipal:
        """The principal of a genuine, unexpired bearer token of an enabled user."""
        return _principal(await self._ask(AUTHENTICATE_SUBJECT,
                                          AuthenticateRequest(token=token)))

    async def authorize(self, token: str, command: str, owner: str | None) -> AclPrincipal:
        """The token's principal, if its user may send `command` on `owner`'s resources (as
        the intake decides it); ForbiddenError naming why not. Nothing is run."""
        return _principal(await self._ask(AUTHORIZE_SUBJECT, AuthorizeRequest(
            token=token, command=command, owner=owner)))

    async def verify_sigv4(self, *, access_key_id: str, date: str, region: str, service: str,
                           string_to_sign: str, signature: str) -> tuple[str, AclPrincipal]:
        """Check a SigV4 signature (see `services.acl.sigv4.signed_request`): a short-lived
        bearer token for the key's user and its principal.

        Refused (UnauthenticatedError): an unknown, revoked or expired key, a disabled user, a
        wrong signature, a credential date more than a day from today, an X-Amz-Date more
        than 15 minutes off, and a signature seen before within that window (a replay: two
        byte-identical requests signed in the same second have the same signature, so a
        service that may see those, e.g. from a poller, asks `check_sigv4`). Refused
        (ForbiddenError): a scoped or read-only key, whose token would carry more rights than
        the key.
        """
        reply = await self._ask(SIGV4_SUBJECT, SigV4Verification(
            access_key_id=access_key_id, date=date, region=region, service=service,
            string_to_sign=string_to_sign, signature=signature))
        return _token(reply), _principal(reply)

    async def check_sigv4(self, *, access_key_id: str, date: str, region: str, service: str,
                          string_to_sign: str, signature: str) -> SigV4Check:
        """As `verify_sigv4`, but a replay of a valid signature of a live key is answered
        (`replayed`) rather than refused, so the service decides what a replay gets: a read
        may be served again, a change its first answer or a refusal. Every other check (the
        key exists, is neither revoked nor expired, its user enabled, the signature matches,
        the date is within the window) is made on every call, so a revocation takes effect at
        once."""
        reply = await self._ask(SIGV4_SUBJECT, SigV4Verification(
            access_key_id=access_key_id, date=date, region=region, service=service,
            string_to_sign=string_to_sign, signature=signature, report_replay=True))
        return SigV4Check(token=_token(reply), principal=_principal(reply),
                          replayed=reply.replayed)

    async def _ask(self, subject: str, body: Any) -> AclReply:
        try:
            msg = await self.nc.request(subject, _encode(body), timeout=self.timeout)
        except (NatsTimeoutError, NoRespondersError) as e:
            raise AclUnavailableError(f"the ACL service did not answer on {subject} "
                                      f"({type(e).__name__}); is it running?") from e
        try:
            reply = _reply.decode(msg.data)
        except msgspec.DecodeError as e:
            raise AclUnavailableError(f"the ACL service answered {subject} with an "
                                      f"unreadable reply: {e}") from e
        if not reply.ok:
            error = reply.error or AclError(code="internal", message="refused, no reason given")
            raise _ERRORS.get(error.code, AclUnavailableError)(error.message)
        return reply


def _principal(reply: AclReply) -> AclPrincipal:
    if reply.principal is None:
        raise AclUnavailableError("the ACL service's reply names no principal")
    return reply.principal


def _token(reply: AclReply) -> str:
    if not reply.token:
        raise AclUnavailableError("the ACL service's reply has no token")
    return reply.token
