"""The ACL service over NATS: its wire messages, and `AclClient` for services.

Core NATS request/reply with JSON bodies (served by `gateways.acl.responder.AclResponder`):

* `cloudkernel.acl.login` `{"username", "password"}` -> `{"ok": true, "token", "principal"}`
* `cloudkernel.acl.authenticate` `{"token"}` -> `{"ok": true, "principal"}`
* `cloudkernel.acl.sigv4` `{"access_key_id", "date", "region", "service", "string_to_sign",
  "signature"}` -> `{"ok": true, "principal", "token"}`
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


class SigV4Verification(msgspec.Struct, frozen=True, kw_only=True):
    """The body of `cloudkernel.acl.sigv4`: what a service rebuilt from a signed request."""

    access_key_id: str
    date: str
    region: str
    service: str
    string_to_sign: str
    signature: str


class AclError(msgspec.Struct, frozen=True, kw_only=True):
    """Why the ACL refused."""

    code: str
    message: str


class AclReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every answer of the ACL responder."""

    ok: bool
    principal: AclPrincipal | None = None
    token: str | None = None
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

    async def verify_sigv4(self, *, access_key_id: str, date: str, region: str, service: str,
                           string_to_sign: str, signature: str) -> tuple[str, AclPrincipal]:
        """Check a SigV4 signature (see `gateways.acl.sigv4.signed_request`): a short-lived
        bearer token for the key's user and its principal.

        Refused (UnauthenticatedError): an unknown, revoked or expired key, a disabled user, a
        wrong signature, a credential date more than a day from today, an X-Amz-Date more
        than 15 minutes off, and a signature seen before within that window (a replay: two
        byte-identical requests signed in the same second have the same signature, so a
        service that may see those, e.g. a poller, should remember the answer for a verified
        signature itself). Refused (ForbiddenError): a scoped or read-only key, whose token
        would carry more rights than the key.
        """
        reply = await self._ask(SIGV4_SUBJECT, SigV4Verification(
            access_key_id=access_key_id, date=date, region=region, service=service,
            string_to_sign=string_to_sign, signature=signature))
        return _token(reply), _principal(reply)

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
