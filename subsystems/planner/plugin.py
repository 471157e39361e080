"""The planner subsystem: `planner.plan` proposes a host from an index that follows the log.

A plan has no side effect: the kernel records the placement as a capacity claim on the Host
aggregate. Each plan first catches the index up to the log head, so it sees every claim
committed before the step ran. A repeated delivery of the same step attempt gets the answer
given the first time (kept in a small memo), so a redelivery cannot flip the proposal.

Configuration (the dict given to `make_planner`):

- `log`: the platform's log to follow, a `subsystems.base.PlatformLog`. The process that runs
  the planner opens the platform's store and injects it; the planner never opens the store.
  Without it the plugin can be listed but not opened.
- `poll_interval`: seconds between background catch-ups, 0 (the default) for none.
- `page_size`: notifications read per query (default 1000).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from aggregates.errors import ConfigError, KernelError, StepFailedError
from kernel.steps.planner import Placement, PlanPlacement
from subsystems.base import PlatformLog, StepContext, SubsystemBase, action
from subsystems.planner.follower import LogFollower
from subsystems.planner.index import CapacityIndex
from subsystems.planner.planners import place

__all__ = ["Planner", "make_planner"]

_MEMO_SIZE = 4096


class Planner(SubsystemBase):
    """Deployment planner: FirstFit, UserDispersing and UserConcentratedPod over the log."""

    name = "planner"
    version = "1.0"

    def __init__(self, *, log: PlatformLog | None = None, poll_interval: float = 0.0,
                 page_size: int = 1000) -> None:
        """Follow `log`, the platform's log its runner injects (opened and closed by it)."""
        self.log = log
        self.poll_interval, self.page_size = poll_interval, page_size
        self.index = CapacityIndex()
        self._lock = threading.RLock()
        self._follower: LogFollower | None = None
        self._memo: OrderedDict[tuple[UUID, int, PlanPlacement], Placement] = OrderedDict()

    def open(self) -> None:
        """Fold the platform log into the index (and keep polling it, if configured)."""
        if self.log is None:
            raise ConfigError("planner: no platform log to follow; the process that runs the "
                              "planner injects it (config 'log')")
        self._follower = LogFollower(self.log, self.index, lock=self._lock,
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
        """Stop following; the log stays open, for its runner to close."""
        if self._follower is not None:
            self._follower.stop()
            self._follower = None

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


def make_planner(config: Mapping[str, Any]) -> Planner:
    """Entry point factory of `planner`: config `log`, `poll_interval`, `page_size`."""
    unknown = sorted(set(config) - {"log", "poll_interval", "page_size"})
    if unknown:
        raise ConfigError(f"planner: unknown config keys {unknown}; expected 'log', "
                          "'poll_interval' or 'page_size' (the store is not configured here: "
                          "the process that runs the planner injects the platform log)")
    log = config.get("log")
    if log is not None and not isinstance(log, PlatformLog):
        raise ConfigError(f"planner: config 'log' must be a PlatformLog (head() and read()), "
                          f"got {type(log).__name__}")
    poll = config.get("poll_interval", 0.0)
    if isinstance(poll, bool) or not isinstance(poll, int | float) or poll < 0:
        raise ConfigError(f"planner: config 'poll_interval' must be seconds >= 0, got {poll!r}")
    page = config.get("page_size", 1000)
    if isinstance(page, bool) or not isinstance(page, int) or not 1 <= page <= 100_000:
        raise ConfigError(f"planner: config 'page_size' must be 1..100000, got {page!r}")
    return Planner(log=log, poll_interval=float(poll), page_size=page)
