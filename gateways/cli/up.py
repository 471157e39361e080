"""`cloudkernel up`: the whole platform in one command, on the configured store and NATS.

It migrates, starts the embedded nats-server (or checks the configured cluster), loads the
inventory, then runs until a signal: the kernel loops, the relays, the command intake, the
webhook deliverer, the projections, the admin API and web page, the audit sealing follower,
the ACL's and the directory's NATS responders, a worker per subsystem plugin, and the enabled
services, each a supervised process of its own.
"""

import argparse
import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel.bootstrap import inventory_path
from kernel.bootstrap.migrations import migrate_all
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings

if TYPE_CHECKING:
    from kernel.bootstrap import Platform
    from kernel.dispatch_feed import DispatchFeed
    from kernel.operations import OperationEngine

log = logging.getLogger("cloudkernel")


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    """Migrate, start NATS, load the inventory, then run the kernel and the workers."""
    from gateways.stream.embedded import EmbeddedNatsServer
    from kernel.bootstrap import open_engine

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for line in migrate_all(settings):
        log.info("migrate: %s", line)
    nats_server = None
    platform = None
    try:
        if settings.embedded_nats:
            nats_server = EmbeddedNatsServer(settings.data_dir / "nats", port=settings.nats_port)
            url = nats_server.start()
            log.info("embedded nats-server with JetStream at %s (pid %s)", url, nats_server.pid)
        else:
            url = ", ".join(settings.nats_urls)
            _check_nats(settings.nats_urls)
            log.info("using NATS cluster %s", url)
        platform, engine, feed = open_engine(settings)
        path = inventory_path(settings)
        if path is not None:
            outcome, result = load_inventory_file(platform.commands, path)
            log.info("inventory %s: %s%s", path, result.summary(),
                     " (loaded before)" if outcome.replayed else "")
        import asyncio

        asyncio.run(_serve_kernel_and_workers(settings, platform, engine, feed, url,
                                              config=args.config))
    finally:
        if platform is not None:
            platform.close()
        if nats_server is not None:
            nats_server.stop()
    print("cloudkernel stopped", flush=True)
    return 0


async def _serve_kernel_and_workers(settings: Settings, platform: "Platform",
                                    engine: "OperationEngine", feed: "DispatchFeed",
                                    url: str, *, config: Path | None = None) -> None:
    """Kernel loops, relay, intake, projections, a worker per subsystem, the ACL and services
    directory responders, then the enabled services as their own processes, until a signal."""
    import asyncio

    from gateways.web.admin import banner
    from kernel.bootstrap.up import assemble

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with assemble(settings, platform, engine, feed) as parts:
        for projection in parts.projections:
            projection.start()
        tasks = [asyncio.create_task(part.run(stop)) for part in parts.loops]
        ready: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(event.wait() for event in parts.ready)))
        await asyncio.wait([*tasks, ready], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:  # a loop that ended before the workers were ready failed
            if task.done():
                task.result()
        # the services talk NATS only, so they start once the platform answers there
        tasks += [asyncio.create_task(p.run(stop)) for p in parts.services(config)]
        print(f"cloudkernel is up: store={settings.store} data={settings.data_dir} nats={url} "
              f"api={parts.api.url}; kernel, event relay, command intake, webhooks, admin API, "
              "audit sealing, "
              f"{len(parts.projections)} projections and "
              f"workers for {', '.join(parts.plugin_names)} running"
              + (f"; services {', '.join(settings.services)} starting as their own processes"
                 if settings.services else "; no services (setting services)")
              + "; Ctrl-C stops it", flush=True)
        print(banner(parts.api.url, parts.acl.admin_user, parts.acl.admin_password), flush=True)
        for line in _service_lines(settings):
            print(line, flush=True)
        try:
            await asyncio.gather(*tasks)
        finally:
            stop.set()
            for projection in parts.projections:
                await asyncio.to_thread(projection.stop)


def _service_lines(settings: Settings) -> list[str]:
    """Where each service `up` starts will answer."""
    where = {"enduser": ("end-user API", settings.enduser_port, ""),
             "ec2": ("EC2 API", settings.ec2_port, f" (region {settings.ec2_region})")}
    return [f"console proxy at {settings.console_url}/" if n == "console" else
            f"{where[n][0]} at http://{settings.api_host}:{where[n][1]}/{where[n][2]}"
            for n in settings.services]


def _check_nats(urls: Sequence[str]) -> None:
    """Fail at start, naming the setting, when no server of the NATS cluster answers."""
    import socket
    from urllib.parse import urlsplit

    from aggregates.errors import ConfigError

    problems = []
    for url in urls:
        parts = urlsplit(url)
        try:
            with socket.create_connection((parts.hostname, parts.port or 4222), timeout=3) as s:
                s.settimeout(3)
                if s.recv(5) == b"INFO ":  # every NATS server greets with INFO {...}
                    return
                problems.append(f"{url}: not a NATS server")
        except OSError as e:
            problems.append(f"{url}: {e.strerror or e}")
    raise ConfigError(f"setting nats_urls: cannot connect to {', '.join(urls)} "
                      f"({'; '.join(problems)})")
