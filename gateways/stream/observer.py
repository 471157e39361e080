"""Observations over NATS: hypervisor workers report what their hosts run, the kernel listens.

* `PowerReporter` (beside a hypervisor worker): every interval, for every host it serves, asks
  the plugin for the host's domains (`report_power`, in a thread: libvirt blocks) and
  publishes the `PowerReport` on `observations.power`. A host it cannot reach is simply not
  reported: the kernel's silence rules decide what that means.
* `ObservationListener` (in the kernel process): takes the reports, hands them to the
  reconciler in batches, and runs the reconciler's silence check on the interval.

Reports are plain NATS messages, not JetStream: a lost report is replaced by the next one,
and a stored stale one would only mislead.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import msgspec
from nats.aio.msg import Msg

from kernel.contracts.connection import connect, sleep_unless_stopped
from kernel.leases import FencedError
from kernel.operations import OperationEngine
from kernel.reality.reconciler import RealityPolicy, Reconciler
from kernel.settings import Settings
from kernel.steps.hypervisor import PowerReport

log = logging.getLogger(__name__)
OBSERVATIONS_SUBJECT = "observations.power"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(PowerReport).decode


class PowerReporter:
    """Reports the domains of the hosts `hosts()` names, every `interval` seconds."""

    def __init__(self, report: Callable[[str], PowerReport], hosts: Callable[[], Iterable[str]],
                 servers: Sequence[str], interval: float, *, concurrency: int = 4) -> None:
        self.report, self.hosts, self.servers = report, hosts, list(servers)
        self.interval = interval
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="power-report")
        self.sent = 0
        self.failed = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Report until `stop` is set."""
        nc = await connect(self.servers, name="cloudkernel-power-reporter")
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                started = loop.time()
                try:
                    uris = await loop.run_in_executor(self._pool, lambda: list(self.hosts()))
                except Exception:
                    log.exception("power reporter: cannot list the hosts to report")
                    uris = []
                await asyncio.gather(*(self._one(nc, uri) for uri in uris))
                await nc.flush()
                await sleep_unless_stopped(stop, max(0.0, self.interval -
                                                     (loop.time() - started)))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _one(self, nc: object, uri: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            report = await asyncio.wait_for(
                loop.run_in_executor(self._pool, self.report, uri), self.interval * 2)
        except Exception as e:  # unreachable: no report, and the kernel notices the silence
            self.failed += 1
            log.warning("power reporter: %s not reported: %s", uri, e)
            return
        report = msgspec.structs.replace(report, observed_at=datetime.now(UTC))
        await nc.publish(OBSERVATIONS_SUBJECT, _encode(report))  # type: ignore[attr-defined]
        self.sent += 1


class ObservationListener:
    """Feeds the reconciler from `observations.power` and runs its silence check."""

    def __init__(self, reconciler: Reconciler, servers: Sequence[str], *,
                 batch_wait: float = 0.1) -> None:
        self.reconciler, self.servers, self.batch_wait = reconciler, list(servers), batch_wait
        self._store = ThreadPoolExecutor(1, thread_name_prefix="reconciler")
        self.received = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until `stop` is set."""
        loop = asyncio.get_running_loop()
        pending: list[PowerReport] = []

        async def take(msg: Msg) -> None:
            try:
                pending.append(_decode(msg.data))
            except msgspec.DecodeError as e:
                log.warning("observations: undecodable report on %s: %s", msg.subject, e)

        nc = await connect(self.servers, name="cloudkernel-observations")
        try:
            await nc.subscribe(OBSERVATIONS_SUBJECT, cb=take)
            next_tick = loop.time() + self.reconciler.policy.interval / 2
            while not stop.is_set():
                await sleep_unless_stopped(stop, self.batch_wait)
                if not self._on_duty():  # another kernel holds the duty partition
                    pending.clear()
                    continue
                if pending:
                    batch, pending[:] = list(pending), []
                    self.received += len(batch)
                    await self._run(self.reconciler.observe, batch)
                if loop.time() >= next_tick:
                    next_tick = loop.time() + self.reconciler.policy.interval / 2
                    await self._run(self.reconciler.tick)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)
            self._store.shutdown(wait=True)

    def _on_duty(self) -> bool:
        """Whether this kernel reconciles: the only one, or the duty partition's holder."""
        own = self.reconciler.engine.ownership
        return own is None or own.holds_duty()

    async def _run(self, fn: Callable[..., object], *args: object) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._store, fn, *args)
        except FencedError as e:
            log.info("reconciler: %s (the duty partition moved)", e)
        except Exception:
            log.exception("reconciler: %s failed; the next report or tick tries again",
                          getattr(fn, "__name__", fn))


def listener_for(engine: OperationEngine, settings: Settings,
                 servers: Sequence[str]) -> ObservationListener:
    """The kernel side: a reconciler with the settings' policy, fed from NATS."""
    return ObservationListener(Reconciler(engine, RealityPolicy.of(settings)), servers)


def reporter_for(subsystem: object, hosts: Callable[[], Iterable[str]], settings: Settings,
                 servers: Sequence[str]) -> PowerReporter | None:
    """The worker side, for a plugin that can observe its hosts (the hypervisor)."""
    observe = getattr(subsystem, "observe", None)
    if observe is None:
        return None
    return PowerReporter(observe, hosts, servers, settings.observe_interval_seconds)
