"""The JetStream streams the kernel and the workers share, created if missing.

Every stream of the platform is made through `ensure_stream`, with the replica count of the
setting `nats_replicas`: on a NATS cluster each stream is then held by that many nodes, and a
stream found with another count (made before the setting changed) is brought to it.
"""

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from kernel.contracts.connection import sleep_unless_stopped
from kernel.contracts.steps import (
    RESULTS_CONSUMER,
    RESULTS_STREAM,
    RESULTS_SUBJECTS,
    STEPS_STREAM,
    STEPS_SUBJECTS,
    worker_consumer,
)

DUPLICATE_WINDOW_S = 600.0
log = logging.getLogger(__name__)


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream `config` names unless it exists; one that exists keeps its config,
    except its replica count, which is brought to `config`'s."""
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    have = info.config.num_replicas or 1
    if have != config.num_replicas:
        log.warning("stream %s has %d replica(s); setting nats_replicas asks for %d: updating",
                    config.name, have, config.num_replicas)
        await js.update_stream(dataclasses.replace(info.config,
                                                   num_replicas=config.num_replicas))


async def ensure_streams(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the STEPS and RESULTS work-queue streams unless they exist."""
    for name, subjects in ((STEPS_STREAM, STEPS_SUBJECTS), (RESULTS_STREAM, RESULTS_SUBJECTS)):
        await ensure_stream(js, StreamConfig(
            name=name, subjects=[subjects], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=replicas,
        ))


async def ensure_worker_consumer(js: JetStreamContext, subsystem: str, *, ack_wait: float = 30,
                                 max_ack_pending: int = 1024) -> str:
    """The durable pull consumer all workers of `subsystem` share; returns its name."""
    name = worker_consumer(subsystem)
    try:
        await js.consumer_info(STEPS_STREAM, name)
    except NotFoundError:
        await js.add_consumer(STEPS_STREAM, ConsumerConfig(
            durable_name=name, filter_subject=f"steps.{subsystem}.>",
            ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait, max_ack_pending=max_ack_pending, max_deliver=-1,
        ))
    return name


async def ensure_results_consumer(js: JetStreamContext, *, ack_wait: float = 30,
                                  max_ack_pending: int = 8192) -> str:
    """The kernel's durable pull consumer of every outcome."""
    try:
        await js.consumer_info(RESULTS_STREAM, RESULTS_CONSUMER)
    except NotFoundError:
        await js.add_consumer(RESULTS_STREAM, ConsumerConfig(
            durable_name=RESULTS_CONSUMER, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, ack_wait=ack_wait,
            max_ack_pending=max_ack_pending, max_deliver=-1,
        ))
    return RESULTS_CONSUMER


T = TypeVar("T")


async def when_ready(make: Callable[[], Awaitable[T]], stop: asyncio.Event, who: str) -> T:
    """`make()` (binding or ensuring streams), again until it works: a NATS cluster electing
    a stream's leader (a node lost) answers late or 503 for a while, and a process started
    then must wait, not die. Raises once `stop` is set."""
    delay = 0.5
    while True:
        try:
            return await make()
        except Exception as e:
            if stop.is_set():
                raise
            logging.getLogger(__name__).warning(
                "%s: streams not ready (%s: %s); trying again in %.1f s",
                who, type(e).__name__, e, delay)
            await sleep_unless_stopped(stop, delay)
            delay = min(delay * 2, 5.0)
