"""Services' own keys, made in the platform's keyring and kept where the service reads them.

The key's actor is `service:<name>` and its role `integrator`; it may send `service.register`
(for its own name only: the handler checks it), what the service's system VMs need, and what
that service alone needs (the console service redeems console tickets). The
secret is kept in `<data_dir>/services/<name>.key` (mode 0600), so a restarted service signs
with the same key. A key that was revoked or expired is replaced by a new one. `up` issues the
key of each service it starts, before each start; `cloudkernel services key NAME --out FILE`
writes one for a service on another machine.
"""

import contextlib
import fcntl
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from gateways.access import Keyring, keys_path
from kernel.contracts.services import (
    ServiceCredentials,
    credentials_bytes,
    credentials_path,
    read_credentials,
    require_service_name,
    service_actor,
)
from kernel.settings import Settings
from kernel.store.files import write_private_file

SERVICE_ALLOW: tuple[str, ...] = ("service.register", "vm.deploy", "vm.start", "vm.stop")
# What one service's key may send beyond SERVICE_ALLOW.
SERVICE_EXTRA_ALLOW: dict[str, tuple[str, ...]] = {"console": ("console.redeem",)}


def service_allow(name: str) -> tuple[str, ...]:
    """The commands the key of service `name` may send."""
    return SERVICE_ALLOW + SERVICE_EXTRA_ALLOW.get(name, ())


def issue_service_key(settings: Settings, name: str) -> ServiceCredentials:
    """The service's key: the kept one while the keyring still has it active, else a new one
    made in the keyring and kept (0600)."""
    require_service_name(name)
    path = credentials_path(settings.data_dir, name)
    keyring = Keyring(keys_path(settings))
    with _locked(path):
        kept = read_credentials(path)
        if kept is not None:
            key = keyring.get(kept.key_id)
            if key is not None and key.secret == kept.secret \
                    and key.status(datetime.now(UTC)) == "active" \
                    and key.allow == service_allow(name):
                return kept
        key = keyring.create(actor=service_actor(name), role="integrator",
                             allow=service_allow(name))
        made = ServiceCredentials(key.id, key.secret)
        write_private_file(path, credentials_bytes(made))
        return made


def export_service_key(settings: Settings, name: str, out: Path) -> ServiceCredentials:
    """Write the service's key (made in the platform's keyring if needed) to `out` (0600),
    for a machine elsewhere."""
    credentials = issue_service_key(settings, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_private_file(out, credentials_bytes(credentials))
    return credentials


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two starts of one service at once must end up with one key.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
