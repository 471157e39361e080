"""The Console Proxy service: a VM's screen (VNC, in noVNC) and serial console in the browser,
through short-lived single-use links the platform mints (`vm.console`).

* It registers with the Services Directory as `console` (endpoint `web`, the URL browsers
  reach it at: setting `console_public_url`), heartbeats, and follows the admin's switch:
  disabled, every console and data route refuses with 503 naming the service, and nothing of
  orchestration changes.
* A link is `<web>/<kind>?token=...`. Opening it redeems the token once with the platform
  (`console.redeem`); the page then relays a WebSocket to the VM's console through a
  hypervisor worker's desk (`kernel.contracts.console`). The proxy never learns a host's VNC
  port, holds no libvirt connection and never shows the user anything of the host.
* It checks `Origin` on every WebSocket against its own origin, the admin page's and
  `console_allowed_origins`; it limits sessions per user (`console_sessions_per_user`); and it
  closes a session, saying why, when its VM stops, migrates or is destroyed.
* Refusals are words, not bare close codes: the WebSocket gets a JSON message
  `{"error": ..., "code": ...}` and a 4xxx close whose reason says the same.

Run it with `python -m services.console [--config FILE]`.
"""

import asyncio

from kernel.settings import Settings
from services.framework.framework import ServiceSpec
from services.framework.hosting import package_version

SERVICE_NAME = "console"


def service_spec(settings: Settings) -> ServiceSpec:
    """What the service registers: where browsers reach it, and the subjects it uses."""
    return ServiceSpec(
        name=SERVICE_NAME, version=package_version(),
        endpoints={"web": settings.console_url + "/"},
        consumes=("cloudkernel.events.vm.*",),
        publishes=("cloudkernel.commands.console.redeem", "cloudkernel.console.desk"),
        description="VM screens (noVNC) and serial consoles through single-use links")


async def serve(settings: Settings, stop: asyncio.Event,
                ready: asyncio.Event | None = None) -> None:
    """Run the proxy until `stop` is set: register, follow VM events, serve HTTP; then close."""
    from services.console.hosting import run_proxy

    await run_proxy(settings, stop, ready, service_spec(settings))
