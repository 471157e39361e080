"""The End User API's routes: a tenant's VMs and volumes, read from the service's own view
and changed through the platform's command intake as the calling user.

Reads come from the service's `TenantView` (fed by the public events), filtered to the
caller's account: another account's id answers 404, as a missing one does, so ids do not
leak. Changes are commands sent with the caller's bearer token (`ServiceRuntime.command`), so
the platform's ACL decides each one again. Creating needs an `Idempotency-Key` header (a retry
with the same key answers the first result); the other actions take one if given.
`/healthz`, `/v1/openapi.json` and `/v1/docs` need no token and answer even while disabled.
"""

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from uuid import UUID

import msgspec
from aiohttp import web

from services.enduser import openapi
from services.enduser.auth import Authenticator, Caller
from services.enduser.bodies import (
    IDEMPOTENCY_KEY,
    KEY_PATTERN,
    MAX_BODY,
    MAX_KEY_LENGTH,
    AttachBody,
    ConsoleBody,
    DeployBody,
    LoginBody,
    NoBody,
    VolumeBody,
)
from services.enduser.errors import (
    COMMAND_STATUS,
    SERVER_LOG,
    ApiError,
    error_middleware,
    invalid_body,
    json_response,
    not_found,
)
from services.enduser.render import operation_json, vm_json, volume_json
from services.framework.framework import CommandRefusedError
from services.framework.tenant_view import TenantView

T = TypeVar("T")


class Runtime(Protocol):
    """What the routes use of `services.framework.framework.ServiceRuntime`."""

    @property
    def enabled(self) -> bool:
        """The admin's switch."""
        ...

    async def command(self, tag: str, body: Mapping[str, Any], *, idempotency_key: str,
                      bearer_token: str | None = None, timeout: float = 30) -> Any:
        """Send a command; its CommandResult."""
        ...


@dataclass
class EndUser:
    """What the routes share: the runtime, the ACL, the view."""

    runtime: Runtime
    auth: Authenticator
    view: TenantView
    name: str = "enduser"
    view_wait: float = 3.0  # how long an answer waits for the view to show its own change

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """A view query, off the event loop (SQLite blocks)."""
        return await asyncio.to_thread(fn, *args)


ENDUSER: web.AppKey[EndUser] = web.AppKey("cloudkernel_enduser", EndUser)


async def _body(request: web.Request, type_: type[T], what: str) -> T:
    data = await request.read()
    if len(data) > MAX_BODY:
        raise ApiError(413, "invalid", f"body over {MAX_BODY} bytes")
    try:
        return msgspec.json.decode(data or b"{}", type=type_)
    except msgspec.ValidationError as e:
        if "got `float`" not in str(e):
            raise invalid_body(e, what) from None
    except msgspec.DecodeError as e:
        raise invalid_body(e, what) from None
    try:  # JSON does not tell 3 from 3.0: an integral number is an integer
        return msgspec.convert(_integral_as_int(msgspec.json.decode(data)), type_)
    except msgspec.ValidationError as e:
        raise invalid_body(e, what) from None


def _integral_as_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 63:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_as_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_as_int(v) for v in value]
    return value


def _id(request: web.Request, kind: str) -> UUID:
    try:
        return UUID(request.match_info["id"])
    except ValueError:
        raise not_found(kind, request.match_info["id"][:64]) from None


def _key(request: web.Request, *, required: bool) -> str:
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is None and required:
        raise ApiError(400, "invalid", f"header {IDEMPOTENCY_KEY} is required: a key of your "
                       "choice, the same when you retry the same request", field=IDEMPOTENCY_KEY)
    if key is not None and not KEY_PATTERN.match(key):
        raise ApiError(400, "invalid", f"header {IDEMPOTENCY_KEY} must be 1-{MAX_KEY_LENGTH} "
                       "printable ASCII characters without spaces", field=IDEMPOTENCY_KEY)
    return key or uuid.uuid4().hex


_HEAD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _request_field(platform_field: str | None, names: Mapping[str, str]) -> str | None:
    """The request's own name (a body field, `id` for the path's) of the command field a
    platform refusal names (`network_ids[1]`); None for one the request does not carry."""
    if platform_field is None or platform_field == IDEMPOTENCY_KEY:
        return platform_field
    head = _HEAD.match(platform_field)
    if head is None or head.group() not in names:
        return None
    return names[head.group()] + platform_field[head.end():]


async def _command(request: web.Request, caller: Caller, tag: str, body: Mapping[str, Any],
                   key: str, fields: Mapping[str, str]) -> web.Response:
    """Send a command as the caller; 202 with the operation, once the view shows it. A
    refusal names the request's field it concerns (`fields`: the request's name of each
    command field it fills), when it names one."""
    ctx = request.app[ENDUSER]
    try:
        result = await ctx.runtime.command(tag, body, idempotency_key=key,
                                           bearer_token=caller.token)
    except CommandRefusedError as e:
        raise ApiError(COMMAND_STATUS.get(e.code, 502), e.code, e.message,
                       field=_request_field(e.field, fields)) from None
    await _caught_up(ctx, max(result.positions, default=0))
    answer = dict(result.result) if isinstance(result.result, dict) else {"result": result.result}
    operation_id = answer.get("operation_id")
    answer.update(replayed=result.replayed,
                  operation_url=None if operation_id is None
                  else f"/v1/operations/{operation_id}")
    return json_response(answer, status=202)


async def _caught_up(ctx: EndUser, position: int) -> None:
    """Wait (a little) until the view has the command's events: a client reads its write."""
    deadline = asyncio.get_running_loop().time() + ctx.view_wait
    while position and ctx.view.position < position:
        if asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.05)


async def _caller(request: web.Request) -> Caller:
    return await request.app[ENDUSER].auth.caller(request)


# --------------------------------------------------------------------------- routes


async def login(request: web.Request) -> web.Response:
    """`POST /v1/login` {username, password} -> {token, principal}."""
    body = await _body(request, LoginBody, "login")
    token, principal = await request.app[ENDUSER].auth.login(body.username, body.password)
    return json_response({"token": token, "principal": principal})


async def list_vms(request: web.Request) -> web.Response:
    """`GET /v1/vms`: the caller's account's VMs."""
    ctx, caller = request.app[ENDUSER], await _caller(request)
    vms = await ctx.read(ctx.view.vms, caller.account)
    return json_response({"items": [vm_json(v) for v in vms]})


async def get_vm(request: web.Request) -> web.Response:
    """`GET /v1/vms/{id}`: one VM with its volumes."""
    ctx, caller = request.app[ENDUSER], await _caller(request)
    vm_id = _id(request, "VM")
    vm = await ctx.read(ctx.view.vm, vm_id, caller.account)
    if vm is None:
        raise not_found("VM", vm_id)
    return json_response(vm_json(vm, await ctx.read(ctx.view.vm_volumes, vm_id)))


_DEPLOY_FIELDS = {**{f: f for f in DeployBody.__struct_fields__},
                  "service_offering_id": "offering_id"}


async def deploy_vm(request: web.Request) -> web.Response:
    """`POST /v1/vms`: deploy a VM in the caller's account."""
    caller = await _caller(request)
    key = _key(request, required=True)
    body = await _body(request, DeployBody, "vm.deploy")
    command = {"name": body.name, "account": caller.account, "zone_id": body.zone_id,
               "service_offering_id": body.offering_id, "template_id": body.template_id,
               "network_ids": body.network_ids}
    if body.root_size_bytes is not None:
        command["root_size_bytes"] = body.root_size_bytes
    return await _command(request, caller, "vm.deploy", msgspec.to_builtins(command), key,
                          _DEPLOY_FIELDS)


async def vm_action(request: web.Request) -> web.Response:
    """`POST /v1/vms/{id}/start|stop|destroy`."""
    ctx, caller = request.app[ENDUSER], await _caller(request)
    vm_id, action = _id(request, "VM"), request.match_info["action"]
    key = _key(request, required=False)
    await _body(request, NoBody, f"vm.{action}")
    if await ctx.read(ctx.view.vm, vm_id, caller.account) is None:
        raise not_found("VM", vm_id)
    return await _command(request, caller, f"vm.{action}", {"vm_id": str(vm_id)}, key,
                          {"vm_id": "id"})


async def open_console(request: web.Request) -> web.Response:
    """`POST /v1/vms/{id}/console` {kind?}: 201 with a single-use link to the VM's console
    (its URL carries the token, valid about a minute)."""
    ctx, caller = request.app[ENDUSER], await _caller(request)
    vm_id = _id(request, "VM")
    key = _key(request, required=False)
    body = await _body(request, ConsoleBody, "vm.console")
    if await ctx.read(ctx.view.vm, vm_id, caller.account) is None:
        raise not_found("VM", vm_id)
    try:
        result = await ctx.runtime.command("vm.console", {"vm_id": str(vm_id), "kind": body.kind},
                                           idempotency_key=key, bearer_token=caller.token)
    except CommandRefusedError as e:
        if e.code == "not_found":  # gone from the platform meanwhile: as any unknown VM
            raise not_found("VM", vm_id) from None
        raise ApiError(COMMAND_STATUS.get(e.code, 502), e.code, e.message,
                       field=_request_field(e.field, {"vm_id": "id", "kind": "kind"})) from None
    return json_response(result.result, status=201)


async def list_volumes(request: web.Request) -> web.Response:
    """`GET /v1/volumes`: the caller's account's volumes."""
    ctx, caller = request.app[ENDUSER], await _caller(request)
    volumes = await ctx.read(ctx.view.volumes, caller.account)
    return json_response({"items": [volume_json(v) for v in volumes]})


async def get_volume(request: web.Request) -> web.Response:
    """`GET /v1/volumes/{id}`."""
    ctx, caller = request.app[ENDUSER], await _caller(request)
    volume_id = _id(request, "volume")
    volume = await ctx.read(ctx.view.volume, volume_id, caller.account)
    if volume is None:
        raise not_found("volume", volume_id)
    return json_response(volume_json(volume))


async def create_volume(request: web.Request) -> web.Response:
    """`POST /v1/volumes`: a data volume in the caller's account (attached with `vm_id`)."""
    ctx, caller = request.app[ENDUSER], await _caller(request)
    key = _key(request, required=True)
    body = await _body(request, VolumeBody, "volume.create")
    if body.vm_id is not None and await ctx.read(ctx.view.vm, body.vm_id, caller.account) \
            is None:
        raise ApiError(404, "not_found", f"no VM {body.vm_id} in your account", field="vm_id")
    command = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
    return await _command(request, caller, "volume.create",
                          msgspec.to_builtins({**command, "account": caller.account}), key,
                          {f: f for f in VolumeBody.__struct_fields__})


async def volume_action(request: web.Request) -> web.Response:
    """`POST /v1/volumes/{id}/attach` {vm_id} and `/detach`."""
    ctx, caller = request.app[ENDUSER], await _caller(request)
    volume_id, action = _id(request, "volume"), request.match_info["action"]
    key = _key(request, required=False)
    command: dict[str, Any] = {"volume_id": str(volume_id)}
    if action == "attach":
        body = await _body(request, AttachBody, "volume.attach")
        if await ctx.read(ctx.view.vm, body.vm_id, caller.account) is None:
            raise ApiError(404, "not_found", f"no VM {body.vm_id} in your account",
                           field="vm_id")
        command["vm_id"] = str(body.vm_id)
    else:
        await _body(request, NoBody, "volume.detach")
    if await ctx.read(ctx.view.volume, volume_id, caller.account) is None:
        raise not_found("volume", volume_id)
    return await _command(request, caller, f"volume.{action}", command, key,
                          {"volume_id": "id", "vm_id": "vm_id"})


async def delete_volume(request: web.Request) -> web.Response:
    """`DELETE /v1/volumes/{id}`: delete a detached data volume."""
    ctx, caller = request.app[ENDUSER], await _caller(request)
    volume_id = _id(request, "volume")
    key = _key(request, required=False)
    if await ctx.read(ctx.view.volume, volume_id, caller.account) is None:
        raise not_found("volume", volume_id)
    return await _command(request, caller, "volume.delete", {"volume_id": str(volume_id)}, key,
                          {"volume_id": "id"})


async def get_operation(request: web.Request) -> web.Response:
    """`GET /v1/operations/{id}`: an operation on one of the account's VMs or volumes."""
    ctx, caller = request.app[ENDUSER], await _caller(request)
    operation_id = _id(request, "operation")
    operation = await ctx.read(ctx.view.operation, operation_id)
    if operation is None or not await ctx.read(_touches_account, ctx.view,
                                               operation.entity_ids, caller.account):
        raise not_found("operation", operation_id)
    return json_response(operation_json(operation))


def _touches_account(view: TenantView, entity_ids: tuple[str, ...], account: str) -> bool:
    for entity in entity_ids:
        try:
            entity_id = UUID(entity)
        except ValueError:
            continue
        if view.vm(entity_id, account) or view.volume(entity_id, account) \
                or view.snapshot(entity_id, account):
            return True
    return False


async def catalog(request: web.Request) -> web.Response:
    """`GET /v1/catalog`: the zones, Ready templates and offerings a tenant deploys from."""
    ctx = request.app[ENDUSER]
    await _caller(request)

    def read() -> dict[str, Any]:
        return {"zones": [{"id": z.id, "name": z.name} for z in ctx.view.zones()],
                "templates": [{"id": t.id, "name": t.name, "zone_id": t.zone_id}
                              for t in ctx.view.templates() if t.state == "Ready"],
                "offerings": [{"id": o.id, "name": o.name, "cpu_cores": o.cpu_cores,
                               "memory_mib": o.memory_mib} for o in ctx.view.offerings()],
                "disk_offerings": [{"id": o.id, "name": o.name, "size_bytes": o.size_bytes}
                                   for o in ctx.view.offerings("disk")]}

    return json_response(await ctx.read(read))


async def healthz(request: web.Request) -> web.Response:
    """`GET /healthz` (no token): 200 while enabled, 503 while the admin disabled it."""
    ctx = request.app[ENDUSER]
    enabled = bool(ctx.runtime.enabled)
    return json_response({"status": "ok", "service": ctx.name, "enabled": enabled},
                         status=200 if enabled else 503)


# What a disabled service still serves: its health and its contract.
ALWAYS_SERVED = frozenset({"/healthz", "/v1/openapi.json", "/v1/docs", "/", "/v1/page.js"})
STATIC = Path(__file__).parent / "static"


async def page(request: web.Request) -> web.FileResponse:
    """`GET /`: a tenant's page (log in, your VMs, their consoles), on this API."""
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def page_script(request: web.Request) -> web.FileResponse:
    """`GET /v1/page.js`: the tenant page's script."""
    return web.FileResponse(STATIC / "page.js", headers={"Cache-Control": "no-store",
                                                          "Content-Type": "text/javascript"})


@web.middleware
async def enabled_middleware(request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                             ) -> web.StreamResponse:
    """A service the admin disabled answers 503, naming itself."""
    ctx = request.app[ENDUSER]
    if not ctx.runtime.enabled and request.path not in ALWAYS_SERVED:
        raise ApiError(503, "service_disabled", f"the {ctx.name} service is disabled by the "
                       "platform's admin; orchestration itself is unaffected",
                       headers={"Retry-After": "30"})
    return await handler(request)


def make_app(ctx: EndUser) -> web.Application:
    """The End User API as an aiohttp application."""
    app = web.Application(middlewares=[error_middleware, enabled_middleware],
                          client_max_size=MAX_BODY, handler_args={"logger": SERVER_LOG})
    app[ENDUSER] = ctx
    r = app.router
    r.add_post("/v1/login", login)
    r.add_get("/v1/catalog", catalog)
    r.add_get("/v1/vms", list_vms)
    r.add_post("/v1/vms", deploy_vm)
    r.add_get("/v1/vms/{id}", get_vm)
    r.add_post("/v1/vms/{id}/{action:start|stop|destroy}", vm_action)
    r.add_post("/v1/vms/{id}/console", open_console)
    r.add_get("/v1/volumes", list_volumes)
    r.add_post("/v1/volumes", create_volume)
    r.add_get("/v1/volumes/{id}", get_volume)
    r.add_delete("/v1/volumes/{id}", delete_volume)
    r.add_post("/v1/volumes/{id}/{action:attach|detach}", volume_action)
    r.add_get("/v1/operations/{id}", get_operation)
    r.add_get("/healthz", healthz)
    r.add_get("/", page)
    r.add_get("/v1/page.js", page_script)
    openapi.add_routes(app)
    return app
