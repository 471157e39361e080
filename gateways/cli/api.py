"""`cloudkernel api`: the admin API alone; and the helper `cloudkernel up` uses to embed it."""

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
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
    p.set_defaults(run=cmd_api)


def api_server(settings: Settings, platform: Any, engine: Any, runners: Sequence[Any],
               access: Any, *, catalog: Mapping[str, Any] | None = None,
               kernel_stats: Callable[[], Mapping[str, int]] | None = None,
               drift_stats: Callable[[], Mapping[str, int]] | None = None,
               host: str | None = None, port: int | None = None) -> Any:
    """An ApiServer over the engine's commands and these projection runners."""
    from gateways.api.context import ApiContext
    from gateways.api.server import ApiServer
    from kernel.bootstrap import command_catalog

    context = ApiContext(dict(catalog or command_catalog(platform, engine)), access,
                         platform.app, {r.name: r for r in runners}, engine=engine,
                         kernel_stats=kernel_stats, drift_stats=drift_stats)
    return ApiServer(context, host or settings.api_host,
                     settings.api_port if port is None else port)


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    """Run the admin API against the configured store until SIGINT/SIGTERM."""
    from gateways.access import Keyring, KeyringAccess, keys_path
    from gateways.cli.projections import projection_runners
    from kernel.bootstrap import command_catalog, open_engine
    from projections.catalog import MODELS

    platform, engine, _feed = open_engine(settings)
    catalog = dict(command_catalog(platform, engine))
    # As `cloudkernel intake`: no kernel loops here, so operation commands go straight to
    # the command service; the kernel process picks the operations up from the log.
    for tag, (type_, _run) in list(catalog.items()):
        if type_ in engine.commands.handlers:
            catalog[tag] = (type_, engine.commands.execute)
    access = KeyringAccess(Keyring(keys_path(settings)))

    async def serve(runners: list[Any]) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        server = api_server(settings, platform, engine, runners, access, catalog=catalog,
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
        with projection_runners(settings, list(MODELS)) as runners:
            if args.run_projections:
                for runner in runners:
                    runner.start()
            try:
                asyncio.run(serve(runners))
            finally:
                if args.run_projections:
                    for runner in runners:
                        runner.stop()
    finally:
        platform.close()
    return 0
