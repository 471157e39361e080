"""A service's durable consumer after a crash, on a real nats-server: events a dead instance
fetched and never acked come again first, in log order, well before JetStream's ack wait."""

import asyncio
import time
import uuid

import nats
from nats.js.api import StreamConfig

from kernel.contracts.events import EVENTS_STREAM, ORIGINATOR_ID, POSITION, TOPIC
from services.framework.consumers import consumer
from services.framework.wire import ServiceEvent

SUBJECT = "cloudkernel.events.vm.Started"


async def publish(js: object, positions: range) -> None:
    for p in positions:
        await js.publish(SUBJECT, b"{}", headers={  # type: ignore[attr-defined]
            POSITION: str(p), TOPIC: "vm.Started", ORIGINATOR_ID: str(uuid.uuid4())})


def test_events_a_killed_instance_held_unacked_come_again_first_in_order(
        nats_url: str) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=EVENTS_STREAM, subjects=["cloudkernel.events.>"]))
        await publish(js, range(1, 11))
        seen: list[int] = []

        def applied_in_order(event: ServiceEvent) -> None:
            if not seen or event.position > seen[-1]:  # as a view keeping its last position
                seen.append(event.position)

        first = consumer("view-1", [SUBJECT], applied_in_order)
        stop = asyncio.Event()
        task = asyncio.create_task(first.run(js, stop))
        while len(seen) < 10:
            await asyncio.sleep(0.05)
        stop.set()
        await task
        # A second process fetches 1..N of the next events and dies before acking them.
        await publish(js, range(11, 21))
        doomed = await nats.connect(nats_url)
        sub = await doomed.jetstream().pull_subscribe_bind(durable="view-1",
                                                           stream=EVENTS_STREAM)
        held = await sub.fetch(4, timeout=5)
        assert [int(m.headers[POSITION]) for m in held] == [11, 12, 13, 14]
        await doomed.close()  # no ack, no nak: as after SIGKILL
        await publish(js, range(21, 26))  # and the log goes on meanwhile

        started = time.monotonic()
        restarted = consumer("view-1", [SUBJECT], applied_in_order)
        stop = asyncio.Event()
        task = asyncio.create_task(restarted.run(js, stop))
        try:
            while len(seen) < 25 and time.monotonic() - started < 20:
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
        # every event once, in log order, long before the 60 s ack wait would resend 11..14
        assert seen == list(range(1, 26))
        assert time.monotonic() - started < 20
        info = await js.consumer_info(EVENTS_STREAM, "view-1")
        assert info.num_ack_pending == 0 and info.num_pending == 0
        await nc.close()

    asyncio.run(scenario())
