"""Mutating routes: every command of the catalog, generic and resource-style.

`POST /v1/commands/{tag}` takes the command's fields as a JSON object; the resource routes
(`POST /v1/vms` = vm.deploy, `POST /v1/vms/{id}/stop` = vm.stop with vm_id from the path...)
are the same commands with the resource's id taken from the path. A call that started an
operation answers 202 with `Location: /v1/operations/<id>`; others answer 200, but
`POST /v1/vms/{id}/console` (vm.console), which creates a console ticket, answers 201.

Every call runs once per `Idempotency-Key` (a fresh random key when none is sent; the same
key and body answer the first result again, another body is refused with
`idempotency_key_reused`). The answer names the log positions it wrote (field `position`,
header `Cloudkernel-Position`; on a replay, the log head, which is past the first run's
writes): pass it as `wait_for` to a read to see the write. Every
check happens before the command runs, so a refused call writes nothing: the checks are
`gateways.decision`'s, the same as the NATS intake's; this module only frames them in HTTP.
"""

import functools
import re
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
from aiohttp import web

from aggregates.errors import shown
from gateways.api.context import CONTEXT, ApiContext, request_credentials
from gateways.api.errors import ApiError, response_for
from gateways.decision import CommandDecision, MalformedError
from gateways.ownership import read_model_lookup
from gateways.quotas import check_quota
from kernel.contracts.access import IDEMPOTENCY_KEY_HEADER

POSITION_HEADER = "Cloudkernel-Position"
CORRELATION_HEADER = "Cloudkernel-Correlation-Id"
MAX_KEY_LENGTH = 120
_KEY = re.compile(r"^[\x21-\x7e]{1,120}$")


class ResourceRoute(NamedTuple):
    """A resource-style route of a command: `path` names the id field `id_field` as {id}."""

    path: str
    tag: str
    id_field: str | None = None
    status: int | None = None  # the success status, when not 202 (operation) or 200


def _actions(collection: str, id_field: str, prefix: str, actions: str) -> list[ResourceRoute]:
    return [ResourceRoute(f"/v1/{collection}/{{id}}/{a}", f"{prefix}.{a}", id_field)
            for a in actions.split()]


RESOURCE_ROUTES: tuple[ResourceRoute, ...] = (
    ResourceRoute("/v1/vms", "vm.deploy"),
    *_actions("vms", "vm_id", "vm", "start stop destroy reboot migrate backup"),
    ResourceRoute("/v1/vms/{id}/console", "vm.console", "vm_id", 201),
    ResourceRoute("/v1/backups/{id}/restore", "vm.restore", "backup_id"),
    ResourceRoute("/v1/volumes", "volume.create"),
    *_actions("volumes", "volume_id", "volume", "attach detach resize snapshot delete migrate"),
    ResourceRoute("/v1/snapshots/{id}/revert", "volume.revert", "snapshot_id"),
    ResourceRoute("/v1/networks", "network.create"),
    *_actions("networks", "network_id", "network", "implement shutdown"),
    *_actions("hosts", "host_id", "host", "enable disable prepare_maintenance "
                                          "cancel_maintenance"),
    ResourceRoute("/v1/templates/{id}/download", "template.download", "template_id"),
    ResourceRoute("/v1/addresses", "address.allocate"),
    ResourceRoute("/v1/addresses/{id}/release", "address.release", "address_id"),
    ResourceRoute("/v1/zones/{id}/public_ranges", "publicrange.create", "zone_id"),
    ResourceRoute("/v1/operations/{id}/cancel", "operation.cancel", "operation_id"),
)

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
        raise MalformedError(f"body field {id_field} is {shown(raw[id_field])} but the path "
                             f"names {shown(value)}; leave it out", field=id_field)
    raw[id_field] = value
    return _encode(raw)


def command_decision(ctx: ApiContext) -> CommandDecision:
    """The command decision with the API's sources: owners from its read models, limits
    from its access control and read models."""
    views = {name: runner.view for name, runner in ctx.runners.items()}
    return CommandDecision(ctx.catalog, ctx.access, owner_lookup=read_model_lookup(views),
                           quota=functools.partial(check_quota, ctx), decoders=ctx.decoders)


def idempotency_key(request: web.Request) -> str:
    """The request's idempotency key, or a fresh random one when it sends none (an empty
    header is refused, as the document says)."""
    key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
    if key is None:
        return uuid.uuid4().hex
    if not _KEY.match(key):
        raise ApiError("malformed", f"header {IDEMPOTENCY_KEY_HEADER} must be 1-"
                       f"{MAX_KEY_LENGTH} printable ASCII characters without spaces",
                       field=IDEMPOTENCY_KEY_HEADER)
    return key


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
                      target: str | None = None, status: int | None = None) -> web.Response:
    """Authenticate, decode, authorize and run command `tag`; the 202/200 answer (or
    `status`, a route's own, when no operation started)."""
    ctx = request.app[CONTEXT]
    body = await request.read()
    _check_content_type(request, body)
    key = idempotency_key(request)
    credentials = request_credentials(request, body)
    decision = command_decision(ctx)

    def decide_and_run() -> tuple[Accepted, bytes]:
        principal = decision.authenticate(credentials)
        data = body or b"{}"
        if id_field is not None and target is not None:
            data = _body_with_id(data, id_field, target)
        decided = decision.decide(principal, tag, data, key)
        outcome = decided.run()
        result = _any.decode(outcome.result)
        operation_id = result.get("operation_id") if isinstance(result, dict) else None
        accepted = Accepted(
            command=outcome.command, idempotency_key=key, replayed=outcome.replayed,
            positions=outcome.positions, position=_read_position(ctx, outcome),
            correlation_id=decided.correlation_id,
            operation_id=None if operation_id is None else str(operation_id),
            operation_url=None if operation_id is None else f"/v1/operations/{operation_id}",
            result=outcome.result)
        return accepted, _encode(accepted)

    try:
        accepted, data = await ctx.call(decide_and_run)
    except Exception as e:  # answered with the key it ran under: a retry may reuse it
        return response_for(e, request, idempotency_key=key)
    headers = {POSITION_HEADER: str(accepted.position), IDEMPOTENCY_KEY_HEADER: key,
               CORRELATION_HEADER: str(accepted.correlation_id)}
    if accepted.operation_url is not None:
        headers["Location"] = accepted.operation_url
    return web.Response(status=202 if accepted.operation_url else status or 200, body=data,
                        content_type="application/json", headers=headers)


def _resource_handler(route: ResourceRoute) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        return await run_command(request, route.tag, route.id_field,
                                 request.match_info.get("id"), route.status)

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
