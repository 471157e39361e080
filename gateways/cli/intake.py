"""`cloudkernel intake`: serve integrators' signed commands from NATS until SIGINT/SIGTERM."""

import argparse
import asyncio
import logging
import signal
from datetime import UTC, datetime
from typing import Any

from aggregates.errors import ConfigError
from gateways.access import Keyring, KeyringAccess, keys_path
from kernel.bootstrap import command_catalog, open_engine
from kernel.settings import Settings

log = logging.getLogger("cloudkernel")
MAX_CONCURRENCY = 64


def add_intake_command(sub: Any) -> None:
    """Register `intake` on the main parser's subcommands."""
    help_ = "serve signed commands from NATS (cloudkernel.commands.<tag>); Ctrl-C stops it"
    p = sub.add_parser("intake", help=help_, description=help_)
    p.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help=f"commands decided and run at once, in as many threads (default: the "
                        f"intake's, 32; at most {MAX_CONCURRENCY})")
    p.set_defaults(run=cmd_intake)


def cmd_intake(settings: Settings, args: argparse.Namespace) -> int:
    """Run the command intake alone, against the configured store and NATS."""
    from gateways.stream.intake import DEFAULT_CONCURRENCY, CommandIntake

    concurrency = DEFAULT_CONCURRENCY if args.concurrency is None else args.concurrency
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"--concurrency must be 1 to {MAX_CONCURRENCY}, got {concurrency}")
    keyring = Keyring(keys_path(settings))
    now = datetime.now(UTC)
    active = [k for k in keyring.entries() if k.status(now) == "active"]  # a bad file fails here
    if not active:
        log.warning("intake: no active key in %s: every command will be refused until one is "
                    "created with `cloudkernel keys create`", keyring.path)
    platform, engine, _feed = open_engine(settings)
    catalog = dict(command_catalog(platform, engine))
    # This process runs no kernel loops, so the engine's in-memory cache and timers would
    # only grow here: operation commands go straight to its command service, and the kernel
    # process picks the operations up from the log.
    for tag, (type_, _run) in list(catalog.items()):
        if type_ in engine.commands.handlers:
            catalog[tag] = (type_, engine.commands.execute)
    intake = CommandIntake(catalog, KeyringAccess(keyring), settings.nats_servers,
                           concurrency=concurrency)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(intake.run(stop))
        ready = asyncio.create_task(intake.ready.wait())
        await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()  # it failed before it was ready: say why
        print(f"intake serving cloudkernel.commands.> from {', '.join(settings.nats_servers)} "
              f"with {len(active)} active keys from {keyring.path}; Ctrl-C stops it",
              flush=True)
        await task
        log.info("intake: stopped (%s)", dict(intake.stats))

    try:
        asyncio.run(serve())
    finally:
        platform.close()
    return 0
