"""AclResponder: the ACL service answering services over NATS (login, tokens, SigV4).

It serves `cloudkernel.acl.login`, `.authenticate`, `.authorize` and `.sigv4` (wire format in
`services.acl.client`) in the queue group `cloudkernel-acl`, so several responders share the
load. The ACL calls block (the store, scrypt), so they run in a small thread pool; the event
loop only moves bytes.

SigV4 (`verify_sigv4`): the access key id is an ACL API key id and its secret is the one the
ACL derives (`MasterKey.key_secret`), so the secret never leaves this process. Checked, the
first failure winning: the request's form; the key exists; the credential date is within a day
of today and the string to sign's X-Amz-Date within `max_skew` (15 minutes, as AWS) of now, on
the same scope; the signature (constant-time compare); the key is neither revoked nor
expired; its user is enabled; the signature was not seen before within the window (a replay;
with `report_replay` the answer says `replayed` instead, the key's state checked all the
same). Every refusal after the key is found is an AccessDenied event on the ACL log (at most
one a second per key, as `AclAccess` does).

A verified signature yields a bearer token (`issue_token`, 15 minutes) for the key's user, so
a service can send commands as that user. Such a token carries the user's rights, not the
key's: a scoped or read-only key would gain rights through it. So the responder refuses
(`forbidden`) to verify a scoped or read-only key's signature; those keys sign commands with
CK1-HMAC-SHA256 directly to the intake, where their limits apply.
"""

import asyncio
import hmac
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg

from aggregates.errors import (
    ForbiddenError,
    KernelError,
    UnauthenticatedError,
    ValidationError,
)
from kernel.contracts.requests import Answer, answer_requests
from services.acl.access import (
    TOKEN_KEY_PREFIX,
    AclAccess,
    RefusalAudit,
    ReplayCache,
    key_user,
    live_user,
    token_user,
)
from services.acl.client import (
    AUTHENTICATE_SUBJECT,
    AUTHORIZE_SUBJECT,
    LOGIN_SUBJECT,
    SIGV4_SUBJECT,
    AclError,
    AclPrincipal,
    AclReply,
    AuthenticateRequest,
    AuthorizeRequest,
    LoginRequest,
    SigV4Verification,
)
from services.acl.model import AclApiKey, AclUser
from services.acl.model.rules import ROLE_ROOT_ADMIN
from services.acl.secrets import issue_token, read_token
from services.acl.service import AclService
from services.acl.sigv4 import ALGORITHM, TERMINATOR, amz_time, check_scope, signature

log = logging.getLogger(__name__)

QUEUE_GROUP = "cloudkernel-acl"
MAX_SKEW_SECONDS = 900.0
SIGV4_TOKEN_SECONDS = 900.0
MAX_BODY = 16 * 1024
SIGV4_COMMAND = "acl.sigv4"
_HEX = frozenset("0123456789abcdef")
_AMZ_DATE = re.compile(r"^[0-9]{8}T[0-9]{6}Z$")
_encode = msgspec.json.Encoder().encode
_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    LOGIN_SUBJECT: msgspec.json.Decoder(LoginRequest),
    AUTHENTICATE_SUBJECT: msgspec.json.Decoder(AuthenticateRequest),
    AUTHORIZE_SUBJECT: msgspec.json.Decoder(AuthorizeRequest),
    SIGV4_SUBJECT: msgspec.json.Decoder(SigV4Verification),
}
_CODES: tuple[tuple[type[KernelError], str], ...] = (
    (UnauthenticatedError, "unauthenticated"), (ForbiddenError, "forbidden"),
    (ValidationError, "invalid"))


def principal_of(user: AclUser, key_id: str) -> AclPrincipal:
    """The wire principal of an ACL user (a root admin acts for no one account)."""
    return AclPrincipal(actor=user.username,
                        account=None if user.role == ROLE_ROOT_ADMIN else user.account,
                        role=user.role, domain=user.domain_path, key_id=key_id)


@dataclass
class AclResponder:
    """Serves the ACL's NATS subjects until told to stop; `handle` is its synchronous core."""

    service: AclService
    servers: Sequence[str]
    threads: int = 4
    max_in_flight: int = 64
    clock: Callable[[], float] = time.time
    max_skew: float = MAX_SKEW_SECONDS
    sigv4_token_seconds: float = SIGV4_TOKEN_SECONDS
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        # A signature stays valid 2 x skew (X-Amz-Date from now - skew to now + skew).
        self.replays = ReplayCache(2 * self.max_skew + 1)
        self._audit_refusal = RefusalAudit(self.service)
        self._access = AclAccess(self.service, clock=self.clock, max_skew=self.max_skew)
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="acl")

    # ------------------------------------------------------------------ the decisions

    def handle(self, subject: str, data: bytes) -> bytes:
        """The encoded reply to one request; never raises."""
        try:
            if len(data) > MAX_BODY:
                raise ValidationError(f"request body over {MAX_BODY} bytes")
            decoder = _decoders.get(subject)
            if decoder is None:
                raise ValidationError(f"no ACL request {subject[:80]!r}")
            try:
                request = decoder.decode(data)
            except msgspec.DecodeError as e:
                raise ValidationError(f"{subject}: {e}") from None
            reply = self._answer(request)
        except Exception as e:
            reply = AclReply(ok=False, error=_error(e, subject))
        return _encode(reply)

    def _answer(self, request: Any) -> AclReply:
        if isinstance(request, LoginRequest):
            token = self.service.login(request.username, request.password)
            return AclReply(ok=True, token=token, principal=self.authenticate(token))
        if isinstance(request, AuthenticateRequest):
            return AclReply(ok=True, principal=self.authenticate(request.token))
        if isinstance(request, AuthorizeRequest):
            return AclReply(ok=True, principal=self.authorize(request))
        token, principal, replayed = self.check_sigv4(request)
        return AclReply(ok=True, token=token, principal=principal, replayed=replayed)

    def authenticate(self, token: str) -> AclPrincipal:
        """The principal of a genuine, unexpired token of an enabled user."""
        now = self.clock()
        claims = read_token(self.service.master, token, now=now)
        return principal_of(token_user(self.service.directory, claims, now),
                            TOKEN_KEY_PREFIX + claims.jti)

    def authorize(self, request: AuthorizeRequest) -> AclPrincipal:
        """The principal of a token whose user may send the command on the owner's resources,
        decided as the intake decides it (`AclAccess.authorize`: a refusal is ForbiddenError
        and an AccessDenied event)."""
        principal = self.authenticate(request.token)
        self._access.authorize(self._access.authenticate_bearer(request.token), request.command,
                               owner=request.owner)
        return principal

    def verify_sigv4(self, request: SigV4Verification) -> tuple[str, AclPrincipal]:
        """A bearer token and the principal of a valid SigV4 signature (see the module)."""
        token, principal, _replayed = self.check_sigv4(request)
        return token, principal

    def check_sigv4(self, request: SigV4Verification) -> tuple[str, AclPrincipal, bool]:
        """`verify_sigv4`, and whether the signature is a replay (only with
        `request.report_replay`: otherwise a replay is refused)."""
        amz_date = _check_form(request)
        directory = self.service.directory
        directory.refresh()
        key = directory.keys.get(request.access_key_id)
        if key is None:
            raise UnauthenticatedError(f"unknown access key id {request.access_key_id[:64]!r}")
        now = self.clock()
        try:
            user, replayed = self._check_key(key, request, amz_date, now)
            if key.scope or key.read_only:
                limits = "read-only" if key.read_only else f"scoped to {', '.join(key.scope)}"
                raise ForbiddenError(
                    f"key {key.key_id} is {limits}: a SigV4 request yields a bearer token with "
                    "all of the user's rights, so only an unrestricted key may sign one (send "
                    "this key's commands to the NATS intake with CK1-HMAC-SHA256 instead)")
        except (UnauthenticatedError, ForbiddenError) as e:
            self._audit_refusal(key.username, key.key_id, f"{SIGV4_COMMAND} {request.service}",
                                str(e), now)
            raise
        lifetime = min(self.sigv4_token_seconds, self.service.token_lifetime)
        token = issue_token(self.service.master, user.username, now=now, lifetime=lifetime,
                            key_id=key.key_id)
        return token, principal_of(user, key.key_id), replayed

    def _check_key(self, key: AclApiKey, request: SigV4Verification, amz_date: str,
                   now: float) -> tuple[AclUser, bool]:
        scope = request.string_to_sign.split("\n")[2]
        expected = f"{request.date}/{request.region}/{request.service}/{TERMINATOR}"
        if scope != expected or amz_date[:8] != request.date:
            raise UnauthenticatedError(f"the string to sign's scope {scope[:80]!r} (signed at "
                                       f"{amz_date}) is not the credential's {expected!r}")
        today = datetime.fromtimestamp(now, UTC).date()
        scope_date = datetime.strptime(request.date, "%Y%m%d").date()
        if abs((scope_date - today).days) > 1:
            raise UnauthenticatedError(f"credential date {request.date} is more than a day "
                                       f"from today ({today:%Y%m%d}); sign with today's date")
        skew = amz_time(amz_date).timestamp() - now
        if abs(skew) > self.max_skew:
            raise UnauthenticatedError(
                f"X-Amz-Date {amz_date} is {abs(skew):.0f}s "
                f"{'ahead of' if skew > 0 else 'behind'} the server clock (at most "
                f"{self.max_skew:g}s allowed); sign with the current time")
        expected = signature(self.service.master.key_secret(key.key_id), request.date,
                             request.region, request.service, request.string_to_sign)
        # compare_digest: the time taken must not tell how much of a forged signature was right.
        if not hmac.compare_digest(expected.encode(), request.signature.lower().encode()):
            raise UnauthenticatedError("the SigV4 signature does not match the request (check "
                                       "the secret key and how the request was signed)")
        if not request.report_replay:
            return key_user(self.service.directory, key, self.replays, request.signature,
                            now), False
        user = live_user(self.service.directory, key, now)
        return user, not self.replays.first_use(request.signature.lower(), now)

    # ------------------------------------------------------------------ the NATS loop

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; then answer the requests in flight and close."""

        def failed(e: Exception, msg: Msg) -> Answer:
            return _encode(AclReply(ok=False, error=_error(e, msg.subject))), None

        await answer_requests(
            servers=self.servers, name="cloudkernel-acl",
            subjects=[LOGIN_SUBJECT, AUTHENTICATE_SUBJECT, AUTHORIZE_SUBJECT, SIGV4_SUBJECT],
            queue=QUEUE_GROUP,
            executor=self._executor, answer=lambda msg: (self.handle(msg.subject, msg.data), None),
            failed=failed, stop=stop, ready=self.ready, max_in_flight=self.max_in_flight)


def _check_form(request: SigV4Verification) -> str:
    """The string to sign's X-Amz-Date, once every field is well formed and agrees."""
    try:
        check_scope(access_key_id=request.access_key_id, date=request.date,
                    region=request.region, service=request.service)
    except UnauthenticatedError as e:
        raise ValidationError(str(e)) from None
    if len(request.signature) != 64 or not set(request.signature.lower()) <= _HEX:
        raise ValidationError("signature must be 64 hex digits")
    lines = request.string_to_sign.split("\n")
    if len(request.string_to_sign) > 1024 or len(lines) != 4 or lines[0] != ALGORITHM \
            or len(lines[3]) != 64 or not set(lines[3]) <= _HEX:
        raise ValidationError(f"string_to_sign must be 4 lines: {ALGORITHM}, the X-Amz-Date, "
                              "the credential scope and the canonical request's SHA-256")
    amz_date = lines[1]
    try:
        if not _AMZ_DATE.match(amz_date):
            raise ValueError(amz_date)
        amz_time(amz_date)
    except ValueError:
        raise ValidationError(f"string_to_sign's date must be YYYYMMDDTHHMMSSZ, got "
                              f"{amz_date[:20]!r}") from None
    return amz_date


def _error(e: BaseException, subject: str) -> AclError:
    code = next((c for t, c in _CODES if isinstance(e, t)), "internal")
    if code != "internal":
        log.info("acl: %s refused (%s): %s", subject[:80], code, e)
        return AclError(code=code, message=str(e))
    if isinstance(e, KernelError):  # e.g. LDAP unreachable: said, not hidden
        log.warning("acl: %s failed: %s", subject[:80], e)
        return AclError(code="internal", message=str(e))
    ref = uuid.uuid4()
    log.error("acl: %s failed (reference %s)", subject[:80], ref, exc_info=e)
    return AclError(code="internal", message=f"internal error (reference {ref})")
