"""Every PostgreSQL connection pool of the process, checked every few seconds.

A PostgreSQL that restarts (a crash, a failover to a standby) kills every connection the pools
hold. Each pool checks a connection as it hands it out (`POSTGRES_PRE_PING`), but a pool that
meets several dead ones in a row backs off between them (1 s, 2 s, 4 s...): a request after the
restart waited 30 s (an API's /metrics). So a daemon thread checks the idle connections of
every pool it was given (`watch`) every `INTERVAL` seconds, replacing the dead ones: within a
few seconds of the server's return every pool holds live connections again. A check costs an
empty statement per idle connection.

A replacement that fails is tried again after 1 s, 2 s, 4 s... (psycopg_pool's backoff), so
the longer the server was gone (or the more often a request or a scrape met the dead pool
meanwhile), the longer the pool waited after its return: 3.3 s after a few scrapes in a 1 s
outage, up to minutes after a long one. A watched pool gives a replacement up after
`RECONNECT_SECONDS` instead; the next request, or the next check here, starts a fresh attempt
that connects at once. The pool's recovery no longer depends on how long the outage lasted.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from typing import Any

__all__ = ["INTERVAL", "RECONNECT_SECONDS", "watch"]

INTERVAL = 2.0
RECONNECT_SECONDS = 2.0
log = logging.getLogger(__name__)
_pools: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
_thread: threading.Thread | None = None


def watch(datastore: Any) -> None:
    """Check the pool of `datastore` (an eventsourcing PostgresDatastore) from now on."""
    pool = getattr(datastore, "pool", None)
    if pool is None or not hasattr(pool, "check"):
        return
    if getattr(pool, "reconnect_timeout", 0) > RECONNECT_SECONDS:
        pool.reconnect_timeout = RECONNECT_SECONDS
    global _thread
    with _lock:
        _pools.add(pool)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="pool-watch", daemon=True)
            _thread.start()


def _run() -> None:
    stop = threading.Event()
    while not stop.wait(INTERVAL):
        with _lock:
            pools = list(_pools)
        for pool in pools:
            if getattr(pool, "closed", False):
                continue
            with contextlib.suppress(Exception):  # closed meanwhile, or the server is down
                pool.check()
