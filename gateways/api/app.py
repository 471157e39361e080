"""The admin API application: `make_app(context)` wires every route family and middleware.

Routes (all JSON):

* `GET /v1/<model>` and `GET /v1/<model>/{id}` for vms, volumes, hosts, networks,
  snapshots, templates, operations and audit (`gateways.api.inventory`, `.operations`);
* `POST /v1/commands/{tag}` and the resource routes (`gateways.api.commands`);
* `GET /v1/openapi.json`, `GET /v1/docs`, `GET /healthz`, `GET /metrics`.
"""

import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from aiohttp import web
from eventsourcing.persistence import OperationalError as StoreOperationalError

from gateways.api.commands import add_command_routes
from gateways.api.context import CONTEXT, ApiContext
from gateways.api.docs import docs_page
from gateways.api.errors import SERVER_LOG, error_middleware
from gateways.api.inventory import add_inventory_routes
from gateways.api.metrics import CONTENT_TYPE, ApiMetrics
from gateways.api.openapi import encoded_document
from gateways.api.services import add_service_routes

log = logging.getLogger(__name__)

METRICS: web.AppKey[ApiMetrics] = web.AppKey("cloudkernel_metrics", ApiMetrics)
OPENAPI: web.AppKey[bytes] = web.AppKey("cloudkernel_openapi", bytes)
MAX_BODY = 1 << 20

_encode = msgspec.json.Encoder().encode


async def openapi_json(request: web.Request) -> web.Response:
    """`GET /v1/openapi.json`."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    """`GET /healthz`: 200 with each component's state; 503 when the store is unreachable."""
    ctx = request.app[CONTEXT]

    def check() -> tuple[int, dict[str, Any]]:
        components: dict[str, Any] = {}
        status = 200
        try:
            head = ctx.app.recorder.max_notification_id() or 0
            components["store"] = {"status": "up", "log_head": head}
        except Exception as e:  # any driver error means: unreachable
            status = 503
            components["store"] = {"status": "down", "error": type(e).__name__}
            head = None
        projections: dict[str, Any] = {}
        for name, runner in ctx.runners.items():
            if runner.error is not None:
                projections[name] = {"status": "failed", "error": type(runner.error).__name__}
                continue
            try:
                position = runner.position()
            except Exception as e:
                projections[name] = {"status": "down", "error": type(e).__name__}
                continue
            projections[name] = {"status": "up", "position": position,
                                 "behind": None if head is None else max(0, head - position)}
        components["projections"] = projections
        return status, {"status": "ok" if status == 200 else "unavailable",
                        "components": components}

    try:
        status, body = await ctx.call(check)
    except StoreOperationalError as e:  # the store did not answer in time
        status, body = 503, {"status": "down", "components": {
            "store": {"status": "down", "error": str(e)}}}
    return web.Response(status=status, body=_encode(body), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """`GET /metrics`: Prometheus text format."""
    body = await request.app[CONTEXT].call(request.app[METRICS].render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def make_app(context: ApiContext, *, own_context: bool = True) -> web.Application:
    """The admin API over this context; `own_context`: close its thread pool on cleanup."""
    metrics_ = ApiMetrics(context)
    app = web.Application(middlewares=[metrics_.http.middleware, error_middleware],
                          client_max_size=MAX_BODY, handler_args={"logger": SERVER_LOG})
    app[CONTEXT] = context
    app[METRICS] = metrics_
    app[OPENAPI] = encoded_document(context.catalog)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        yield
        if own_context:
            context.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/v1/openapi.json", openapi_json, name="openapi")
    app.router.add_get("/v1/docs", docs_page, name="docs")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/metrics", metrics, name="metrics")
    from gateways.api.operations import add_operation_routes

    add_operation_routes(app)  # before the generic GET /v1/{model}/{id} routes
    add_service_routes(app)  # ditto
    add_inventory_routes(app)
    add_command_routes(app, context.catalog)
    return app
