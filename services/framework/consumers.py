"""Durable pull consumers of the EVENTS stream, for services.

A consumer is created once under its durable name and then bound to: a restarted service goes
on after the last event it acked, and the events it missed while down wait for it in the
stream. Events reach the handler one at a time, in log order; each is acked after its handler
returns. If the handler raises, that event and the rest of the batch are handed back (nak) in
order and fetched again after a pause, so order holds and nothing is skipped. A handler may
see an event twice (a crash between handling and ack): it must be idempotent, e.g. by
remembering the last position it applied.
"""

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from nats.errors import TimeoutError as FetchTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from kernel.contracts.connection import sleep_unless_stopped
from kernel.contracts.events import EVENTS_STREAM
from services.framework.wire import ServiceEvent

log = logging.getLogger(__name__)
Handler = Callable[[ServiceEvent], Awaitable[None] | None]


@dataclass
class DurableConsumer:
    """One durable consumer and the handler its events go to."""

    durable: str
    subjects: tuple[str, ...]
    handler: Handler
    batch: int = 64
    ack_wait: float = 60.0
    retry_seconds: float = 1.0
    stream: str = EVENTS_STREAM
    handled: int = 0
    failures: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def config(self) -> ConsumerConfig:
        """The consumer's JetStream configuration."""
        one = len(self.subjects) == 1
        return ConsumerConfig(
            durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, ack_wait=self.ack_wait, max_deliver=-1,
            max_ack_pending=max(1000, self.batch),
            filter_subject=self.subjects[0] if one else None,
            filter_subjects=None if one else list(self.subjects),
            description="cloudkernel service consumer")

    async def run(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        """Fetch and handle events until `stop` is set."""
        sub = None
        while sub is None and not stop.is_set():
            try:
                await self._ensure(js)
                sub = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
            except NotFoundError:
                log.info("service consumer %s: stream %s does not exist yet; waiting for the "
                         "relay", self.durable, self.stream)
                await sleep_unless_stopped(stop, self.retry_seconds)
            except Exception as e:  # NATS down or refusing: try again
                log.warning("service consumer %s: cannot bind (%s: %s); retrying",
                            self.durable, type(e).__name__, e)
                await sleep_unless_stopped(stop, self.retry_seconds)
        if sub is None:
            return
        self.ready.set()
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(self.batch, timeout=0.5)
                except (FetchTimeout, TimeoutError):  # nothing new (nats-py raises either)
                    continue
                except Exception as e:
                    log.warning("service consumer %s: fetch failed (%s); retrying",
                                self.durable, type(e).__name__)
                    await sleep_unless_stopped(stop, self.retry_seconds)
                    continue
                for i, msg in enumerate(msgs):
                    if not await self._handle(msg):
                        for rest in msgs[i:]:
                            with contextlib.suppress(Exception):
                                await rest.nak()
                        await sleep_unless_stopped(stop, self.retry_seconds)
                        break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _ensure(self, js: JetStreamContext) -> None:
        """Create the consumer, or bind to it where it is (its subjects updated).

        Events a dead instance fetched and never acked would come again only after
        `ack_wait`, and after newer ones: a handler that keeps its last position would then
        skip them. So when some are pending at start, the consumer is made again right
        after its last acked event, and they come first, in log order. A durable belongs to
        one instance at a time (the tenant view names it after its own file).
        """
        config = self.config()
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            info = None  # a new consumer (or no stream yet: add_consumer says which)
        if info is not None:
            config.deliver_policy = info.config.deliver_policy
            config.opt_start_seq = info.config.opt_start_seq
            if info.num_ack_pending:
                floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
                log.info("service consumer %s: %d events were delivered and never acked; "
                         "delivering again from stream sequence %d", self.durable,
                         info.num_ack_pending, (floor or 0) + 1)
                await js.delete_consumer(self.stream, self.durable)
                config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = (floor or 0) + 1
        await js.add_consumer(self.stream, config)

    async def _handle(self, msg: object) -> bool:
        try:
            event = ServiceEvent.from_msg(msg)  # type: ignore[arg-type]
        except (KeyError, ValueError) as e:
            log.error("service consumer %s: not a cloudkernel event on %s (%s); dropped",
                      self.durable, getattr(msg, "subject", "?"), e)
            await msg.term()  # type: ignore[attr-defined]
            return True
        try:
            outcome = self.handler(event)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            self.failures += 1
            log.exception("service consumer %s: handler failed on event %d (%s); it is "
                          "delivered again", self.durable, event.position, event.topic)
            return False
        await msg.ack()  # type: ignore[attr-defined]
        self.handled += 1
        return True


def consumer(durable: str, subjects: Sequence[str], handler: Handler) -> DurableConsumer:
    """A checked consumer definition."""
    if not durable or not all(c.isalnum() or c in "-_" for c in durable):
        raise ValueError(f"durable name {durable!r}: letters, digits, '-' or '_'")
    if isinstance(subjects, str) or not subjects:
        raise ValueError("subjects: a non-empty list of subjects, e.g. "
                         "['cloudkernel.events.vm.>']")
    return DurableConsumer(durable, tuple(subjects), handler)
