"""The `cloudkernel` command: run the platform, migrate, load inventory, show settings."""

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aggregates.errors import KernelError
from gateways.cli.contracts import add_contracts_commands
from kernel.bootstrap import open_platform
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings, load_settings

if TYPE_CHECKING:
    pass

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
        if getattr(args, "serves", False):
            from gateways.metrics import serve_metrics

            serve_metrics(settings.api_host, settings.metrics_port)
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

    from gateways.cli.up import cmd_up

    # the long-running processes serve their metrics on setting metrics_port (0: none)
    command("up", cmd_up, "start the platform on the configured store and NATS; Ctrl-C stops it"
            ).set_defaults(serves=True)
    command("kernel", cmd_kernel, "run the kernel: dispatcher, result applier and timers"
            ).set_defaults(serves=True)
    command("relay", cmd_relay, "publish every log event to the JetStream EVENTS stream"
            ).set_defaults(serves=True)
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
    from kernel.bootstrap.commands import add_service_commands

    add_service_commands(sub)
    from gateways.cli.api import add_api_command

    add_api_command(sub)
    from gateways.cli.services import add_services_commands

    add_services_commands(sub)
    from gateways.cli.cluster import add_cluster_command

    add_cluster_command(sub)
    return parser


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    """Create every application's tables."""
    from kernel.bootstrap.migrations import migrate_all

    for line in migrate_all(settings):
        print(line)
    return 0


def cmd_kernel(settings: Settings, _: argparse.Namespace) -> int:
    """Run the operation engine against NATS until SIGINT/SIGTERM."""
    import asyncio

    from kernel.bootstrap import open_engine
    from kernel.bootstrap.processes import kernel_loops

    platform, engine, feed = open_engine(settings)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner, listener = kernel_loops(settings, engine, feed)
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

    from kernel.bootstrap.processes import platform_relay

    platform = open_platform(settings)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        relay = platform_relay(settings, platform.app)
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


if __name__ == "__main__":
    raise SystemExit(main())
