"""The worker runtime: serve one subsystem's steps from JetStream with a bounded thread pool.

    worker = Worker(subsystem, servers=["nats://127.0.0.1:4322"], concurrency=8)
    await worker.run(stop_event)          # returns once stop_event is set and steps drained

Every worker of a subsystem binds the same durable pull consumer (`worker-<subsystem>`), so
several processes share the load. The loop fetches at most as many messages as it has free
slots, and runs each step's handler in a thread of a ThreadPoolExecutor sized `concurrency`.
While a step runs (and while its outcome is published) the message gets `in_progress()` every
ack_wait/3, so a long step is not redelivered.

Per message, in this order:
1. run the plugin (`subsystems.runner.StepRunner`): an outcome or none, and ack or term;
2. publish the outcome to `results.<subsystem>` with `Nats-Msg-Id = <step id>:<attempt>` via
   `js.publish` (each call has a timeout and raises on error, unlike publish_async, nats-py
   #985), and wait for the PubAck;
3. only then ack (or term a poison message). If the publish fails the message is nak'ed with
   a short delay and nothing is acked: the step runs again (plugins are idempotent by step id)
   and the outcome's Msg-Id makes a second copy a duplicate JetStream drops.

One attempt runs once at a time in a worker: a second delivery of it (JetStream's redelivery,
or a new kernel publishing at its epoch what was in flight) waits while the first runs, and
once the first has reported, the twin is answered with that outcome and not run again (the
last `_REMEMBERED` attempts are kept).

The worker also answers its plugin's read-only actions (`inventory`) as plain NATS requests,
in the same thread pool (`gateways.stream.queries`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import signal
import socket
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from aggregates.errors import ConfigError
from gateways.metrics import PROCESS
from gateways.stream.queries import serve_queries
from gateways.stream.streams import ensure_streams, ensure_worker_consumer, when_ready
from kernel.contracts.connection import connect
from kernel.contracts.steps import (
    RESULTS_STREAM,
    STEPS_STREAM,
    StepOutcome,
    result_subject,
    worker_consumer,
)
from subsystems.base import Subsystem
from subsystems.runner import Disposal, StepRunner, Verdict

__all__ = ["Worker", "WorkerStats", "run_until_signalled"]

log = logging.getLogger(__name__)

_outcome_encoder = msgspec.json.Encoder()
_MIN_PROGRESS_S = 0.05
_RETRY_S = 1.0  # pause after a transport error, and the nak delay after a failed publish
_REMEMBERED = 4096  # attempts whose outcome this worker keeps, to answer their twins


@dataclass
class WorkerStats:
    """Counters of one worker run."""

    received: int = 0
    succeeded: int = 0
    failed: int = 0
    terminated: int = 0
    withheld: int = 0
    publish_errors: int = 0
    in_progress_sent: int = 0
    abandoned: int = 0
    deferred: int = 0  # deliveries of an attempt already running here, put back for later
    repeated: int = 0  # deliveries of an attempt already done here, answered without a run


class Worker:
    """One worker process' (or task's) service of one subsystem."""

    def __init__(
        self,
        subsystem: Subsystem,
        *,
        servers: Sequence[str],
        concurrency: int = 8,
        ack_wait: float = 30.0,
        max_batch: int = 256,
        fetch_timeout: float = 1.0,
        publish_timeout: float = 5.0,
        connect_timeout: float = 10.0,
        drain_timeout: float = 30.0,
        progress_interval: float | None = None,
        identity: str | None = None,
        replicas: int = 1,
    ) -> None:
        """Configure; nothing connects before `run`.

        `ack_wait` is used when this worker creates the consumer; an existing consumer keeps
        its own, and the in_progress cadence (default ack_wait/3) follows the consumer's.
        """
        if concurrency < 1:
            raise ConfigError(f"worker concurrency must be at least 1, got {concurrency}")
        for name, value in (("ack_wait", ack_wait), ("fetch_timeout", fetch_timeout),
                            ("publish_timeout", publish_timeout),
                            ("connect_timeout", connect_timeout)):
            if value <= 0:
                raise ConfigError(f"worker {name} must be positive, got {value}")
        self.subsystem = subsystem
        self.servers = list(servers)
        self.concurrency = concurrency
        self.replicas = replicas
        self.ack_wait = ack_wait
        self.max_batch = max(1, max_batch)
        self.fetch_timeout = fetch_timeout
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.drain_timeout = drain_timeout
        self.progress_interval = progress_interval
        self.identity = identity or (f"{socket.gethostname()}/{os.getpid()}/"
                                     f"{secrets.token_hex(2)}")
        self.runner = StepRunner(subsystem, worker=self.identity)
        self.stats = WorkerStats()
        PROCESS.add(self, "cloudkernel_worker_steps", "counter",
                    "Steps a worker took from STEPS, by what became of them.",
                    ("subsystem", "worker", "outcome"),
                    lambda w: [((w.subsystem.name, w.identity, k), getattr(w.stats, k))
                               for k in ("received", "succeeded", "failed", "terminated",
                                         "withheld", "abandoned", "deferred", "repeated")])
        PROCESS.add(self, "cloudkernel_worker_stale_epoch_steps", "counter",
                    "Steps refused because a newer kernel owns their partition (a deposed "
                    "kernel's publication).", ("subsystem", "worker"),
                    lambda w: [((w.subsystem.name, w.identity), w.runner.refused_epoch)])
        PROCESS.add(self, "cloudkernel_worker_steps_in_flight", "gauge",
                    "Steps a worker is running now.", ("subsystem", "worker"),
                    lambda w: [((w.subsystem.name, w.identity), len(w._inflight))])
        self.ready = asyncio.Event()
        self._js: JetStreamContext | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._progress_every = progress_interval or max(ack_wait / 3, _MIN_PROGRESS_S)
        self._inflight: set[asyncio.Task[None]] = set()
        self._running: set[tuple[UUID, int]] = set()  # the attempts running here now
        # the attempts this worker ran and reported, newest last, with their outcome
        self._done: OrderedDict[tuple[UUID, int], StepOutcome] = OrderedDict()
        self._closing = False

    # ----------------------------------------------------------------- lifecycle

    async def run(self, stop: asyncio.Event) -> WorkerStats:
        """Open the plugin, connect, serve until `stop` is set, drain, close."""
        await asyncio.to_thread(self.subsystem.open)
        nc: Client | None = None
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"ck-{self.subsystem.name}")
        try:
            nc = await self._connect()
            js = nc.jetstream(timeout=self.publish_timeout)
            sub = await when_ready(lambda: self._bind(js), stop, f"worker {self.identity}")
            self._attach(js, pool)
            await serve_queries(nc, self.runner, pool)
            log.info("worker %s serves %s (%s) from %s; concurrency %d, in_progress every %.2fs",
                     self.identity, self.subsystem.name, ", ".join(self.runner.kinds),
                     ", ".join(self.servers), self.concurrency, self._progress_every)
            self.ready.set()
            await self._serve(js, sub, stop)
        finally:
            await self._drain()
            self._closing = True
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
            pool.shutdown(wait=False, cancel_futures=True)
            if self.stats.abandoned:
                log.warning("worker %s: %d step(s) still running after %.0fs; left unacked for "
                            "redelivery", self.identity, self.stats.abandoned, self.drain_timeout)
            else:
                await asyncio.to_thread(self.subsystem.close)
        return self.stats

    async def _connect(self) -> Client:
        """Connect within `connect_timeout`, then reconnect forever while running."""
        client: Client | None = None

        async def on_disconnect() -> None:
            if not self._closing and self.ready.is_set():
                log.warning("nats: disconnected; reconnecting")

        async def on_reconnect() -> None:
            url = client.connected_url if client is not None else None
            log.info("nats: reconnected to %s", url.netloc if url else "?")

        client = await connect(self.servers, name=f"cloudkernel-worker-{self.subsystem.name}",
                               timeout=self.connect_timeout, disconnected_cb=on_disconnect,
                               reconnected_cb=on_reconnect)
        return client

    async def _bind(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        """Ensure the streams and the shared durable consumer; learn its ack_wait."""
        await ensure_streams(js, replicas=self.replicas)
        durable = await ensure_worker_consumer(js, self.subsystem.name, ack_wait=self.ack_wait)
        info = await js.consumer_info(STEPS_STREAM, durable)
        ack_wait = info.config.ack_wait or self.ack_wait
        self._progress_every = self.progress_interval or max(ack_wait / 3, _MIN_PROGRESS_S)
        return await js.pull_subscribe_bind(durable=durable, stream=STEPS_STREAM)

    def _attach(self, js: JetStreamContext, pool: ThreadPoolExecutor) -> None:
        """Give the message handling its JetStream context and thread pool."""
        self._js, self._pool = js, pool

    # ----------------------------------------------------------------- the pull loop

    async def _serve(self, js: JetStreamContext, sub: JetStreamContext.PullSubscription,
                     stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                free = self.concurrency - len(self._inflight)
                if free <= 0:
                    await asyncio.wait({*self._inflight, stopping},
                                       return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(min(free, self.max_batch), timeout=self.fetch_timeout)
                except TimeoutError:  # nats-py raises on an empty fetch
                    continue
                except Exception as e:
                    log.warning("fetch from %s failed: %s: %s", STEPS_STREAM, type(e).__name__, e)
                    await asyncio.wait({stopping}, timeout=_RETRY_S)
                    sub = await self._rebind(js, sub)
                    continue
                for msg in msgs:
                    self.start(msg)
        finally:
            stopping.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _rebind(self, js: JetStreamContext,
                      sub: JetStreamContext.PullSubscription) -> JetStreamContext.PullSubscription:
        """Recreate the consumer (and streams) if they were deleted; otherwise keep `sub`."""
        try:
            await js.consumer_info(STEPS_STREAM, worker_consumer(self.subsystem.name))
            return sub  # still there: the error was transient (a reconnect, a busy server)
        except NotFoundError:
            log.warning("consumer %s is gone; recreating it", worker_consumer(self.subsystem.name))
        except Exception:
            return sub
        try:
            new = await self._bind(js)
        except Exception as e:
            log.warning("cannot bind consumer of %s yet: %s: %s", self.subsystem.name,
                        type(e).__name__, e)
            return sub
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        return new

    def start(self, msg: Msg) -> asyncio.Task[None]:
        """Handle one fetched message in its own task."""
        self.stats.received += 1
        task = asyncio.create_task(self._handle(msg))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return task

    async def _drain(self) -> None:
        """Let running steps finish, at most `drain_timeout`; abandon (leave unacked) the rest."""
        if not self._inflight:
            return
        log.info("worker %s: waiting for %d running step(s)", self.identity, len(self._inflight))
        _, pending = await asyncio.wait(set(self._inflight), timeout=self.drain_timeout)
        self.stats.abandoned = len(pending)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    # ----------------------------------------------------------------- one message

    async def _handle(self, msg: Msg) -> None:
        assert self._pool is not None
        # One attempt runs once at a time here: a second delivery of it (JetStream's
        # redelivery, or a new kernel publishing what was in flight at its epoch) waits for
        # the first to finish, then runs on what the first left (idempotent steps say
        # "done already"), instead of racing it on the same host objects.
        attempt = self.runner.attempt_of(msg.data)
        if attempt is not None and attempt in self._running:
            self.stats.deferred += 1
            await _quietly(msg.nak, delay=_RETRY_S)
            return
        done = self._done.get(attempt) if attempt is not None else None
        if done is not None:
            # A twin of an attempt this worker already ran and reported: it is answered with
            # that outcome (stored once: the same message id), not run again. Run again, it
            # could act after what came since: a volume created anew after the operation,
            # failed meanwhile, had deleted it.
            self.stats.repeated += 1
            if await self._publish(done):
                await _quietly(msg.ack)
            else:
                await _quietly(msg.nak, delay=_RETRY_S)
            return
        if attempt is not None:
            self._running.add(attempt)
        keep_alive = asyncio.create_task(self._keep_alive(msg))
        try:
            delivery = _delivery(msg)
            run = functools.partial(self.runner.run, msg.data, delivery=delivery)
            verdict = await asyncio.get_running_loop().run_in_executor(self._pool, run)
            if verdict.outcome is not None and not await self._publish(verdict.outcome):
                await _quietly(msg.nak, delay=_RETRY_S)
                return
            if attempt is not None and verdict.outcome is not None:
                self._remember(attempt, verdict.outcome)
            keep_alive.cancel()
            await self._dispose(msg, verdict)
        finally:
            keep_alive.cancel()
            if attempt is not None:
                self._running.discard(attempt)

    def _remember(self, attempt: tuple[UUID, int], outcome: StepOutcome) -> None:
        self._done[attempt] = outcome
        self._done.move_to_end(attempt)
        while len(self._done) > _REMEMBERED:
            self._done.popitem(last=False)

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell JetStream the step is still being worked on, every ack_wait/3."""
        while True:
            await asyncio.sleep(self._progress_every)
            if await _quietly(msg.in_progress):
                self.stats.in_progress_sent += 1

    async def _publish(self, outcome: StepOutcome) -> bool:
        """Publish an outcome and wait for its PubAck; False when it may not be stored."""
        assert self._js is not None
        try:
            await self._js.publish(
                result_subject(outcome.subsystem), _outcome_encoder.encode(outcome),
                timeout=self.publish_timeout, stream=RESULTS_STREAM,
                headers={"Nats-Msg-Id": outcome.msg_id},
            )
        except Exception as e:
            self.stats.publish_errors += 1
            log.warning("outcome of step %s not stored (%s: %s); the step will be redelivered",
                        outcome.msg_id, type(e).__name__, e)
            return False
        return True

    async def _dispose(self, msg: Msg, verdict: Verdict) -> None:
        """Ack after the outcome is stored, or term a message that can never be performed."""
        outcome = verdict.outcome
        if verdict.disposal is Disposal.TERM:
            self.stats.terminated += 1
            log.warning("terminated step message on %s (stream seq %s): %s", msg.subject,
                        _stream_seq(msg), verdict.reason)
            await _quietly(msg.term)
            return
        if outcome is None:
            self.stats.withheld += 1
            log.info("step message on %s (stream seq %s) acked without an outcome: %s",
                     msg.subject, _stream_seq(msg), verdict.reason)
        elif outcome.ok:
            self.stats.succeeded += 1
        else:
            self.stats.failed += 1
        await _quietly(msg.ack)


async def run_until_signalled(
        worker: Worker, on_ready: Callable[[Worker], None] | None = None,
        companions: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = ()
) -> WorkerStats:
    """Run a worker (and its companions, with the same stop) until SIGTERM or SIGINT,
    calling `on_ready` once it serves."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    beside: list[asyncio.Task[None]] = [asyncio.create_task(run(stop)) for run in companions]
    try:
        task = asyncio.create_task(worker.run(stop))
        ready = asyncio.create_task(worker.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if worker.ready.is_set() and on_ready is not None:
            on_ready(worker)
        stats = await task
        stop.set()
        await asyncio.gather(*beside, return_exceptions=True)
        return stats
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _delivery(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


def _stream_seq(msg: Msg) -> Any:
    try:
        return msg.metadata.sequence.stream
    except Exception:
        return "?"


async def _quietly(op: Callable[..., Any], **kwargs: Any) -> bool:
    """Ack-like calls are fire-and-forget; a failure only means a later redelivery."""
    try:
        await op(**kwargs)
    except Exception as e:
        log.debug("%s failed: %s: %s", getattr(op, "__name__", op), type(e).__name__, e)
        return False
    return True
