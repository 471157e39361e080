"""What the processes that run plugins (`up`, `cloudkernel worker`) give them besides their
own config: the platform's log, for the plugins that fold it into an index, and a folder
for the simulated hosts of the plugins that hold hosts.

The planner and the network guru follow the platform's log but never open the store; the
process opens it on its Settings and injects it as their config `log`.

A `cloudkernel worker` of a host-holding subsystem keeps the simulated (`test:///<file>.xml`)
hosts it serves in `<data_dir>/simulated-hosts/<subsystem>/`, written through after every step
(`subsystems.libvirt.simulation`), so that a worker killed and started again finds its hosts
as its last reported step left them. `up` keeps every plugin's in `<data_dir>/simulated-hosts/`
(the hypervisor's config `simulated_hosts_dir`). Real hosts are not touched by any of this.
"""

import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel.platform_log import platform_log
from kernel.settings import Settings
from subsystems.base import PlatformLog

if TYPE_CHECKING:
    from gateways.stream.console_desk import ConsoleDesk

__all__ = ["HOST_HOLDERS", "LOG_FOLLOWERS", "console_desks", "kept_hosts", "plugin_configs",
           "with_platform_log"]

log = logging.getLogger(__name__)

LOG_FOLLOWERS = frozenset({"networkguru", "planner"})
"""The subsystems that are given the platform's log (config `log`)."""

HOST_HOLDERS = frozenset({"backup", "hypervisor", "networkelement", "snapshot", "storage"})
"""The subsystems whose steps change hosts through libvirt."""


def with_platform_log(configs: Mapping[str, Mapping[str, Any]],
                      log: PlatformLog) -> dict[str, dict[str, Any]]:
    """`configs`, with `log` added to the config of every log follower."""
    out = {name: dict(config) for name, config in configs.items()}
    for name in LOG_FOLLOWERS:
        out[name] = {**out.get(name, {}), "log": log}
    return out


@contextmanager
def plugin_configs(names: Collection[str], configs: Mapping[str, Mapping[str, Any]],
                   settings: Settings) -> Iterator[dict[str, dict[str, Any]]]:
    """The configs of the plugins `names`; when one of them follows the log, with the
    platform's log of `settings`' store, open for the `with` block."""
    if not LOG_FOLLOWERS & set(names):
        yield {name: dict(config) for name, config in configs.items()}
        return
    with platform_log(settings) as log:
        yield with_platform_log(configs, log)


@contextmanager
def kept_hosts(name: str, config: Mapping[str, Any], settings: Settings) -> Iterator[Path | None]:
    """For a worker of subsystem `name`: while open, its simulated hosts are kept in
    `<data_dir>/simulated-hosts/<name>/` (the folder, or None when not kept). Not kept: a
    subsystem that holds no host, a hypervisor configured with a folder of its own, and a
    second worker of the subsystem on the same data folder (it keeps its own copies in memory,
    as the test driver does, and says so)."""
    if name not in HOST_HOLDERS or config.get("simulated_hosts_dir") is not None:
        yield None
        return
    # here, not at the top: a planner's or a guru's worker never loads libvirt
    from subsystems.libvirt.connections import keep_simulated_hosts
    from subsystems.libvirt.simulation import FolderInUse

    folder = settings.data_dir / "simulated-hosts" / name
    with ExitStack() as stack:
        try:
            stack.enter_context(keep_simulated_hosts(folder))
        except FolderInUse as e:
            log.warning("%s: this worker's simulated hosts live in its memory only", e)
            yield None
            return
        yield folder


def console_desks(subsystems: Sequence[Any], servers: Sequence[str]) -> "list[ConsoleDesk]":
    """The console desk to run beside each worker whose plugin offers one (the hypervisor,
    when it has a console secret; `gateways.stream.console_desk`), for `up` and `cloudkernel
    worker`."""
    # here, not at the top: the desk's module is needed only where a plugin offers a desk
    from gateways.stream.console_desk import desk_for

    return [desk for s in subsystems if (desk := desk_for(s, servers)) is not None]
