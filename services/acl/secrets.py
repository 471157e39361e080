"""The ACL's secrets, none of which is ever in its log.

* The master key: 32 random bytes in `<data_dir>/acl-master.key` (mode 0600), made on first use.
* API key secrets are derived, not stored: HMAC-SHA256(master, "apikey:" + key_id) in hex.
* Password hashes (scrypt, n=2^14, r=8, p=1, 16-byte salt) live in `<data_dir>/acl-credentials.json`
  (mode 0600), never in an event.
* Bearer tokens are `ckt1.<base64url payload>.<base64url HMAC-SHA256(master, payload)>`, the
  payload naming the user, the issue and expiry times and a random id.
"""

import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec

from aggregates.errors import ConfigError, UnauthenticatedError
from kernel.store.files import write_private_file

MASTER_KEY_FILE = "acl-master.key"
CREDENTIALS_FILE = "acl-credentials.json"
TOKEN_PREFIX = "ckt1"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


class MasterKey:
    """The ACL's master key; every derived secret changes if it is replaced."""

    def __init__(self, key: bytes):
        if len(key) < 32:
            raise ConfigError("the ACL master key must be at least 32 bytes")
        self._key = key

    @classmethod
    def load_or_create(cls, path: Path) -> "MasterKey":
        """Read the key file, creating it with mode 0600 if it does not exist."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
        mode = os.stat(path).st_mode
        if mode & 0o077:
            raise ConfigError(f"ACL master key {path} is open to other users (mode "
                              f"{mode & 0o777:o}): chmod 600 it")
        return cls(path.read_bytes())

    def mac(self, purpose: str, data: bytes) -> bytes:
        """HMAC-SHA256 of `data` for one purpose (purposes never share a MAC)."""
        return hmac.new(self._key, purpose.encode() + b"\0" + data, hashlib.sha256).digest()

    def key_secret(self, key_id: str) -> str:
        """The secret of an API key, derived from its id."""
        return self.mac("apikey", key_id.encode()).hex()


# --------------------------------------------------------------------------- tokens


class TokenClaims(msgspec.Struct, frozen=True):
    """What a bearer token says."""

    sub: str
    iat: int
    exp: int
    jti: str
    key: str | None = None  # the API key a SigV4 check issued it for: revoking that ends it


_claims = msgspec.json.Decoder(TokenClaims)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(master: MasterKey, username: str, *, now: float, lifetime: float,
                key_id: str | None = None) -> str:
    """A bearer token for `username`, valid `lifetime` seconds (and while API key `key_id`,
    when given, stays active)."""
    claims = TokenClaims(sub=username, iat=int(now), exp=int(now + lifetime),
                         jti=secrets.token_hex(8), key=key_id)
    payload = _b64(msgspec.json.encode(claims))
    return f"{TOKEN_PREFIX}.{payload}.{_b64(master.mac('token', payload.encode()))}"


def read_token(master: MasterKey, token: str, *, now: float) -> TokenClaims:
    """The claims of a genuine, unexpired token; UnauthenticatedError otherwise."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or len(token) > 2000:
        raise UnauthenticatedError("malformed bearer token")
    expected = _b64(master.mac("token", parts[1].encode()))
    if not hmac.compare_digest(expected.encode(), parts[2].encode()):
        raise UnauthenticatedError("bearer token signature does not match (tampered or issued "
                                   "by another server)")
    try:
        claims = _claims.decode(_unb64(parts[1]))
    except (ValueError, msgspec.DecodeError):
        raise UnauthenticatedError("malformed bearer token") from None
    if claims.exp <= now:
        raise UnauthenticatedError(f"bearer token of {claims.sub} expired; log in again")
    return claims


# --------------------------------------------------------------------------- passwords


def hash_password(password: str) -> str:
    """An scrypt hash of the password, with a random salt, as one string."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)  # type: ignore[arg-type]
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Whether `password` matches a hash made by hash_password."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r),
                             p=int(p), maxmem=64 * 1024 * 1024, dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


class CredentialStore:
    """Password hashes by user name, in a private JSON file replaced atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def get(self, username: str) -> str | None:
        """The stored hash of a user's password, if any."""
        return self._read().get(username)

    def set(self, username: str, password_hash: str) -> None:
        """Store (or replace) a user's password hash."""
        with self._exclusive():
            data = self._read()
            data[username] = password_hash
            self._write(data)

    def _read(self) -> dict[str, str]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            return msgspec.json.decode(raw, type=dict[str, str])
        except msgspec.DecodeError as e:
            raise ConfigError(f"ACL credentials file {self.path} is damaged: {e}") from e

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT,
                     0o600)
        try:
            with self._lock:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
        finally:
            os.close(fd)

    def _write(self, data: dict[str, str]) -> None:
        write_private_file(self.path, msgspec.json.encode(data))
