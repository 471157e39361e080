"""The `cloudkernel` command: run the platform, migrate, load inventory, show settings."""

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregates.errors import KernelError
from gateways.cli.contracts import add_contracts_commands
from kernel.bootstrap import inventory_path, open_platform
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings, load_settings
from kernel.store.migrate import migrate

if TYPE_CHECKING:
    from gateways.access import Keyring
    from kernel.bootstrap import Platform
    from kernel.dispatch_feed import DispatchFeed
    from kernel.operations import OperationEngine

log = logging.getLogger("cloudkernel")
EXIT_BAD_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        settings = load_settings(config_path=args.config)
        logging.basicConfig(level=settings.log_level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        result: int = args.run(settings, args)
        return result
    except KernelError as e:
        print(f"cloudkernel: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudkernel", description=__doc__)
    parser.add_argument("--config", type=Path, default=None,
                        help="settings file (default: ./cloudkernel.toml or $CLOUDKERNEL_CONFIG)")
    sub = parser.add_subparsers(metavar="COMMAND")

    def command(name: str, run: Callable[[Settings, argparse.Namespace], int],
                help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(run=run)
        return p

    command("up", cmd_up, "start the platform on the configured store and NATS; Ctrl-C stops it")
    command("kernel", cmd_kernel, "run the kernel: dispatcher, result applier and timers")
    command("relay", cmd_relay, "publish every log event to the JetStream EVENTS stream")
    command("migrate", cmd_migrate, "create schemas and tables for every application")
    command("settings", cmd_settings, "print the effective settings and where each came from")
    from gateways.cli.worker import add_worker_command

    add_worker_command(sub)
    command("subsystems", cmd_subsystems,
            "list the installed subsystem plugins, their versions and step kinds")
    from gateways.cli.projections import add_projection_commands

    add_projection_commands(sub)
    inventory = sub.add_parser("inventory", help="inventory files")
    inv_sub = inventory.add_subparsers(metavar="ACTION")
    load = inv_sub.add_parser("load", help="register what an inventory TOML file lists")
    load.add_argument("file", type=Path)
    load.set_defaults(run=cmd_inventory_load)
    from gateways.cli.keys import add_keys_commands

    add_keys_commands(sub)
    add_contracts_commands(sub)
    from gateways.cli.webhooks import add_webhook_commands

    add_webhook_commands(sub)
    from gateways.cli.repair import add_repair_command

    add_repair_command(sub)
    from gateways.cli.audit import add_audit_command

    add_audit_command(sub)
    from gateways.cli.acl import add_acl_commands

    add_acl_commands(sub)
    from gateways.cli.api import add_api_command

    add_api_command(sub)
    from gateways.cli.services import add_services_commands

    add_services_commands(sub)
    return parser


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    """Create every application's tables."""
    for line in migrate_all(settings):
        print(line)
    return 0


def migrate_all(settings: Settings) -> list[str]:
    """The kernel's tables, then the gateways' own (webhook deliveries)."""
    from gateways.webhooks.store import migrate_webhooks

    return [*migrate(settings), migrate_webhooks(settings)]


def cmd_kernel(settings: Settings, _: argparse.Namespace) -> int:
    """Run the operation engine against NATS until SIGINT/SIGTERM."""
    import asyncio

    from gateways.stream.kernel_runner import KernelRunner
    from gateways.stream.observer import listener_for
    from kernel.bootstrap import open_engine

    platform, engine, feed = open_engine(settings)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = KernelRunner(engine, feed, settings.nats_servers)
        listener = listener_for(engine, settings, settings.nats_servers)
        log.info("kernel: serving with NATS at %s", ", ".join(settings.nats_servers))
        await asyncio.gather(runner.run(stop), listener.run(stop))
        log.info("kernel: stopped (%s)", runner.stats)

    try:
        asyncio.run(serve())
    finally:
        platform.close()
    return 0


def cmd_relay(settings: Settings, _: argparse.Namespace) -> int:
    """Relay the platform log to EVENTS until SIGINT/SIGTERM."""
    import asyncio

    from gateways.stream.relay import EventRelay
    from kernel.event_feed import EventFeed

    platform = open_platform(settings)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        relay = EventRelay(EventFeed(platform.app), settings.nats_servers)
        await relay.run(stop)
        log.info("relay: stopped after publishing %d events", relay.published)

    try:
        asyncio.run(serve())
    finally:
        platform.close()
    return 0


def cmd_settings(settings: Settings, _: argparse.Namespace) -> int:
    """Print the effective settings."""
    for key, value in settings.describe().items():
        origin = settings.sources.get(key, "default")
        print(f"{key} = {value!r}  ({origin})")
    return 0


def cmd_inventory_load(settings: Settings, args: argparse.Namespace) -> int:
    """Load an inventory file in one transaction."""
    platform = open_platform(settings)
    try:
        outcome, result = load_inventory_file(platform.commands, args.file)
    finally:
        platform.close()
    note = " (this file was loaded before; nothing written)" if outcome.replayed else ""
    print(f"{args.file}: {result.summary()}{note}")
    return 0


def cmd_subsystems(settings: Settings, _: argparse.Namespace) -> int:
    """List each plugin with its version and step kinds (built without configuration)."""
    from subsystems.registry import load_registry

    registry = load_registry()
    rows = [(p.name, p.subsystem.version, " ".join(p.kinds),
             p.source.target + (f" ({p.source.distribution})" if p.source.distribution else ""))
            for p in registry.plugins]
    widths = [max([len(h), *(len(r[i]) for r in rows)])
              for i, h in enumerate(("SUBSYSTEM", "VERSION", "STEP KINDS"))]
    for row in [("SUBSYSTEM", "VERSION", "STEP KINDS", "PLUGIN"), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[3])
    return 0


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


if __name__ == "__main__":
    raise SystemExit(main())
