"""The event relay on real PostgreSQL and nats-server: log order, exactly once, self-healing."""

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest

from aggregates.host import Host
from gateways.stream.embedded import EmbeddedNatsServer
from gateways.stream.relay import EventRelay
from kernel.bootstrap import SAMPLE_INVENTORY, open_platform
from kernel.bootstrap.migrations import migrate_all
from kernel.contracts.events import EVENTS_STREAM
from kernel.event_feed import EventFeed
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings
from kernel.store.application import KernelApplication


@pytest.fixture
def app(pg_dsn: str) -> Iterator[KernelApplication]:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=2)
    migrate_all(settings)
    platform = open_platform(settings)
    load_inventory_file(platform.commands, SAMPLE_INVENTORY)  # 22 events
    for i in range(8):  # and 8 saves of 10 more
        hosts = [Host.register(name=f"extra-{i}-{j}", uri="test:///default", zone_id=uuid.uuid4(),
                               pod_id=uuid.uuid4(), cluster_id=uuid.uuid4(), cpu_cores=4,
                               cpu_mhz=1000, memory_mib=1024) for j in range(10)]
        platform.app.save(*hosts)
    yield platform.app
    platform.close()


def log_positions(app: KernelApplication) -> list[int]:
    return [n.id for n in app.recorder.select_notifications(start=None, limit=100_000)]


async def stream_messages(url: str) -> list[Any]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(EVENTS_STREAM)
        return [await js.get_msg(EVENTS_STREAM, seq)
                for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    finally:
        await nc.close()


async def relay_until(relays: list[EventRelay], url: str, count: int,
                      timeout: float = 30) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in relays]
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            await asyncio.sleep(0.1)
            try:
                if len(await stream_messages(url)) >= count:
                    break
            except Exception:
                continue
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def assert_exact_copy(app: KernelApplication, messages: list[Any]) -> None:
    positions = [int(m.headers["Cloudkernel-Position"]) for m in messages]
    assert positions == log_positions(app), "stream differs from the log"
    for m, note in zip(messages, app.recorder.select_notifications(start=None, limit=100_000),
                       strict=True):
        assert m.subject == f"cloudkernel.events.{note.topic}"
        assert m.data == bytes(note.state)
        assert m.headers["Cloudkernel-Originator-Id"] == str(note.originator_id)
        assert m.headers["Cloudkernel-Originator-Version"] == str(note.originator_version)
        assert m.headers["Nats-Msg-Id"] == str(note.id)


def test_every_event_in_log_order_with_its_headers(app: KernelApplication,
                                                   nats_server: EmbeddedNatsServer) -> None:
    relay = EventRelay(EventFeed(app), [nats_server.url], window=16)
    asyncio.run(relay_until([relay], nats_server.url, 102))
    messages = asyncio.run(stream_messages(nats_server.url))
    assert len(messages) == 102
    assert_exact_copy(app, messages)
    first = messages[0]
    assert first.subject == "cloudkernel.events.zone.Created"
    assert first.headers["Cloudkernel-Actor"] == "system"
    assert first.headers["Cloudkernel-Causation-Id"].startswith("command:inventory.load:")
    assert "Cloudkernel-Correlation-Id" in first.headers


class SlowFeed(EventFeed):
    """Reads a page at a time, slowly, so a test can stop the relay mid-stream."""

    def read(self, after: int, limit: int = 1000) -> list[Any]:
        time.sleep(0.05)
        return super().read(after, limit)


def test_a_restarted_relay_goes_on_from_the_streams_tail(
        app: KernelApplication, nats_server: EmbeddedNatsServer) -> None:
    url = nats_server.url
    asyncio.run(relay_until([EventRelay(SlowFeed(app), [url], page=7, window=3)], url, 30))
    assert 30 <= len(asyncio.run(stream_messages(url))) < 102
    asyncio.run(relay_until([EventRelay(EventFeed(app), [url], page=7, window=3)], url, 102))
    assert_exact_copy(app, asyncio.run(stream_messages(url)))


def test_two_relays_at_once_neither_duplicate_nor_interleave(
        app: KernelApplication, nats_server: EmbeddedNatsServer) -> None:
    url = nats_server.url
    relays = [EventRelay(EventFeed(app), [url], page=10, window=4) for _ in range(2)]
    asyncio.run(relay_until(relays, url, 102))
    asyncio.run(asyncio.sleep(0.5))
    assert_exact_copy(app, asyncio.run(stream_messages(url)))
    assert sum(r.published for r in relays) == 102


def test_a_lost_stream_is_published_again_from_the_log(
        app: KernelApplication, nats_server: EmbeddedNatsServer) -> None:
    url = nats_server.url
    asyncio.run(relay_until([EventRelay(EventFeed(app), [url])], url, 102))

    async def lose_it() -> None:
        nc = await nats.connect(url)
        await nc.jetstream().delete_stream(EVENTS_STREAM)
        await nc.close()

    asyncio.run(lose_it())
    asyncio.run(relay_until([EventRelay(EventFeed(app), [url])], url, 102))
    assert_exact_copy(app, asyncio.run(stream_messages(url)))


def test_a_nats_server_crash_mid_stream_loses_and_repeats_nothing(
        app: KernelApplication, nats_server: EmbeddedNatsServer) -> None:
    url = nats_server.url

    async def scenario() -> EventRelay:
        relay = EventRelay(EventFeed(app), [url], page=5, window=5)
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        while relay.published < 20:
            await asyncio.sleep(0.01)
        nats_server.kill()
        await asyncio.sleep(0.5)
        nats_server.start()
        for _ in range(300):
            await asyncio.sleep(0.1)
            try:
                if len(await stream_messages(url)) >= 102:
                    break
            except Exception:
                continue
        stop.set()
        await task
        return relay

    asyncio.run(scenario())
    assert_exact_copy(app, asyncio.run(stream_messages(url)))
