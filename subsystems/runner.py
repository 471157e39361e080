"""Turn one step message into one verdict: run the handler, build the outcome, say ack or term.

This is the synchronous half of the worker runtime: it decodes, dispatches to the plugin and
encodes, and never raises. The asynchronous half (`gateways.stream.worker`) moves the bytes and
carries out the verdict: publish the outcome, then ack or term the step message.

Error codes of outcomes made here (a StepFailedError brings its own code):

| code                | retryable | disposal | when                                              |
|---------------------|-----------|----------|---------------------------------------------------|
| `bad_message`       | no        | term     | the message is not a StepMessage (ids recovered)  |
| `unknown_action`    | no        | term     | another subsystem, or an action the plugin lacks |
| `bad_args`          | no        | term     | args do not match the action's argument type      |
| `deadline_exceeded` | yes       | ack      | the deadline passed before the step started       |
| `handler_error`     | yes       | ack      | the handler raised something else (a plugin bug) |
| `bad_result`        | no        | ack      | the handler's result cannot be encoded to JSON    |
| `unsettled`         | yes       | ack      | a step settler raised (`base.step_settlers`)      |

After the handler, whatever it returned or raised, the step settlers run in the same thread
(`subsystems.base.settle_step`): the simulated hosts' state is written through to disk there,
so that no outcome reports a change a kill of the worker could lose.

A step published by a kernel at an epoch older than one this runner has seen for the same
partition comes from a deposed owner (`kernel.leases`): it is terminated without an outcome
and counted (`refused_epoch`); the partition's new owner publishes what is still in flight.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec

from aggregates.errors import StepFailedError
from kernel.contracts.steps import NULL, StepMessage, StepOutcome, step_decoder
from subsystems.base import (
    Handler,
    NoAnswer,
    StepContext,
    Subsystem,
    action_table,
    as_utc,
    settle_step,
)

__all__ = ["Disposal", "StepRunner", "Verdict"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class Disposal(enum.Enum):
    """What to do with the step message once the outcome (if any) is stored."""

    ACK = "ack"
    TERM = "term"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome to publish (None: publish nothing) and how to dispose of the message."""

    disposal: Disposal
    outcome: StepOutcome | None
    reason: str = ""


class _StepIds(msgspec.Struct):
    """The least a message must carry for a failure to be reported against its step."""

    step_id: UUID
    operation_id: UUID
    attempt: int


_ids_decoder = msgspec.json.Decoder(_StepIds)
_result_encoder = msgspec.json.Encoder()


class StepRunner:
    """Runs the steps of one subsystem; thread-safe if the plugin is."""

    def __init__(self, subsystem: Subsystem, *, worker: str = "",
                 clock: Clock = lambda: datetime.now(UTC)) -> None:
        """Index the plugin's actions and build one argument decoder per action."""
        self.subsystem = subsystem
        self.worker = worker
        self._clock = clock
        self._actions = action_table(subsystem)
        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {
            name: msgspec.json.Decoder(a.args_type) for name, a in self._actions.items()
        }
        self._epochs: dict[int, int] = {}  # partition -> the newest epoch seen
        self._epoch_lock = threading.Lock()
        self.refused_epoch = 0

    def _current_epoch(self, step: StepMessage) -> bool:
        """Whether the step's epoch is the newest seen for its partition (and note it)."""
        with self._epoch_lock:
            seen = self._epochs.get(step.partition, 0)
            if step.epoch < seen:
                self.refused_epoch += 1
                return False
            self._epochs[step.partition] = step.epoch
            return True

    @staticmethod
    def attempt_of(data: bytes) -> tuple[UUID, int] | None:
        """The step and attempt a message carries (None: not a step message)."""
        try:
            ids = _ids_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        return ids.step_id, ids.attempt

    @property
    def kinds(self) -> list[str]:
        """The step kinds this runner performs."""
        return sorted(f"{self.subsystem.name}.{a}" for a in self._actions)

    def run(self, data: bytes, *, delivery: int = 1) -> Verdict:
        """Perform the step encoded in `data`; never raises."""
        try:
            step = step_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return self._undecodable(data, str(e))
        if step.epoch and not self._current_epoch(step):
            return Verdict(Disposal.TERM, None,
                           f"stale_epoch: step {step.step_id} attempt {step.attempt} comes from "
                           f"epoch {step.epoch} of partition {step.partition}, and epoch "
                           f"{self._epochs.get(step.partition)} was seen")
        act = self._actions.get(step.action) if step.subsystem == self.subsystem.name else None
        if act is None:
            return self._fail(step, "unknown_action", Disposal.TERM,
                              f"no handler for step kind {step.subsystem}.{step.action} in "
                              f"subsystem {self.subsystem.name!r}")
        try:
            args = self._decoders[step.action].decode(step.args)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return self._fail(step, "bad_args", Disposal.TERM,
                              f"arguments of {step.subsystem}.{step.action}: {e}")
        if step.deadline_at is not None and as_utc(step.deadline_at) <= self._clock():
            return self._fail(step, "deadline_exceeded", Disposal.ACK,
                              f"deadline {step.deadline_at.isoformat()} passed before the step "
                              "started", retryable=True)
        ctx = StepContext(
            step_id=step.step_id, operation_id=step.operation_id, attempt=step.attempt,
            subsystem=step.subsystem, action=step.action, deadline_at=step.deadline_at,
            compensation=step.compensation, delivery=delivery,
        )
        verdict = self._perform(act.handler, step, ctx, args)
        try:
            settle_step()
        except Exception as e:  # the change may not outlive this process: do not report it
            log.exception("step %s (%s.%s attempt %s): not settled", step.step_id,
                          step.subsystem, step.action, step.attempt)
            return self._fail(step, "unsettled", Disposal.ACK,
                              f"what the step changed could not be made durable: "
                              f"{type(e).__name__}: {e}", retryable=True)
        return verdict

    def _perform(self, handler: Handler, step: StepMessage, ctx: StepContext,
                 args: Any) -> Verdict:
        """Run the handler and turn what it returned or raised into a verdict."""
        try:
            result = handler(ctx, args)
        except NoAnswer:
            return Verdict(Disposal.ACK, None, "the handler withheld its outcome (NoAnswer)")
        except StepFailedError as e:
            return self._fail(step, e.code, Disposal.ACK, str(e), retryable=e.retryable)
        except Exception as e:
            log.exception("step %s (%s.%s attempt %s): handler raised", step.step_id,
                          step.subsystem, step.action, step.attempt)
            return self._fail(step, "handler_error", Disposal.ACK,
                              f"{type(e).__name__}: {e}", retryable=True)
        try:
            raw = NULL if result is None else msgspec.Raw(_result_encoder.encode(result))
        except (TypeError, msgspec.EncodeError) as e:
            return self._fail(step, "bad_result", Disposal.ACK,
                              f"result of {step.subsystem}.{step.action} is not JSON: {e}")
        return Verdict(Disposal.ACK, StepOutcome(
            step_id=step.step_id, operation_id=step.operation_id, attempt=step.attempt,
            subsystem=self.subsystem.name, ok=True, result=raw, worker=self.worker,
        ))

    def _fail(self, step: StepMessage | _StepIds, code: str, disposal: Disposal, message: str,
              *, retryable: bool = False) -> Verdict:
        outcome = StepOutcome(
            step_id=step.step_id, operation_id=step.operation_id, attempt=step.attempt,
            subsystem=self.subsystem.name, ok=False, error_code=code, message=message,
            retryable=retryable, worker=self.worker,
        )
        return Verdict(disposal, outcome, f"{code}: {message}")

    def _undecodable(self, data: bytes, error: str) -> Verdict:
        """Report against the step when its ids can be read; otherwise only term it."""
        try:
            ids = _ids_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return Verdict(Disposal.TERM, None, f"bad_message: not a step message: {error}")
        return self._fail(ids, "bad_message", Disposal.TERM, f"not a step message: {error}")
