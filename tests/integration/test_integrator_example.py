"""The integrator example against a real relay, PostgreSQL log and nats-server; the stream
matches the published contracts."""

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import nats
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from aggregates.base import audit_context
from aggregates.host import Host, HostStatus
from gateways.contracts.documents import DEFAULT_DIR
from gateways.stream.embedded import EmbeddedNatsServer
from gateways.stream.relay import EventRelay
from kernel.bootstrap import SAMPLE_INVENTORY, open_platform
from kernel.bootstrap.migrations import migrate_all
from kernel.contracts.events import EVENTS_STREAM
from kernel.event_feed import EventFeed
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings
from kernel.store.application import KernelApplication

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "integrator" / "watch_events.py"


@pytest.fixture
def app(pg_dsn: str) -> Iterator[KernelApplication]:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=2)
    migrate_all(settings)
    platform = open_platform(settings)
    load_inventory_file(platform.commands, SAMPLE_INVENTORY)
    note = next(iter(platform.app.recorder.select_notifications(
        start=None, limit=1, topics=("host.Registered",))))
    host: Host = platform.app.repository.get(UUID(str(note.originator_id)))
    with audit_context(actor="alice"):
        host.change_status(HostStatus.DOWN, "no heartbeat")
    platform.app.save(host)
    yield platform.app
    platform.close()


def log(app: KernelApplication) -> list[Any]:
    return list(app.recorder.select_notifications(start=None, limit=100_000))


def line(note: Any) -> str:
    actor = json.loads(note.state)["actor"]
    return f"{note.id} cloudkernel.events.{note.topic} {note.originator_id} {actor}"


async def relay_all(app: KernelApplication, url: str) -> list[Any]:
    """Relay the whole log to EVENTS; return the stream's messages."""
    count = len(log(app))
    stop = asyncio.Event()
    task = asyncio.create_task(EventRelay(EventFeed(app), [url]).run(stop))
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for _ in range(300):
            await asyncio.sleep(0.1)
            try:
                if (await js.stream_info(EVENTS_STREAM)).state.messages >= count:
                    break
            except Exception:
                continue
        stop.set()
        await task
        info = await js.stream_info(EVENTS_STREAM)
        return [await js.get_msg(EVENTS_STREAM, seq)
                for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    finally:
        await nc.close()


def watch(url: str, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, str(EXAMPLE), url, *args], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_example_follows_a_filtered_durable_consumer_in_log_order(
        app: KernelApplication, nats_server: EmbeddedNatsServer) -> None:
    url = nats_server.url
    asyncio.run(relay_all(app, url))
    hosts = [line(n) for n in log(app) if n.topic.startswith("host.")]
    assert len(hosts) == 9 and hosts[-1].endswith(" alice")
    first = watch(url, "--filter", "cloudkernel.events.host.>", "--durable", "hosts",
                  "--count", "3", "--idle", "10")
    assert first == hosts[:3]
    # the same durable consumer goes on after the last acked event
    rest = watch(url, "--filter", "cloudkernel.events.host.>", "--durable", "hosts",
                 "--idle", "1")
    assert rest == hosts[3:]
    # a new consumer with the default filter sees the whole log, in order
    assert watch(url, "--durable", "everything", "--idle", "1") == [line(n) for n in log(app)]


def test_published_messages_match_the_contracts(
        app: KernelApplication, nats_server: EmbeddedNatsServer) -> None:
    messages = asyncio.run(relay_all(app, nats_server.url))
    assert len(messages) == len(log(app))
    schemas: dict[str, Any] = {}
    for m in messages:
        topic = m.headers["Cloudkernel-Topic"]
        if topic not in schemas:
            schemas[topic] = json.loads((DEFAULT_DIR / "events" / f"{topic}.json").read_text())
        schema = schemas[topic]
        assert m.subject == schema["x-cloudkernel-subject"]
        checker = FormatChecker()
        Draft202012Validator(schema["x-cloudkernel-headers"], format_checker=checker).validate(
            dict(m.headers))
        Draft202012Validator(schema, format_checker=checker).validate(json.loads(m.data))
