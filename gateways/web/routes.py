"""The admin web page's server side: static files, a login, a small catalog and a live stream.

`add_web_routes(app, servers=..., login=...)` mounts, on an admin API application made by
`gateways.api.app.make_app`:

* `GET /` (the page) and `GET /static/...` (plain ES modules, no build step);
* `POST /v1/login` `{"username", "password"}` -> `{"token"}`, when a login is given and
  the API has no login route of its own;
* `GET /v1/web/catalog`: zones, pods, clusters and service offerings by id and name, read
  from the log (no read model holds them), for the fleet tree and the deploy form;
* `GET /v1/web/services`: the Services Directory's registrations with their live instances
  (`gateways.web.services`), for the Services panel;
* `GET /v1/stream?token=<bearer token>[&untyped=1]`: Server-Sent Events, one per platform
  event the relay published on NATS (`cloudkernel.events.>`): `event:` the topic (left out
  with `untyped=1`, so that EventSource's `onmessage` sees every event), `data:` a JSON
  object `{topic, originator_id, version, position}`, `id:` the log position; keep-alive
  comments every 15 s; `event: overflow` when a slow page missed events (reload then).

A principal limited to some accounts (`visible_accounts`) gets only the events of VMs,
volumes and snapshots whose read-model row belongs to one of them; events of an entity not
projected yet are dropped. Not filtered: nothing else is sent to such a principal at all
(operations, hosts, networks... are the platform's), so its page refreshes only on its own
VMs', volumes' and snapshots' events.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
from aiohttp import web

from aggregates.errors import UnauthenticatedError, ValidationError
from gateways.api.context import CONTEXT, ApiContext, authenticator
from gateways.web.services import add_services_route
from kernel.contracts.access import Principal
from kernel.contracts.connection import connect
from kernel.contracts.events import (
    ORIGINATOR_ID,
    ORIGINATOR_VERSION,
    POSITION,
    SUBJECT_PREFIX,
    TOPIC,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
KEEPALIVE_SECONDS = 15.0
QUEUE_SIZE = 1000
# Aggregates whose read-model rows name an account, and so can be filtered per principal.
ACCOUNT_MODELS = {"vm": "vms", "volume": "volumes", "snapshot": "snapshots"}
CATALOG_TOPICS = {"zone.Created": "zones", "pod.Created": "pods", "cluster.Added": "clusters",
                  "service_offering.Created": "service_offerings"}
Login = Callable[[str, str], str]
CLOSE = "close"

_encode = msgspec.json.Encoder().encode


class LoginRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /v1/login`."""

    username: str
    password: str


_login_decoder = msgspec.json.Decoder(LoginRequest)


@dataclass
class WebConfig:
    """What the page's routes need beyond the API's context."""

    servers: Sequence[str]
    login: Login | None = None
    keepalive: float = KEEPALIVE_SECONDS
    clients: set[asyncio.Queue[Any]] = field(default_factory=set)


WEB: web.AppKey[WebConfig] = web.AppKey("cloudkernel_web", WebConfig)


# --------------------------------------------------------------------------- page


async def index(request: web.Request) -> web.FileResponse:
    """`GET /`: the page."""
    return web.FileResponse(STATIC_DIR / "index.html",
                            headers={"Cache-Control": "no-cache"})


# --------------------------------------------------------------------------- login


async def login_route(request: web.Request) -> web.Response:
    """`POST /v1/login`: a bearer token for a user name and password."""
    ctx, config = request.app[CONTEXT], request.app[WEB]
    body = await request.read()
    try:
        creds = _login_decoder.decode(body)
    except msgspec.DecodeError as e:
        raise ValidationError(f"send {{\"username\": ..., \"password\": ...}}: {e}") from None
    if config.login is None:
        raise UnauthenticatedError("no login is configured on this server: paste a bearer "
                                   "token instead")
    token = await ctx.call(config.login, creds.username, creds.password)
    return web.Response(body=_encode({"token": token}), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


# --------------------------------------------------------------------------- catalog


def read_catalog(ctx: ApiContext) -> dict[str, list[dict[str, Any]]]:
    """Zones, pods, clusters and service offerings, by id and name (blocking)."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in CATALOG_TOPICS.values()}
    notes = ctx.app.recorder.select_notifications(start=None, limit=100_000,
                                                  topics=tuple(CATALOG_TOPICS))
    for note in notes:
        try:
            entity: Any = ctx.app.repository.get(UUID(str(note.originator_id)))
        except Exception:  # a deleted or undecodable entity is simply not listed
            continue
        row = {"id": str(entity.id), "name": getattr(entity, "name", "")}
        for attr in ("zone_id", "pod_id", "cpu_cores", "cpu_mhz", "memory_mib"):
            value = getattr(entity, attr, None)
            if value is not None:
                row[attr] = str(value) if isinstance(value, UUID) else value
        state = getattr(entity, "state", None)
        if state is not None:
            row["state"] = getattr(state, "value", str(state))
        out[CATALOG_TOPICS[note.topic]].append(row)
    return out


async def catalog(request: web.Request) -> web.Response:
    """`GET /v1/web/catalog`: names for the fleet tree and the deploy form."""
    ctx = request.app[CONTEXT]
    who = authenticator(request)

    def read() -> bytes:
        who()
        return _encode(read_catalog(ctx))

    return web.Response(body=await ctx.call(read), content_type="application/json")


# --------------------------------------------------------------------------- live stream


def sse_message(headers: dict[str, str], subject: str, *,
                typed: bool = True) -> tuple[str, bytes]:
    """The SSE message for one relayed event (its `event:` type is the topic unless not
    `typed`: then EventSource's `onmessage` gets it), and its topic."""
    topic = headers.get(TOPIC) or subject.removeprefix(SUBJECT_PREFIX)
    data = {"topic": topic, "originator_id": headers.get(ORIGINATOR_ID),
            "version": _int(headers.get(ORIGINATOR_VERSION)),
            "position": _int(headers.get(POSITION))}
    position = headers.get(POSITION, "")
    text = (f"id: {position}\n" if position.isdigit() else "") + \
        (f"event: {topic}\n" if typed else "") + f"data: {_encode(data).decode()}\n\n"
    return topic, text.encode()


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


class VisibilityFilter:
    """Which events a principal limited to some accounts may see (cached per entity)."""

    def __init__(self, ctx: ApiContext, visible: frozenset[str] | None):
        self.ctx, self.visible = ctx, visible
        self.seen: dict[str, bool] = {}

    def allows(self, topic: str, originator_id: str | None) -> bool:
        """Whether to forward an event (blocking: may read one read-model row)."""
        if self.visible is None:
            return True
        model = ACCOUNT_MODELS.get(topic.split(".", 1)[0])
        if model is None or originator_id is None or model not in self.ctx.runners:
            return False  # platform entities (hosts, operations...) are not theirs to see
        if originator_id in self.seen:
            return self.seen[originator_id]
        row = self.ctx.view(model).get(UUID(originator_id))
        if row is None:
            return False  # not projected yet: dropped, and asked again next time
        self.seen[originator_id] = allowed = row["account"] in self.visible
        return allowed


async def stream(request: web.Request) -> web.StreamResponse:
    """`GET /v1/stream?token=...`: platform events as Server-Sent Events."""
    ctx, config = request.app[CONTEXT], request.app[WEB]
    token = request.query.get("token", "")
    if not token:
        raise UnauthenticatedError("pass the bearer token as ?token=... (EventSource cannot "
                                   "send headers)")
    principal: Principal = await ctx.call(ctx.access.authenticate_bearer, token)
    visible = await ctx.call(ctx.access.visible_accounts, principal)
    check = VisibilityFilter(ctx, visible)
    typed = request.query.get("untyped", "") not in ("1", "true")
    nc = await connect(config.servers, name="cloudkernel-web-stream", timeout=5)
    queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_SIZE)
    overflowed = False

    async def on_message(msg: Any) -> None:
        nonlocal overflowed
        if overflowed:
            return
        try:
            queue.put_nowait((msg.subject, dict(msg.headers or {})))
        except asyncio.QueueFull:  # a slow page: drop the rest, tell it to reload its tables
            overflowed = True

    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})
    config.clients.add(queue)
    try:
        await nc.subscribe(SUBJECT_PREFIX + ">", cb=on_message, pending_msgs_limit=100_000)
        await nc.flush()
        await response.prepare(request)
        await response.write(b": connected\nretry: 2000\n\n")
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), config.keepalive)
            except TimeoutError:
                if overflowed and queue.empty():
                    overflowed = False
                    await response.write(b"event: overflow\ndata: {}\n\n")
                await response.write(b": keep-alive\n\n")
                continue
            if item == CLOSE:
                break
            if overflowed and queue.empty():
                overflowed = False
                await response.write(b"event: overflow\ndata: {}\n\n")
            subject, headers = item
            topic, message = sse_message(headers, subject, typed=typed)
            if check.visible is not None and not await ctx.call(
                    check.allows, topic, headers.get(ORIGINATOR_ID)):
                continue
            await response.write(message)
    except ConnectionResetError:
        pass  # the page went away
    finally:
        config.clients.discard(queue)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)
    return response


# --------------------------------------------------------------------------- wiring


def _has_route(app: web.Application, method: str, path: str) -> bool:
    for resource in app.router.resources():
        info = resource.get_info()
        if path in (info.get("path"), info.get("formatter")) and \
                any(route.method == method for route in resource):
            return True
    return False


def add_web_routes(app: web.Application, *, servers: Sequence[str],
                   login: Login | None = None) -> None:
    """Mount the web page on an admin API app (`make_app`): `servers` are the NATS URLs the
    relay publishes to; `login(username, password) -> token` serves `POST /v1/login` unless
    the API has that route already."""
    app[WEB] = WebConfig(servers=list(servers), login=login)
    app.router.add_get("/", index, name="web_index")
    app.router.add_static("/static/", STATIC_DIR, name="web_static")
    app.router.add_get("/v1/stream", stream, name="web_stream")
    app.router.add_get("/v1/web/catalog", catalog, name="web_catalog")
    add_services_route(app, servers)
    if not _has_route(app, "POST", "/v1/login"):
        app.router.add_post("/v1/login", login_route, name="web_login")
    app.on_shutdown.append(_close_streams)


async def _close_streams(app: web.Application) -> None:
    """End every open stream, so that stopping the server does not wait for the pages."""
    for queue in list(app[WEB].clients):
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(CLOSE)

