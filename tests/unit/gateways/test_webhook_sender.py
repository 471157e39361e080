"""The sender against a loopback receiver and a SQLite store: order, retries, death, isolation."""

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateways.webhooks.model import IncomingEvent, RetryPolicy, Status
from gateways.webhooks.sender import Sender
from gateways.webhooks.store import WebhookStore, migrate_webhooks, open_webhook_store
from kernel.settings import Settings
from tests.support.webhook_receiver import Receiver

FAST = RetryPolicy(initial=0.01, factor=2.0, cap=0.05, jitter=0.0, max_attempts=3)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[WebhookStore]:
    settings = Settings(data_dir=tmp_path, store="sqlite")
    migrate_webhooks(settings)
    s = open_webhook_store(settings)
    yield s
    s.close()


def events(subject: str, positions: range) -> list[IncomingEvent]:
    return [IncomingEvent(p, subject, b'{"n":%d}' % p) for p in positions]


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def send_until(store: WebhookStore, done: Callable[[], bool], *, concurrency: int = 4,
                     policy: RetryPolicy = FAST, timeout: float = 15.0) -> Sender:
    sender = Sender(store, call, policy=policy, concurrency=concurrency, timeout=2.0,
                    poll=0.02)
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(sender.run(session, stop))
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.02)
        stop.set()
        await task
    return sender


def test_retries_keep_log_order_and_every_attempt_is_signed(store: WebhookStore) -> None:
    # position 2 fails twice before it gets through
    receiver = Receiver({}, script=lambda path, position, nth: 500 if position == 2 and nth <= 2
                        else 204)

    async def scenario() -> None:
        base = await receiver.start()
        _, secret = store.add_webhook(base + "/a", ["cloudkernel.events.vm.>"])
        receiver.secrets["/a"] = secret
        store.record_events(events("cloudkernel.events.vm.Started", range(1, 5)))
        try:
            await send_until(store, lambda: len(receiver.delivered("/a")) == 4)
        finally:
            await receiver.stop()

    asyncio.run(scenario())
    seen = [r.position for r in receiver.at("/a")]
    assert seen == [1, 2, 2, 2, 3, 4]
    assert all(r.signed for r in receiver.received)
    assert [r.position for r in receiver.delivered("/a")] == [1, 2, 3, 4]
    second = next(d for d in store.list_deliveries() if d.position == 2)
    assert second.status is Status.DELIVERED
    assert [(a.attempt_no, a.http_status) for a in second.history] == [(1, 500), (2, 500),
                                                                       (3, 204)]


def test_a_dead_delivery_stops_blocking_and_can_be_redelivered(store: WebhookStore) -> None:
    receiver = Receiver({})
    broken = {"on": True}

    async def scenario() -> None:
        base = await receiver.start()
        hook, secret = store.add_webhook(base + "/b", [">"])
        receiver.secrets["/b"] = secret
        store.record_events(events("cloudkernel.events.vm.Started", range(1, 4)))
        dead = store.pending(hook.id)[0].id
        receiver.script = lambda path, position, nth: 503 if broken["on"] and position == 1 \
            else 200
        try:
            await send_until(store, lambda: len(receiver.delivered("/b")) == 2)
            assert store.get_delivery(dead).status is Status.DEAD
            broken["on"] = False
            store.redeliver(dead)
            await send_until(store, lambda: len(receiver.delivered("/b")) == 3)
        finally:
            await receiver.stop()

    asyncio.run(scenario())
    assert [r.answered for r in receiver.at("/b")] == [503, 503, 503, 200, 200, 200]
    assert [r.position for r in receiver.delivered("/b")] == [2, 3, 1]
    assert {d.status for d in store.list_deliveries()} == {Status.DELIVERED}


def test_a_refused_connection_is_a_failed_attempt(store: WebhookStore) -> None:
    from tests.support.webhook_receiver import free_port

    hook, _ = store.add_webhook(f"http://127.0.0.1:{free_port()}/gone", [">"])
    store.record_events(events("cloudkernel.events.vm.Started", range(1, 2)))
    d = store.pending(hook.id)[0]
    asyncio.run(send_until(store, lambda: store.get_delivery(d.id).status is Status.DEAD))
    got = store.get_delivery(d.id)
    assert got.status is Status.DEAD and len(got.history) == 3
    assert all(a.http_status is None and "Connect" in a.error for a in got.history)


def test_a_slow_endpoint_does_not_stall_the_others(store: WebhookStore) -> None:
    receiver = Receiver({}, delay={"/slow": 0.5})

    async def scenario() -> float:
        base = await receiver.start()
        _, s1 = store.add_webhook(base + "/slow", ["cloudkernel.events.host.>"])
        _, s2 = store.add_webhook(base + "/fast", ["cloudkernel.events.vm.>"])
        receiver.secrets.update({"/slow": s1, "/fast": s2})
        store.record_events(events("cloudkernel.events.host.Registered", range(1, 5))
                            + events("cloudkernel.events.vm.Started", range(5, 25)))
        started = time.monotonic()
        try:
            await send_until(store, lambda: len(receiver.delivered("/fast")) == 20,
                             concurrency=2)
        finally:
            await receiver.stop()
        return time.monotonic() - started

    took = asyncio.run(scenario())
    assert len(receiver.delivered("/fast")) == 20
    assert len(receiver.delivered("/slow")) <= 2, "the slow endpoint was not slow"
    assert took < 1.5, f"fast webhook waited for the slow one ({took:.2f}s)"
