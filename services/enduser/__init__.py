"""The End User API service: tenants deploy, list, start, stop and destroy their own VMs and
volumes over HTTP (JSON), in a process of its own that talks to the platform only over NATS.

* It registers with the Services Directory as `enduser`, heartbeats, and follows the admin's
  enable/disable switch (disabled: every route answers 503 naming the service).
* It keeps its own tenant view (`services.framework.tenant_view`) in
  `<data_dir>/services/enduser/`, fed by a durable consumer of the public events, so a
  restart resumes where it stopped.
* Users log in with `POST /v1/login` (the ACL service checks the password over NATS) and send
  `Authorization: Bearer <token>`; each change is a command sent with that token, so the
  platform's ACL decides it as that user. A tenant sees only its own account's resources.

* Its contract is served without a token: `GET /v1/openapi.json` (OpenAPI 3.1, built from
  the request Structs of `bodies` and the answer Structs of `openapi`) and `GET /v1/docs` (an
  offline page of it); `GET /healthz` answers 200, or 503 while disabled, for load balancers.

Routes: see `services.enduser.routes`. Run it with `python -m services.enduser
[--config FILE]`.
"""

import asyncio

from aiohttp import web

from kernel.settings import Settings
from services.acl.client import AclClient
from services.enduser.auth import Authenticator
from services.enduser.routes import EndUser, make_app
from services.framework.framework import ServiceRuntime, ServiceSpec
from services.framework.hosting import package_version, serve_http
from services.framework.tenant_view import TenantView

SERVICE_NAME = "enduser"


def service_spec(settings: Settings) -> ServiceSpec:
    """What the service registers: its HTTP endpoint and the subjects it uses."""
    return ServiceSpec(
        name=SERVICE_NAME, version=package_version(),
        endpoints={"http": f"http://{settings.api_host}:{settings.enduser_port}/"},
        consumes=TenantView.subjects(),
        publishes=("cloudkernel.commands.vm.*", "cloudkernel.commands.volume.*",
                   "cloudkernel.acl.login", "cloudkernel.acl.authenticate"),
        description="End User API: tenants manage their own VMs and volumes (JSON over HTTP)")


async def serve(settings: Settings, stop: asyncio.Event,
                ready: asyncio.Event | None = None) -> None:
    """Run the service until `stop` is set: register, consume, serve HTTP; then close."""

    def app(runtime: ServiceRuntime, view: TenantView) -> web.Application:
        return make_app(EndUser(runtime=runtime, auth=Authenticator(AclClient(runtime.nc)),
                                view=view, name=SERVICE_NAME))

    await serve_http(settings, stop, ready, spec=service_spec(settings),
                     port=settings.enduser_port, make_app=app)
