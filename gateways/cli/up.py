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

from gateways.cli.main import migrate_all
from kernel.bootstrap import inventory_path
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings

if TYPE_CHECKING:
    from gateways.access import Keyring
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
    import contextlib
    import functools

    from gateways.access import KeyringAccess, LayeredAccess
    from gateways.acl.access import AclAccess
    from gateways.acl.relay import acl_relay
    from gateways.acl.responder import AclResponder
    from gateways.acl.service import AclService
    from gateways.audit.follower import platform_follower
    from gateways.cli.api import api_server
    from gateways.cli.projections import projection_runners
    from gateways.cli.service_processes import service_processes
    from gateways.ownership import store_lookup
    from gateways.quotas import quota_check
    from gateways.services.directory import DirectoryServer, StoreRegistrations
    from gateways.stream.intake import CommandIntake
    from gateways.stream.kernel_runner import KernelRunner
    from gateways.stream.observer import listener_for, reporter_for
    from gateways.stream.relay import EventRelay
    from gateways.stream.worker import Worker
    from gateways.web.admin import ADMIN_USER, banner, ensure_admin_user, mount_web_page
    from gateways.webhooks.service import WebhookService
    from gateways.webhooks.store import open_webhook_store
    from kernel.bootstrap import command_catalog
    from kernel.event_feed import EventFeed
    from kernel.reality.roster import HostRoster
    from projections.catalog import MODELS
    from subsystems.networkguru.follower import guru_config
    from subsystems.registry import load_registry

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    registry = load_registry(configs={"counter": {"path": str(settings.data_dir / "counter.db")},
                                      "networkguru": guru_config(settings),
                                      "planner": {"settings": settings}})
    servers = settings.nats_servers
    workers = [Worker(p.subsystem, servers=servers) for p in registry.plugins]
    runner = KernelRunner(engine, feed, servers)
    # reality: the kernel listens to power reports; the hypervisor reports every host
    reporters = [reporter_for(p.subsystem, HostRoster(platform.app), settings, servers)
                 for p in registry.plugins]
    observers: list[Any] = [listener_for(engine, settings, servers),
                            *(r for r in reporters if r is not None)]
    relay = EventRelay(EventFeed(engine.app), servers)
    sealing = platform_follower(platform.app, settings.data_dir / "audit", servers)
    # The intake shares the kernel's engine: operations it accepts get their timers here.
    # The ACL service decides for its users' keys and tokens; the keyring's own keys (the
    # admin key printed on the first start) keep working beside it.
    acl = AclService.open(settings)
    access = LayeredAccess(AclAccess(acl), KeyringAccess(_admin_keyring(settings)))
    admin_password = ensure_admin_user(acl)
    acl_events = acl_relay(acl.app, servers)
    acl_answers = AclResponder(acl, servers)  # login, tokens and SigV4 for the services
    directory = DirectoryServer(StoreRegistrations(platform.app), servers)
    intake = CommandIntake(command_catalog(platform, engine), access, servers,
                           owner_lookup=store_lookup(platform.app.repository))
    webhook_store = open_webhook_store(settings)
    webhooks = WebhookService(webhook_store, servers)
    with projection_runners(settings, list(MODELS)) as projections, \
            contextlib.closing(webhook_store):
        for projection in projections:
            projection.start()
        # account and domain limits hold for commands from NATS too (the services send there)
        intake.quota = quota_check(access, platform.app, {p.name: p.view for p in projections})
        api = api_server(settings, platform, engine, projections, access,
                         kernel_stats=lambda: runner.stats,
                         drift_stats=lambda: observers[0].reconciler.stats)
        api.mount = functools.partial(mount_web_page, servers=servers, login=acl.login)
        tasks = [asyncio.create_task(runner.run(stop)), asyncio.create_task(relay.run(stop)),
                 asyncio.create_task(acl_events.run(stop)),
                 asyncio.create_task(sealing.run(stop)),
                 asyncio.create_task(acl_answers.run(stop)),
                 asyncio.create_task(directory.run(stop)),
                 asyncio.create_task(api.run(stop)),
                 asyncio.create_task(intake.run(stop)), asyncio.create_task(webhooks.run(stop)),
                 *(asyncio.create_task(w.run(stop)) for w in workers),
                 *(asyncio.create_task(o.run(stop)) for o in observers)]
        ready: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(intake.ready.wait(), webhooks.ready.wait(), api.ready.wait(),
                           acl_answers.ready.wait(), directory.ready.wait(),
                           *(w.ready.wait() for w in workers)))
        await asyncio.wait([*tasks, ready], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:  # a loop that ended before the workers were ready failed
            if task.done():
                task.result()
        names = ", ".join(p.name for p in registry.plugins)
        # the services talk NATS only, so they start once the platform answers there
        services = service_processes(settings.services, config)
        tasks += [asyncio.create_task(p.run(stop)) for p in services]
        print(f"cloudkernel is up: store={settings.store} data={settings.data_dir} nats={url} "
              f"api={api.url}; kernel, event relay, command intake, webhooks, admin API, "
              "audit sealing, "
              f"{len(projections)} projections and "
              f"workers for {names} running"
              + (f"; services {', '.join(settings.services)} starting as their own processes"
                 if settings.services else "; no services (setting services)")
              + "; Ctrl-C stops it", flush=True)
        print(banner(api.url, ADMIN_USER, admin_password), flush=True)
        for line in _service_lines(settings):
            print(line, flush=True)
        try:
            await asyncio.gather(*tasks)
        finally:
            stop.set()
            for projection in projections:
                await asyncio.to_thread(projection.stop)
            acl.close()


def _service_lines(settings: Settings) -> list[str]:
    """Where each service `up` starts will answer."""
    where = {"enduser": ("end-user API", settings.enduser_port, ""),
             "ec2": ("EC2 API", settings.ec2_port, f" (region {settings.ec2_region})")}
    return [f"{where[n][0]} at http://{settings.api_host}:{where[n][1]}/{where[n][2]}"
            for n in settings.services]


def _admin_keyring(settings: Settings) -> "Keyring":
    """The keyring; on the first start, with an admin key whose secret is printed once."""
    from datetime import UTC, datetime

    from gateways.access import Keyring, keys_path

    keyring = Keyring(keys_path(settings))
    now = datetime.now(UTC)
    if not any(k.role == "admin" and k.status(now) == "active" for k in keyring.entries()):
        key = keyring.create(actor="admin", role="admin")
        print(f"created an admin key for signed commands (shown once, kept in {keyring.path}):"
              f"\n  key id: {key.id}\n  secret: {key.secret}", flush=True)
    return keyring


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
