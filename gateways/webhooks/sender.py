"""The sender: POSTs due deliveries, signed, in log order per webhook, retrying with backoff.

Order: a webhook has at most one delivery in flight, and it is always the oldest pending one
(lowest log position). While it waits for a retry, the webhook's later events wait too, so an
endpoint sees one webhook's events in log order. A dead delivery stops blocking: the queue goes
on past it, and a redelivered dead one is sent again out of that order.

Isolation: each webhook is drained by its own task and at most `concurrency` attempts run at
once, one slot per attempt, so one slow or failing endpoint holds at most one slot and never
stalls the others, and webhooks with long queues take turns.

Outcome of an attempt: a 2xx answer delivers it. Anything else (another status, a redirect,
a timeout, a refused connection) is a failed attempt, recorded with its status or error; the
delivery is tried again after the policy's backoff, or is dead after `max_attempts` attempts or
`max_age` seconds. A crash mid-attempt leaves the delivery claimed until its lease ends, then it
is sent again: delivery is at-least-once, and Cloudkernel-Delivery-Id is stable for dedup.
"""

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from gateways.webhooks.model import Outgoing, RetryPolicy, Status
from gateways.webhooks.signing import signature_header
from gateways.webhooks.store import WebhookStore
from kernel.contracts.connection import sleep_unless_stopped

log = logging.getLogger(__name__)
StoreCall = Callable[..., Awaitable[Any]]
USER_AGENT = "cloudkernel-webhooks/1"


def request_headers(d: Outgoing, timestamp: int) -> dict[str, str]:
    """The headers of one attempt, signature included."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Cloudkernel-Webhook-Id": d.webhook_id,
        "Cloudkernel-Delivery-Id": d.id,
        "Cloudkernel-Subject": d.subject,
        "Cloudkernel-Position": str(d.position),
        "Cloudkernel-Timestamp": str(timestamp),
        "Cloudkernel-Signature": signature_header(d.secret, timestamp, d.body),
    }


class Sender:
    """Drains each webhook's queue in its own task, with bounded concurrency across webhooks."""

    def __init__(self, store: WebhookStore, call: StoreCall, *, policy: RetryPolicy,
                 concurrency: int = 16, timeout: float = 10.0, poll: float = 1.0,
                 page: int = 50) -> None:
        self.store, self.call, self.policy = store, call, policy
        self.concurrency, self.timeout, self.poll, self.page = concurrency, timeout, poll, page
        # Long enough to cover one attempt; a crashed sender's claim expires after it.
        self.lease = timeout + 30.0
        self.stats = {"attempts": 0, "delivered": 0, "failed": 0, "dead": 0}
        self._wake = asyncio.Event()
        self._busy: dict[str, asyncio.Task[None]] = {}

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next poll."""
        self._wake.set()

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        """Send until `stop` is set; then let attempts in flight finish."""
        slots = asyncio.Semaphore(self.concurrency)
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    due = await self.call(self.store.due_webhooks, time.time(),
                                          self.concurrency * 4)
                except Exception as e:
                    log.warning("webhooks sender: cannot read the queue (%s: %s)",
                                type(e).__name__, e)
                    await sleep_unless_stopped(stop, min(1.0, self.poll * 4))
                    continue
                for webhook_id in due:
                    if webhook_id not in self._busy:
                        task = asyncio.create_task(self._drain(session, webhook_id, slots, stop))
                        self._busy[webhook_id] = task
                        task.add_done_callback(functools.partial(self._done, webhook_id))
                await self._idle(stop)
        finally:
            if self._busy:
                await asyncio.gather(*self._busy.values(), return_exceptions=True)

    def _done(self, webhook_id: str, _: "asyncio.Task[None]") -> None:
        self._busy.pop(webhook_id, None)
        self._wake.set()

    async def _idle(self, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _drain(self, session: aiohttp.ClientSession, webhook_id: str,
                     slots: asyncio.Semaphore, stop: asyncio.Event) -> None:
        """Send one webhook's due deliveries in order until one must wait or none is left."""
        try:
            while not stop.is_set():
                queue = await self.call(self.store.pending, webhook_id, self.page)
                for d in queue:
                    # A slot per attempt, not per queue: webhooks with long queues take turns.
                    async with slots:
                        if stop.is_set() or not await self._send(session, d):
                            return
                if len(queue) < self.page:
                    return
        except Exception:
            log.exception("webhooks sender: webhook %s: will try again", webhook_id)

    async def _send(self, session: aiohttp.ClientSession, d: Outgoing) -> bool:
        """One attempt at the head of the queue; True when the queue may go on past it."""
        now = time.time()
        if d.next_attempt_at > now or not await self.call(self.store.claim, d.id, now,
                                                          self.lease):
            return False  # waiting for its retry, or another sender has it
        timestamp = int(now)
        started = time.monotonic()
        http_status: int | None = None
        error = ""
        try:
            async with session.post(d.url, data=d.body, headers=request_headers(d, timestamp),
                                    allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                http_status = resp.status
                if not 200 <= resp.status < 300:
                    text = (await resp.content.read(200)).decode(errors="replace").strip()
                    error = f"HTTP {resp.status}" + (f": {text}" if text else "")
        except TimeoutError:
            error = f"timed out after {self.timeout:g}s"
        except (aiohttp.ClientError, OSError, ValueError) as e:
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        duration_ms = (time.monotonic() - started) * 1000
        delivered = not error
        at = time.time()
        next_at = None if delivered else self.policy.next_attempt(
            d.attempts + 1, d.round_started_at, at)
        status = await self.call(self.store.record_attempt, d.id, at=at,
                                 http_status=http_status, error=error[:500],
                                 duration_ms=duration_ms, delivered=delivered,
                                 next_attempt_at=next_at)
        self.stats["attempts"] += 1
        if status is Status.DELIVERED:
            self.stats["delivered"] += 1
        elif status is Status.DEAD:
            self.stats["dead"] += 1
            log.warning("webhooks: delivery %s (position %d) to %s is dead after %d attempts: "
                        "%s", d.id, d.position, d.url, d.attempts + 1, error)
        else:
            self.stats["failed"] += 1
        return status in (Status.DELIVERED, Status.DEAD)
