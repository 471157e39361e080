"""Mutating routes: every command of the catalog, generic and resource-style.

`POST /v1/commands/{tag}` takes the command's fields as a JSON object; the resource routes
(`POST /v1/vms` = vm.deploy, `POST /v1/vms/{id}/stop` = vm.stop with vm_id from the path...)
are the same commands with the resource's id taken from the path. A call that started an
operation answers 202 with `Location: /v1/operations/<id>`; others answer 200.

Every call runs once per `Idempotency-Key` (a fresh random key when none is sent; the same
key and body answer the first result again, another body is refused with
`idempotency_key_reused`). The answer names the log positions it wrote (field `position`,
header `Cloudkernel-Position`; on a replay, the log head, which is past the first run's
writes): pass it as `wait_for` to a read to see the write. Every
check happens before the command runs, so a refused call writes nothing.
"""

import contextlib
import re
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
from aiohttp import web

from aggregates.base import natural_id
from aggregates.errors import ForbiddenError, NotFoundError
from gateways.access import IDEMPOTENCY_KEY_HEADER
from gateways.api.context import CONTEXT, ApiContext, authenticator
from gateways.api.errors import ApiError
from gateways.ownership import owner_of as shared_owner_of
from gateways.quotas import check_quota
from gateways.stream.intake import MalformedError, UnknownCommandError, decode_command
from kernel.commands import Command

POSITION_HEADER = "Cloudkernel-Position"
CORRELATION_HEADER = "Cloudkernel-Correlation-Id"
MAX_KEY_LENGTH = 120
_KEY = re.compile(r"^[\x21-\x7e]{1,120}$")


class ResourceRoute(NamedTuple):
    """A resource-style route of a command: `path` names the id field `id_field` as {id}."""

    path: str
    tag: str
    id_field: str | None = None


def _actions(collection: str, id_field: str, prefix: str, actions: str) -> list[ResourceRoute]:
    return [ResourceRoute(f"/v1/{collection}/{{id}}/{a}", f"{prefix}.{a}", id_field)
            for a in actions.split()]


RESOURCE_ROUTES: tuple[ResourceRoute, ...] = (
    ResourceRoute("/v1/vms", "vm.deploy"),
    *_actions("vms", "vm_id", "vm", "start stop destroy reboot migrate backup"),
    ResourceRoute("/v1/backups/{id}/restore", "vm.restore", "backup_id"),
    ResourceRoute("/v1/volumes", "volume.create"),
    *_actions("volumes", "volume_id", "volume", "attach detach resize snapshot delete migrate"),
    ResourceRoute("/v1/snapshots/{id}/revert", "volume.revert", "snapshot_id"),
    ResourceRoute("/v1/networks", "network.create"),
    *_actions("networks", "network_id", "network", "implement shutdown"),
    *_actions("hosts", "host_id", "host", "enable disable prepare_maintenance "
                                          "cancel_maintenance"),
    ResourceRoute("/v1/templates/{id}/download", "template.download", "template_id"),
    ResourceRoute("/v1/operations/{id}/cancel", "operation.cancel", "operation_id"),
)
# The read model that names the owning account of a command's target, by id field.
OWNER_MODELS = {"vm_id": "vms", "volume_id": "volumes", "snapshot_id": "snapshots"}

_encode = msgspec.json.Encoder().encode
_any = msgspec.json.Decoder()


class Accepted(msgspec.Struct, kw_only=True):
    """The answer to a command that ran (or ran before under the same key)."""

    command: str
    idempotency_key: str
    replayed: bool
    positions: tuple[int, ...]
    position: int
    correlation_id: uuid.UUID
    operation_id: str | None = None
    operation_url: str | None = None
    result: msgspec.Raw


def _body_with_id(body: bytes, id_field: str, value: str) -> bytes:
    """The body with the path's id set as `id_field` (a different one in the body refused)."""
    try:
        raw = _any.decode(body)
    except msgspec.DecodeError as e:
        raise MalformedError(f"body is not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise MalformedError(f"body must be a JSON object, got {type(raw).__name__}")
    if id_field in raw and raw[id_field] != value:
        raise MalformedError(f"body field {id_field} is {raw[id_field]!r} but the path names "
                             f"{value!r}; leave it out", field=id_field)
    raw[id_field] = value
    return _encode(raw)


def owner_of(ctx: ApiContext, command: Command) -> str | None:
    """The account that owns the command's target (or that a new resource will belong to),
    looked up in the read models."""
    def lookup(field: str, target: Any) -> str | None:
        model = OWNER_MODELS.get(field)
        if model is None or model not in ctx.runners:
            return None
        row = ctx.view(model).get(target)
        return None if row is None else str(row["account"])

    return shared_owner_of(command, lookup)


def idempotency_key(request: web.Request) -> str:
    """The request's idempotency key, or a fresh random one."""
    key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
    if key is None or key == "":
        return uuid.uuid4().hex
    if not _KEY.match(key):
        raise ApiError("malformed", f"header {IDEMPOTENCY_KEY_HEADER} must be 1-"
                       f"{MAX_KEY_LENGTH} printable ASCII characters without spaces",
                       field=IDEMPOTENCY_KEY_HEADER)
    return key


def _nul_field(value: Any, path: str = "") -> str | None:
    """The path of the first string (or key) in a decoded JSON value holding a NUL."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        where = f"{path}.{k}" if path else str(k)
        if isinstance(k, str) and "\x00" in k:
            return where
        found = _nul_field(v, where)
        if found is not None:
            return found
    return None


def _refuse_nul(body: bytes) -> None:
    """Refuse a NUL character in any string of the body: PostgreSQL text cannot hold one,
    so it would stop the read models that fold the command's events."""
    try:
        field = _nul_field(_any.decode(body))
    except msgspec.DecodeError:
        return  # decode_command says what is wrong with it
    if field is not None:
        raise MalformedError(f"{field} must not contain NUL characters (\\u0000)",
                             field=field.split(".", 1)[0])


def _read_position(ctx: ApiContext, outcome: Any) -> int:
    """The position to pass as `wait_for` to see the command's writes. A replay wrote
    nothing now and does not know where its first run wrote: the log head is past it."""
    if outcome.positions:
        return max(outcome.positions)
    if outcome.replayed:
        return int(ctx.app.recorder.max_notification_id() or 0)
    return 0


def _check_content_type(request: web.Request, body: bytes) -> None:
    if body and request.content_type not in ("application/json", "application/octet-stream") \
            and not request.content_type.endswith("+json"):
        raise ApiError("unsupported_media_type", f"send the body as application/json, not "
                       f"{request.content_type[:60]}", field="Content-Type")


async def run_command(request: web.Request, tag: str, id_field: str | None = None,
                      target: str | None = None) -> web.Response:
    """Authenticate, decode, authorize and run command `tag`; the 202/200 answer."""
    ctx = request.app[CONTEXT]
    body = await request.read()
    _check_content_type(request, body)
    key = idempotency_key(request)
    who = authenticator(request, body)

    def decide_and_run() -> tuple[Accepted, bytes]:
        principal = who()
        if tag not in ctx.catalog:
            raise UnknownCommandError(f"unknown command {tag[:100]!r}; known: "
                                      f"{', '.join(sorted(ctx.catalog))}")
        type_, _run = ctx.catalog[tag]
        data = body or b"{}"
        if id_field is not None and target is not None:
            data = _body_with_id(data, id_field, target)
        if b"\\u0000" in data:
            _refuse_nul(data)
        command = decode_command(tag, type_, ctx.decoders[tag], data)
        owner = owner_of(ctx, command)
        visible = ctx.access.visible_accounts(principal)
        if visible is not None and owner is not None and owner not in visible:
            # Another tenant's: answered as missing, but refused (and so audited) all the same.
            with contextlib.suppress(ForbiddenError):
                ctx.access.authorize(principal, tag, owner=owner)
            raise NotFoundError(f"{tag}: no such resource among the accounts "
                                f"{principal.actor} may see")
        ctx.access.authorize(principal, tag, owner=owner)
        check_quota(ctx, tag, command, owner)
        # Scoped by actor, as over NATS: another principal's same key is another command.
        scoped = f"{principal.actor}/{key}"
        outcome = ctx.run_command(command, scoped, principal.actor)
        result = _any.decode(outcome.result)
        operation_id = result.get("operation_id") if isinstance(result, dict) else None
        accepted = Accepted(
            command=outcome.command, idempotency_key=key, replayed=outcome.replayed,
            positions=outcome.positions, position=_read_position(ctx, outcome),
            correlation_id=natural_id("command", scoped),
            operation_id=None if operation_id is None else str(operation_id),
            operation_url=None if operation_id is None else f"/v1/operations/{operation_id}",
            result=outcome.result)
        return accepted, _encode(accepted)

    accepted, data = await ctx.call(decide_and_run)
    headers = {POSITION_HEADER: str(accepted.position), IDEMPOTENCY_KEY_HEADER: key,
               CORRELATION_HEADER: str(accepted.correlation_id)}
    if accepted.operation_url is not None:
        headers["Location"] = accepted.operation_url
    return web.Response(status=202 if accepted.operation_url else 200, body=data,
                        content_type="application/json", headers=headers)


def _resource_handler(route: ResourceRoute) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        return await run_command(request, route.tag, route.id_field,
                                 request.match_info.get("id"))

    return handle


async def generic_command(request: web.Request) -> web.Response:
    """`POST /v1/commands/{tag}`: any command of the catalog by its tag."""
    return await run_command(request, request.match_info["tag"])


def add_command_routes(app: web.Application, catalog: Any) -> None:
    """Register the generic command route and the resource routes of the catalog's commands."""
    app.router.add_post("/v1/commands/{tag}", generic_command, name="command")
    for route in RESOURCE_ROUTES:
        if route.tag in catalog:
            app.router.add_post(route.path, _resource_handler(route),
                                name="cmd_" + route.tag.replace(".", "_"))
