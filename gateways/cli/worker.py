"""`cloudkernel worker`: serve one subsystem's steps from NATS (and, for a plugin that can
observe its hosts, report their domains; for the hypervisor with a console secret, serve the
console service's desk, `gateways.stream.console_desk`)."""

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

from aggregates.errors import ConfigError
from kernel.settings import Settings


def add_worker_command(sub: Any) -> None:
    """Register `worker` on the main parser's subcommands."""
    help_ = "serve one subsystem's steps from NATS; SIGTERM/Ctrl-C stops it cleanly"
    worker = sub.add_parser("worker", help=help_, description=help_)
    worker.set_defaults(run=cmd_worker, serves=True)
    worker.add_argument("--subsystem", required=True, metavar="NAME",
                        help="the subsystem to serve (see `cloudkernel subsystems`)")
    worker.add_argument("--concurrency", type=int, default=8, metavar="N",
                        help="steps run at once, in as many threads (default 8)")
    worker.add_argument("--nats-url", action="append", default=None, metavar="URL",
                        help="NATS server, repeatable (default: setting nats_urls, else the "
                             "embedded server at nats://127.0.0.1:<nats_port>)")
    worker.add_argument("--config-json", default="{}", metavar="JSON",
                        help="the plugin's configuration, a JSON object, "
                             "e.g. '{\"path\": \"counter.db\"}'")
    worker.add_argument("--ack-wait", type=float, default=30.0, metavar="SECONDS",
                        help="ack_wait of the subsystem's consumer when this worker creates it "
                             "(default 30); in_progress is sent every ack_wait/3")
    worker.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="on stop, how long running steps may finish (default 30)")
    worker.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="give up when NATS does not answer at start (default 10)")
    worker.add_argument("--observe", action="append", default=None, metavar="HOST_URI|all",
                        help="hypervisor only: report these hosts' domains every "
                             "observe_interval_seconds (repeatable); `all`: every host of the "
                             "configured store")


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Serve one subsystem until SIGTERM/SIGINT."""
    from gateways.stream.observer import reporter_for
    from gateways.stream.worker import Worker, run_until_signalled
    from kernel.bootstrap.plugins import console_desks, kept_hosts, plugin_configs
    from subsystems.registry import load_registry

    try:
        config = json.loads(args.config_json)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config-json is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError("--config-json must be a JSON object")
    # the planner and the guru follow the platform log of this process's Settings, open here
    with plugin_configs([args.subsystem], {args.subsystem: config}, settings) as configs, \
            kept_hosts(args.subsystem, config, settings):
        plugin = load_registry([args.subsystem], configs).plugin(args.subsystem)
        servers = args.nats_url or list(settings.nats_urls) or [
            f"nats://127.0.0.1:{settings.nats_port}"]
        worker = Worker(plugin.subsystem, servers=servers, concurrency=args.concurrency,
                        ack_wait=args.ack_wait, drain_timeout=args.drain_timeout,
                        connect_timeout=args.connect_timeout,
                        replicas=settings.nats_replicas)
        companions = []
        if args.observe:
            reporter = reporter_for(plugin.subsystem, _hosts(settings, args.observe), settings,
                                    servers)
            if reporter is None:
                raise ConfigError(f"--observe: subsystem {args.subsystem} cannot observe hosts "
                                  "(only the hypervisor can)")
            companions.append(reporter.run)
        # the hypervisor with a console secret: the console service's desk, beside the worker
        companions += [desk.run for desk in console_desks([plugin.subsystem], servers)]

        def ready(w: Worker) -> None:
            print(f"worker {w.identity} serves {plugin.source} ({', '.join(plugin.kinds)}) "
                  f"from {', '.join(servers)}; concurrency {w.concurrency}", flush=True)

        stats = asyncio.run(run_until_signalled(worker, ready, companions))
        print(f"worker {worker.identity} stopped: {stats.received} received, {stats.succeeded} "
              f"succeeded, {stats.failed} failed, {stats.terminated} terminated", flush=True)
        if stats.abandoned:
            # Their threads cannot be interrupted and the interpreter would join them at exit;
            # the steps stay unacked, so JetStream redelivers them to another worker.
            logging.shutdown()
            sys.stderr.flush()
            os._exit(1)
        return 0


def _hosts(settings: Settings, observe: list[str]) -> Any:
    """The host URIs to report: as given, or (`all`) every host the store knows."""
    if "all" not in observe:
        uris = list(dict.fromkeys(observe))
        return lambda: uris
    from kernel.bootstrap import open_platform
    from kernel.reality.roster import HostRoster

    return HostRoster(open_platform(settings).app)
