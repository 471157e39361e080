"""`up`'s services: each enabled one (settings `services`) runs as its own process, restarted
with backoff when it dies, and stopped with SIGTERM (then SIGKILL) when `up` stops.

A service is a package `services.<name>` runnable as `python -m`; it talks to the
platform only through NATS, so it could as well run on another machine: `up` only saves the
operator from starting it by hand.
"""

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    """One service's process, kept running until `run`'s stop event is set."""

    name: str
    config: Path | None = None
    prepare: Callable[[], object] | None = None  # before each start (it issues the key)
    min_backoff: float = 0.5
    max_backoff: float = 30.0
    stop_timeout: float = 10.0
    restarts: int = 0
    pid: int | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def argv(self) -> list[str]:
        """The command line of the service's process."""
        extra = ["--config", str(self.config)] if self.config is not None else []
        return [sys.executable, "-m", f"services.{self.name}", *extra]

    async def run(self, stop: asyncio.Event) -> None:
        """Start the process, restart it when it exits (with backoff), stop it on `stop`."""
        backoff = self.min_backoff
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        while not stop.is_set():
            began = time.monotonic()
            if self.prepare is not None:
                await asyncio.to_thread(self.prepare)
            proc = await asyncio.create_subprocess_exec(*self.argv(), env=env)
            self.pid = proc.pid
            self.started.set()
            log.info("service %s: started (pid %s)", self.name, proc.pid)
            waiter = asyncio.ensure_future(proc.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if stop.is_set():
                await self._terminate(proc, waiter)
                return
            code = waiter.result()
            if time.monotonic() - began > 60:
                backoff = self.min_backoff  # it ran a good while: not a crash loop
            log.warning("service %s: exited with %s; restarting in %.1f s", self.name, code,
                        backoff)
            self.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _terminate(self, proc: asyncio.subprocess.Process,
                         waiter: "asyncio.Future[int]") -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout=self.stop_timeout)
            except TimeoutError:
                log.warning("service %s: no exit %.0f s after SIGTERM; killing it", self.name,
                            self.stop_timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await waiter
        log.info("service %s: stopped (exit %s)", self.name, proc.returncode)


def service_processes(names: Sequence[str], config: Path | None,
                      prepare: Callable[[str], object] | None = None) -> list[ServiceProcess]:
    """A supervised process for each service to run; `prepare(name)` runs before each start."""
    return [ServiceProcess(name, config, None if prepare is None
                           else functools.partial(prepare, name)) for name in names]
