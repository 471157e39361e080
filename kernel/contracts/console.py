"""The console contract: tickets the platform mints and the console service redeems, and the
desk through which the console service reaches a VM's screen and serial console.

**Tickets.** `vm.console` (admin API `POST /v1/vms/{id}/console`, the end-user API, NATS) mints a
ticket for a Running VM: the VM, the user, the kind, an expiry about a minute ahead, and the
SHA-256 of a random secret. The answer (`ConsoleTicketGrant`) carries the token,
`ckc1.<ticket id, hex>.<secret, base64url>`, and the console service's URL with it. The log
holds only the digest, so a reader of the platform's events cannot redeem a ticket. The console
service redeems a token once (`console.redeem`, answered by a `ConsoleRedemption`): the ticket
records the redemption, and a second one is refused.

**The desk.** The console service holds no libvirt connection and never learns a host's VNC
port. Each hypervisor worker that has the console secret answers requests on `DESK_SUBJECT`
(one queue group): a `DeskRequest` names the VM, its host and the kind, carries a fresh nonce
and an expiry, and is signed (HMAC-SHA256) under the console secret that only the hypervisor
workers and the console service hold. The answer is one of `DeskReply`:

- graphics or serial: a `DeskGrant`, the address of the worker's desk (TCP); the console
  service connects there within `DESK_CONNECT_SECONDS`, sends the request's session
  (`desk_session`: derived from its nonce under the secret, never sent on NATS, so that neither
  a reader of the reply nor a replayed request can use the opened console) and a newline;
  from then on the bytes are the VM's VNC server (RFB; the desk opened it through libvirt,
  which authenticated it, so it offers the security type None) or its serial console (a
  libvirt stream), until either side closes;
- screenshot: a `DeskData` with a PNG of the screen (libvirt's screenshot call);
- output: a `DeskData` with the serial console's recent output (up to `OUTPUT_BYTES`);
- refused or failed: a `DeskError` saying why.
"""

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal
from uuid import UUID

import msgspec

from aggregates.errors import ConfigError, KernelError, ValidationError

__all__ = [
    "DESK_CONNECT_SECONDS",
    "DESK_QUEUE",
    "DESK_REQUEST_SECONDS",
    "DESK_SUBJECT",
    "KINDS",
    "OUTPUT_BYTES",
    "TICKET_SECONDS",
    "ConsoleRedemption",
    "ConsoleTicketGrant",
    "DeskData",
    "DeskError",
    "DeskGrant",
    "DeskListen",
    "DeskRefusedError",
    "DeskReply",
    "DeskRequest",
    "Kind",
    "check_desk_request",
    "console_password",
    "desk_session",
    "load_console_secret",
    "make_token",
    "read_token",
    "secret_digest",
    "sign_desk_request",
]

Kind = Literal["graphics", "serial", "screenshot", "output"]
KINDS: tuple[str, ...] = ("graphics", "serial", "screenshot", "output")
TICKET_SECONDS = 60.0
TOKEN_PREFIX = "ckc1"
DESK_SUBJECT = "cloudkernel.console.desk"
DESK_QUEUE = "console-desk"
DESK_REQUEST_SECONDS = 30.0  # a signed desk request is good this long
DESK_CONNECT_SECONDS = 10.0  # a desk session must be connected within this
OUTPUT_BYTES = 64 * 1024  # AWS returns the most recent 64 KB


# --------------------------------------------------------------------------- secrets


def console_password(secret: bytes, vm_id: UUID) -> str:
    """The VM's console password: HMAC-SHA256 of its id under the console secret, as 8
    base32 characters (VNC reads no more than 8).

    Why derived, not recorded: step arguments and results are events in the platform's log
    and on its NATS stream, which integrators and tenants' services read, so a password in
    them would be readable by them. Derived, it is written only into the domain's definition
    on its host (libvirt shows it to privileged clients only), and whoever holds the secret
    (the hypervisor worker) computes it again from the VM's id; nothing else needs to store
    it. Rotating the secret changes the passwords of domains defined after the change.
    """
    digest = hmac.new(secret, b"cloudkernel-console:" + vm_id.bytes, hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii")[:8].lower()


def load_console_secret(path: str | Path, *, create: bool = True,
                        owner: str = "console") -> bytes:
    """The console secret in `path`, made (32 random bytes, hex, mode 0600) if missing and
    `create`; `owner` names who asked, in the error."""
    if not isinstance(path, str | Path) or not str(path):
        raise ConfigError(f"{owner}: config 'console_secret_file' must be a path, got {path!r}")
    file = Path(path)
    try:
        if create and not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
        secret = file.read_text().strip()
    except FileExistsError:  # another process made it meanwhile
        secret = file.read_text().strip()
    except OSError as e:
        raise ConfigError(f"{owner}: config 'console_secret_file' {path}: {e}") from e
    if len(secret) < 16:
        raise ConfigError(f"{owner}: console secret in {path} is shorter than 16 characters")
    return secret.encode()


# --------------------------------------------------------------------------- tickets


class ConsoleTicketGrant(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to `vm.console`: open `url` (which carries `token`) before `expires_at`."""

    ticket_id: UUID
    vm_id: UUID
    kind: Kind
    url: str
    token: str
    expires_at: datetime


class ConsoleRedemption(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to `console.redeem`: whose console of which VM, on which host."""

    ticket_id: UUID
    vm_id: UUID
    host_uri: str
    kind: Kind
    user: str
    account: str | None = None
    expires_at: datetime


def make_token(ticket_id: UUID) -> tuple[str, str]:
    """A new token for the ticket, and the digest its ticket records."""
    secret = secrets.token_bytes(32)
    token = (f"{TOKEN_PREFIX}.{ticket_id.hex}."
             f"{base64.urlsafe_b64encode(secret).decode('ascii').rstrip('=')}")
    return token, secret_digest(secret)


def read_token(token: object) -> tuple[UUID, str]:
    """The ticket id and secret digest of a token; a malformed one is a ValidationError that
    says nothing of any ticket."""
    bad = ValidationError("token: not a console token")
    if not isinstance(token, str) or len(token) > 200:
        raise bad
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise bad
    try:
        ticket_id = UUID(hex=parts[1])
        secret = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
    except (ValueError, binascii.Error):
        raise bad from None
    if len(secret) != 32:
        raise bad
    return ticket_id, secret_digest(secret)


def secret_digest(secret: bytes) -> str:
    """What a ticket records of its secret: SHA-256, hex."""
    return hashlib.sha256(b"cloudkernel-console-ticket:" + secret).hexdigest()


# --------------------------------------------------------------------------- the desk


class DeskRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Open (or read) a VM's console on its host; signed under the console secret."""

    vm_id: UUID
    host_uri: str
    kind: Kind
    nonce: str
    expires_at: float  # seconds since the epoch
    signature: str = ""


class DeskGrant(msgspec.Struct, frozen=True, kw_only=True, tag="grant"):
    """Connect to `address` (host:port) and send the request's `desk_session` and a newline
    (`session` stays empty: the session is never on the wire before the connection)."""

    address: str
    expires_at: float
    session: str = ""


class DeskData(msgspec.Struct, frozen=True, kw_only=True, tag="data"):
    """A screenshot (image/png) or the recent serial output (text/plain)."""

    content_type: str
    data: bytes


class DeskError(msgspec.Struct, frozen=True, kw_only=True, tag="error"):
    """Why the desk refused or failed: `code` is refused, not_found, unavailable or busy."""

    code: str
    error: str


DeskReply = DeskGrant | DeskData | DeskError


@dataclass(frozen=True, slots=True)
class DeskListen:
    """Where a hypervisor worker's desk listens for the console service (TCP): `host` and
    `port` (0: any free one) to bind, and the host name or address to give out in grants
    (empty: `host`, or this machine's name when `host` is a wildcard)."""

    host: str = "127.0.0.1"
    port: int = 0
    advertise: str = ""


class DeskRefusedError(KernelError):
    """What the desk's driver raises when it cannot serve a request: `code` is a
    `DeskError` code (not_found, unavailable, busy)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def _mac(secret: bytes, request: DeskRequest) -> str:
    unsigned = msgspec.json.encode(msgspec.structs.replace(request, signature=""))
    return hmac.new(secret, b"cloudkernel-desk:" + unsigned, hashlib.sha256).hexdigest()


def sign_desk_request(secret: bytes, *, vm_id: UUID, host_uri: str, kind: Kind,
                      now: float | None = None) -> DeskRequest:
    """A fresh desk request for the VM's console of `kind`, signed under `secret`."""
    now = time.time() if now is None else now
    request = DeskRequest(vm_id=vm_id, host_uri=host_uri, kind=kind,
                          nonce=secrets.token_hex(16), expires_at=now + DESK_REQUEST_SECONDS)
    return msgspec.structs.replace(request, signature=_mac(secret, request))


def desk_session(secret: bytes, request: DeskRequest) -> str:
    """The one-time session of a granted request: what only holders of the secret compute."""
    return hmac.new(secret, b"cloudkernel-desk-session:" + request.nonce.encode(),
                    hashlib.sha256).hexdigest()


def check_desk_request(secret: bytes, request: DeskRequest, *, now: float | None = None) -> None:
    """Raise ValidationError unless `request` is signed under `secret` and unexpired (the
    desk also refuses a nonce it has seen)."""
    now = time.time() if now is None else now
    if not hmac.compare_digest(_mac(secret, request), request.signature):
        raise ValidationError("desk request: bad signature")
    if not now <= request.expires_at <= now + 2 * DESK_REQUEST_SECONDS:
        raise ValidationError("desk request: expired or from the future")
    if request.kind not in KINDS:
        raise ValidationError(f"desk request: unknown kind {request.kind!r}")
