"""`up`'s whole platform in one process, wired: the kernel's loops, the relays, the command
intake, the webhook deliverer, the read models, the admin API and web page, the audit sealing
follower, the ACL and the services directory, a worker per subsystem plugin, and a supervised
process per enabled service. `gateways.cli.up` starts NATS, loads the inventory and runs this.
"""

import asyncio
import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateways.audit.follower import platform_follower
from gateways.cli.service_processes import ServiceProcess, service_processes
from gateways.quotas import quota_check
from gateways.service_keys import issue_service_key
from gateways.stream.observer import reporter_for
from gateways.stream.services_directory import DirectoryServer, StoreRegistrations
from gateways.stream.worker import Worker
from gateways.web.admin import mount_web_page
from gateways.webhooks.service import WebhookService
from gateways.webhooks.store import open_webhook_store
from kernel.bootstrap import Platform, command_catalog
from kernel.bootstrap.access import PlatformAcl, open_platform_acl
from kernel.bootstrap.plugins import console_desks, with_platform_log
from kernel.bootstrap.processes import (
    admin_api,
    command_intake,
    kernel_loops,
    platform_relay,
    projection_runners,
)
from kernel.dispatch_feed import DispatchFeed
from kernel.operations import OperationEngine
from kernel.platform_log import ApplicationLog
from kernel.reality.roster import HostRoster
from kernel.settings import Settings
from projections.catalog import MODELS
from subsystems.registry import load_registry


@dataclass
class Assembly:
    """Everything `up` runs, built: `loops` run until stop; `ready` are set once each answers."""

    settings: Settings
    acl: PlatformAcl
    api: Any
    plugin_names: list[str]
    projections: list[Any]
    loops: list[Any] = field(default_factory=list)
    ready: list[asyncio.Event] = field(default_factory=list)

    def services(self, config: Path | None) -> list[ServiceProcess]:
        """A supervised process per enabled service, its key issued before each start."""
        return service_processes(self.settings.services, config,
                                 functools.partial(issue_service_key, self.settings))


@contextlib.contextmanager
def assemble(settings: Settings, platform: Platform, engine: OperationEngine,
             feed: DispatchFeed) -> Iterator[Assembly]:
    """Build `up`'s parts over the open platform; the read models run while it is open."""
    servers = settings.nats_servers
    registry = load_registry(configs=with_platform_log(
        {"counter": {"path": str(settings.data_dir / "counter.db")},
         # the embedded default's simulated hosts keep their VMs across restarts; consoles get
         # per-VM passwords derived from a secret kept with the platform's data
         "hypervisor": {"simulated_hosts_dir": str(settings.data_dir / "simulated-hosts"),
                        "console_secret_file": str(settings.console_secret_path)}},
        ApplicationLog(platform.app)))
    workers = [Worker(p.subsystem, servers=servers, replicas=settings.nats_replicas)
               for p in registry.plugins]
    # the console service reaches VMs' consoles through the hypervisor worker's desk
    desks = console_desks([p.subsystem for p in registry.plugins], servers)
    runner, listener = kernel_loops(settings, engine, feed)
    # reality: the kernel listens to power reports; the hypervisor reports every host
    reporters = [reporter_for(p.subsystem, HostRoster(platform.app), settings, servers)
                 for p in registry.plugins]
    observers: list[Any] = [listener, *(r for r in reporters if r is not None)]
    relay = platform_relay(settings, engine.app)
    sealing = platform_follower(platform.app, settings.data_dir / "audit", servers,
                                replicas=settings.nats_replicas)
    acl = open_platform_acl(settings, servers)
    directory = DirectoryServer(StoreRegistrations(platform.app), servers)
    # The intake shares the kernel's engine: operations it accepts get their timers here.
    intake = command_intake(settings, platform, command_catalog(platform, engine), acl.access)
    webhook_store = open_webhook_store(settings)
    webhooks = WebhookService(webhook_store, servers, replicas=settings.nats_replicas)
    try:
        with projection_runners(settings, list(MODELS)) as projections, \
                contextlib.closing(webhook_store):
            # account and domain limits hold for commands from NATS too (the services send
            # there)
            intake.quota = quota_check(acl.access, platform.app,
                                       {p.name: p.view for p in projections})
            api = admin_api(settings, platform, engine, projections, acl.access,
                            drift_stats=lambda: listener.reconciler.stats)
            api.mount = functools.partial(mount_web_page, servers=servers,
                                          login=acl.service.login)
            yield Assembly(
                settings, acl, api, [p.name for p in registry.plugins], projections,
                loops=[runner, relay, acl.relay, sealing, acl.responder, directory, api,
                       intake, webhooks, *workers, *desks, *observers],
                ready=[intake.ready, webhooks.ready, api.ready, acl.responder.ready,
                       directory.ready, *(w.ready for w in workers),
                       *(d.ready for d in desks)])
    finally:
        acl.close()
