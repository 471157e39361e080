"""The EC2 API service: the EC2 Query API subset real tools use, in a process of its own that
talks to the platform only over NATS.

* It registers with the Services Directory as `ec2`, heartbeats, and follows the admin's
  enable/disable switch (disabled: every request gets EC2's 503 `Unavailable`).
* It keeps its own tenant view (`services.framework.tenant_view`) and EC2 store (key pairs,
  tags, reservations) in `<data_dir>/services/ec2/`, the view fed by a durable consumer of the
  public events, so a restart resumes where it stopped without missing an event.
* Requests are signed with AWS Signature V4 using an ACL API key (access key id = the key id,
  secret = its secret); the ACL service checks the signature over NATS and answers a bearer
  token, and each change is a command sent with that token, so the platform's ACL decides it as
  that user. A tenant sees only its own account's resources.

Actions: `services.ec2.service.ACTIONS`. Ids: `services.ec2.ids`. Run it with
`python -m services.ec2 [--config FILE]`; point boto3 at it with
`boto3.client("ec2", endpoint_url="http://127.0.0.1:8482", region_name=<ec2_region>, ...)`.
"""

import asyncio
from typing import TYPE_CHECKING

from kernel.settings import Settings

if TYPE_CHECKING:
    from services.framework.framework import ServiceSpec

SERVICE_NAME = "ec2"


def service_spec(settings: Settings) -> "ServiceSpec":
    """What the service registers: its HTTP endpoint and the subjects it uses."""
    from services.framework.framework import ServiceSpec
    from services.framework.hosting import package_version
    from services.framework.tenant_view import TenantView

    return ServiceSpec(
        name=SERVICE_NAME, version=package_version(),
        endpoints={"http": f"http://{settings.api_host}:{settings.ec2_port}/"},
        consumes=TenantView.subjects(),
        publishes=("cloudkernel.commands.vm.*", "cloudkernel.commands.volume.*",
                   "cloudkernel.acl.sigv4", "cloudkernel.acl.authorize"),
        description=f"EC2 Query API (region {settings.ec2_region}), SigV4 against ACL keys")


async def serve(settings: Settings, stop: asyncio.Event,
                ready: asyncio.Event | None = None) -> None:
    """Run the service until `stop` is set: register, consume, serve HTTP; then close."""
    from aiohttp import web

    from services.acl.client import AclClient
    from services.ec2.auth import Authenticator
    from services.ec2.service import Ec2Http, RuntimePlatform
    from services.ec2.store import Ec2Store
    from services.framework.framework import ServiceRuntime
    from services.framework.hosting import EventHandler, serve_http, service_dir
    from services.framework.tenant_view import TenantView

    store = await asyncio.to_thread(Ec2Store, service_dir(settings, SERVICE_NAME) / "ec2.db")
    platforms: list[RuntimePlatform] = []  # the one the handler and the app share

    def handler(runtime: ServiceRuntime, view: TenantView) -> EventHandler:
        platforms.append(RuntimePlatform(runtime, view, store, settings.ec2_region))
        return platforms[0].apply

    def app(runtime: ServiceRuntime, _view: TenantView) -> web.Application:
        auth = Authenticator(AclClient(runtime.nc), region=settings.ec2_region)
        return Ec2Http(platforms[0], auth, enabled=lambda: runtime.enabled).app()

    try:
        await serve_http(settings, stop, ready, spec=service_spec(settings),
                         port=settings.ec2_port, make_app=app, make_handler=handler)
    finally:
        store.close()
