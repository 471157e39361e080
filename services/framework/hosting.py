"""What every HTTP service on the framework shares: the serve loop (its key, its tenant view
fed by a durable consumer, its runtime, its HTTP site, an orderly stop) and its process entry
point (`python -m services.<name>`).

A service brings only what is its own: its `ServiceSpec`, the handler of its view's events
(default: the view applies them) and its aiohttp application.
"""

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from importlib import metadata
from pathlib import Path
from typing import Any

from aiohttp import web

from aggregates.errors import ConfigError
from kernel.settings import Settings, load_settings
from services.framework.framework import ServiceEvent, ServiceRuntime, ServiceSpec
from services.framework.tenant_view import TenantView

log = logging.getLogger(__name__)
EventHandler = Callable[[ServiceEvent], Awaitable[None] | None]
Serve = Callable[[Settings, asyncio.Event, "asyncio.Event | None"], Coroutine[Any, Any, None]]


def package_version() -> str:
    """The version a service registers: the installed cloudkernel's."""
    try:
        return metadata.version("cloudkernel")
    except metadata.PackageNotFoundError:
        return "0"


def service_dir(settings: Settings, name: str) -> Path:
    """Where a service keeps its own files: `<data_dir>/services/<name>`."""
    return settings.data_dir / "services" / name


async def serve_http(settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None, *,
                     spec: ServiceSpec, port: int,
                     make_app: Callable[[ServiceRuntime, TenantView], web.Application],
                     make_handler: Callable[[ServiceRuntime, TenantView], EventHandler]
                     | None = None) -> None:
    """Run a service until `stop` is set: register, consume into its tenant view, serve HTTP
    on `settings.api_host:port`; then stop taking requests, stop consuming, close."""
    from services.framework.credentials import service_credentials

    data_dir = service_dir(settings, spec.name)
    credentials = await asyncio.to_thread(service_credentials, settings, spec.name)
    view = await asyncio.to_thread(TenantView, data_dir / "view.db")
    runtime = ServiceRuntime(spec, settings.nats_servers, credentials=credentials,
                             data_dir=data_dir,
                             heartbeat_seconds=settings.service_heartbeat_seconds,
                             replicas=settings.nats_replicas)

    async def apply(event: ServiceEvent) -> None:
        await asyncio.to_thread(view.apply, event)

    handler = make_handler(runtime, view) if make_handler is not None else apply
    # named after the view's file: a lost view is rebuilt from the first event
    runtime.consume(view.durable(f"{spec.name}-tenant-view"), TenantView.subjects(), handler)
    runner: web.AppRunner | None = None
    runtime_stop = asyncio.Event()  # set after the HTTP server closed: no request in flight
    running: asyncio.Task[None] | None = None
    try:
        await runtime.start()
        running = asyncio.create_task(runtime.run(runtime_stop))
        runner = web.AppRunner(make_app(runtime, view), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.api_host, port).start()
        log.info("%s: serving http://%s:%d/ (instance %s)", spec.name, settings.api_host,
                 port, runtime.instance_id)
        if ready is not None:
            ready.set()
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
    finally:
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        runtime_stop.set()
        try:
            if running is not None:
                await running  # a runtime that failed says why here
        finally:
            view.close()


def service_main(name: str, description: str, serve: Serve,
                 banner: Callable[[Settings], str], argv: list[str] | None = None) -> int:
    """`python -m services.<name> [--config FILE]`: run until SIGTERM or SIGINT;
    2 on a bad setting."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}",
                                     description=description)
    parser.add_argument("--config", metavar="FILE", help="settings file (TOML)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(config_path=args.config)
        logging.basicConfig(level=settings.log_level or "INFO",
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        asyncio.run(_until_signal(name, settings, serve, banner))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


async def _until_signal(name: str, settings: Settings, serve: Serve,
                        banner: Callable[[Settings], str]) -> None:
    stop, ready = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(serve(settings, stop, ready))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiting], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if ready.is_set():
        print(f"{name} serving {banner(settings)}; SIGTERM stops it", flush=True)
    await task
    print(f"{name} stopped", flush=True)
