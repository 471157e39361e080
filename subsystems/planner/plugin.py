"""The planner subsystem: `planner.plan` proposes a host from an index that follows the log.

A plan has no side effect: the kernel records the placement as a capacity claim on the Host
aggregate. Each plan first catches the index up to the log head, so it sees every claim
committed before the step ran. A repeated delivery of the same step attempt gets the answer
given the first time (kept in a small memo), so a redelivery cannot flip the proposal.

Configuration (the dict given to `make_planner`):

- `settings`: the platform store to follow, as a `kernel.settings.Settings` or a dict of its
  store keys (`store`, `data_dir`, `postgres_dsn`, `postgres_schema`, `postgres_pool_size`,
  `postgres_connect_timeout`); default: the embedded SQLite store under `data/`.
- `poll_interval`: seconds between background catch-ups, 0 (the default) for none.
- `page_size`: notifications read per query (default 1000).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from uuid import UUID

from aggregates.errors import ConfigError, KernelError, StepFailedError
from kernel.settings import Settings
from kernel.steps.planner import Placement, PlanPlacement
from kernel.store.application import KernelApplication, PlatformApplication, open_application
from subsystems.base import StepContext, SubsystemBase, action
from subsystems.planner.follower import LogFollower, LogSource
from subsystems.planner.index import CapacityIndex
from subsystems.planner.planners import place

__all__ = ["Planner", "make_planner", "settings_from_config"]

_MEMO_SIZE = 4096
_STORE_KEYS: dict[str, type] = {
    "store": str, "data_dir": str, "postgres_dsn": str, "postgres_schema": str,
    "postgres_pool_size": int, "postgres_connect_timeout": int,
}


class Planner(SubsystemBase):
    """Deployment planner: FirstFit, UserDispersing and UserConcentratedPod over the log."""

    name = "planner"
    version = "1.0"

    def __init__(self, *, settings: Settings | None = None, source: LogSource | None = None,
                 poll_interval: float = 0.0, page_size: int = 1000) -> None:
        """Follow the store of `settings`, or an already open application `source`."""
        self.settings = settings or Settings()
        self.poll_interval, self.page_size = poll_interval, page_size
        self.index = CapacityIndex()
        self._source = source
        self._app: KernelApplication | None = None  # opened (and closed) by this plugin
        self._lock = threading.RLock()
        self._follower: LogFollower | None = None
        self._memo: OrderedDict[tuple[UUID, int, PlanPlacement], Placement] = OrderedDict()

    def open(self) -> None:
        """Open the platform store read-only and fold the log into the index."""
        source = self._source
        if source is None:
            self._app = open_application(PlatformApplication, self.settings)
            source = self._app
        self._follower = LogFollower(source, self.index, lock=self._lock,
                                     page_size=self.page_size)
        try:
            self._follower.catch_up()
        except KernelError:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise ConfigError(f"planner: cannot read the platform log: {e}") from e
        if self.poll_interval > 0:
            self._follower.start(self.poll_interval)

    def close(self) -> None:
        """Stop following and close the store this plugin opened."""
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        if self._app is not None:
            self._app.close()
            self._app = None

    def catch_up(self) -> int:
        """Fold the log up to its head now; the number of events read."""
        if self._follower is None:
            raise ConfigError("planner subsystem is not open")
        try:
            return self._follower.catch_up()
        except KernelError:
            raise
        except Exception as e:
            raise StepFailedError(f"planner: cannot read the platform log: {e}",
                                  retryable=True, code="store_unavailable") from e

    @action()
    def plan(self, ctx: StepContext, args: PlanPlacement) -> Placement:
        """Propose a host for the VM, or fail with insufficient_capacity and the reasons."""
        if args.cpu_cores <= 0 or args.memory_mib <= 0 or args.cpu_mhz < 0:
            raise StepFailedError("planner.plan needs positive cpu_cores and memory_mib",
                                  retryable=False, code="invalid_request")
        key = (ctx.step_id, ctx.attempt, args)
        with self._lock:
            known = self._memo.get(key)
            if known is not None:
                return known
            self.catch_up()
            placement = place(self.index, args)
            self._memo[key] = placement
            if len(self._memo) > _MEMO_SIZE:
                self._memo.popitem(last=False)
            return placement


def settings_from_config(value: Any) -> Settings:
    """A Settings from a Settings or a dict of its store keys; ConfigError names a bad key."""
    if value is None:
        return Settings()
    if isinstance(value, Settings):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError("planner: config 'settings' must be an object of store settings")
    unknown = sorted(set(value) - set(_STORE_KEYS))
    if unknown:
        raise ConfigError(f"planner: unknown config settings {unknown}; "
                          f"expected some of {sorted(_STORE_KEYS)}")
    values: dict[str, Any] = {}
    for key, raw in value.items():
        kind = _STORE_KEYS[key]
        if not isinstance(raw, kind) or isinstance(raw, bool):
            raise ConfigError(f"planner: config settings.{key} must be a {kind.__name__}, "
                              f"got {raw!r}")
        values[key] = Path(str(raw)) if key == "data_dir" else raw
    if values.get("store", "sqlite") not in ("sqlite", "postgres"):
        raise ConfigError(f"planner: config settings.store must be 'sqlite' or 'postgres', "
                          f"got {values['store']!r}")
    if values.get("store") == "postgres" and not values.get("postgres_dsn"):
        raise ConfigError("planner: config settings.postgres_dsn is required with store "
                          "'postgres'")
    return Settings(**values)


def make_planner(config: Mapping[str, Any]) -> Planner:
    """Entry point factory of `planner`: config `settings`, `poll_interval`, `page_size`."""
    unknown = sorted(set(config) - {"settings", "poll_interval", "page_size"})
    if unknown:
        raise ConfigError(f"planner: unknown config keys {unknown}; expected 'settings', "
                          "'poll_interval' or 'page_size'")
    poll = config.get("poll_interval", 0.0)
    if isinstance(poll, bool) or not isinstance(poll, int | float) or poll < 0:
        raise ConfigError(f"planner: config 'poll_interval' must be seconds >= 0, got {poll!r}")
    page = config.get("page_size", 1000)
    if isinstance(page, bool) or not isinstance(page, int) or not 1 <= page <= 100_000:
        raise ConfigError(f"planner: config 'page_size' must be 1..100000, got {page!r}")
    return Planner(settings=settings_from_config(config.get("settings")),
                   poll_interval=float(poll), page_size=page)
