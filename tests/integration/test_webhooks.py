"""Webhooks end to end: PostgreSQL log -> relay -> EVENTS -> webhook service -> loopback HTTP."""

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregates.host import Host
from gateways.cli.main import main
from gateways.stream.embedded import EmbeddedNatsServer
from gateways.stream.relay import EventRelay
from gateways.webhooks.model import IncomingEvent, RetryPolicy, Status
from gateways.webhooks.service import WebhookService
from gateways.webhooks.store import WebhookStore, migrate_webhooks, open_webhook_store
from kernel.bootstrap import SAMPLE_INVENTORY, Platform, open_platform
from kernel.bootstrap.migrations import migrate_all
from kernel.event_feed import EventFeed
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings
from tests.support.webhook_receiver import Receiver, free_port

# Tiny backoff so retries take milliseconds; 4 attempts, then dead.
POLICY = RetryPolicy(initial=0.01, factor=2.0, cap=0.05, jitter=0.1, max_attempts=4)


@pytest.fixture
def settings(pg_dsn: str) -> Settings:
    s = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=2)
    migrate_all(s)
    migrate_webhooks(s)
    return s


@pytest.fixture
def platform(settings: Settings) -> Iterator[Platform]:
    p = open_platform(settings)
    load_inventory_file(p.commands, SAMPLE_INVENTORY)  # 22 events
    for i in range(3):  # and 3 saves of 5 more hosts
        p.app.save(*(Host.register(name=f"extra-{i}-{j}", uri="test:///default",
                                   zone_id=uuid.uuid4(), pod_id=uuid.uuid4(),
                                   cluster_id=uuid.uuid4(), cpu_cores=4, cpu_mhz=1000,
                                   memory_mib=1024) for j in range(5)))
    yield p
    p.close()


@pytest.fixture
def store(settings: Settings) -> Iterator[WebhookStore]:
    s = open_webhook_store(settings)
    yield s
    s.close()


def log_notes(platform: Platform) -> list[Any]:
    return list(platform.app.recorder.select_notifications(start=None, limit=10_000))


async def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.05)


def test_a_receiver_that_fails_at_first_still_gets_every_delivery_signed(
        platform: Platform, store: WebhookStore, nats_server: EmbeddedNatsServer) -> None:
    notes = log_notes(platform)
    hosts = [n.id for n in notes if n.topic.startswith("host.")]
    catalog = [n.id for n in notes if n.topic.split(".")[0] in ("zone", "pod")]
    clusters = [n.id for n in notes if n.topic.startswith("cluster.")]
    assert len(hosts) == 23 and len(catalog) == 3 and len(clusters) == 2
    flaky = set(hosts[::3]) | {catalog[0]}
    receiver = Receiver({}, script=lambda path, position, nth: 500 if (
        path in ("/hosts", "/catalog") and position in flaky and nth <= 2) else 200)
    down_port = free_port()
    late = Receiver({})  # the dead letters' endpoint: nothing listens there until it recovers
    ids: dict[str, str] = {}

    async def scenario() -> None:
        base = await receiver.start()
        h, h_secret = store.add_webhook(base + "/hosts", ["cloudkernel.events.host.>"])
        _, c_secret = store.add_webhook(base + "/catalog", ["cloudkernel.events.zone.*",
                                                            "cloudkernel.events.pod.*"])
        n, n_secret = store.add_webhook(base + "/never", ["cloudkernel.events.vm.>"])
        d, d_secret = store.add_webhook(f"http://127.0.0.1:{down_port}/dead",
                                        ["cloudkernel.events.cluster.*"])
        receiver.secrets.update({"/hosts": h_secret, "/catalog": c_secret,
                                 "/never": n_secret})
        late.secrets["/dead"] = d_secret
        ids.update(hosts=h.id, dead=d.id, never=n.id)
        stop = asyncio.Event()
        relay = EventRelay(EventFeed(platform.app), [nats_server.url], window=8)
        service = WebhookService(store, [nats_server.url], policy=POLICY, poll=0.05,
                                 timeout=2.0, intake_batch=16, ack_wait=5)
        tasks = [asyncio.create_task(relay.run(stop)), asyncio.create_task(service.run(stop))]
        try:
            await wait_for(lambda: len(receiver.delivered("/hosts")) == len(hosts)
                           and len(receiver.delivered("/catalog")) == len(catalog)
                           and len(store.list_deliveries(webhook_id=d.id, status="dead"))
                           == len(clusters))
            # the endpoint recovers; its dead deliveries are sent again
            late.port = down_port
            await late.start()
            assert store.redeliver_dead(d.id) == len(clusters)
            await wait_for(lambda: len(late.delivered("/dead")) == len(clusters))
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await receiver.stop()
            await late.stop()

    asyncio.run(scenario())

    by_position = {n.id: n for n in notes}
    assert all(r.signed for r in receiver.received + late.received), "a signature failed"
    for path, expected in (("/hosts", hosts), ("/catalog", catalog)):
        ok = receiver.delivered(path)
        assert [r.position for r in ok] == expected, f"{path}: not every event, or not in order"
        assert len({r.delivery_id for r in ok}) == len(expected), "delivered twice"
        seen = [r.position for r in receiver.at(path)]
        assert seen == sorted(seen), f"{path}: a later event overtook a retry"
        for r in ok:
            note = by_position[r.position]
            assert r.subject == f"cloudkernel.events.{note.topic}"
            assert r.body["position"] == r.position and r.body["subject"] == r.subject
            assert r.body["originator_id"] == str(note.originator_id)
            assert r.body["event"] == json.loads(bytes(note.state))
    assert receiver.at("/never") == []
    assert store.list_deliveries(webhook_id=ids["never"]) == [], "a non-matching event"
    assert [r.position for r in late.delivered("/dead")] == clusters

    history = {d.position: d for d in store.list_deliveries(webhook_id=ids["hosts"],
                                                             limit=1000)}
    assert sorted(history) == hosts
    for position, d in history.items():
        assert d.status is Status.DELIVERED
        codes = [a.http_status for a in d.history]
        assert codes == ([500, 500, 200] if position in flaky else [200]), position
    redelivered = store.list_deliveries(webhook_id=ids["dead"], limit=10)
    assert sorted(dl.position for dl in redelivered) == clusters
    for dl in redelivered:
        assert dl.status is Status.DELIVERED
        assert [a.http_status for a in dl.history] == [None] * 4 + [200]
        assert all("Connect" in a.error for a in dl.history[:4])


def test_a_restarted_service_sends_nothing_twice(
        platform: Platform, store: WebhookStore, nats_server: EmbeddedNatsServer) -> None:
    hosts = [n.id for n in log_notes(platform) if n.topic.startswith("host.")]
    receiver = Receiver({})

    async def run_once(until: Callable[[], bool], settle: float = 0.0) -> None:
        stop = asyncio.Event()
        service = WebhookService(store, [nats_server.url], policy=POLICY, poll=0.05,
                                 intake_batch=7, ack_wait=5)
        tasks = [asyncio.create_task(EventRelay(EventFeed(platform.app),
                                                [nats_server.url]).run(stop)),
                 asyncio.create_task(service.run(stop))]
        try:
            await wait_for(until)
            await asyncio.sleep(settle)
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    async def scenario() -> None:
        base = await receiver.start()
        _, secret = store.add_webhook(base + "/h", ["cloudkernel.events.host.*"])
        receiver.secrets["/h"] = secret
        try:
            await run_once(lambda: len(receiver.delivered("/h")) == len(hosts))
            await run_once(lambda: True, settle=1.0)
        finally:
            await receiver.stop()

    asyncio.run(scenario())
    assert [r.position for r in receiver.received] == hosts


# --------------------------------------------------------------------------- CLI


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_cli_add_list_history_redeliver_remove(
        pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLOUDKERNEL_STORE", "postgres")
    monkeypatch.setenv("CLOUDKERNEL_POSTGRES_DSN", pg_dsn)
    code, out = run_cli(capsys, "webhooks", "list")
    assert code == 2 and "cloudkernel migrate" in out
    settings = Settings(store="postgres", postgres_dsn=pg_dsn)
    assert migrate_webhooks(settings) == "webhooks: ready (postgres, 0 webhooks)"

    code, out = run_cli(capsys, "webhooks", "add", "ftp://x/y", "--subject", ">")
    assert code == 2 and "scheme must be http or https" in out
    code, out = run_cli(capsys, "webhooks", "add", "http://x/y", "--subject", "vm.*")
    assert code == 2 and "can never match" in out
    code, out = run_cli(capsys, "webhooks", "add", "https://hooks.example/ck", "--subject",
                        "cloudkernel.events.vm.>", "--description", "billing")
    assert code == 0
    hook_id = out.split()[1]
    secret = next(line.split()[1] for line in out.splitlines() if line.startswith("secret "))
    assert secret.startswith("whsec_")

    code, out = run_cli(capsys, "webhooks", "list")
    assert code == 0 and hook_id in out and "https://hooks.example/ck" in out
    assert secret not in out and "whsec_" not in out
    code, out = run_cli(capsys, "webhooks", "deliveries")
    assert code == 0 and "no deliveries" in out
    code, out = run_cli(capsys, "webhooks", "deliveries", "--webhook", "nope")
    assert code == 2 and "no webhook 'nope'" in out
    code, out = run_cli(capsys, "webhooks", "deliveries", "--limit", "0")
    assert code == 2 and "limit" in out

    store = open_webhook_store(settings)
    try:
        seven = IncomingEvent(7, "cloudkernel.events.vm.Started", b"{}")
        assert store.record_events([seven]) == 1
        assert store.record_events([seven]) == 0, "a redelivered event made a second delivery"
        (d,) = store.pending(hook_id)
        store.record_attempt(d.id, at=time.time(), http_status=500, error="HTTP 500: busy",
                             duration_ms=2.0, delivered=False, next_attempt_at=None)
    finally:
        store.close()
    code, out = run_cli(capsys, "webhooks", "deliveries", "--status", "dead")
    assert code == 0 and d.id in out and "HTTP 500: busy" in out and "position 7" in out
    code, out = run_cli(capsys, "webhooks", "redeliver", d.id)
    assert code == 0 and "queued again" in out
    code, out = run_cli(capsys, "webhooks", "redeliver", d.id)
    assert code == 2 and "only a dead delivery" in out
    code, out = run_cli(capsys, "webhooks", "redeliver", "no-such-id")
    assert code == 2 and "no webhook delivery" in out
    code, out = run_cli(capsys, "webhooks", "redeliver", "--dead", hook_id)
    assert code == 0 and "0 dead deliveries" in out
    code, out = run_cli(capsys, "webhooks", "disable", hook_id)
    assert code == 0 and "disabled" in out
    code, out = run_cli(capsys, "webhooks", "remove", hook_id)
    assert code == 0 and "with 1 deliveries" in out
    code, out = run_cli(capsys, "webhooks", "remove", hook_id)
    assert code == 2 and "no webhook" in out


def test_cli_serve_runs_until_sigterm(settings: Settings, nats_server: EmbeddedNatsServer,
                                      tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "CLOUDKERNEL_STORE": "postgres",
           "CLOUDKERNEL_POSTGRES_DSN": settings.postgres_dsn,
           "CLOUDKERNEL_NATS_URLS": nats_server.url}
    proc = subprocess.Popen([sys.executable, "-m", "gateways.cli.main", "webhooks", "serve"],
                            cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "webhooks: serving from NATS at " + nats_server.url in first, first
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "webhooks: stopped" in out
