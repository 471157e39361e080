"""The End User API's request bodies (msgspec Structs: they decode the requests and give the
OpenAPI document its schemas) and its request limits."""

import re
from typing import Annotated
from uuid import UUID

import msgspec

from kernel.contracts.console import Kind

IDEMPOTENCY_KEY = "Idempotency-Key"
# As the admin API's: the platform scopes a key by the caller, within its 200 characters.
MAX_KEY_LENGTH = 120
KEY_PATTERN = re.compile(rf"^[!-~]{{1,{MAX_KEY_LENGTH}}}$")
MAX_BODY = 64 * 1024
Size = Annotated[int, msgspec.Meta(ge=1, le=2 ** 63 - 1)]


class LoginBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/login`."""

    username: str
    password: str


class DeployBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/vms`: what a tenant chooses; its account is the caller's."""

    name: str
    zone_id: UUID
    offering_id: UUID
    template_id: UUID
    network_ids: tuple[UUID, ...] = ()
    root_size_bytes: Size | None = None


class VolumeBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/volumes`: a blank data volume (a disk offering's size or `size_bytes`)."""

    name: str
    zone_id: UUID
    size_bytes: Size | None = None
    disk_offering_id: UUID | None = None
    vm_id: UUID | None = None  # attach it to this (Running) VM of the account at once


class AttachBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/volumes/{id}/attach`."""

    vm_id: UUID


class NoBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An action without fields (`{}` or nothing)."""


class ConsoleBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/vms/{id}/console`: which console (the screen by default)."""

    kind: Kind = "graphics"
