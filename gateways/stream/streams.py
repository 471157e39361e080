"""The JetStream streams the kernel and the workers share, created if missing."""

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

from kernel.contracts import (
    RESULTS_CONSUMER,
    RESULTS_STREAM,
    RESULTS_SUBJECTS,
    STEPS_STREAM,
    STEPS_SUBJECTS,
    worker_consumer,
)

DUPLICATE_WINDOW_S = 600.0


async def ensure_streams(js: JetStreamContext) -> None:
    """Create the STEPS and RESULTS work-queue streams unless they exist."""
    for name, subjects in ((STEPS_STREAM, STEPS_SUBJECTS), (RESULTS_STREAM, RESULTS_SUBJECTS)):
        try:
            await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(StreamConfig(
                name=name, subjects=[subjects], retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S,
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
