"""The console proxy as a running service: runtime, VM-event subscription, HTTP site."""

import asyncio
import contextlib
import logging
from uuid import UUID

from aiohttp import web
from nats.aio.msg import Msg

from kernel.contracts.console import load_console_secret
from kernel.contracts.events import ORIGINATOR_ID, SUBJECT_PREFIX, TOPIC
from kernel.settings import Settings
from services.console.proxy import ConsoleProxy
from services.framework.credentials import service_credentials
from services.framework.framework import ServiceRuntime, ServiceSpec
from services.framework.hosting import service_dir

log = logging.getLogger(__name__)


async def run_proxy(settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None,
                    spec: ServiceSpec) -> None:
    """Register, follow VM events, serve HTTP until `stop`; then end sessions and close."""
    credentials = await asyncio.to_thread(service_credentials, settings, spec.name)
    secret = await asyncio.to_thread(load_console_secret, settings.console_secret_path,
                                     owner="console")
    runtime = ServiceRuntime(spec, settings.nats_servers, credentials=credentials,
                             data_dir=service_dir(settings, spec.name),
                             heartbeat_seconds=settings.service_heartbeat_seconds,
                             replicas=settings.nats_replicas)
    proxy = ConsoleProxy(runtime, settings, secret)
    runner: web.AppRunner | None = None
    runtime_stop = asyncio.Event()
    running: asyncio.Task[None] | None = None

    async def on_event(msg: Msg) -> None:
        # Core NATS sees what the relay publishes to the stream; each proxy instance ends its
        # own sessions. A missed event costs nothing worse than a session that ends when the
        # desk's connection closes (the VM's qemu is gone then).
        headers = msg.headers or {}
        try:
            proxy.on_vm_event(headers.get(TOPIC, msg.subject.removeprefix(SUBJECT_PREFIX)),
                              UUID(headers[ORIGINATOR_ID]))
        except (KeyError, ValueError):
            return

    try:
        await runtime.start()
        await runtime.nc.subscribe(SUBJECT_PREFIX + "vm.*", cb=on_event)
        running = asyncio.create_task(runtime.run(runtime_stop))
        runner = web.AppRunner(proxy.app(), access_log=None)  # tokens are in the URLs
        await runner.setup()
        await web.TCPSite(runner, settings.api_host, settings.console_port).start()
        log.info("console: serving %s (instance %s)", settings.console_url,
                 runtime.instance_id)
        if ready is not None:
            ready.set()
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
    finally:
        proxy.sessions.end_all("the console service is stopping; open a new console")
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        runtime_stop.set()
        if running is not None:
            await running
