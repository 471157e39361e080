"""Every PostgreSQL connection pool of the process, checked every few seconds.

A PostgreSQL that restarts (a crash, a failover to a standby) kills every connection the pools
hold. Each pool checks a connection as it hands it out (`POSTGRES_PRE_PING`), but a pool that
meets several dead ones in a row backs off between them (1 s, 2 s, 4 s...): a request after the
restart waited 30 s (an API's /metrics). So a daemon thread checks the idle connections of
every pool it was given (`watch`) every `INTERVAL` seconds, replacing the dead ones: within a
few seconds of the server's return every pool holds live connections again. A check costs an
empty statement per idle connection.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from typing import Any

__all__ = ["INTERVAL", "watch"]

INTERVAL = 2.0
log = logging.getLogger(__name__)
_pools: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
_thread: threading.Thread | None = None


def watch(datastore: Any) -> None:
    """Check the pool of `datastore` (an eventsourcing PostgresDatastore) from now on."""
    pool = getattr(datastore, "pool", None)
    if pool is None or not hasattr(pool, "check"):
        return
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
