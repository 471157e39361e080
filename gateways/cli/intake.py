"""`cloudkernel intake`: serve integrators' signed commands from NATS until SIGINT/SIGTERM."""

import argparse
import asyncio
import contextlib
import logging
import signal
from datetime import UTC, datetime
from typing import Any

from aggregates.errors import ConfigError
from gateways.access import Keyring, keys_path
from kernel.bootstrap import open_engine
from kernel.bootstrap.access import process_access
from kernel.bootstrap.processes import command_intake, direct_catalog
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
    p.set_defaults(run=cmd_intake, serves=True)


def cmd_intake(settings: Settings, args: argparse.Namespace) -> int:
    """Run the command intake alone, against the configured store and NATS."""
    from gateways.stream.intake import DEFAULT_CONCURRENCY

    concurrency = DEFAULT_CONCURRENCY if args.concurrency is None else args.concurrency
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"--concurrency must be 1 to {MAX_CONCURRENCY}, got {concurrency}")
    keyring = Keyring(keys_path(settings))
    now = datetime.now(UTC)
    active = [k for k in keyring.entries() if k.status(now) == "active"]  # a bad file fails here
    if not active:
        log.warning("intake: no active key in %s: only the ACL's users' commands are taken "
                    "until one is created with `cloudkernel keys create`", keyring.path)
    platform, engine, _feed = open_engine(settings)
    stack = contextlib.ExitStack()
    access = stack.enter_context(process_access(settings, keyring))
    intake = command_intake(settings, platform, direct_catalog(platform, engine), access,
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
              f"with {len(active)} active keys from {keyring.path} and the ACL's users; "
              "Ctrl-C stops it",
              flush=True)
        await task
        log.info("intake: stopped (%s)", dict(intake.stats))

    try:
        asyncio.run(serve())
    finally:
        stack.close()
        platform.close()
    return 0
