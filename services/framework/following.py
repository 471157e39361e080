"""Following public events without a durable consumer: a registration's state, an operation's end.

Both read the EVENTS stream through ordered (ephemeral, in-order, no-ack) consumers: they hold
nothing on the server after they stop.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from kernel.contracts.connection import sleep_unless_stopped
from kernel.contracts.events import EVENTS_STREAM, ORIGINATOR_VERSION, SUBJECT_PREFIX
from services.framework.wire import OperationOutcome, ServiceEvent

log = logging.getLogger(__name__)

REGISTRATION_SUBJECTS = SUBJECT_PREFIX + "service_registration.>"
# The operation's terminal events, and the status each one means.
TERMINAL = {"operation.Succeeded": "Succeeded", "operation.Failed": "Failed",
            "operation.RolledBack": "Compensated", "operation.Cancelled": "Cancelled"}

# The registration state each event leaves (Updated: as it was, unless deregistered).
_STATE_AFTER = {"service_registration.Registered": "Enabled",
                "service_registration.Enabled": "Enabled",
                "service_registration.Disabled": "Disabled",
                "service_registration.Deregistered": "Deregistered"}


class RegistrationFollower:
    """Keeps one registration's state current from its public events."""

    def __init__(self, registration_id: UUID,
                 on_change: Callable[[str, str], None]) -> None:
        self.registration_id = registration_id
        self.on_change = on_change  # (new state, disabled reason or "")
        self.state, self.reason = "Unknown", ""
        self.version = 0
        self.ready = asyncio.Event()

    def known(self, state: str, version: int) -> None:
        """What a command's reply said; older events are ignored from now on."""
        if version > self.version:
            self.version, self.state = version, state
            self.on_change(state, "")

    def apply(self, event: ServiceEvent) -> None:
        """Apply one registration event if it is about this registration and newer."""
        if event.originator_id != self.registration_id:
            return
        version = int(event.headers.get(ORIGINATOR_VERSION, "0"))
        if version <= self.version:
            return
        self.version = version
        state = _STATE_AFTER.get(event.topic)
        if state is None:  # Updated
            state = "Enabled" if self.state == "Deregistered" else self.state
        if state != "Disabled":
            self.reason = ""
        elif event.topic.endswith(".Disabled"):
            self.reason = str(event.data().get("reason", ""))
        self.state = state
        self.on_change(state, self.reason)

    async def run(self, js: JetStreamContext, stop: asyncio.Event,
                  retry_seconds: float = 1.0) -> None:
        """Follow until `stop` is set (waiting for the stream if it does not exist yet)."""

        async def on_msg(msg: Msg) -> None:
            try:
                self.apply(ServiceEvent.from_msg(msg))
            except Exception:
                log.exception("service: cannot apply registration event on %s", msg.subject)

        sub = None
        while sub is None and not stop.is_set():
            try:
                sub = await js.subscribe(REGISTRATION_SUBJECTS, stream=EVENTS_STREAM, cb=on_msg,
                                         ordered_consumer=True,
                                         deliver_policy=DeliverPolicy.ALL)
            except Exception as e:
                log.info("service: cannot follow %s yet (%s); retrying",
                         REGISTRATION_SUBJECTS, type(e).__name__)
                await sleep_unless_stopped(stop, retry_seconds)
        if sub is None:
            return
        self.ready.set()
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def wait_for_operation(js: JetStreamContext, operation_id: UUID, *, timeout: float,
                             since: datetime | None = None) -> OperationOutcome:
    """Wait until the operation's terminal event is in the stream; TimeoutError otherwise.

    `since` (when the command that started it was sent) skips older history; without it the
    stream's operation endings are read from the start.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[OperationOutcome] = loop.create_future()

    async def on_msg(msg: Msg) -> None:
        if done.done():
            return
        try:
            event = ServiceEvent.from_msg(msg)
        except (KeyError, ValueError):
            return
        if event.originator_id != operation_id or event.topic not in TERMINAL:
            return
        data = event.data() if event.topic == "operation.Failed" else {}
        done.set_result(OperationOutcome(
            operation_id=operation_id, status=TERMINAL[event.topic], position=event.position,
            error_code=data.get("error_code"), message=data.get("message")))

    config = ConsumerConfig(filter_subjects=[SUBJECT_PREFIX + t for t in TERMINAL])
    if since is not None:
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        config.opt_start_time = since.astimezone(UTC)
    sub = await js.subscribe(SUBJECT_PREFIX + "operation.>", stream=EVENTS_STREAM, cb=on_msg,
                             ordered_consumer=True, config=config)
    try:
        return await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise TimeoutError(f"operation {operation_id} did not end within {timeout:g}s") from None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
