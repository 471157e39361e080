"""Running the admin API on a host and port until told to stop."""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from gateways.api.app import METRICS, make_app
from gateways.api.context import ApiContext

log = logging.getLogger(__name__)


@dataclass
class ApiServer:
    """The admin API served on `host:port` (port 0: any free one, see `url` once ready)."""

    context: ApiContext
    host: str
    port: int
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    # more routes on the same app (the web page), added before it serves
    mount: Callable[[web.Application], object] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then finish the requests in flight and close."""
        app = make_app(self.context)
        app[METRICS].share()  # the process's metrics port serves the API's families too
        if self.mount is not None:
            self.mount(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, shutdown_timeout=10)
            await site.start()
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            port = sockets[0].getsockname()[1] if sockets else self.port
            host = f"[{self.host}]" if ":" in self.host else self.host
            self.url = f"http://{host}:{port}"
            log.info("admin API at %s (docs at %s/v1/docs)", self.url, self.url)
            self.ready.set()
            await stop.wait()
        finally:
            app[METRICS].unshare()
            await runner.cleanup()
