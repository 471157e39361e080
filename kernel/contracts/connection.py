"""Connecting to NATS, the same way for the kernel and the workers."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import nats
from nats.aio.client import Client

from aggregates.errors import ConfigError

log = logging.getLogger(__name__)
Callback = Callable[[], Awaitable[None]]


async def connect(servers: Sequence[str], *, name: str, timeout: float = 10.0,
                  disconnected_cb: Callback | None = None,
                  reconnected_cb: Callback | None = None) -> Client:
    """Connect within `timeout`, then reconnect forever while running.

    nats-py retries the initial connect too (forever with max_reconnect_attempts=-1), so the
    first connect is bounded here and fails with a ConfigError naming the servers.
    """
    nc = Client()

    async def on_error(e: Exception) -> None:
        log.warning("nats: %s: %s", type(e).__name__, e)

    try:
        await asyncio.wait_for(nc.connect(
            servers=list(servers), name=name,
            connect_timeout=max(1, int(min(timeout, 5))), reconnect_time_wait=1,
            max_reconnect_attempts=-1, error_cb=on_error, disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
        ), timeout)
    except (TimeoutError, OSError, nats.errors.Error) as e:
        with contextlib.suppress(Exception):
            await nc.close()
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise ConfigError(f"cannot connect to NATS at {', '.join(servers)} within "
                          f"{timeout:g}s (setting nats_urls or --nats-url): {why}") from e
    return nc


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
