"""The `hypervisor` subsystem: VM domains on libvirt hosts, one step at a time.

Every action finds its host by the URI in its arguments and uses the process's one connection
per URI (`connections.connection`), so that all plugins of a worker see the same host state.
Actions are idempotent by checking libvirt's state first (see `domains` and `migration`).

Configuration (the factory's dict, e.g. `cloudkernel worker --subsystem hypervisor
--config-json '{...}'`), every key optional:

- `poll_seconds` (float in (0, 10], default 0.2): how often a graceful stop, a reboot or a
  detach looks whether the guest did it;
- `domain_type` ("auto", "kvm" or "qemu"; default "auto"): auto is KVM where libvirt offers it
  and the qemu user can open /dev/kvm, else TCG ("qemu"); see `libvirt.host_policy`;
- `tcg_cpu_model` (default "Nehalem"): the CPU model of TCG domains (KVM ones get host-model);
- `machine` (default "q35"; "" leaves libvirt's default) and `hotplug_ports` (0 to 32,
  default 4): spare PCIe root ports a running q35 domain can hot-plug disks into;
- `guest_agent` (bool, default true): a qemu guest agent channel in every domain;
- `console_listen` (default "127.0.0.1"): the console's address on hosts of this machine
  (`qemu:///system`); a remote host's console listens on the address of its URI's host;
- `console_secret_file`: a file holding the secret VNC passwords are derived from
  (`kernel.steps.hypervisor.console_password`), made (random, mode 0600) if missing;
  without it consoles have no password and stay on `console_listen`;
- `qemu_user` (default "libvirt-qemu"): who qemu runs as, for the /dev/kvm check;
- `console_log_dir` (default "/var/log/libvirt"; "" for none): the folder on the hosts where
  virtlogd logs each domain's serial console (`<vm id>.serial.log`), which the console desk
  reads for a VM's recent output; it must exist on every host (a start fails otherwise; see
  `subsystems.libvirt.console_desk` for why the default is not qemu/);
- `console_desk_listen` (default "127.0.0.1"), `console_desk_port` (0 to 65535, default 0:
  any free port) and `console_desk_advertise` (default "": the listen address, or this
  machine's name when it is a wildcard): where the worker's console desk (served beside the
  worker when `console_secret_file` is set; `subsystems.libvirt.console_desk`) takes the
  console service's connections, and the address its grants name;
- `detach_wait_seconds` (float in [0, 600], default 10): how long a guest may take to
  release a detached disk before the detach fails as refused;
- `simulated_hosts_dir` (a folder, default none): keep the state of simulated
  (`test:///<file>.xml`) hosts there, so that it outlives the process (`up` sets it; see
  `subsystems.libvirt.simulation`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import msgspec

from aggregates.errors import ConfigError, StepFailedError
from kernel.contracts.console import DeskListen, load_console_secret
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
from kernel.steps.inventory import DomainInventory, InventoryDomains
from subsystems.base import StepContext, SubsystemBase, action
from subsystems.libvirt import disks, domains, inventory, migration
from subsystems.libvirt.connections import connection, keep_simulated_hosts
from subsystems.libvirt.console_desk import LibvirtDesk
from subsystems.libvirt.faults import quiet
from subsystems.libvirt.host_policy import DomainSettings, DomainTypeSetting

__all__ = ["Hypervisor", "make_hypervisor"]

# a stop that would end after the step's deadline is forced this long before it, so that
# the outcome still arrives in time
_DEADLINE_MARGIN = 5.0


class Hypervisor(SubsystemBase):
    """Defines, powers, moves and inspects libvirt domains."""

    name = "hypervisor"
    version = "1.0"

    def __init__(self, *, poll_seconds: float = 0.2,
                 settings: DomainSettings | None = None,
                 detach_wait_seconds: float = 10.0,
                 simulated_hosts_dir: Path | None = None,
                 desk_listen: DeskListen | None = None) -> None:
        """Remember the settings; no host is contacted before a step needs it."""
        self.poll_seconds = poll_seconds
        self.desk_listen = desk_listen or DeskListen()
        self.settings = settings or DomainSettings()
        self.detach_wait_seconds = detach_wait_seconds
        self.simulated_hosts_dir = simulated_hosts_dir
        self._kept = contextlib.ExitStack()

    def open(self) -> None:
        """Keep libvirt from printing errors the steps report anyway; load simulated hosts
        from their kept state."""
        quiet()
        if self.simulated_hosts_dir is not None:
            self._kept.enter_context(keep_simulated_hosts(self.simulated_hosts_dir))

    def close(self) -> None:
        """Write the simulated hosts' state a last time."""
        self._kept.close()

    @action("define")
    def define(self, ctx: StepContext, args: DefineDomain) -> DomainDefined:
        """Define the VM's domain (UUID = vm_id; an existing one is left as it is), and start
        it if asked.

        A start that fails leaves no domain this step defined: a failed step's compensation
        never runs, so the step removes its own definition (also one an earlier attempt of
        it made) before it reports the failure; a domain another step defined stays.
        """
        conn = connection(args.host_uri)
        defined = domains.define(conn, args, self.settings, ctx.step_id)
        if not args.start:
            return defined
        try:
            domains.start(conn, args.vm_id)  # already running: nothing to do
        except Exception as failure:
            try:
                domains.undefine_own(conn, args.vm_id, ctx.step_id)
            except StepFailedError as cleanup:
                # retryable: a retry of this step knows the domain as its own and removes it
                raise StepFailedError(f"{failure}; the domain it defined could not be "
                                      f"removed: {cleanup}", retryable=True,
                                      code="domain_left") from failure
            raise
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
        budget = _budget(ctx, args.force_after_seconds)
        return domains.stop(dom, args.vm_id, budget, poll=self.poll_seconds)

    @action("reboot")
    def reboot(self, ctx: StepContext, args: RebootDomain) -> PowerChanged:
        """Reboot the domain (reset when the guest does not), or start it when it is off."""
        return domains.reboot(connection(args.host_uri), args.vm_id,
                              _budget(ctx, args.force_after_seconds), poll=self.poll_seconds)

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
        return migration.migrate(args.vm_id, args.source_uri, args.target_uri, self.settings,
                                 shared_storage=args.shared_storage)

    @action("attach_disk")
    def attach_disk(self, ctx: StepContext, args: AttachDisk) -> DiskChanged:
        """Attach a volume's file as a disk."""
        return disks.attach_disk(connection(args.host_uri), args.vm_id, args.disk)

    @action("detach_disk")
    def detach_disk(self, ctx: StepContext, args: DetachDisk) -> DiskChanged:
        """Detach a disk by its file, checked to be gone from the running domain."""
        return disks.detach_disk(connection(args.host_uri), args.vm_id, args.disk,
                                   _budget(ctx, self.detach_wait_seconds),
                                   poll=self.poll_seconds)

    @action("console")
    def console(self, ctx: StepContext, args: GetConsole) -> ConsoleInfo:
        """Where the domain's consoles are."""
        return domains.console(connection(args.host_uri), args.host_uri, args.vm_id)

    @action("report_power")
    def report_power(self, ctx: StepContext, args: ReportPower) -> PowerReport:
        """The actual power state of every domain of a host."""
        return self.observe(args.host_uri)

    def console_desk(self) -> LibvirtDesk | None:
        """The driver of this worker's console desk; None without a console secret (then
        the worker serves no desk)."""
        secret = self.settings.console_secret
        if secret is None:
            return None
        return LibvirtDesk(secret, log_dir=self.settings.console_log_dir)

    def observe(self, host_uri: str) -> PowerReport:
        """Every domain of a host and its power state (what the power reporter publishes)."""
        return domains.report_power(connection(host_uri), host_uri)

    @action("inventory")
    def inventory(self, ctx: StepContext, args: InventoryDomains) -> DomainInventory:
        """Every domain of a host with what the platform wrote into it (read only)."""
        return DomainInventory(host_uri=args.host_uri,
                               domains=inventory.domain_facts(connection(args.host_uri)))

    @action("fence")
    def fence(self, ctx: StepContext, args: FenceHost) -> HostFenced:
        """Power off every domain of a host (its VMs are about to start elsewhere)."""
        return domains.fence(connection(args.host_uri), args.host_uri)


def _budget(ctx: StepContext, wanted: float) -> float:
    """A wait that ends before the step's deadline, so that the outcome arrives in time."""
    left = ctx.seconds_left()
    return wanted if left is None else max(0.0, min(wanted, left - _DEADLINE_MARGIN))


_KEYS = ("poll_seconds", "domain_type", "tcg_cpu_model", "machine", "hotplug_ports",
         "guest_agent", "console_listen", "console_secret_file", "qemu_user",
         "detach_wait_seconds", "simulated_hosts_dir", "console_log_dir",
         "console_desk_listen", "console_desk_port", "console_desk_advertise")


def make_hypervisor(config: Mapping[str, Any]) -> Hypervisor:
    """Entry point factory of `hypervisor`: the config keys of the module's docstring."""
    unknown = sorted(set(config) - set(_KEYS))
    if unknown:
        raise ConfigError(f"hypervisor: unknown config keys {unknown}; expected some of "
                          f"{list(_KEYS)}")
    defaults = DomainSettings()
    domain_type = config.get("domain_type", defaults.domain_type)
    if domain_type not in ("auto", "kvm", "qemu"):
        raise ConfigError(f"hypervisor: config 'domain_type' must be 'auto', 'kvm' or "
                          f"'qemu', got {domain_type!r}")
    secret_file = config.get("console_secret_file")
    settings = DomainSettings(
        domain_type=cast(DomainTypeSetting, domain_type),
        tcg_cpu_model=_text(config, "tcg_cpu_model", defaults.tcg_cpu_model, empty=False),
        machine=_text(config, "machine", defaults.machine, empty=True),
        hotplug_ports=int(_number(config, "hotplug_ports", defaults.hotplug_ports, 0, 32,
                                  integer=True)),
        guest_agent=_flag(config, "guest_agent", defaults.guest_agent),
        console_listen=_text(config, "console_listen", defaults.console_listen, empty=False),
        console_secret=None if secret_file is None else load_console_secret(
            secret_file, owner="hypervisor"),
        qemu_user=_text(config, "qemu_user", defaults.qemu_user, empty=False),
        console_log_dir=_folder(config, "console_log_dir", defaults.console_log_dir))
    poll = _number(config, "poll_seconds", 0.2, 0, 10)
    if poll == 0:
        raise ConfigError("hypervisor: config 'poll_seconds' must be a number in (0, 10], "
                          "got 0")
    kept = config.get("simulated_hosts_dir")
    if kept is not None and (not isinstance(kept, str) or not kept.strip()):
        raise ConfigError(f"hypervisor: config 'simulated_hosts_dir' must be a folder path, "
                          f"got {kept!r}")
    desk_listen = DeskListen(
        host=_text(config, "console_desk_listen", "127.0.0.1", empty=False),
        port=int(_number(config, "console_desk_port", 0, 0, 65535, integer=True)),
        advertise=_text(config, "console_desk_advertise", "", empty=True))
    return Hypervisor(poll_seconds=poll, settings=settings,
                      detach_wait_seconds=_number(config, "detach_wait_seconds", 10.0, 0, 600),
                      simulated_hosts_dir=Path(kept) if kept is not None else None,
                      desk_listen=desk_listen)


def _number(config: Mapping[str, Any], key: str, default: float, lo: float, hi: float, *,
            integer: bool = False) -> float:
    value = config.get(key, default)
    kinds = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"hypervisor: config {key!r} must be {kind} in [{lo:g}, {hi:g}], "
                          f"got {value!r}")
    return float(value)


def _text(config: Mapping[str, Any], key: str, default: str, *, empty: bool) -> str:
    value = config.get(key, default)
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise ConfigError(f"hypervisor: config {key!r} must be a{'' if empty else ' non-empty'}"
                          f" string, got {value!r}")
    return value


def _folder(config: Mapping[str, Any], key: str, default: str) -> str:
    value = _text(config, key, default, empty=True)
    if value and not value.startswith("/"):
        raise ConfigError(f"hypervisor: config {key!r} must be an absolute path on the hosts "
                          f"or empty, got {value!r}")
    return value


def _flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"hypervisor: config {key!r} must be true or false, got {value!r}")
    return value
