"""Intake: the durable `webhooks` consumer on EVENTS turns each event into pending deliveries.

Each fetched batch is recorded in one transaction (one delivery per active webhook whose
patterns match, `ON CONFLICT DO NOTHING` on (webhook, position)), and only then acked. A crash
before the ack redelivers the batch, and recording it again adds nothing: nothing is lost and
nothing doubles. `max_ack_pending` is the batch size, so the server hands out nothing past an
unacked batch and deliveries are created in log order even after a crash.

A webhook receives the events the intake sees after the webhook exists: the consumer starts
at the beginning of the stream the first time it is created, and from its ack floor after that.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from gateways.webhooks.model import Envelope, IncomingEvent
from gateways.webhooks.store import WebhookStore
from kernel.contracts.connection import sleep_unless_stopped
from kernel.contracts.events import (
    ACTOR,
    CAUSATION_ID,
    CORRELATION_ID,
    EVENTS_STREAM,
    ORIGINATOR_ID,
    ORIGINATOR_VERSION,
    POSITION,
    SUBJECT_PREFIX,
    TOPIC,
)

log = logging.getLogger(__name__)

WEBHOOKS_CONSUMER = "webhooks"
StoreCall = Callable[..., Awaitable[Any]]
_encoder = msgspec.json.Encoder()


async def ensure_webhooks_consumer(js: JetStreamContext, *, ack_wait: float = 30,
                                   max_ack_pending: int = 256) -> str:
    """The durable pull consumer of every public event (deliver all, explicit ack)."""
    try:
        await js.consumer_info(EVENTS_STREAM, WEBHOOKS_CONSUMER)
    except NotFoundError:
        await js.add_consumer(EVENTS_STREAM, ConsumerConfig(
            durable_name=WEBHOOKS_CONSUMER, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, ack_wait=ack_wait,
            max_ack_pending=max_ack_pending, max_deliver=-1))
    return WEBHOOKS_CONSUMER


def to_incoming(subject: str, headers: dict[str, str] | None, data: bytes) -> IncomingEvent:
    """The delivery body for one EVENTS message; ValueError if it is not a public event."""
    h = headers or {}
    try:
        position = int(h[POSITION])
        version = int(h.get(ORIGINATOR_VERSION, "0"))
        # Embedded as raw JSON; decoding into Raw checks it is one JSON value.
        event = msgspec.json.decode(data, type=msgspec.Raw)
    except (KeyError, ValueError, msgspec.DecodeError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None
    envelope = Envelope(
        subject=subject, position=position,
        topic=h.get(TOPIC) or subject.removeprefix(SUBJECT_PREFIX),
        originator_id=h.get(ORIGINATOR_ID, ""), originator_version=version,
        actor=h.get(ACTOR, ""), correlation_id=h.get(CORRELATION_ID),
        causation_id=h.get(CAUSATION_ID), event=event)
    return IncomingEvent(position, subject, _encoder.encode(envelope))


class Intake:
    """Pulls EVENTS in batches and records deliveries; acks only what is committed."""

    def __init__(self, store: WebhookStore, call: StoreCall, *, batch: int = 256,
                 poll: float = 0.5, on_recorded: Callable[[], None] | None = None) -> None:
        self.store, self.call, self.batch, self.poll = store, call, batch, poll
        self.on_recorded = on_recorded
        self.stats = {"events": 0, "deliveries": 0, "poison": 0, "batches": 0}

    async def run(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        """Consume until `stop` is set."""
        sub = await js.pull_subscribe_bind(WEBHOOKS_CONSUMER, stream=EVENTS_STREAM)
        while not stop.is_set():
            try:
                msgs = await sub.fetch(self.batch, timeout=self.poll)
            except (NatsTimeout, TimeoutError):
                continue
            except Exception as e:
                log.warning("webhooks intake: fetch failed (%s: %s)", type(e).__name__, e)
                await sleep_unless_stopped(stop, 0.5)
                continue
            events, poison = self._decode(msgs)
            if not await self._record(events, stop):
                return  # stopping with the batch unacked: it is redelivered on the next start
            await asyncio.gather(*(m.ack() for m in msgs if m not in poison),
                                 *(m.term() for m in poison), return_exceptions=True)
            self.stats["events"] += len(events)
            self.stats["batches"] += 1
            if self.on_recorded is not None:
                self.on_recorded()

    def _decode(self, msgs: list[Msg]) -> tuple[list[IncomingEvent], list[Msg]]:
        events, poison = [], []
        for m in msgs:
            try:
                events.append(to_incoming(m.subject, m.headers, m.data))
            except ValueError as e:
                log.error("webhooks intake: message on %s is not a public event, "
                          "terminated: %s", m.subject, e)
                poison.append(m)
        self.stats["poison"] += len(poison)
        return events, poison

    async def _record(self, events: list[IncomingEvent], stop: asyncio.Event) -> bool:
        # Retry the same batch in place rather than nak it: a nak would let later events be
        # recorded first and break the log order of deliveries.
        delay = 0.2
        while True:
            try:
                self.stats["deliveries"] += await self.call(self.store.record_events, events)
                return True
            except Exception as e:
                log.warning("webhooks intake: batch of %d not recorded (%s: %s); retrying",
                            len(events), type(e).__name__, e)
            if stop.is_set():
                return False
            await sleep_unless_stopped(stop, delay)
            delay = min(delay * 2, 5.0)
