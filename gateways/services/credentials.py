"""A service's own key: made once in the platform's keyring, kept in a private file.

The key's actor is `service:<name>` and its role `integrator`; it may send `service.register`
(for its own name only: the handler checks it) and what the service's system VMs need. The
secret is kept in `<data_dir>/services/<name>.key` (mode 0600), so a restarted service signs
with the same key. A key that was revoked or expired is replaced by a new one.
"""

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aggregates.errors import ConfigError
from aggregates.service import require_service_name
from gateways.access import Keyring, keys_path, write_private_file
from kernel.settings import Settings

SERVICE_ALLOW: tuple[str, ...] = ("service.register", "vm.deploy", "vm.start", "vm.stop")


@dataclass(frozen=True)
class ServiceCredentials:
    """The key a service signs its commands with."""

    key_id: str
    secret: str

    def __repr__(self) -> str:
        return f"ServiceCredentials(key_id={self.key_id!r}, secret=...)"


def service_actor(name: str) -> str:
    """The actor a service's own key records on events."""
    return f"service:{name}"


def credentials_path(data_dir: Path, name: str) -> Path:
    """Where a service's key is kept."""
    return Path(data_dir) / "services" / f"{name}.key"


def service_credentials(settings: Settings, name: str) -> ServiceCredentials:
    """The service's key: the kept one while the keyring still has it active, else a new one
    made in the keyring and kept (0600).

    On a machine without the platform's keyring (a service deployed elsewhere), a kept key is
    used as it is, and the platform's intake decides: copy it there from the file
    `cloudkernel services key NAME --out FILE` writes on the platform's machine. Without one,
    a key is made in a keyring of this machine, which the platform will not know.
    """
    require_service_name(name)
    path = credentials_path(settings.data_dir, name)
    if not keys_path(settings).is_file():
        kept = _read(path)
        if kept is not None:
            return kept  # a machine without the platform's keyring: the intake decides
    return _from_keyring(settings, name)


def _from_keyring(settings: Settings, name: str) -> ServiceCredentials:
    """The kept key while the platform's keyring has it active, else a new one made there."""
    path = credentials_path(settings.data_dir, name)
    keyring = Keyring(keys_path(settings))
    with _locked(path):
        kept = _read(path)
        if kept is not None:
            key = keyring.get(kept.key_id)
            if key is not None and key.secret == kept.secret \
                    and key.status(datetime.now(UTC)) == "active":
                return kept
        key = keyring.create(actor=service_actor(name), role="integrator", allow=SERVICE_ALLOW)
        made = ServiceCredentials(key.id, key.secret)
        _write(path, made)
        return made


def export_credentials(settings: Settings, name: str, out: Path) -> ServiceCredentials:
    """Write the service's key (made in the platform's keyring if needed) to `out` (0600),
    for a machine elsewhere."""
    require_service_name(name)
    credentials = _from_keyring(settings, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, credentials)
    return credentials


def _read(path: Path) -> ServiceCredentials | None:
    try:
        if os.stat(path).st_mode & 0o077:
            raise ConfigError(f"{path} is open to other users; it holds a secret: chmod 600 it")
        data = json.loads(path.read_text())
        return ServiceCredentials(str(data["key_id"]), str(data["secret"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: a new key replaces it


def _write(path: Path, credentials: ServiceCredentials) -> None:
    write_private_file(path, json.dumps({"key_id": credentials.key_id,
                                         "secret": credentials.secret}).encode())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two instances of one service starting at once must end up with one key.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
