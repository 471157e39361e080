"""The parts each process the CLI offers runs, built from Settings: the kernel's loops, the
event relay, the command intake, the admin API and the read models' runners. `up` runs all of
them in one process (`kernel.bootstrap.up`); `cloudkernel kernel`, `relay`, `intake`, `api`
and `projections run` each run some of them alone."""

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from gateways.api.context import ApiContext
from gateways.api.server import ApiServer
from gateways.ownership import store_lookup
from gateways.stream.intake import DEFAULT_CONCURRENCY, CommandIntake
from gateways.stream.kernel_runner import KernelRunner
from gateways.stream.observer import listener_for
from gateways.stream.relay import EventRelay
from kernel.bootstrap import CommandRunner, Platform, command_catalog
from kernel.commands import Command
from kernel.contracts.access import AccessControl
from kernel.dispatch_feed import DispatchFeed
from kernel.event_feed import EventFeed
from kernel.leases import LeaseTable, kernel_name
from kernel.operations import OperationEngine
from kernel.settings import Settings
from kernel.store.application import KernelApplication, PlatformApplication, open_application
from projections.catalog import MODELS
from projections.runner import ProjectionRunner
from projections.views import open_view

Catalog = dict[str, tuple[type[Command], CommandRunner]]


def kernel_loops(settings: Settings, engine: OperationEngine,
                 feed: DispatchFeed) -> tuple[KernelRunner, Any]:
    """The kernel's dispatcher, result applier and timers, and its listener for the hosts'
    power reports (the reality reconciler)."""
    servers = settings.nats_servers
    leases = None
    if settings.store == "postgres":  # several kernels may run: each works its partitions
        leases = LeaseTable(settings.postgres_dsn, settings.postgres_schema,
                            partitions=settings.kernel_partitions,
                            period=settings.lease_seconds,
                            connect_timeout=settings.postgres_connect_timeout)
    runner = KernelRunner(engine, feed, servers, replicas=settings.nats_replicas,
                          leases=leases, name=settings.kernel_name or kernel_name())
    return runner, listener_for(engine, settings, servers)


def platform_relay(settings: Settings, app: KernelApplication) -> EventRelay:
    """The relay of the platform's log to the EVENTS stream."""
    return EventRelay(EventFeed(app), settings.nats_servers, replicas=settings.nats_replicas)


def direct_catalog(platform: Platform, engine: OperationEngine) -> Catalog:
    """The command catalog of a process that runs no kernel loops (`intake`, `api`): its
    engine's in-memory cache and timers would only grow there, so operation commands go
    straight to the command service, and the kernel process picks the operations up from the
    log."""
    catalog = dict(command_catalog(platform, engine))
    for tag, (type_, _run) in list(catalog.items()):
        if type_ in engine.commands.handlers:
            catalog[tag] = (type_, engine.commands.execute)
    return catalog


def command_intake(settings: Settings, platform: Platform, catalog: Catalog,
                   access: AccessControl, *,
                   concurrency: int = DEFAULT_CONCURRENCY) -> CommandIntake:
    """The NATS command intake over `catalog`, deciding with `access`."""
    return CommandIntake(catalog, access, settings.nats_servers, concurrency=concurrency,
                         owner_lookup=store_lookup(platform.app.repository))


def admin_api(settings: Settings, platform: Platform, engine: OperationEngine,
              runners: Sequence[Any], access: AccessControl, *,
              catalog: Mapping[str, Any] | None = None,
              drift_stats: Callable[[], Mapping[str, int]] | None = None,
              host: str | None = None, port: int | None = None) -> ApiServer:
    """An ApiServer over the engine's commands and these projection runners."""
    context = ApiContext(dict(catalog or command_catalog(platform, engine)), access,
                         platform.app, {r.name: r for r in runners}, engine=engine,
                         drift_stats=drift_stats)
    return ApiServer(context, host or settings.api_host,
                     settings.api_port if port is None else port)


@contextmanager
def projection_runners(settings: Settings, names: Sequence[str]) -> Iterator[list[Any]]:
    """A runner per named projection over one platform application; closed afterwards."""
    app: KernelApplication = open_application(PlatformApplication, settings)
    runners: list[Any] = []
    try:
        for name in names:
            runners.append(ProjectionRunner(app, open_view(MODELS[name], settings)))
        yield runners
    finally:
        for runner in runners:
            runner.view.close()
        app.close()
