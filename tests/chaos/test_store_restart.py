"""PostgreSQL crashes and comes back: an API process answers 503 while it is gone and serves
again within seconds of its return, its /metrics included (its pools held only dead
connections; a pool meeting them one after another backed off for 30 s). Its /metrics answers
at once while the store is gone, saying so (`cloudkernel_store_reachable 0`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.postgres import PostgresServer, create_database, with_dbname
from fixtures.processes import free_port

from gateways.stream.embedded import EmbeddedNatsServer
from kernel.bootstrap.migrations import migrate_all
from kernel.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_pg() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


def get(url: str, timeout: float = 30) -> tuple[int, float, bytes]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, time.monotonic() - started, r.read()
    except urllib.error.HTTPError as e:
        return e.code, time.monotonic() - started, e.read()


def test_an_api_serves_again_within_seconds_of_postgresql_coming_back(
        tmp_path: Path, private_pg: PostgresServer, nats_server: EmbeddedNatsServer) -> None:
    dsn = with_dbname(private_pg.dsn, create_database(private_pg.dsn))
    settings = Settings(store="postgres", postgres_dsn=dsn, nats_urls=(nats_server.url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    api_port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKERNEL_")}
    env.update(PYTHONPATH=str(ROOT), CLOUDKERNEL_STORE="postgres",
               CLOUDKERNEL_POSTGRES_DSN=dsn, CLOUDKERNEL_NATS_URLS=nats_server.url,
               CLOUDKERNEL_DATA_DIR=str(tmp_path / "data"),
               CLOUDKERNEL_API_PORT=str(api_port), CLOUDKERNEL_METRICS_PORT=str(metrics_port))
    log = tmp_path / "api.log"
    proc = subprocess.Popen([sys.executable, "-m", "gateways.cli.main", "api"], env=env,
                            cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT)
    api, metrics = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        deadline = time.monotonic() + 30
        while "admin API at" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        assert get(f"{api}/healthz")[0] == 200 and get(metrics)[0] == 200

        private_pg.kill()  # every session gone at once, as `pg_ctl stop -m immediate`
        status, _took, body = get(f"{api}/healthz")
        assert status == 503, body
        assert json.loads(body)["components"]["store"]["status"] == "down", body
        # a scrape does not wait for the store: it answers at once, without the store's
        # families, and says the store is out of reach
        for _ in range(2):  # (without RECONNECT_SECONDS, these made the first request after
            status, took, body = get(metrics)  # the return wait 3.3 s: 3 runs of 3)
            assert status == 200 and took < 3.0, (status, took, body[:300])
            assert b"cloudkernel_store_reachable 0.0" in body, body.decode()[-1500:]
            assert b"cloudkernel_log_head" not in body
            assert b"process_cpu_seconds_total" in body

        private_pg.start()
        # the pools' watch replaces their dead connections meanwhile; a replacement that
        # failed during the outage does not wait out a backoff (1, 2, 4... s) first
        time.sleep(3)
        for url in (metrics, f"{api}/healthz", metrics, f"{api}/healthz"):
            status, took, body = get(url)
            assert status == 200 and took < 2.0, (url, status, took, body[:300],
                                                  log.read_text()[-2000:])
        body = get(metrics)[2]
        assert b"cloudkernel_store_reachable 1.0" in body and b"cloudkernel_log_head" in body
    finally:
        proc.terminate()
        proc.wait(30)
