"""Answering core NATS requests with blocking work: what the command intake and the ACL
responder share.

Requests on the subjects (in a queue group, so several processes share the load) are answered
by a synchronous `answer(msg)` run in the caller's bounded thread pool, at most
`max_in_flight` at once: waiting for a slot holds back the subscription, so a flood queues in
NATS's pending limits, not in this process's memory. When the pool is gone (shutting down),
`failed(error, msg)` still gives an answer. On stop, the subscriptions end, the requests in
flight are answered (up to `drain_timeout`), and the pool is shut down.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from nats.aio.msg import Msg

from kernel.contracts.connection import connect

log = logging.getLogger(__name__)

# an answer: its bytes and its headers (None: no headers)
Answer = tuple[bytes, Mapping[str, str] | None]


async def answer_requests(*, servers: Sequence[str], name: str, subjects: Sequence[str],
                          queue: str, executor: ThreadPoolExecutor,
                          answer: Callable[[Msg], Answer],
                          failed: Callable[[Exception, Msg], Answer],
                          stop: asyncio.Event, ready: asyncio.Event, max_in_flight: int,
                          drain_timeout: float = 30.0,
                          dropped: Callable[[Msg], None] | None = None) -> None:
    """Answer requests on `subjects` until `stop` is set; `dropped(msg)` is told of a message
    that has no reply subject (nothing can answer it)."""
    nc = await connect(servers, name=name)
    slots = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()

    async def serve(msg: Msg) -> None:
        try:
            if not msg.reply:
                if dropped is not None:
                    dropped(msg)
                return
            loop = asyncio.get_running_loop()
            try:
                data, headers = await loop.run_in_executor(executor, answer, msg)
            except Exception as e:  # the pool is gone (shutting down): still answer
                data, headers = failed(e, msg)
            await nc.publish(msg.reply, data, headers=dict(headers) if headers else None)
        except Exception:
            log.exception("%s: could not answer a request on %s", name, msg.subject[:140])
        finally:
            slots.release()

    async def on_request(msg: Msg) -> None:
        await slots.acquire()
        task = asyncio.create_task(serve(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        subs = [await nc.subscribe(s, queue=queue, cb=on_request) for s in subjects]
        await nc.flush()
        log.info("%s: answering %s (queue %s)", name, ", ".join(subjects), queue)
        ready.set()
        await stop.wait()
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if tasks:
            await asyncio.wait(set(tasks), timeout=drain_timeout)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)
        executor.shutdown(wait=True)
