"""Wire contracts between the kernel and subsystem workers: steps out, outcomes back.

Frozen msgspec Structs; a new field gets a default and a field is never renamed. The step's
arguments travel as the raw JSON of the plugin's own argument Struct, which the worker decodes
with the type the plugin declares for that action.
"""

from datetime import datetime
from uuid import UUID

import msgspec

STEPS_STREAM = "STEPS"
RESULTS_STREAM = "RESULTS"
STEPS_SUBJECTS = "steps.>"
RESULTS_SUBJECTS = "results.>"
RESULTS_CONSUMER = "kernel-results"
NULL = msgspec.Raw(b"null")
# Read-only actions a worker also answers as a plain NATS request on
# `queries.<subsystem>.<action>` (a StepMessage in, its StepOutcome back): they change
# nothing, so they need neither the log nor JetStream's redelivery.
QUERY_ACTIONS = frozenset({"inventory"})


class StepMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of one step, as published on `steps.<subsystem>.<action>`."""

    step_id: UUID
    operation_id: UUID
    attempt: int
    subsystem: str
    action: str
    args: msgspec.Raw = NULL
    deadline_at: datetime | None = None
    compensation: bool = False
    # several kernels: the operation's partition and the epoch its owner published at (a
    # worker refuses an epoch older than one it saw for the partition); -1 and 0: one kernel
    partition: int = -1
    epoch: int = 0

    @property
    def msg_id(self) -> str:
        """The JetStream dedup id: one per step attempt (and per epoch: a new owner's
        publication of an attempt is not a repeat of its deposed predecessor's)."""
        base = msg_id(self.step_id, self.attempt)
        return f"{base}:e{self.epoch}" if self.epoch else base

    @property
    def subject(self) -> str:
        """Where the step is published."""
        return step_subject(self.subsystem, self.action)


class StepOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker reports for a step attempt, on `results.<subsystem>`."""

    step_id: UUID
    operation_id: UUID
    attempt: int
    subsystem: str
    ok: bool
    result: msgspec.Raw = NULL
    error_code: str = ""
    message: str = ""
    retryable: bool = False
    worker: str = ""

    @property
    def msg_id(self) -> str:
        """The JetStream dedup id: one per step attempt."""
        return msg_id(self.step_id, self.attempt)


def msg_id(step_id: UUID, attempt: int) -> str:
    """`<step id>:<attempt>`, the Nats-Msg-Id of a step attempt and of its outcome."""
    return f"{step_id}:{attempt}"


def step_subject(subsystem: str, action: str) -> str:
    """`steps.<subsystem>.<action>`."""
    return f"steps.{subsystem}.{action}"


def result_subject(subsystem: str) -> str:
    """`results.<subsystem>`."""
    return f"results.{subsystem}"


def query_subject(subsystem: str, action: str) -> str:
    """`queries.<subsystem>.<action>`: where a worker answers a read-only action."""
    return f"queries.{subsystem}.{action}"


def worker_consumer(subsystem: str) -> str:
    """The durable consumer that all workers of one subsystem share."""
    return f"worker-{subsystem}"


step_encoder = msgspec.json.Encoder()
step_decoder = msgspec.json.Decoder(StepMessage)
outcome_decoder = msgspec.json.Decoder(StepOutcome)
