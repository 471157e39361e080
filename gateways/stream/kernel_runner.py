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
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from gateways.stream.connection import connect, sleep_unless_stopped
from gateways.stream.streams import ensure_results_consumer, ensure_streams
from kernel.contracts import (
    RESULTS_CONSUMER,
    RESULTS_STREAM,
    StepMessage,
    StepOutcome,
    outcome_decoder,
    step_encoder,
)
from kernel.dispatch_feed import DispatchFeed
from kernel.operations import OperationEngine

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


class KernelRunner:
    """Runs the dispatcher, the result applier and the timers until told to stop."""

    def __init__(self, engine: OperationEngine, feed: DispatchFeed, servers: Sequence[str],
                 tuning: KernelTuning | None = None):
        self.engine, self.feed, self.servers = engine, feed, list(servers)
        self.tuning = tuning or KernelTuning()
        self._store = ThreadPoolExecutor(1, thread_name_prefix="kernel-store")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="kernel-feed")
        self._wake: asyncio.Event | None = None
        self.stats = {"published": 0, "applied": 0, "ignored": 0, "batches": 0}

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; then finish the current batches and close."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        wake = self._wake
        def saved() -> None:
            loop.call_soon_threadsafe(wake.set)

        self.engine.on_saved = saved
        recovered = await loop.run_in_executor(self._store, self.engine.recover)
        log.info("kernel: %d unfinished operations recovered from the log", recovered)
        nc = await connect(self.servers, name="cloudkernel-kernel")
        try:
            js = nc.jetstream(timeout=10)
            await ensure_streams(js)
            await ensure_results_consumer(js)
            tasks = [asyncio.create_task(coro) for coro in (
                self._dispatch_loop(js, stop), self._result_loop(js, stop),
                self._timer_loop(stop))]
            await stop.wait()
            wake.set()
            await asyncio.gather(*tasks)
        finally:
            # close, not drain: nats-py's drain of a pull subscription can wait forever on its
            # pending queue, and everything the kernel owed (acks, publishes) is already sent.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)
            self._store.shutdown(wait=True)
            self._reader.shutdown(wait=True)

    # ------------------------------------------------------------------ dispatcher

    async def _dispatch_loop(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        position = await loop.run_in_executor(self._reader, self.feed.position)
        while not stop.is_set():
            try:
                messages, reached = await loop.run_in_executor(
                    self._reader, self.feed.read, position, self.tuning.dispatch_page)
                if messages:
                    # Operations accepted by another process (the NATS intake, the admin API)
                    # get their deadline timers here, from the dispatches in the log.
                    self.engine.watch_deadlines(
                        (m.operation_id, m.deadline_at) for m in messages if m.deadline_at)
                    await self._publish(js, messages, stop)
                if reached != position:
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
            try:
                report = await loop.run_in_executor(self._store, self.engine.apply_outcomes,
                                                    outcomes)
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


def _decode(msgs: list[Msg]) -> tuple[list[StepOutcome], list[Msg]]:
    outcomes, poison = [], []
    for m in msgs:
        try:
            outcomes.append(outcome_decoder.decode(m.data))
        except msgspec.DecodeError as e:
            log.error("result applier: undecodable outcome on %s terminated: %s", m.subject, e)
            poison.append(m)
    return outcomes, poison
