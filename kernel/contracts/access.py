"""Signed requests and the access-control port: how a caller proves who it is, the same for
every transport (NATS commands, the admin API, the services' requests).

Requests are signed with HMAC-SHA256 over a canonical string:

    CK1-HMAC-SHA256\\n{timestamp}\\n{subject}\\n{idempotency_key}\\n{sha256_hex(body)}

The key is the secret's text as UTF-8 bytes, the signature is lowercase hex, and the timestamp
is unix seconds as a decimal string, refused when more than 300 s off the server's clock.
Because the idempotency key is signed, a captured request replayed within that window only
replays the first result: it cannot run the command twice.

`AccessControl` is the port through which the platform's edges ask for access decisions; the
composition root plugs in its adapters (the platform's keyring, the ACL service).
"""

import fnmatch
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Literal, Protocol

from aggregates.errors import UnauthenticatedError

SCHEME = "CK1-HMAC-SHA256"
MAX_SKEW_SECONDS = 300
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
KEY_ID_HEADER = "Cloudkernel-Key-Id"
TIMESTAMP_HEADER = "Cloudkernel-Timestamp"
SIGNATURE_HEADER = "Cloudkernel-Signature"

Role = Literal["admin", "integrator"]
ROLES: tuple[Role, ...] = ("admin", "integrator")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")


# --------------------------------------------------------------------------- signing


@dataclass(frozen=True)
class SignedRequest:
    """A request as a gateway received it: what was signed, and the credentials sent along."""

    subject: str
    idempotency_key: str
    body: bytes
    key_id: str = ""
    timestamp: str = ""
    signature: str = ""


def canonical_string(*, timestamp: str, subject: str, idempotency_key: str,
                     body: bytes) -> str:
    """The text a request's signature covers."""
    return "\n".join((SCHEME, timestamp, subject, idempotency_key,
                      hashlib.sha256(body).hexdigest()))


def sign(secret: str, *, timestamp: str | int, subject: str, idempotency_key: str,
         body: bytes) -> str:
    """The hex HMAC-SHA256 signature of a request under `secret`."""
    text = canonical_string(timestamp=str(timestamp), subject=subject,
                            idempotency_key=idempotency_key, body=body)
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def verify(secret: str, request: SignedRequest, *, now: float,
           max_skew: float = MAX_SKEW_SECONDS) -> None:
    """Raise UnauthenticatedError unless the request is fresh and signed with `secret`."""
    if not _TIMESTAMP.match(request.timestamp):
        raise UnauthenticatedError(f"{TIMESTAMP_HEADER} must be unix seconds as a decimal "
                                   f"number, got {request.timestamp[:40]!r}")
    skew = int(request.timestamp) - now
    if abs(skew) > max_skew:
        raise UnauthenticatedError(
            f"{TIMESTAMP_HEADER} is {abs(skew):.0f}s {'ahead of' if skew > 0 else 'behind'} "
            f"the server clock (at most {max_skew:g}s allowed); sign with the current time")
    expected = sign(secret, timestamp=request.timestamp, subject=request.subject,
                    idempotency_key=request.idempotency_key, body=request.body)
    # compare_digest: the time taken must not tell how much of a forged signature was right.
    if not hmac.compare_digest(expected.encode(), request.signature.lower().encode()):
        raise UnauthenticatedError(
            f"{SIGNATURE_HEADER} does not match the request ({SCHEME} over timestamp, subject, "
            "idempotency key and body hash)")


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Principal:
    """Who sent a request: the key, the actor recorded on events, and what it may send."""

    key_id: str
    actor: str
    role: Role
    allowed: tuple[str, ...] = ()
    account: str | None = None  # the account it acts for; None: the whole platform

    def allows(self, command_tag: str) -> bool:
        """Whether this principal may send the command with this tag."""
        if self.role == "admin":
            return True
        return any(fnmatch.fnmatchcase(command_tag, p) for p in self.allowed)


class AccessControl(Protocol):
    """The one interface through which gateways ask for access decisions."""

    def authenticate(self, request: SignedRequest) -> Principal:
        """The principal that signed the request; UnauthenticatedError otherwise."""
        ...

    def authenticate_bearer(self, token: str) -> Principal:
        """The principal of a bearer token (the web page's); UnauthenticatedError otherwise."""
        ...

    def authorize(self, principal: Principal, command_tag: str, *,
                  owner: str | None = None) -> None:
        """Return if the principal may send this command, on a resource of account `owner`
        (None: no resource yet, or not an account's); ForbiddenError otherwise."""
        ...

    def visible_accounts(self, principal: Principal) -> frozenset[str] | None:
        """The accounts whose resources the principal may see; None: every account."""
        ...


def require_signature_headers(request: SignedRequest) -> None:
    """UnauthenticatedError naming the first signature header the request lacks."""
    for header, value in ((KEY_ID_HEADER, request.key_id),
                          (TIMESTAMP_HEADER, request.timestamp),
                          (SIGNATURE_HEADER, request.signature)):
        if not value:
            raise UnauthenticatedError(f"header {header} is required (requests are signed "
                                       f"with {SCHEME})")
