"""`cloudkernel api`: the admin API alone."""

import argparse
import asyncio
import logging
import signal
from typing import Any

from kernel.settings import Settings

log = logging.getLogger("cloudkernel")


def add_api_command(sub: Any) -> None:
    """Register `api` on the main parser's subcommands."""
    help_ = "serve the admin API (JSON under /v1, docs at /v1/docs) until Ctrl-C"
    p = sub.add_parser("api", help=help_, description=help_)
    p.add_argument("--host", default=None, help="listen address (default: setting api_host)")
    p.add_argument("--port", type=int, default=None, help="port (default: setting api_port)")
    p.add_argument("--run-projections", action="store_true",
                   help="also follow the log into the read models in this process (when no "
                        "`cloudkernel up` or `projections run` does)")
    p.set_defaults(run=cmd_api, serves=True)


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    """Run the admin API against the configured store until SIGINT/SIGTERM."""
    from kernel.bootstrap import open_engine
    from kernel.bootstrap.access import process_access
    from kernel.bootstrap.processes import admin_api, direct_catalog, projection_runners
    from projections.catalog import MODELS

    platform, engine, _feed = open_engine(settings)
    catalog = direct_catalog(platform, engine)  # as `cloudkernel intake`: no kernel loops here

    async def serve(runners: list[Any], access: Any) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        server = admin_api(settings, platform, engine, runners, access, catalog=catalog,
                           host=args.host, port=args.port)
        task = asyncio.create_task(server.run(stop))
        ready = asyncio.create_task(server.ready.wait())
        await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()
        print(f"admin API at {server.url} (docs {server.url}/v1/docs); Ctrl-C stops it",
              flush=True)
        await task

    try:
        with projection_runners(settings, list(MODELS)) as runners, \
                process_access(settings) as access:
            if args.run_projections:
                for runner in runners:
                    runner.start()
            try:
                asyncio.run(serve(runners, access))
            finally:
                if args.run_projections:
                    for runner in runners:
                        runner.stop()
    finally:
        platform.close()
    return 0
