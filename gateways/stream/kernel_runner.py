"""The kernel process: the dispatcher, the result applier and the timers, on one event loop.

The core is synchronous; this module is its async edge. Store work runs in one executor
thread (the engine saves one batch at a time), the dispatcher's reads in another.

* dispatcher: follows the log from its durable position and publishes every dispatched step
  attempt to `steps.<subsystem>.<action>` with `Nats-Msg-Id = <step id>:<attempt>`; the
  position moves only after JetStream acknowledged the whole page.
* result applier: pulls outcomes in batches bounded by size and by latency, applies the batch
  in one transaction, then acks the messages. A crash before the ack redelivers them, and a
  duplicate changes nothing.
* timers: fire retries and deadlines when they come due.
* leases (several kernels, on PostgreSQL; `kernel.leases`): three times per lease period the
  kernel beats, renews its partitions, gives up those above its share and takes free or
  expired ones. It then works only its partitions: the dispatcher publishes their steps,
  stamped with the partition's epoch (and starts at the log's head: what was dispatched
  before is in flight, and published again by whoever takes the partition); the applier
  applies their outcomes and gives the others back to the stream (nak) for their owner; the
  timers fire for their operations. A partition taken is adopted from the log (cached, its
  timers rebuilt, its attempts in flight published again at the new epoch); one lost or
  given up is forgotten. A batch refused by the fence is given back and the leases checked
  at once. A kernel that cannot reach PostgreSQL for a whole lease period stops working
  every partition (its fence would refuse its writes anyway).
"""

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from aggregates.step_run import Phase
from gateways.metrics import PROCESS
from gateways.stream.streams import ensure_results_consumer, ensure_streams, when_ready
from kernel.contracts.connection import connect, sleep_unless_stopped
from kernel.contracts.steps import (
    RESULTS_CONSUMER,
    RESULTS_STREAM,
    StepMessage,
    StepOutcome,
    outcome_decoder,
    step_encoder,
)
from kernel.dispatch_feed import DispatchFeed
from kernel.leases import FencedError, LeaseTable, TickResult
from kernel.operations import OperationEngine
from kernel.partitions import Ownership

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelTuning:
    """Batch sizes and latencies of the kernel loops."""

    result_batch: int = 1000
    result_wait: float = 0.02
    dispatch_page: int = 2000
    publish_window: int = 256
    idle_poll: float = 0.05
    timer_tick: float = 0.05


def _stat(key: str, runner: "KernelRunner") -> list[tuple[tuple[str, ...], float]]:
    return [((), runner.stats[key])]


class KernelRunner:
    """Runs the dispatcher, the result applier and the timers until told to stop."""

    def __init__(self, engine: OperationEngine, feed: DispatchFeed, servers: Sequence[str],
                 tuning: KernelTuning | None = None, *, replicas: int = 1,
                 leases: LeaseTable | None = None, name: str = "kernel"):
        self.engine, self.feed, self.servers = engine, feed, list(servers)
        self.replicas = replicas
        self.tuning = tuning or KernelTuning()
        self.leases, self.name = leases, name
        self.ownership: Ownership | None = None
        if leases is not None:
            self.ownership = Ownership(name, leases.partitions)
            engine.ownership = self.ownership
        self._store = ThreadPoolExecutor(1, thread_name_prefix="kernel-store")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="kernel-feed")
        self._lease_thread = ThreadPoolExecutor(1, thread_name_prefix="kernel-leases")
        self._wake: asyncio.Event | None = None
        self._check_leases: asyncio.Event | None = None
        self._adoptions: set[asyncio.Task[None]] = set()
        self.stats = {"published": 0, "applied": 0, "ignored": 0, "batches": 0,
                      "returned": 0, "fenced": 0, "republished": 0, "leases_taken": 0,
                      "leases_lost": 0, "leases_released": 0, "lease_renewals": 0,
                      "lease_errors": 0}
        for key, help_ in (("published", "steps the dispatcher published to STEPS"),
                           ("applied", "step outcomes the applier recorded"),
                           ("ignored", "step outcomes that no longer applied (late, repeated)"),
                           ("batches", "result batches the applier took"),
                           ("returned", "outcomes of other kernels' partitions given back"),
                           ("fenced", "batches the fence refused (a lease had moved)"),
                           ("republished", "attempts in flight published again on adoption"),
                           ("leases_taken", "partition leases taken"),
                           ("leases_lost", "partition leases lost to another kernel"),
                           ("leases_released", "partition leases given up"),
                           ("lease_renewals", "lease ticks that reached PostgreSQL"),
                           ("lease_errors", "lease ticks that failed")):
            PROCESS.add(self, f"cloudkernel_kernel_{key}", "counter", f"Kernel: {help_}.",
                        (), functools.partial(_stat, key))
        PROCESS.add(self, "cloudkernel_kernel_partitions_held", "gauge",
                    "Kernel: partitions this kernel holds now.", (), _held)
        PROCESS.add(self, "cloudkernel_kernel_timers", "gauge",
                    "Kernel: timers waiting (retries and deadlines).", (), _timers)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; then finish the current batches and close."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        wake = self._wake
        def saved() -> None:
            loop.call_soon_threadsafe(wake.set)

        self.engine.on_saved = saved
        if self.leases is None:
            recovered = await loop.run_in_executor(self._store, self.engine.recover)
            log.info("kernel: %d unfinished operations recovered from the log", recovered)
        else:
            log.info("kernel: %s works the partitions it leases (%d partitions, leases of "
                     "%.1f s); their unfinished operations recovered from the log as it takes "
                     "them", self.name, self.leases.partitions, self.leases.period)
        nc = await connect(self.servers, name="cloudkernel-kernel")
        try:
            js = nc.jetstream(timeout=10)
            await self._ensure_streams(js, stop)
            start = None
            if self.leases is not None:
                # the dispatcher starts at the head first: what comes later it publishes,
                # what came before the adoption of a partition publishes again
                start = await loop.run_in_executor(self._reader, self._head)
            loops = [self._dispatch_loop(js, stop, start=start), self._result_loop(js, stop),
                     self._timer_loop(stop)]
            if self.leases is not None:
                loops.append(self._lease_loop(js, stop, lambda: bool(nc.is_connected)))
            tasks = [asyncio.create_task(coro) for coro in loops]
            await stop.wait()
            wake.set()
            if self._check_leases is not None:
                self._check_leases.set()
            await asyncio.gather(*tasks)
        finally:
            # close, not drain: nats-py's drain of a pull subscription can wait forever on its
            # pending queue, and everything the kernel owed (acks, publishes) is already sent.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)
            self._store.shutdown(wait=True)
            self._reader.shutdown(wait=True)
            self._lease_thread.shutdown(wait=False)  # a hung tick is not waited for

    async def _ensure_streams(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        """The streams and the results consumer, once NATS can make sure of them."""
        async def ensure() -> None:
            await ensure_streams(js, replicas=self.replicas)
            await ensure_results_consumer(js)
        await when_ready(ensure, stop, "kernel")

    def _head(self) -> int:
        return self.feed.app.recorder.max_notification_id() or 0

    # ------------------------------------------------------------------ dispatcher

    async def _dispatch_loop(self, js: JetStreamContext, stop: asyncio.Event, *,
                             start: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        position = start if start is not None else \
            await loop.run_in_executor(self._reader, self.feed.position)
        while not stop.is_set():
            try:
                messages, reached = await loop.run_in_executor(
                    self._reader, self.feed.read, position, self.tuning.dispatch_page)
                if self.ownership is not None:
                    messages = self._stamped(messages)
                if messages:
                    # Operations accepted by another process (the NATS intake, the admin API)
                    # get their deadline timers here, from the dispatches in the log.
                    self.engine.watch_deadlines(
                        (m.operation_id, m.deadline_at) for m in messages if m.deadline_at)
                    await self._publish(js, messages, stop)
                if reached != position:
                    if self.ownership is None:
                        # with leases a kernel starts at the head and a new owner publishes
                        # what is in flight: the position is its own, never recorded
                        await loop.run_in_executor(self._reader, self.feed.commit, reached)
                    position = reached
                    continue
            except Exception:
                log.exception("dispatcher: will retry from position %d", position)
                await sleep_unless_stopped(stop, 1.0)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tuning.idle_poll)

    def _stamped(self, messages: list[StepMessage]) -> list[StepMessage]:
        """The messages of this kernel's partitions, with their partition and epoch."""
        own = self.ownership
        assert own is not None
        held = own.held()
        mine = []
        for m in messages:
            partition = own.partition(m.operation_id)
            epoch = held.get(partition)
            if epoch is not None:
                mine.append(msgspec.structs.replace(m, partition=partition, epoch=epoch))
        return mine

    async def _publish(self, js: JetStreamContext, messages: list[StepMessage],
                       stop: asyncio.Event) -> None:
        window = self.tuning.publish_window
        for start in range(0, len(messages), window):
            chunk = messages[start:start + window]
            delay = 0.2
            while True:
                results = await asyncio.gather(
                    *(js.publish(m.subject, step_encoder.encode(m),
                                 headers={"Nats-Msg-Id": m.msg_id}) for m in chunk),
                    return_exceptions=True)
                failed = [m for m, r in zip(chunk, results, strict=True)
                          if isinstance(r, BaseException)]
                if not failed:
                    break
                # Publish the failed ones again with the same ids: JetStream drops repeats.
                log.warning("dispatcher: %d of %d publishes failed (%s); retrying",
                            len(failed), len(chunk),
                            next(r for r in results if isinstance(r, BaseException)))
                if stop.is_set():
                    raise RuntimeError("stopping with unpublished dispatches")
                chunk = failed
                await sleep_unless_stopped(stop, delay)
                delay = min(delay * 2, 5.0)
            self.stats["published"] += len(messages[start:start + window])

    # ------------------------------------------------------------------ result applier

    async def _result_loop(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        sub = await js.pull_subscribe_bind(RESULTS_CONSUMER, stream=RESULTS_STREAM)
        while not stop.is_set():
            try:
                msgs = await sub.fetch(self.tuning.result_batch, timeout=self.tuning.idle_poll)
            except (NatsTimeout, TimeoutError):
                continue
            except Exception:
                log.exception("result applier: fetch failed")
                await sleep_unless_stopped(stop, 0.5)
                continue
            # Latency bound: take whatever else arrives within result_wait, up to the size bound.
            deadline = time.monotonic() + self.tuning.result_wait
            while len(msgs) < self.tuning.result_batch and time.monotonic() < deadline:
                try:
                    msgs += await sub.fetch(self.tuning.result_batch - len(msgs),
                                            timeout=max(0.001, deadline - time.monotonic()))
                except (NatsTimeout, TimeoutError):
                    break
            outcomes, poison = _decode(msgs)
            if self.ownership is not None:
                msgs, outcomes = await self._return_others(msgs, outcomes, poison)
                if not msgs:
                    continue
            try:
                report = await loop.run_in_executor(self._store, self.engine.apply_outcomes,
                                                    outcomes)
            except FencedError as e:
                log.warning("result applier: %s; %d outcome(s) given back", e, len(msgs))
                self.stats["fenced"] += 1
                await asyncio.gather(*(m.nak(delay=0.2) for m in msgs if m not in poison),
                                     return_exceptions=True)
                if self._check_leases is not None:
                    self._check_leases.set()
                continue
            except Exception:
                log.exception("result applier: batch of %d not applied; it will be redelivered",
                              len(outcomes))
                await asyncio.gather(*(m.nak(delay=1) for m in msgs), return_exceptions=True)
                continue
            self.stats["applied"] += report.applied
            self.stats["ignored"] += len(outcomes) - report.applied
            self.stats["batches"] += 1
            await asyncio.gather(*(m.ack() for m in msgs if m not in poison),
                                 *(m.term() for m in poison), return_exceptions=True)

    async def _return_others(self, msgs: list[Msg], outcomes: list[StepOutcome],
                             poison: list[Msg]) -> tuple[list[Msg], list[StepOutcome]]:
        """Keep the messages and outcomes of this kernel's partitions; give the others back
        to the stream for their owner (the poison stays, to be terminated)."""
        own = self.ownership
        assert own is not None
        good = [m for m in msgs if m not in poison]
        keep = [own.holds(o.operation_id) for o in outcomes]
        others = [m for m, k in zip(good, keep, strict=True) if not k]
        if others:
            self.stats["returned"] += len(others)
            await asyncio.gather(*(m.nak(delay=0.05) for m in others), return_exceptions=True)
        return ([m for m, k in zip(good, keep, strict=True) if k] + poison,
                [o for o, k in zip(outcomes, keep, strict=True) if k])

    # ------------------------------------------------------------------ leases

    async def _lease_loop(self, js: JetStreamContext, stop: asyncio.Event,
                          connected: Callable[[], bool]) -> None:
        """Beat, renew, balance and adopt, three times per lease period; give everything up
        on a clean stop, and while NATS is out of reach for a lease period (a kernel that
        cannot publish steps or take outcomes must not keep partitions from the others)."""
        table, own = self.leases, self.ownership
        assert table is not None and own is not None
        loop = asyncio.get_running_loop()
        self._check_leases = check = asyncio.Event()
        renewed_at = reached_nats = loop.time()
        pending: asyncio.Future[TickResult] | None = None
        try:
            while not stop.is_set():
                if connected():
                    reached_nats = loop.time()
                elif loop.time() - reached_nats > table.period and pending is None:
                    await self._step_aside()
                    await sleep_unless_stopped(stop, table.period / 3)
                    continue
                if pending is None:  # a tick still hanging (a dead connection) is not doubled
                    pending = loop.run_in_executor(self._lease_thread, table.tick,
                                                   self.name, own.held())
                result: TickResult | None = None
                try:
                    got = await asyncio.wait_for(asyncio.shield(pending), table.period / 3)
                except TimeoutError:
                    self.stats["lease_errors"] += 1
                    log.warning("leases: no answer from PostgreSQL within %.1f s",
                                table.period / 3)
                except Exception as e:
                    pending = None
                    self.stats["lease_errors"] += 1
                    log.warning("leases: tick failed: %s: %s", type(e).__name__, e)
                else:
                    pending, result = None, got
                    renewed_at = loop.time()
                    self.stats["lease_renewals"] += 1
                    await self._apply_tick(js, got, stop)
                if result is None and loop.time() - renewed_at > table.period and own.held():
                    # by our clock the leases have lapsed: stop before the fence must refuse
                    lost = set(own.held())
                    log.warning("leases: not renewed for a lease period; partitions %s are "
                                "no longer worked here", sorted(lost))
                    await self._lose(lost)
                if result is not None:
                    check.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(check.wait(), table.period / 3)
                elif pending is None:  # failed at once (PostgreSQL refusing): not in a spin
                    await sleep_unless_stopped(stop, table.period / 3)
        finally:
            for task in list(self._adoptions):
                task.cancel()
            held = own.held()
            own.drop(held)
            with contextlib.suppress(Exception):
                await loop.run_in_executor(self._store, lambda: None)  # the last batch
                # (bounded: a hung connection only delays the others until the leases lapse)
                await asyncio.wait_for(loop.run_in_executor(
                    self._lease_thread, table.release, self.name, held), table.period)
                await asyncio.wait_for(loop.run_in_executor(
                    self._lease_thread, table.leave, self.name), table.period)
            log.info("leases: %d partition(s) given up on stopping", len(held))

    async def _apply_tick(self, js: JetStreamContext, result: TickResult,
                          stop: asyncio.Event) -> None:
        own, table = self.ownership, self.leases
        assert own is not None and table is not None
        loop = asyncio.get_running_loop()
        if result.lost:
            log.warning("leases: partitions %s were taken by another kernel", sorted(result.lost))
            self.stats["leases_lost"] += len(result.lost)
            await self._lose(result.lost)
        if result.released:
            epochs = {p: e for p, e in own.held().items() if p in result.released}
            await self._lose(result.released)
            await loop.run_in_executor(self._lease_thread, table.release, self.name, epochs)
            self.stats["leases_released"] += len(epochs)
            log.info("leases: gave up partitions %s (%d kernels alive)", sorted(epochs),
                     result.live)
        if result.taken:
            own.take(result.taken)
            self.stats["leases_taken"] += len(result.taken)
            # in a task of its own: the renewals go on while a slow adoption publishes
            task = asyncio.create_task(self._adopt(js, dict(result.taken), stop))
            self._adoptions.add(task)
            task.add_done_callback(self._adoptions.discard)

    async def _adopt(self, js: JetStreamContext, taken: dict[int, int],
                     stop: asyncio.Event) -> None:
        """Take on the operations of partitions just taken: from the log, their attempts in
        flight published again at the new epoch."""
        loop = asyncio.get_running_loop()
        try:
            _count, in_flight = await loop.run_in_executor(self._store, self.engine.adopt,
                                                           set(taken))
            messages = [StepMessage(
                step_id=d.step_id, operation_id=d.operation_id, attempt=d.attempt,
                subsystem=d.subsystem, action=d.action, args=d.args,
                deadline_at=d.deadline_at, compensation=d.phase is Phase.COMPENSATION)
                for d in in_flight]
            messages = self._stamped(messages)  # lost again meanwhile: not published
            self.engine.watch_deadlines((m.operation_id, m.deadline_at) for m in messages
                                        if m.deadline_at)
            await self._publish(js, messages, stop)
            self.stats["republished"] += len(messages)
            log.info("leases: took partitions %s (epochs %s); %d attempt(s) in flight "
                     "published again", sorted(taken), sorted(set(taken.values())),
                     len(messages))
        except Exception:
            # given up: the next tick takes them again (a new epoch) and adopts them afresh
            log.exception("leases: adopting partitions %s failed; giving them up",
                          sorted(taken))
            await self._lose(set(taken))
            table = self.leases
            assert table is not None
            with contextlib.suppress(Exception):
                await loop.run_in_executor(self._lease_thread, table.release, self.name, taken)

    async def _step_aside(self) -> None:
        """Cut off from NATS: give every lease up and leave the members, so that the live
        kernels' shares cover every partition; joins again once NATS answers."""
        own, table = self.ownership, self.leases
        assert own is not None and table is not None
        held = own.held()
        loop = asyncio.get_running_loop()
        if held:
            log.warning("leases: NATS out of reach for a lease period; giving up partitions %s",
                        sorted(held))
            await self._lose(set(held))
            self.stats["leases_released"] += len(held)
        with contextlib.suppress(Exception):
            await loop.run_in_executor(self._lease_thread, table.release, self.name, held)
            await loop.run_in_executor(self._lease_thread, table.leave, self.name)

    async def _lose(self, partitions: set[int]) -> None:
        """Stop working partitions: no new batch for them, then the cache forgets them."""
        own = self.ownership
        assert own is not None
        own.drop(partitions)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._store, self.engine.forget_partitions, set(partitions))

    # ------------------------------------------------------------------ timers

    async def _timer_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            due = self.engine.next_timer()
            if due is not None and due <= datetime.now(UTC):
                try:
                    await loop.run_in_executor(self._store, self.engine.fire_due_timers)
                except Exception:
                    log.exception("timers: will try again")
            await sleep_unless_stopped(stop, self.tuning.timer_tick)


def _held(runner: "KernelRunner") -> list[tuple[tuple[str, ...], float]]:
    own = runner.ownership
    return [((), float(len(own.held())) if own is not None else 0.0)]


def _timers(runner: "KernelRunner") -> list[tuple[tuple[str, ...], float]]:
    return [((), float(runner.engine.timer_count()))]


def _decode(msgs: list[Msg]) -> tuple[list[StepOutcome], list[Msg]]:
    outcomes, poison = [], []
    for m in msgs:
        try:
            outcomes.append(outcome_decoder.decode(m.data))
        except msgspec.DecodeError as e:
            log.error("result applier: undecodable outcome on %s terminated: %s", m.subject, e)
            poison.append(m)
    return outcomes, poison
