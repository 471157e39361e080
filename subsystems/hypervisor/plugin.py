"""The `hypervisor` subsystem: VM domains on libvirt hosts, one step at a time.

Every action finds its host by the URI in its arguments and uses the process's one connection
per URI (`connections.connection`), so that all plugins of a worker see the same host state.
Actions are idempotent by checking libvirt's state first (see `domains` and `migration`).

Configuration (the factory's dict): `poll_seconds` (float, default 0.2), how often a graceful
stop looks whether the guest is down.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from aggregates.errors import ConfigError
from kernel.steps.hypervisor import (
    AttachDisk,
    ConsoleInfo,
    DefineDomain,
    DestroyDomain,
    DetachDisk,
    DiskChanged,
    DomainDefined,
    DomainUndefined,
    FenceHost,
    GetConsole,
    HostFenced,
    Migrated,
    MigrateDomain,
    PowerChanged,
    PowerReport,
    RebootDomain,
    ReportPower,
    StartDomain,
    StopDomain,
    UndefineDomain,
)
from subsystems.base import StepContext, SubsystemBase, action
from subsystems.hypervisor import domains, migration
from subsystems.hypervisor.connections import connection
from subsystems.hypervisor.faults import quiet

__all__ = ["Hypervisor", "make_hypervisor"]

# a stop that would end after the step's deadline is forced this long before it, so that
# the outcome still arrives in time
_DEADLINE_MARGIN = 5.0


class Hypervisor(SubsystemBase):
    """Defines, powers, moves and inspects libvirt domains."""

    name = "hypervisor"
    version = "1.0"

    def __init__(self, *, poll_seconds: float = 0.2) -> None:
        """Remember the settings; no host is contacted before a step needs it."""
        self.poll_seconds = poll_seconds

    def open(self) -> None:
        """Keep libvirt from printing errors the steps report anyway."""
        quiet()

    @action("define")
    def define(self, ctx: StepContext, args: DefineDomain) -> DomainDefined:
        """Define the VM's domain (UUID = vm_id; an existing one is left as it is), and start
        it if asked."""
        defined = domains.define(connection(args.host_uri), args)
        if not args.start:
            return defined
        domains.start(connection(args.host_uri), args.vm_id)  # already running: nothing to do
        return msgspec.structs.replace(defined, started=True)

    @action("undefine")
    def undefine(self, ctx: StepContext, args: UndefineDomain) -> DomainUndefined:
        """Power off and undefine the domain; gone already is success."""
        return domains.undefine(connection(args.host_uri), args.vm_id)

    @action("start")
    def start(self, ctx: StepContext, args: StartDomain) -> PowerChanged:
        """Start (or resume) the domain."""
        return domains.start(connection(args.host_uri), args.vm_id)

    @action("stop")
    def stop(self, ctx: StepContext, args: StopDomain) -> PowerChanged:
        """Graceful shutdown, forced power-off after `force_after_seconds`."""
        dom = domains.lookup(connection(args.host_uri), args.vm_id)
        if dom is None and ctx.compensation:  # undoing a start of what is gone: nothing runs
            return PowerChanged(vm_id=args.vm_id, how="gone", state="unknown")
        if dom is None:
            dom = domains.require(connection(args.host_uri), args.vm_id)
        budget = args.force_after_seconds
        left = ctx.seconds_left()
        if left is not None:
            budget = max(0.0, min(budget, left - _DEADLINE_MARGIN))
        return domains.stop(dom, args.vm_id, budget, poll=self.poll_seconds)

    @action("reboot")
    def reboot(self, ctx: StepContext, args: RebootDomain) -> PowerChanged:
        """Reboot the domain, or start it when it is off."""
        return domains.reboot(connection(args.host_uri), args.vm_id)

    @action("destroy")
    def destroy(self, ctx: StepContext, args: DestroyDomain) -> PowerChanged:
        """Power the domain off at once (as a compensation, a missing domain is success)."""
        conn = connection(args.host_uri)
        if ctx.compensation and domains.lookup(conn, args.vm_id) is None:
            return PowerChanged(vm_id=args.vm_id, how="gone", state="unknown")
        return domains.destroy(conn, args.vm_id)

    @action("migrate")
    def migrate(self, ctx: StepContext, args: MigrateDomain) -> Migrated:
        """Move the domain to the target host (live, or by redefining it there)."""
        return migration.migrate(args.vm_id, args.source_uri, args.target_uri)

    @action("attach_disk")
    def attach_disk(self, ctx: StepContext, args: AttachDisk) -> DiskChanged:
        """Attach a volume's file as a disk."""
        return domains.attach_disk(connection(args.host_uri), args.vm_id, args.disk)

    @action("detach_disk")
    def detach_disk(self, ctx: StepContext, args: DetachDisk) -> DiskChanged:
        """Detach a disk by its file."""
        return domains.detach_disk(connection(args.host_uri), args.vm_id, args.disk)

    @action("console")
    def console(self, ctx: StepContext, args: GetConsole) -> ConsoleInfo:
        """Where the domain's consoles are."""
        return domains.console(connection(args.host_uri), args.host_uri, args.vm_id)

    @action("report_power")
    def report_power(self, ctx: StepContext, args: ReportPower) -> PowerReport:
        """The actual power state of every domain of a host."""
        return self.observe(args.host_uri)

    def observe(self, host_uri: str) -> PowerReport:
        """Every domain of a host and its power state (what the power reporter publishes)."""
        return domains.report_power(connection(host_uri), host_uri)

    @action("fence")
    def fence(self, ctx: StepContext, args: FenceHost) -> HostFenced:
        """Power off every domain of a host (its VMs are about to start elsewhere)."""
        return domains.fence(connection(args.host_uri), args.host_uri)


def make_hypervisor(config: Mapping[str, Any]) -> Hypervisor:
    """Entry point factory of `hypervisor`: config `poll_seconds` (optional)."""
    unknown = sorted(set(config) - {"poll_seconds"})
    if unknown:
        raise ConfigError(f"hypervisor: unknown config keys {unknown}; expected 'poll_seconds'")
    poll = config.get("poll_seconds", 0.2)
    if isinstance(poll, bool) or not isinstance(poll, int | float) or not 0 < poll <= 10:
        raise ConfigError(f"hypervisor: config 'poll_seconds' must be a number in (0, 10], "
                          f"got {poll!r}")
    return Hypervisor(poll_seconds=float(poll))
