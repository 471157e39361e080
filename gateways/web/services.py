"""The Services panel's data: `GET /v1/web/services[?wait_for=N]`.

Each registration of the `services` read model (as `GET /v1/services` lists it) joined with
its live instances, read from the liveness bucket (`CK_SERVICES`) the services heartbeat
into. Each instance carries `age`, the seconds since its last heartbeat as the server counts
them, so that the page does not depend on the browser's clock. The answer is
`{"items": [...], "liveness": null | "why the instances could not be read"}`: registrations
are shown even when NATS is out of reach.

The page asks again every few seconds (heartbeats are not events) and whenever a
`service_registration.*` event arrives on its stream.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import msgspec
from aiohttp import web
from nats.aio.client import Client

from aggregates.errors import NotFoundError
from gateways.api.context import CONTEXT, ApiContext, authenticator
from gateways.api.inventory import _visible, one_wait_for, wait_for_position
from gateways.stream.services_directory import Document, ViewRegistrations, joined
from kernel.contracts.access import Principal
from kernel.contracts.connection import connect
from kernel.contracts.liveness import Heartbeat, by_service, live_instances

log = logging.getLogger(__name__)

MODEL = "services"
CONNECT_SECONDS = 3.0
READ_SECONDS = 5.0

_encode = msgspec.json.Encoder().encode


class LivenessReader:
    """One NATS connection, opened at the first read, shared by every page's refresh."""

    def __init__(self, servers: Sequence[str]) -> None:
        self.servers = list(servers)
        self._nc: Client | None = None
        self._lock = asyncio.Lock()

    async def _client(self) -> Client:
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                self._nc = await connect(self.servers, name="cloudkernel-web-services",
                                         timeout=CONNECT_SECONDS)
            return self._nc

    async def instances(self) -> list[Heartbeat]:
        """Every instance heartbeating now; raises when NATS cannot say."""
        nc = await self._client()
        return await asyncio.wait_for(live_instances(nc.jetstream()), READ_SECONDS)

    async def close(self) -> None:
        """Close the connection, if one was opened."""
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)


LIVENESS: web.AppKey[LivenessReader] = web.AppKey("cloudkernel_web_liveness", LivenessReader)


def read_registrations(ctx: ApiContext, principal_check: Callable[[], Principal],
                       wait_for: int | None) -> list[Document]:
    """Every registration, by name (blocking: authenticates, may wait for the read model)."""
    principal = principal_check()
    if MODEL not in ctx.runners:
        raise NotFoundError("the services read model is not served by this API")
    _visible(ctx, principal, MODEL)
    wait_for_position(ctx, MODEL, wait_for)
    return ViewRegistrations(ctx.view(MODEL)).all()


def with_ages(doc: Document, now: float) -> Document:
    """A joined registration whose instances each carry `age` in seconds."""
    instances = [{**i, "age": round(max(0.0, now - float(i["at"])), 1)}
                 for i in doc["instances"]]
    return {**doc, "instances": instances}


async def services(request: web.Request) -> web.Response:
    """`GET /v1/web/services`: registrations with their live instances."""
    ctx = request.app[CONTEXT]
    wait_for = one_wait_for(request)
    who = authenticator(request)
    docs = await ctx.call(read_registrations, ctx, who, wait_for)
    problem: str | None = None
    live: dict[str, list[Heartbeat]] = {}
    try:
        live = by_service(await request.app[LIVENESS].instances())
    except Exception as e:  # shown on the page; the registrations are still worth showing
        problem = f"live instances unknown: NATS did not answer ({type(e).__name__}: {e})"
        log.warning("web: %s", problem)
    now = time.time()
    items = [with_ages(joined(d, live.get(d["name"], [])), now) for d in docs]
    return web.Response(body=_encode({"items": items, "liveness": problem}),
                        content_type="application/json")


def add_services_route(app: web.Application, servers: Sequence[str]) -> None:
    """Mount `GET /v1/web/services`, reading liveness from NATS at `servers`."""
    app[LIVENESS] = LivenessReader(servers)
    app.router.add_get("/v1/web/services", services, name="web_services")
    app.on_cleanup.append(_close)


async def _close(app: web.Application) -> None:
    await app[LIVENESS].close()
