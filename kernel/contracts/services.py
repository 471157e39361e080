"""The Services Directory's contract: what a service registers, how it is known, and where
the directory answers.

A registration (the body of `service.register`) is checked here, by the service before it sends
and by the platform where it decodes the command, so both refuse the same things with the same
words. A registration is known by its service's name: `registration_id(name)`.

A service signs its commands with its own key (actor `service:<name>`), which the platform
makes in its keyring and writes to `<data_dir>/services/<name>.key` (mode 0600, JSON
`{"key_id": ..., "secret": ...}`); the service reads it from there.
"""

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from aggregates.base import natural_id
from aggregates.errors import ConfigError, ValidationError

LIST_SUBJECT = "cloudkernel.services.list"
GET_SUBJECT = "cloudkernel.services.get"

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
_ENDPOINT = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_$-]+$|^\*$|^>$")
MAX_ENDPOINTS = 16
MAX_SUBJECTS = 64
MAX_TEXT = 500


def require_service_name(name: object) -> str:
    """A service name: a lowercase letter, then up to 39 lowercase letters, digits or '-'."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationError(f"name: a service name is a lowercase letter then up to 39 "
                              f"lowercase letters, digits or '-', got {name!r}")
    return name


def _text(what: str, value: object, *, required: bool, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or not value.isprintable() or len(value) > limit \
            or (required and not value.strip()):
        need = "non-empty " if required else ""
        raise ValidationError(f"{what}: {need}printable text of at most {limit} characters, "
                              f"got {str(value)[:60]!r}")
    return value


def _endpoints(value: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(value, Mapping) or len(value) > MAX_ENDPOINTS:
        raise ValidationError(f"endpoints: a map of at most {MAX_ENDPOINTS} names to URLs")
    out: dict[str, str] = {}
    for key, url in value.items():
        if not isinstance(key, str) or not _ENDPOINT.match(key):
            raise ValidationError(f"endpoints: name {key!r} must be a lowercase letter then "
                                  "up to 31 lowercase letters, digits, '_' or '-'")
        if not isinstance(url, str) or "://" not in url or not url.isprintable() \
                or " " in url or len(url) > MAX_TEXT:
            raise ValidationError(f"endpoints.{key}: a URL like http://127.0.0.1:8482/, got "
                                  f"{str(url)[:60]!r}")
        out[key] = url
    return dict(sorted(out.items()))


def _subjects(what: str, value: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) > MAX_SUBJECTS:
        raise ValidationError(f"{what}: a list of at most {MAX_SUBJECTS} NATS subjects")
    for subject in value:
        tokens = subject.split(".") if isinstance(subject, str) else [""]
        if not isinstance(subject, str) or len(subject) > 200 \
                or not all(_SUBJECT_TOKEN.match(t) for t in tokens) \
                or ">" in tokens[:-1]:
            raise ValidationError(f"{what}: {str(subject)[:80]!r} is not a NATS subject "
                                  "(dot-separated tokens, '*' or a final '>')")
    return tuple(dict.fromkeys(value))


def check_registration(*, name: str, version: str, endpoints: Mapping[str, str],
          consumes: Sequence[str] = (), publishes: Sequence[str] = (),
          description: str = "") -> dict[str, Any]:
    """The registration's fields, checked and normalized; ValidationError otherwise."""
    return {"name": require_service_name(name),
            "version": _text("version", version, required=True, limit=64),
            "endpoints": _endpoints(endpoints),
            "consumes": _subjects("consumes", consumes),
            "publishes": _subjects("publishes", publishes),
            "description": _text("description", description, required=False)}


def registration_id(name: str) -> UUID:
    """The id of a service's registration: known by the service's name."""
    return natural_id("service", name)


def check_disable_reason(reason: object) -> str:
    """The reason an admin gives for disabling a service: non-empty printable text."""
    return _text("reason", reason, required=True)


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


def read_credentials(path: Path) -> ServiceCredentials | None:
    """The key kept in `path`; None when there is none or it cannot be read (a new key then
    replaces it); ConfigError when the file is open to other users."""
    try:
        if os.stat(path).st_mode & 0o077:
            raise ConfigError(f"{path} is open to other users; it holds a secret: chmod 600 it")
        data = json.loads(path.read_text())
        return ServiceCredentials(str(data["key_id"]), str(data["secret"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None


def credentials_bytes(credentials: ServiceCredentials) -> bytes:
    """The kept file's content."""
    return json.dumps({"key_id": credentials.key_id, "secret": credentials.secret}).encode()
