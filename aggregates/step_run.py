"""How an operation's steps fare: every attempt, its outcome, and what the dispatcher is told."""

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from uuid import UUID

import msgspec

from aggregates.plan import PlannedStep, RetryPolicy, compensation_id

DEADLINE_EXCEEDED = "deadline_exceeded"


class Phase(Enum):
    """Whether a step moves the operation forward or undoes a forward step."""

    FORWARD = "forward"
    COMPENSATION = "compensation"


class StepStatus(Enum):
    """Where a step is. A finished operation may leave steps Pending or RetryWait: they
    never run again."""

    PENDING = "Pending"
    IN_FLIGHT = "InFlight"
    RETRY_WAIT = "RetryWait"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class AttemptOutcome(Enum):
    """How one attempt ended."""

    IN_FLIGHT = "InFlight"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One try of a step: when it was dispatched, its deadline, and how it ended."""

    number: int
    dispatched_at: datetime
    deadline_at: datetime
    outcome: AttemptOutcome = AttemptOutcome.IN_FLIGHT
    finished_at: datetime | None = None
    error_code: str = ""
    message: str = ""
    retryable: bool = False
    retry_at: datetime | None = None
    args: msgspec.Raw | None = None  # bound at dispatch; None: the plan's arguments


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """Why an operation failed: the step (or compensation) and its last error; no step when
    it was refused before any ran."""

    step_id: UUID | None
    phase: Phase | None
    error_code: str
    message: str


class ReadyStep(msgspec.Struct, frozen=True, kw_only=True):
    """A step the dispatcher may dispatch now, and the attempt that would be."""

    step_id: UUID
    phase: Phase
    attempt: int
    subsystem: str
    action: str


class StepDispatch(msgspec.Struct, frozen=True, kw_only=True):
    """A dispatched attempt: everything needed to publish it (again, after a restart)."""

    operation_id: UUID
    step_id: UUID
    phase: Phase
    attempt: int
    deadline_at: datetime
    subsystem: str
    action: str
    args: msgspec.Raw
    compensates: UUID | None = None

    @property
    def message_id(self) -> str:
        """The JetStream dedup id of this attempt."""
        return f"{self.step_id}:{self.attempt}"


@dataclass(slots=True)
class StepRun:
    """The life of one forward step or compensation inside an operation."""

    step_id: UUID
    phase: Phase
    subsystem: str
    action: str
    args: msgspec.Raw
    retry: RetryPolicy
    deadline_seconds: float
    depends_on: tuple[UUID, ...] = ()
    compensates: UUID | None = None  # for a compensation: the forward step it undoes
    compensation_id: UUID | None = None  # for a forward step: its compensation, if any
    status: StepStatus = StepStatus.PENDING
    attempts: list[Attempt] = field(default_factory=list)
    retry_at: datetime | None = None
    result: msgspec.Raw | None = None
    start_after_seconds: float = 0.0  # after the operation started; forward steps only
    irreversible: bool = False  # once dispatched, the operation cannot be cancelled

    @classmethod
    def forward(cls, step: PlannedStep) -> "StepRun":
        """The run of a planned forward step."""
        return cls(step_id=step.step_id, phase=Phase.FORWARD, subsystem=step.subsystem,
                   action=step.action, args=step.args, retry=step.retry,
                   deadline_seconds=step.deadline_seconds, depends_on=step.depends_on,
                   compensation_id=step.compensation_id,
                   start_after_seconds=step.start_after_seconds,
                   irreversible=step.irreversible)

    @classmethod
    def compensating(cls, step: PlannedStep) -> "StepRun":
        """The run of a planned step's compensation."""
        comp = step.compensation
        assert comp is not None
        return cls(step_id=compensation_id(step.step_id), phase=Phase.COMPENSATION,
                   subsystem=comp.subsystem, action=comp.action, args=comp.args,
                   retry=comp.retry, deadline_seconds=comp.deadline_seconds,
                   compensates=step.step_id)

    @property
    def next_attempt(self) -> int:
        """The number the next dispatch gets."""
        return len(self.attempts) + 1

    def is_current(self, attempt: int) -> bool:
        """Whether `attempt` is in flight now (only its report counts)."""
        return self.status is StepStatus.IN_FLIGHT and self.attempts[-1].number == attempt

    def finish_attempt(self, finished: Attempt) -> None:
        """Replace the in-flight attempt by its finished record."""
        self.attempts[-1] = finished
