"""The webhook store on SQLite: dedup, the per-webhook queue, dead deliveries and redelivery."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregates.errors import ConfigError, NotFoundError, ValidationError
from gateways.webhooks.model import IncomingEvent, Status
from gateways.webhooks.store import WebhookStore, migrate_webhooks, open_webhook_store
from kernel.settings import Settings

VM = "cloudkernel.events.vm.Started"
HOST = "cloudkernel.events.host.Registered"


def event(position: int, subject: str = VM) -> IncomingEvent:
    return IncomingEvent(position, subject, b'{"position":%d}' % position)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", store="sqlite")


@pytest.fixture
def store(settings: Settings) -> Iterator[WebhookStore]:
    assert migrate_webhooks(settings) == "webhooks: ready (sqlite, 0 webhooks)"
    s = open_webhook_store(settings)
    yield s
    s.close()


def test_opening_without_migrate_fails_clearly_and_creates_nothing(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="cloudkernel migrate"):
        open_webhook_store(settings)
    assert not (settings.data_dir / "webhooks.db").exists()


def test_opening_a_file_without_the_tables_fails_clearly(settings: Settings) -> None:
    import sqlite3

    settings.data_dir.mkdir(parents=True)
    sqlite3.connect(settings.data_dir / "webhooks.db").close()
    with pytest.raises(ConfigError, match="webhook tables are missing"):
        open_webhook_store(settings)


def test_migrate_is_safe_to_run_again(settings: Settings, store: WebhookStore) -> None:
    store.add_webhook("http://127.0.0.1:1/x", [">"])
    assert migrate_webhooks(settings) == "webhooks: ready (sqlite, 1 webhook)"
    assert len(store.list_webhooks()) == 1


def test_add_validates_and_list_never_carries_the_secret(store: WebhookStore) -> None:
    with pytest.raises(ValidationError, match="scheme"):
        store.add_webhook("ftp://x/y", [">"])
    with pytest.raises(ValidationError, match="never match"):
        store.add_webhook("http://x/y", ["vm.*"])
    assert store.list_webhooks() == []
    hook, secret = store.add_webhook("http://x/y", ["cloudkernel.events.vm.*"], "mine")
    assert secret.startswith("whsec_")
    listed = store.list_webhooks()
    assert [h.id for h in listed] == [hook.id]
    assert secret not in repr(listed)
    assert not hasattr(listed[0], "secret")


def test_a_batch_recorded_twice_makes_each_delivery_once(store: WebhookStore) -> None:
    vms, _ = store.add_webhook("http://x/vm", ["cloudkernel.events.vm.>"])
    every, _ = store.add_webhook("http://x/all", ["cloudkernel.events.>"])
    batch = [event(1), event(2, HOST), event(3)]
    assert store.record_events(batch, now=100.0) == 5
    assert store.record_events(batch, now=101.0) == 0
    found = store.list_deliveries(limit=100)
    assert sorted((d.webhook_id, d.position) for d in found) == sorted(
        [(vms.id, 1), (vms.id, 3), (every.id, 1), (every.id, 2), (every.id, 3)])
    assert all(d.status is Status.PENDING and d.created_at == 100.0 for d in found)


def test_inactive_webhooks_get_no_deliveries(store: WebhookStore) -> None:
    hook, _ = store.add_webhook("http://x/vm", ["cloudkernel.events.vm.>"])
    store.set_active(hook.id, False)
    store.record_events([event(1)])
    assert store.list_deliveries() == []
    store.set_active(hook.id, True)
    store.record_events([event(2)])
    assert [d.position for d in store.list_deliveries()] == [2]


def test_only_the_oldest_pending_delivery_of_a_webhook_is_due(store: WebhookStore) -> None:
    a, _ = store.add_webhook("http://x/a", [">"])
    b, _ = store.add_webhook("http://x/b", [">"])
    store.record_events([event(1), event(2), event(3)], now=100.0)
    assert sorted(store.due_webhooks(now=100.0)) == sorted([a.id, b.id])
    assert store.due_webhooks(now=99.0) == []
    head = store.pending(a.id)
    assert [d.position for d in head] == [1, 2, 3]
    assert head[0].body == b'{"position":1}' and head[0].url == "http://x/a"
    # a's head fails and waits until 200: a is not due (its later events wait too), b is
    assert store.claim(head[0].id, now=100.0, lease=40.0)
    assert not store.claim(head[0].id, now=100.0, lease=40.0), "claimed twice"
    assert store.record_attempt(head[0].id, at=100.0, http_status=500, error="HTTP 500",
                                duration_ms=3.0, delivered=False,
                                next_attempt_at=200.0) is Status.PENDING
    assert store.due_webhooks(now=150.0) == [b.id]
    assert store.due_webhooks(now=200.0).count(a.id) == 1
    got = store.get_delivery(head[0].id)
    assert (got.attempts, got.last_status, got.last_error) == (1, 500, "HTTP 500")
    assert [(x.attempt_no, x.http_status) for x in got.history] == [(1, 500)]


def test_delivered_and_dead_deliveries_leave_the_queue(store: WebhookStore) -> None:
    a, _ = store.add_webhook("http://x/a", [">"])
    store.record_events([event(1), event(2), event(3)], now=100.0)
    first, second, _ = store.pending(a.id)
    store.record_attempt(first.id, at=101.0, http_status=204, error="", duration_ms=1.0,
                         delivered=True, next_attempt_at=None)
    store.record_attempt(second.id, at=102.0, http_status=None, error="refused",
                         duration_ms=1.0, delivered=False, next_attempt_at=None)
    assert [d.position for d in store.pending(a.id)] == [3]
    assert store.get_delivery(first.id).delivered_at == 101.0
    assert [d.position for d in store.list_deliveries(status="dead")] == [2]
    assert [d.position for d in store.list_deliveries(status="delivered")] == [1]
    # recording against a delivery that is no longer pending changes nothing
    assert store.record_attempt(first.id, at=103.0, http_status=500, error="x",
                                duration_ms=1.0, delivered=False, next_attempt_at=1.0) is None
    assert store.get_delivery(first.id).status is Status.DELIVERED


def test_redeliver_puts_a_dead_delivery_back_with_a_fresh_budget(store: WebhookStore) -> None:
    a, _ = store.add_webhook("http://x/a", [">"])
    store.record_events([event(1), event(2)], now=100.0)
    first, second = store.pending(a.id)
    for d in (first, second):
        store.record_attempt(d.id, at=101.0, http_status=503, error="HTTP 503",
                             duration_ms=1.0, delivered=False, next_attempt_at=None)
    with pytest.raises(NotFoundError):
        store.redeliver("no-such-delivery")
    back = store.redeliver(first.id, now=500.0)
    assert (back.status, back.attempts, back.next_attempt_at) == (Status.PENDING, 0, 500.0)
    assert len(back.history) == 1, "the history is kept"
    with pytest.raises(ValidationError, match="only a dead delivery"):
        store.redeliver(first.id)
    assert store.pending(a.id)[0].round_started_at == 500.0
    assert store.redeliver_dead(a.id, now=600.0) == 1
    assert [d.position for d in store.pending(a.id)] == [1, 2]
    with pytest.raises(NotFoundError):
        store.redeliver_dead("no-such-webhook")


def test_history_filters_and_limits(store: WebhookStore) -> None:
    a, _ = store.add_webhook("http://x/a", [">"])
    b, _ = store.add_webhook("http://x/b", ["cloudkernel.events.host.*"])
    store.record_events([event(p, HOST) for p in range(1, 6)])
    assert [d.position for d in store.list_deliveries(webhook_id=b.id, limit=3)] == [5, 4, 3]
    assert {d.webhook_id for d in store.list_deliveries(webhook_id=a.id)} == {a.id}
    with pytest.raises(NotFoundError):
        store.list_deliveries(webhook_id="nope")
    with pytest.raises(ValidationError, match="status"):
        store.list_deliveries(status="lost")
    with pytest.raises(ValidationError, match="limit"):
        store.list_deliveries(limit=0)
    assert store.counts() == {a.id: {"pending": 5}, b.id: {"pending": 5}}


def test_remove_takes_the_history_with_it(store: WebhookStore) -> None:
    a, _ = store.add_webhook("http://x/a", [">"])
    b, _ = store.add_webhook("http://x/b", [">"])
    store.record_events([event(1)])
    d = store.pending(a.id)[0]
    store.record_attempt(d.id, at=1.0, http_status=500, error="HTTP 500", duration_ms=1.0,
                         delivered=False, next_attempt_at=2.0)
    assert store.remove_webhook(a.id) == 1
    assert [h.id for h in store.list_webhooks()] == [b.id]
    assert [x.webhook_id for x in store.list_deliveries()] == [b.id]
    with pytest.raises(NotFoundError):
        store.remove_webhook(a.id)
    with pytest.raises(NotFoundError):
        store.get_delivery(d.id)
