"""`GET /v1/services` and `GET /v1/services/{name or id}`: the Services Directory's registrations.

The rows come from the `services` read model (`projections.services`). One service is found by
its name (`/v1/services/ec2`) or by its registration id. Which instances are alive is not in
the read model but in the NATS KV bucket the services heartbeat into: ask the directory over
NATS (`cloudkernel.services.get`) or run `cloudkernel services show NAME` for that.
"""

from uuid import UUID

import msgspec
from aiohttp import web

from aggregates.errors import NotFoundError
from aggregates.service import ServiceRegistration
from gateways.api.context import CONTEXT, authenticator
from gateways.api.inventory import _visible, list_handler, one_wait_for, wait_for_position

MODEL = "services"

_encode = msgspec.json.Encoder().encode


def registration_id(text: str) -> UUID | None:
    """The registration id a path names: an id as given, or the id of a service name."""
    try:
        return UUID(text)
    except ValueError:
        pass
    try:
        return ServiceRegistration.create_id(text) if text.isprintable() else None
    except Exception:
        return None


async def get_service(request: web.Request) -> web.Response:
    """`GET /v1/services/{id}`: one registration, by service name or registration id."""
    ctx = request.app[CONTEXT]
    wait_for = one_wait_for(request)
    who = authenticator(request)
    text = request.match_info["id"]

    def read() -> bytes:
        _visible(ctx, who(), MODEL, "get")
        wait_for_position(ctx, MODEL, wait_for)
        key = registration_id(text)
        row = None if key is None else ctx.view(MODEL).get(key)
        if row is None:
            raise NotFoundError(f"no service {text[:80]!r} is registered")
        return _encode(row)

    return web.Response(body=await ctx.call(read), content_type="application/json")


def add_service_routes(app: web.Application) -> None:
    """Register the services routes (before the generic read-model routes, which they
    replace for this model)."""
    app.router.add_get(f"/v1/{MODEL}", list_handler(MODEL), name="list_services_directory")
    app.router.add_get(f"/v1/{MODEL}/{{id}}", get_service, name="get_services_directory")
