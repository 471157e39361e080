"""Find subsystem plugins through the `cloudkernel.subsystems` entry point group.

Each entry point is named after the subsystem it provides and points at a factory
`factory(config: Mapping[str, Any]) -> Subsystem`. Built-ins register the same way as outside
packages, in pyproject.toml:

    [project.entry-points."cloudkernel.subsystems"]
    echo = "subsystems.testing.basic:make_echo"

One step kind (`<subsystem>.<action>`) has exactly one handler: two plugins that claim the
same kind stop the start with a ConfigError naming both.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from aggregates.errors import ConfigError, KernelError
from subsystems.base import Action, Subsystem, action_table

__all__ = [
    "ENTRY_POINT_GROUP",
    "Plugin",
    "PluginSource",
    "SubsystemRegistry",
    "discover",
    "load_registry",
]

ENTRY_POINT_GROUP = "cloudkernel.subsystems"


@dataclass(frozen=True, slots=True)
class PluginSource:
    """Where a plugin came from: its entry point and the distribution that declares it."""

    name: str
    target: str
    distribution: str = ""

    @classmethod
    def of(cls, ep: metadata.EntryPoint) -> PluginSource:
        """Describe an entry point."""
        dist = getattr(ep, "dist", None)
        where = f"{dist.name} {dist.version}" if dist is not None else ""
        return cls(name=ep.name, target=ep.value, distribution=where)

    def __str__(self) -> str:
        """`echo (subsystems.testing.basic:make_echo from cloudkernel 0.1.0)`."""
        origin = f" from {self.distribution}" if self.distribution else ""
        return f"{self.name} ({self.target}{origin})"


@dataclass(frozen=True, slots=True)
class Plugin:
    """A subsystem instance and where it came from."""

    subsystem: Subsystem
    source: PluginSource
    actions: Mapping[str, Action]

    @property
    def name(self) -> str:
        """The subsystem's name."""
        return self.subsystem.name

    @property
    def kinds(self) -> list[str]:
        """The step kinds this plugin handles, sorted."""
        return sorted(f"{self.name}.{a}" for a in self.actions)


class SubsystemRegistry:
    """The plugins of one process, with at most one handler per step kind."""

    def __init__(self, plugins: Iterable[Plugin]) -> None:
        """Index the plugins by step kind; ConfigError when two claim the same kind."""
        self._plugins: dict[str, Plugin] = {}
        self._kinds: dict[str, Plugin] = {}
        for plugin in plugins:
            for kind in plugin.kinds:
                other = self._kinds.get(kind)
                if other is not None:
                    raise ConfigError(f"step kind {kind!r} is claimed by two plugins: "
                                      f"{other.source} and {plugin.source}")
                self._kinds[kind] = plugin
            self._plugins.setdefault(plugin.name, plugin)

    @property
    def plugins(self) -> list[Plugin]:
        """Every plugin, by subsystem name."""
        return [self._plugins[n] for n in sorted(self._plugins)]

    @property
    def kinds(self) -> list[str]:
        """Every step kind, sorted."""
        return sorted(self._kinds)

    def plugin(self, subsystem: str) -> Plugin:
        """The plugin of a subsystem; ConfigError lists what is installed."""
        try:
            return self._plugins[subsystem]
        except KeyError:
            raise ConfigError(_unknown(subsystem, self._plugins)) from None

    def handler_of(self, kind: str) -> Plugin | None:
        """The plugin that handles a step kind, or None."""
        return self._kinds.get(kind)


def discover(group: str = ENTRY_POINT_GROUP) -> list[metadata.EntryPoint]:
    """The installed entry points of the group, each (name, target) once."""
    seen: set[tuple[str, str]] = set()
    found = []
    for ep in metadata.entry_points(group=group):
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            found.append(ep)
    return sorted(found, key=lambda e: (e.name, e.value))


def load_registry(
    names: Collection[str] | None = None,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    entry_points: Iterable[metadata.EntryPoint] | None = None,
) -> SubsystemRegistry:
    """Build the plugins named `names` (all when None) with their configs, and index them.

    Every entry point that carries a requested name is built, so a second plugin for the same
    subsystem fails the start instead of being silently shadowed.
    """
    eps = list(discover() if entry_points is None else entry_points)
    if names is not None:
        available = {ep.name for ep in eps}
        for name in names:
            if name not in available:
                raise ConfigError(_unknown(name, available))
        eps = [ep for ep in eps if ep.name in names]
    configs = configs or {}
    return SubsystemRegistry(_build(ep, configs.get(ep.name, {})) for ep in eps)


def _build(ep: metadata.EntryPoint, config: Mapping[str, Any]) -> Plugin:
    """Load the factory and call it; wrap whatever goes wrong in a ConfigError naming it."""
    source = PluginSource.of(ep)
    try:
        factory = ep.load()
    except Exception as e:
        raise ConfigError(f"plugin {source}: cannot load: {type(e).__name__}: {e}") from e
    try:
        subsystem = factory(dict(config))
    except KernelError as e:
        raise ConfigError(f"plugin {source}: {e}") from e
    except Exception as e:
        raise ConfigError(f"plugin {source}: factory failed: {type(e).__name__}: {e}") from e
    if not isinstance(subsystem, Subsystem):
        raise ConfigError(f"plugin {source}: factory returned {type(subsystem).__name__}, "
                          "not a Subsystem (name, version, actions(), open(), close())")
    if subsystem.name != ep.name:
        raise ConfigError(f"plugin {source}: entry point name must be the subsystem's name "
                          f"{subsystem.name!r}")
    try:
        actions = action_table(subsystem)
    except ConfigError as e:
        raise ConfigError(f"plugin {source}: {e}") from e
    return Plugin(subsystem=subsystem, source=source, actions=actions)


def _unknown(name: str, available: Iterable[str]) -> str:
    listed = ", ".join(sorted(available)) or "none"
    return (f"no plugin provides subsystem {name!r} (entry point group {ENTRY_POINT_GROUP}; "
            f"installed: {listed})")
