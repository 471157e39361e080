"""The webhook service: intake from EVENTS and the HTTP sender, on one event loop.

The store is synchronous; every call to it goes through one bounded executor here.
"""

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp

from gateways.stream.relay import ensure_events_stream
from gateways.webhooks.intake import Intake, ensure_webhooks_consumer
from gateways.webhooks.model import RetryPolicy
from gateways.webhooks.sender import Sender
from gateways.webhooks.store import WebhookStore
from kernel.contracts.connection import connect

log = logging.getLogger(__name__)


class WebhookService:
    """Turns public events into signed HTTP deliveries until told to stop."""

    def __init__(self, store: WebhookStore, servers: Sequence[str], *,
                 policy: RetryPolicy | None = None, concurrency: int = 16,
                 timeout: float = 10.0, poll: float = 1.0, intake_batch: int = 256,
                 ack_wait: float = 30.0, connect_timeout: float = 10.0,
                 replicas: int = 1) -> None:
        self.store, self.servers, self.replicas = store, list(servers), replicas
        self.policy = policy or RetryPolicy()
        self.ack_wait, self.intake_batch = ack_wait, intake_batch
        self.connect_timeout = connect_timeout
        self.ready = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self.sender = Sender(store, self._call, policy=self.policy, concurrency=concurrency,
                             timeout=timeout, poll=poll)
        self.intake = Intake(store, self._call, batch=intake_batch, poll=poll,
                             on_recorded=self.sender.wake)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        assert self._executor is not None, "the service is not running"
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    @property
    def stats(self) -> dict[str, int]:
        """What the intake recorded and the sender did so far."""
        return {**{f"intake_{k}": v for k, v in self.intake.stats.items()}, **self.sender.stats}

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; `ready` is set once both loops run."""
        nc = await connect(self.servers, name="cloudkernel-webhooks",
                           timeout=self.connect_timeout)
        # Intake and sender each hold at most one call, plus the sender's webhook tasks.
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="webhooks-store")
        try:
            js = nc.jetstream(timeout=10)
            await ensure_events_stream(js, replicas=self.replicas)
            await ensure_webhooks_consumer(js, ack_wait=self.ack_wait,
                                           max_ack_pending=self.intake_batch)
            async with aiohttp.ClientSession() as session:
                inner = asyncio.Event()
                tasks = [asyncio.create_task(self.intake.run(js, inner)),
                         asyncio.create_task(self.sender.run(session, inner))]
                self.ready.set()
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                inner.set()  # a loop that ended on its own failed: stop the other one too
                for r in await asyncio.gather(*tasks, return_exceptions=True):
                    if isinstance(r, BaseException):
                        raise r
        finally:
            # close, not drain: see kernel_runner; every ack owed is already sent.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)
            self._executor.shutdown(wait=True)
            self._executor = None
            log.info("webhooks: stopped (%s)", self.stats)
