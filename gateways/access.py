"""The platform's own keyring and the access adapters built on it.

`KeyringAccess` decides for the keys of a keyring file (the admin key `up` prints on its first
start, integrators' keys); `LayeredAccess` asks several `AccessControl`s in turn, so the ACL
service's users and the keyring's keys work side by side. The signing scheme and the port are
the public contract in `kernel.contracts.access`.
"""

import contextlib
import fcntl
import logging
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from aggregates.errors import (
    ConfigError,
    ForbiddenError,
    NotFoundError,
    UnauthenticatedError,
    ValidationError,
)
from kernel.contracts.access import (
    MAX_SKEW_SECONDS,
    ROLES,
    SCHEME,
    AccessControl,
    Principal,
    Role,
    SignedRequest,
    require_signature_headers,
    verify,
)
from kernel.settings import Settings
from kernel.store.files import write_private_file

_ACTOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,99}$")
_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]-]{1,100}$")
MAX_EXPIRY_DAYS = 36500
log = logging.getLogger(__name__)


# Commands whose refusal by the platform itself (not by access control) is audited in the
# access control's denial log: a refused console redemption (replayed, expired or forged
# link) writes nothing to the platform's log, yet must leave a trace.
AUDITED_REFUSALS: frozenset[str] = frozenset({"console.redeem"})


def audit_refused_command(access: AccessControl, principal: Principal, command_tag: str,
                          reason: str) -> None:
    """Record that the platform refused `principal`'s command, in the denial log of the
    access control (when it keeps one); a failure to record is logged, never raised."""
    audit = getattr(access, "audit_refusal", None)
    if audit is None:
        return
    try:
        audit(principal=principal.actor, key_id=principal.key_id, command=command_tag,
              reason=reason[:500], credentials=False)
    except Exception:  # the refusal stands: its audit is best effort
        log.exception("could not audit the refused %s of %s", command_tag, principal.actor)


# --------------------------------------------------------------------------- the keyring


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """One key of the keyring file."""

    id: str
    secret: str
    actor: str
    role: Role
    allow: tuple[str, ...] = ()
    created: datetime
    expires: datetime | None = None
    revoked: bool = False
    revoked_at: datetime | None = None

    def status(self, now: datetime) -> str:
        """`active`, `revoked` or `expired`."""
        if self.revoked:
            return "revoked"
        return "expired" if self.expires is not None and self.expires <= now else "active"


class _KeyringFile(msgspec.Struct, kw_only=True):
    version: int = 1
    keys: list[ApiKey] = msgspec.field(default_factory=list)


_file_decoder = msgspec.json.Decoder(_KeyringFile)
_file_encoder = msgspec.json.Encoder()


def keys_path(settings: Settings) -> Path:
    """The keyring file: setting keys_file, else `<data_dir>/keys.json`."""
    return Path(settings.keys_file).expanduser() if settings.keys_file \
        else settings.data_dir / "keys.json"


class Keyring:
    """A JSON file of keys, private to its owner (mode 0600), replaced atomically on change."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._by_id: dict[str, ApiKey] = {}

    def entries(self) -> list[ApiKey]:
        """Every key in the file, in creation order (none if there is no file)."""
        try:
            data = self.path.read_bytes()
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return []
        except OSError as e:
            raise ConfigError(f"keyring {self.path}: {e.strerror or e}") from e
        if mode & 0o077:
            raise ConfigError(f"keyring {self.path} is open to other users (mode "
                              f"{mode & 0o777:o}); it holds secrets: chmod 600 it")
        try:
            return _file_decoder.decode(data).keys
        except msgspec.DecodeError as e:
            raise ConfigError(f"keyring {self.path} is not a valid keyring file: {e}") from e

    def get(self, key_id: str) -> ApiKey | None:
        """The key with this id; the file is read again whenever it was replaced."""
        with self._lock:
            try:
                st = os.stat(self.path)
                seen: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                seen = None
            if seen != self._seen or seen is None:
                self._by_id = {k.id: k for k in self.entries()}
                self._seen = seen
            return self._by_id.get(key_id)

    def create(self, *, actor: str, role: str, allow: Iterable[str] = (),
               expires_in_days: float | None = None, now: datetime | None = None) -> ApiKey:
        """Add a new key with a random secret; bad input raises ValidationError."""
        allow = tuple(allow)
        _check_new_key(actor, role, allow, expires_in_days)
        now = now or datetime.now(UTC)
        expires = None if expires_in_days is None else now + timedelta(days=expires_in_days)
        key = ApiKey(id="ck_" + secrets.token_hex(8), secret=secrets.token_hex(32),
                     actor=actor, role=role, allow=allow,  # type: ignore[arg-type]
                     created=now, expires=expires)
        with self._exclusive():
            self._write([*self.entries(), key])
        return key

    def revoke(self, key_id: str, now: datetime | None = None) -> tuple[ApiKey, bool]:
        """Revoke a key for good; returns it and whether it was active before."""
        with self._exclusive():
            keys = self.entries()
            for i, key in enumerate(keys):
                if key.id == key_id:
                    if key.revoked:
                        return key, False
                    keys[i] = msgspec.structs.replace(key, revoked=True,
                                                      revoked_at=now or datetime.now(UTC))
                    self._write(keys)
                    return keys[i], True
        raise NotFoundError(f"no key {key_id!r} in keyring {self.path} (see `cloudkernel keys "
                            "list`)")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        # Two `keys` commands at once must not lose each other's change.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, keys: list[ApiKey]) -> None:
        write_private_file(self.path, _file_encoder.encode(_KeyringFile(keys=keys)))


def _check_new_key(actor: str, role: str, allow: tuple[str, ...],
                   expires_in_days: float | None) -> None:
    if not isinstance(actor, str) or not _ACTOR.match(actor):
        raise ValidationError(f"actor must be 1-100 letters, digits or '_.@:-', starting with a "
                              f"letter or digit, got {actor!r}")
    if actor == "system" or actor.startswith("subsystem:"):
        raise ValidationError(f"actor {actor!r} is reserved for the kernel's own events")
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if role == "admin" and allow:
        raise ValidationError("an admin key may send every command: give --allow only to "
                              "integrator keys")
    if role == "integrator" and not allow:
        raise ValidationError("an integrator key needs at least one --allow TAG (e.g. "
                              "operation.cancel or operation.*)")
    for pattern in allow:
        if not isinstance(pattern, str) or not _PATTERN.match(pattern):
            raise ValidationError(f"--allow {pattern!r}: a command tag or glob like "
                                  "operation.* (letters, digits, '_.-*?[]')")
    if expires_in_days is not None and (
            isinstance(expires_in_days, bool) or not isinstance(expires_in_days, int | float)
            or not math.isfinite(expires_in_days)
            or not 0 < expires_in_days <= MAX_EXPIRY_DAYS):
        raise ValidationError(f"--expires-in must be a number of days above 0 and at most "
                              f"{MAX_EXPIRY_DAYS}, got {expires_in_days!r}")


class KeyringAccess:
    """AccessControl backed by a Keyring: admins may send everything, integrators what
    their key lists."""

    def __init__(self, keyring: Keyring, *, clock: Callable[[], float] = time.time,
                 max_skew: float = MAX_SKEW_SECONDS):
        self.keyring, self.clock, self.max_skew = keyring, clock, max_skew

    def authenticate(self, request: SignedRequest) -> Principal:
        """The principal of a fresh request signed with an active key of the keyring."""
        require_signature_headers(request)
        key = self.keyring.get(request.key_id)
        if key is None:
            raise UnauthenticatedError(f"unknown key id {request.key_id[:64]!r}")
        now = self.clock()
        # The signature first: whoever lacks the secret learns nothing about the key's state.
        verify(key.secret, request, now=now, max_skew=self.max_skew)
        if key.revoked:
            raise UnauthenticatedError(f"key {key.id} was revoked")
        if key.expires is not None and key.expires.timestamp() <= now:
            raise UnauthenticatedError(f"key {key.id} expired at {key.expires.isoformat()}")
        return Principal(key_id=key.id, actor=key.actor, role=key.role, allowed=key.allow)

    def authenticate_bearer(self, token: str) -> Principal:
        """A keyring has no bearer tokens: they come from the ACL service."""
        raise UnauthenticatedError("bearer tokens are not accepted here: sign the request "
                                   f"with {SCHEME}")

    def visible_accounts(self, principal: Principal) -> frozenset[str] | None:
        """A keyring's keys are platform-wide: every account."""
        return None

    def authorize(self, principal: Principal, command_tag: str, *,
                  owner: str | None = None) -> None:
        """Refuse, naming what the key allows, a command the principal may not send (keys
        are platform-wide, so the resource's owner does not matter)."""
        if not principal.allows(command_tag):
            raise ForbiddenError(
                f"key {principal.key_id} ({principal.actor}, {principal.role}) may not send "
                f"{command_tag}; it allows {', '.join(principal.allowed) or 'nothing'}")


class LayeredAccess:
    """AccessControl over two sources: the keys of the file keyring (the platform's own admin
    and integrator keys, made with `cloudkernel keys`) and everything else from `primary`
    (the ACL service: its users' keys and bearer tokens). Each decision goes to the source
    that authenticated the principal."""

    def __init__(self, primary: AccessControl, keyring: KeyringAccess) -> None:
        self.primary, self.keyring = primary, keyring

    def _source(self, key_id: str) -> AccessControl:
        return self.keyring if key_id and self.keyring.keyring.get(key_id) is not None \
            else self.primary

    def authenticate(self, request: SignedRequest) -> Principal:
        """By the keyring for its keys, else by the primary source; a keyring key's refused
        request is audited by the primary source, as its own keys' are."""
        if self._source(request.key_id) is self.primary:
            return self.primary.authenticate(request)
        try:
            return self.keyring.authenticate(request)
        except UnauthenticatedError as e:
            key = self.keyring.keyring.get(request.key_id)
            self._audit(key.actor if key is not None else "", request.key_id, request.subject,
                        str(e), credentials=True)
            raise

    def authenticate_bearer(self, token: str) -> Principal:
        """Bearer tokens are the primary source's."""
        return self.primary.authenticate_bearer(token)

    def authorize(self, principal: Principal, command_tag: str, *,
                  owner: str | None = None) -> None:
        """Decided by the source that authenticated the principal (a keyring key's refusal
        audited by the primary source)."""
        if self._source(principal.key_id) is self.primary:
            self.primary.authorize(principal, command_tag, owner=owner)
            return
        try:
            self.keyring.authorize(principal, command_tag, owner=owner)
        except ForbiddenError as e:
            self._audit(principal.actor, principal.key_id, command_tag, str(e),
                        credentials=False)
            raise

    def _audit(self, actor: str, key_id: str, command: str, reason: str, *,
               credentials: bool) -> None:
        audit = getattr(self.primary, "audit_refusal", None)
        if audit is not None:
            audit(principal=actor, key_id=key_id, command=command, reason=reason,
                  credentials=credentials)

    def audit_refusal(self, *, principal: str, key_id: str, command: str, reason: str,
                      credentials: bool) -> None:
        """Record a refusal decided elsewhere (a command its handler refused) where the
        primary source audits its own."""
        self._audit(principal, key_id, command, reason, credentials=credentials)

    def visible_accounts(self, principal: Principal) -> frozenset[str] | None:
        """As the source that authenticated the principal says."""
        return self._source(principal.key_id).visible_accounts(principal)

    def governs(self, account: str) -> bool:
        """Whether the primary source keeps limits for this account."""
        governs = getattr(self.primary, "governs", None)
        return bool(governs is not None and governs(account))

    def domain_accounts(self, account: str) -> dict[str, tuple[str, ...]]:
        """The accounts of each limited domain above `account` (the primary source's)."""
        subtrees = getattr(self.primary, "domain_accounts", None)
        return {} if subtrees is None else dict(subtrees(account))

    def check_limits(self, account: str, usage: Mapping[str, int], delta: Mapping[str, int],
                     *, domain_usage: Mapping[str, Mapping[str, int]] | None = None) -> None:
        """The primary source's limits of the account and of the domains above it."""
        check = getattr(self.primary, "check_limits", None)
        if check is not None:
            check(account, usage, delta, domain_usage=domain_usage)
