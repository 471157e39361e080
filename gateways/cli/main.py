"""The `cloudkernel` command: run the platform, migrate, load inventory, show settings."""

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from aggregates.errors import KernelError
from kernel.bootstrap import inventory_path, open_platform
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings, load_settings
from kernel.store.migrate import migrate

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
    command("migrate", cmd_migrate, "create schemas and tables for every application")
    command("settings", cmd_settings, "print the effective settings and where each came from")
    inventory = sub.add_parser("inventory", help="inventory files")
    inv_sub = inventory.add_subparsers(metavar="ACTION")
    load = inv_sub.add_parser("load", help="register what an inventory TOML file lists")
    load.add_argument("file", type=Path)
    load.set_defaults(run=cmd_inventory_load)
    return parser


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    """Create every application's tables."""
    for line in migrate(settings):
        print(line)
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


def cmd_up(settings: Settings, _: argparse.Namespace) -> int:
    """Create the data folder, migrate, start NATS, load the inventory, wait for a signal."""
    from gateways.stream.embedded import EmbeddedNatsServer

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for line in migrate(settings):
        log.info("migrate: %s", line)
    nats = None
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    platform = None
    try:
        if settings.embedded_nats:
            nats = EmbeddedNatsServer(settings.data_dir / "nats", port=settings.nats_port)
            url = nats.start()
            log.info("embedded nats-server with JetStream at %s (pid %s)", url, nats.pid)
        else:
            url = ", ".join(settings.nats_urls)
            _check_nats(settings.nats_urls)
            log.info("using NATS cluster %s", url)
        platform = open_platform(settings)
        path = inventory_path(settings)
        if path is not None:
            outcome, result = load_inventory_file(platform.commands, path)
            log.info("inventory %s: %s%s", path, result.summary(),
                     " (loaded before)" if outcome.replayed else "")
        print(f"cloudkernel is up: store={settings.store} data={settings.data_dir} nats={url}; "
              "Ctrl-C stops it", flush=True)
        stop.wait()
        log.info("shutting down")
    finally:
        if platform is not None:
            platform.close()
        if nats is not None:
            nats.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("cloudkernel stopped", flush=True)
    return 0


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
