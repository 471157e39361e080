"""Read-only steps as NATS requests: a worker answers them, the reality checker asks.

A query is a `StepMessage` of an action in `QUERY_ACTIONS`, sent as a core NATS request to
`queries.<subsystem>.<action>`; the worker runs it through its ordinary `StepRunner` (the same
decoding, handler and error codes as a step from JetStream) and replies with the
`StepOutcome`. The workers of a subsystem answer in one queue group, so one of them answers.
Nothing is logged or stored: a lost answer is asked again, and a query changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import TypeVar
from uuid import uuid4

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from aggregates.errors import StepFailedError
from kernel.contracts.steps import (
    QUERY_ACTIONS,
    StepMessage,
    outcome_decoder,
    query_subject,
    step_encoder,
    worker_consumer,
)
from subsystems.runner import StepRunner

__all__ = ["ask", "serve_queries"]

log = logging.getLogger(__name__)
R = TypeVar("R")
_encode = msgspec.json.Encoder().encode


async def serve_queries(nc: Client, runner: StepRunner, pool: Executor) -> list[Subscription]:
    """Answer the runner's read-only actions on `queries.<subsystem>.<action>` (none when the
    plugin has no such action)."""
    name = runner.subsystem.name
    subs = []
    for kind in runner.kinds:
        action = kind.split(".", 1)[1]
        if action not in QUERY_ACTIONS:
            continue

        async def answer(msg: Msg) -> None:
            verdict = await asyncio.get_running_loop().run_in_executor(pool, runner.run,
                                                                        msg.data)
            if verdict.outcome is not None and msg.reply:
                await msg.respond(_encode(verdict.outcome))

        subs.append(await nc.subscribe(query_subject(name, action), queue=worker_consumer(name),
                                       cb=answer))
    if subs:  # the server has the subscriptions before the worker says it is ready
        await nc.flush()
    return subs


async def ask(nc: Client, subsystem: str, action: str, args: msgspec.Struct,
              result_type: type[R], *, timeout: float = 10.0) -> R:
    """Ask a worker of `subsystem` to perform a read-only action; its result, or
    StepFailedError (retryable when no worker answered in time, or the host could not be
    reached)."""
    if action not in QUERY_ACTIONS:
        raise ValueError(f"{subsystem}.{action} is not a read-only action")
    step = StepMessage(step_id=uuid4(), operation_id=uuid4(), attempt=1, subsystem=subsystem,
                       action=action, args=msgspec.Raw(step_encoder.encode(args)))
    try:
        reply = await nc.request(query_subject(subsystem, action), step_encoder.encode(step),
                                 timeout=timeout)
    except Exception as e:  # no responders, a timeout: the worker is not there
        raise StepFailedError(f"no {subsystem} worker answered {subsystem}.{action} within "
                              f"{timeout:g}s ({type(e).__name__})", retryable=True,
                              code="no_worker") from e
    outcome = outcome_decoder.decode(reply.data)
    if not outcome.ok:
        raise StepFailedError(f"{subsystem}.{action}: {outcome.message}",
                              retryable=outcome.retryable, code=outcome.error_code)
    return msgspec.json.decode(outcome.result, type=result_type)
