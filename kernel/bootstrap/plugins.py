"""What the processes that run plugins (`up`, `cloudkernel worker`) give them besides their
own config: the platform's log, for the plugins that fold it into an index.

The planner and the network guru follow the platform's log but never open the store; the
process opens it on its Settings and injects it as their config `log`.
"""

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from kernel.platform_log import platform_log
from kernel.settings import Settings
from subsystems.base import PlatformLog

__all__ = ["LOG_FOLLOWERS", "plugin_configs", "with_platform_log"]

LOG_FOLLOWERS = frozenset({"networkguru", "planner"})
"""The subsystems that are given the platform's log (config `log`)."""


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
