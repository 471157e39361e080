"""SIGKILL the relay process again and again while thousands of events are written; the stream
ends as an exact, gap-free copy of the log that a consumer reads with contiguous positions."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import nats

from aggregates.host import Host
from gateways.stream.embedded import EmbeddedNatsServer
from kernel.bootstrap.migrations import migrate_all
from kernel.contracts.events import EVENTS_STREAM
from kernel.settings import Settings
from kernel.store.application import PlatformApplication, open_application

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 3000


def host() -> Host:
    return Host.register(name=f"h-{uuid.uuid4().hex}", uri="test:///default",
                         zone_id=uuid.uuid4(), pod_id=uuid.uuid4(), cluster_id=uuid.uuid4(),
                         cpu_cores=8, cpu_mhz=2000, memory_mib=8192)


async def consume_all(url: str, expected: int) -> list[int]:
    """A plain durable consumer, as an integrator would read the stream."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("cloudkernel.events.>", durable="audit-test",
                                  stream=EVENTS_STREAM)
    positions: list[int] = []
    while len(positions) < expected:
        for m in await sub.fetch(500, timeout=5):
            positions.append(int(m.headers["Cloudkernel-Position"]))
            await m.ack()
    await nc.close()
    return positions


def test_killing_the_relay_loses_and_repeats_nothing(tmp_path: Path, pg_dsn: str,
                                                     nats_server: EmbeddedNatsServer) -> None:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, postgres_pool_size=2)
    migrate_all(settings)
    app = open_application(PlatformApplication, settings)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLOUDKERNEL_STORE": "postgres",
           "CLOUDKERNEL_POSTGRES_DSN": pg_dsn, "CLOUDKERNEL_NATS_URLS": nats_server.url,
           "CLOUDKERNEL_LOG_LEVEL": "warning"}
    relay_cmd = [sys.executable, "-m", "gateways.cli.main", "relay"]

    def writer() -> None:
        for _ in range(EVENTS // 20):
            app.save(*(host() for _ in range(20)))
            time.sleep(0.02)

    def stream_count() -> int:
        async def count() -> int:
            nc = await nats.connect(nats_server.url)
            try:
                info = await nc.jetstream().stream_info(EVENTS_STREAM)
                return int(info.state.messages)
            except Exception:
                return 0
            finally:
                await nc.close()
        return asyncio.run(count())

    written = threading.Thread(target=writer)
    written.start()
    kills = 0
    counts: list[int] = []
    try:
        while written.is_alive() or kills < 4:
            before = stream_count()
            proc = subprocess.Popen(relay_cmd, env=env, cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 15
            while stream_count() <= before and time.monotonic() < deadline:
                time.sleep(0.02)  # kill it only once it is publishing
            time.sleep(0.05 * (kills % 4))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
            counts.append(stream_count())
        written.join()
        proc = subprocess.Popen(relay_cmd, env=env, cwd=tmp_path)  # the last one finishes
        try:
            positions = asyncio.run(asyncio.wait_for(consume_all(nats_server.url, EVENTS), 120))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        log = [n.id for n in app.recorder.select_notifications(start=None, limit=100_000)]
        assert len(log) == EVENTS
        assert positions == log  # every event once, in log order, nothing in between

        async def stream_state() -> tuple[int, int]:
            nc = await nats.connect(nats_server.url)
            info = await nc.jetstream().stream_info(EVENTS_STREAM)
            await nc.close()
            return int(info.state.messages), int(info.state.last_seq)

        assert asyncio.run(stream_state()) == (EVENTS, EVENTS)  # contiguous sequences 1..N
        assert kills >= 4
        assert counts[0] < EVENTS, "the first relay should have been killed mid-stream"
        print(f"{kills} relay kills; stream size after each: {counts}")
    finally:
        app.close()
