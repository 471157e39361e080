"""Operation: a cloud operation as a durable saga over a plan of steps.

The kernel never performs a step: it asks `ready_steps(now)` what to publish, records each
publication with `dispatch`, and feeds results back with `record_success` / `record_failure`
/ `deadline_passed`. Time is always passed in, and the jitter of a retry is a hash of the step
id and attempt, so a replay rebuilds exactly the same operation.

    Accepted --wait_for_entity--> Waiting --start--> Running;  Accepted --start--> Running
    Accepted/Waiting --cancel--> Cancelled
    Running --every step succeeded--> Succeeded
    Running, stopping (a step failed for good, or cancel), nothing in flight -->
        Compensating   if a step that succeeded has a compensation
        Cancelled      if cancelled, with nothing to compensate
        Failed         if a step failed, with nothing to compensate
    Compensating --every compensation succeeded--> RolledBack
    Compensating --a compensation failed for good--> Failed (the rest are not run)

Succeeded, Failed, RolledBack and Cancelled are terminal. A stopping operation dispatches no
new forward step and retries none; it waits for the steps in flight to report (or miss their
deadline), and what succeeded is then undone one compensation at a time, in reverse order of
completion. A step that never succeeded is never compensated.

A result for anything but the current in-flight attempt of a step (a duplicate, a stale
attempt, a report after the deadline was counted) changes nothing: the methods return False.
"""

from collections.abc import Iterable
from dataclasses import field
from datetime import datetime, timedelta
from enum import Enum
from uuid import UUID

import msgspec
from eventsourcing.domain import event

from aggregates.base import PlatformAggregate
from aggregates.errors import NotFoundError, ValidationError
from aggregates.plan import Plan, require_json, validate_plan
from aggregates.step_run import (
    DEADLINE_EXCEEDED,
    Attempt,
    AttemptOutcome,
    Failure,
    Phase,
    ReadyStep,
    StepDispatch,
    StepRun,
    StepStatus,
)

MAX_MESSAGE_CHARS = 2000


class OperationState(Enum):
    """Where an operation is in its life."""

    ACCEPTED = "Accepted"
    WAITING = "Waiting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    COMPENSATING = "Compensating"
    ROLLED_BACK = "RolledBack"
    CANCELLED = "Cancelled"


_S = OperationState
TERMINAL_STATES: frozenset[OperationState] = frozenset(
    {_S.SUCCEEDED, _S.FAILED, _S.ROLLED_BACK, _S.CANCELLED})
_NOT_STARTED: frozenset[OperationState] = frozenset({_S.ACCEPTED, _S.WAITING})


NO_BOUND_ARGS = msgspec.Raw(b"null")


class QueuedCommand(msgspec.Struct, frozen=True, kw_only=True):
    """The command of an operation that waits to be planned: who sent it, and the command as
    tagged JSON (the kernel decodes it when it plans the operation)."""

    actor: str
    command: msgspec.Raw


class Operation(PlatformAggregate):
    """A cloud operation (deploy a VM, say): a plan of steps run, retried and rolled back."""

    TOPIC = "operation"
    KIND = "operation"

    class Event(PlatformAggregate.Event):
        """Base of Operation events."""

        TOPIC = "operation.Event"

    class Accepted(Event, PlatformAggregate.Created):
        """A command became an operation with a validated plan."""

        TOPIC = "operation.Accepted"
        kind: str
        plan: Plan
        entity_ids: tuple[UUID, ...]
        at: datetime
        # The command of an operation accepted while its entities were busy: it is planned
        # again, on the entities as they are then, when it gets them.
        command: QueuedCommand | None = None

    class Replanned(Event):
        """An operation that waited for its entities was planned again on them as they are
        now: this plan replaces the one it was accepted with."""

        TOPIC = "operation.Replanned"
        plan: Plan
        at: datetime
        # Every entity it changes now, when the new plan needs more (it took them, free).
        entity_ids: tuple[UUID, ...] = ()
        # Its kind now, when the command planned again is another kind of operation (a
        # destroy of a VM that stopped meanwhile is its expunge): "" when unchanged.
        kind: str = ""

    class WaitingForEntity(Event):
        """The operation waits in the queue of an entity another operation holds."""

        TOPIC = "operation.WaitingForEntity"
        entity_id: UUID
        at: datetime

    class Started(Event):
        """The operation holds its entities; its steps may be dispatched."""

        TOPIC = "operation.Started"
        at: datetime

    class StepDispatched(Event):
        """An attempt of a step was handed to its subsystem."""

        TOPIC = "operation.StepDispatched"
        step_id: UUID
        phase: Phase
        attempt: int
        at: datetime
        deadline_at: datetime
        # The arguments this attempt was sent with, when the kernel bound them at dispatch
        # from the entities' state (JSON null: the plan's own arguments).
        args: msgspec.Raw = field(default_factory=lambda: NO_BOUND_ARGS)

    class StepSucceeded(Event):
        """An attempt of a step succeeded."""

        TOPIC = "operation.StepSucceeded"
        step_id: UUID
        phase: Phase
        attempt: int
        result: msgspec.Raw
        at: datetime

    class StepAttemptFailed(Event):
        """An attempt failed (or missed its deadline); `retry_at` None: failed for good."""

        TOPIC = "operation.StepAttemptFailed"
        step_id: UUID
        phase: Phase
        attempt: int
        error_code: str
        message: str
        retryable: bool
        retry_at: datetime | None
        at: datetime

    class CancelRequested(Event):
        """Someone asked to cancel; nothing new is dispatched from now on."""

        TOPIC = "operation.CancelRequested"
        reason: str
        at: datetime

    class CompensationStarted(Event):
        """The operation stopped and undoes what succeeded."""

        TOPIC = "operation.CompensationStarted"
        at: datetime

    class Succeeded(Event):
        """Every step succeeded."""

        TOPIC = "operation.Succeeded"
        at: datetime
        # Why it succeeded without running a step (its work was done already), if so.
        note: str = ""

    class RolledBack(Event):
        """The operation stopped and every compensation succeeded."""

        TOPIC = "operation.RolledBack"
        at: datetime

    class Failed(Event):
        """A step, or a compensation, failed for good and nothing more will be undone."""

        TOPIC = "operation.Failed"
        step_id: UUID | None  # None: refused before any step ran (see `refuse`)
        phase: Phase | None
        error_code: str
        message: str
        at: datetime

    class Cancelled(Event):
        """The operation was cancelled with nothing to undo."""

        TOPIC = "operation.Cancelled"
        at: datetime

    @event(Accepted)
    def __init__(self, kind: str, plan: Plan, entity_ids: tuple[UUID, ...],
                 at: datetime, command: QueuedCommand | None = None) -> None:
        self.kind, self.entity_ids = kind, tuple(entity_ids)
        self.command = command
        self.state = OperationState.ACCEPTED
        self.accepted_at = at
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.waiting_on: UUID | None = None
        self.cancel_reason: str | None = None
        self.failed_step: UUID | None = None  # the forward step whose failure stopped it
        self.failure: Failure | None = None
        self.note = ""
        self._plan(plan)

    def _plan(self, plan: Plan) -> None:
        self.plan = plan
        self.completion_order: list[UUID] = []  # forward steps, in the order they succeeded
        self.runs: dict[UUID, StepRun] = {}
        for step in plan.steps:
            self.runs[step.step_id] = StepRun.forward(step)
            if step.compensation is not None:
                run = StepRun.compensating(step)
                self.runs[run.step_id] = run
        self._forward = tuple(step.step_id for step in plan.steps)

    @classmethod
    def accept(cls, *, kind: str, plan: Plan, now: datetime, entity_ids: Iterable[UUID] = (),
               id: UUID | None = None, command: QueuedCommand | None = None) -> "Operation":
        """Validate the plan and accept an operation on these entities (kept sorted). With
        `command`, it is planned again from that command when it gets its entities."""
        if not isinstance(kind, str) or not kind.strip() or kind != kind.strip():
            raise ValidationError(f"operation kind must be non-empty text without surrounding "
                                  f"blanks, got {kind!r}")
        if command is None or plan.steps:  # a queued command may wait to be planned
            validate_plan(plan)
        if command is not None:
            if not isinstance(command, QueuedCommand):
                raise ValidationError(f"operation {kind}: command must be a QueuedCommand")
            require_json(f"operation {kind}", "command", command.command)
        entities = tuple(sorted(set(entity_ids)))
        operation: Operation = cls._create(cls.Accepted, id=id, kind=kind, plan=plan,
                                           entity_ids=entities, at=_aware(now),
                                           command=command)
        return operation

    @property
    def planned_on_admission(self) -> bool:
        """Whether it waits to be planned again from its command once it holds its entities."""
        return self.command is not None and self.state in _NOT_STARTED

    def replan(self, plan: Plan, now: datetime, entity_ids: Iterable[UUID] = (), *,
               kind: str | None = None) -> None:
        """Replace the plan of an operation that waited, before it starts (see `Accepted`);
        `entity_ids` it changes besides those it was accepted on (it holds them now), and its
        `kind` if the command now makes another kind of operation."""
        self._require(_NOT_STARTED, "be planned again")
        if self.command is None:
            raise self._refuse("be planned again (it was accepted with its plan)")
        validate_plan(plan)
        if kind is not None and (not isinstance(kind, str) or not kind.strip()):
            raise ValidationError(f"operation kind must be non-empty text, got {kind!r}")
        more = set(entity_ids) - set(self.entity_ids)
        self._replanned(plan, _aware(now),
                        tuple(sorted({*self.entity_ids, *more})) if more else (),
                        "" if kind is None or kind == self.kind else kind)

    @event(Replanned)
    def _replanned(self, plan: Plan, at: datetime, entity_ids: tuple[UUID, ...] = (),
                   kind: str = "") -> None:
        self._plan(plan)
        if entity_ids:
            self.entity_ids = tuple(entity_ids)
        if kind:
            self.kind = kind

    def refuse(self, error_code: str, message: str, now: datetime) -> None:
        """End, before any step ran, because what it was asked no longer applies to its
        entities as they are now that it holds them (they changed while it waited)."""
        self._require(_NOT_STARTED, "be refused")
        if not isinstance(error_code, str) or not error_code:
            raise ValidationError("error_code must be non-empty text")
        self._failed(None, None, error_code, str(message)[:MAX_MESSAGE_CHARS], _aware(now))

    def complete_unneeded(self, note: str, now: datetime) -> None:
        """End as succeeded without running a step: what it was asked is done already (a
        second start of a VM that a first start made Running)."""
        self._require(_NOT_STARTED, "complete")
        if not isinstance(note, str) or not note.strip():
            raise ValidationError("note: say why nothing was left to do")
        self._succeeded(_aware(now), note[:MAX_MESSAGE_CHARS])

    # ------------------------------------------------------------------ entities and start

    def wait_for_entity(self, entity_id: UUID, now: datetime) -> None:
        """Record that the operation waits in this entity's queue (again: no event)."""
        self._require(_NOT_STARTED, "wait for an entity")
        if entity_id not in self.entity_ids:
            raise ValidationError(f"operation {self.id}: entity {entity_id} is not one it "
                                  "changes")
        if entity_id != self.waiting_on:
            self._waiting_for_entity(entity_id, _aware(now))

    @event(WaitingForEntity)
    def _waiting_for_entity(self, entity_id: UUID, at: datetime) -> None:
        self.state, self.waiting_on = OperationState.WAITING, entity_id

    def start(self, now: datetime) -> None:
        """Start running: the operation holds every entity it changes."""
        self._require(_NOT_STARTED, "start")
        self._started(_aware(now))

    @event(Started)
    def _started(self, at: datetime) -> None:
        self.state, self.started_at, self.waiting_on = OperationState.RUNNING, at, None

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, step_id: UUID, now: datetime,
                 args: msgspec.Raw | None = None) -> StepDispatch:
        """Record that the next attempt of a ready step is handed to its subsystem, with
        `args` bound at dispatch instead of the plan's, if given."""
        run = self.step(step_id)
        now = _aware(now)
        if not self._is_ready(run, now):
            raise self._refuse(f"dispatch step {step_id} ({self._why_not_ready(run, now)})")
        if args is not None:
            if not isinstance(args, msgspec.Raw):
                raise ValidationError(f"step {step_id}: args must be msgspec.Raw JSON")
            require_json(f"step {step_id}", "args", args)
        self._step_dispatched(step_id, run.phase, run.next_attempt, now,
                              now + timedelta(seconds=run.deadline_seconds),
                              NO_BOUND_ARGS if args is None else args)
        return self._dispatch_of(run)

    @event(StepDispatched)
    def _step_dispatched(self, step_id: UUID, phase: Phase, attempt: int, at: datetime,
                         deadline_at: datetime, args: msgspec.Raw = NO_BOUND_ARGS) -> None:
        run = self.runs[step_id]
        bound = None if bytes(args) == bytes(NO_BOUND_ARGS) else args
        run.attempts.append(Attempt(number=attempt, dispatched_at=at, deadline_at=deadline_at,
                                    args=bound))
        run.status, run.retry_at = StepStatus.IN_FLIGHT, None

    # ------------------------------------------------------------------ results

    def record_success(self, step_id: UUID, attempt: int, result: msgspec.Raw,
                       now: datetime) -> bool:
        """Record that an attempt succeeded; False (and no change) unless it is in flight."""
        run = self.step(step_id)
        if not run.is_current(attempt):
            return False
        if not isinstance(result, msgspec.Raw):
            raise ValidationError(f"step {step_id}: result must be msgspec.Raw JSON")
        require_json(f"step {step_id}", "result", result)
        now = _aware(now)
        self._step_succeeded(step_id, run.phase, attempt, result, now)
        self._settle(now)
        return True

    @event(StepSucceeded)
    def _step_succeeded(self, step_id: UUID, phase: Phase, attempt: int, result: msgspec.Raw,
                        at: datetime) -> None:
        run = self.runs[step_id]
        run.finish_attempt(msgspec.structs.replace(
            run.attempts[-1], outcome=AttemptOutcome.SUCCEEDED, finished_at=at))
        run.status, run.result = StepStatus.SUCCEEDED, result
        if phase is Phase.FORWARD:
            self.completion_order.append(step_id)

    def record_failure(self, step_id: UUID, attempt: int, error_code: str, message: str,
                       retryable: bool, now: datetime) -> bool:
        """Record that an attempt failed; it is retried after a backoff unless the code is
        non-retryable, attempts are used up or the operation is stopping. False (and no
        change) unless the attempt is in flight."""
        run = self.step(step_id)
        if not run.is_current(attempt):
            return False
        if not isinstance(error_code, str) or not error_code:
            raise ValidationError(f"step {step_id}: error_code must be non-empty text")
        self._fail_attempt(run, attempt, error_code, message, bool(retryable), _aware(now))
        return True

    def deadline_passed(self, step_id: UUID, attempt: int, now: datetime) -> bool:
        """Count a missed deadline as a retryable failure; False (and no change) unless the
        attempt is in flight and its deadline has come."""
        run = self.step(step_id)
        now = _aware(now)
        if not run.is_current(attempt) or now < run.attempts[-1].deadline_at:
            return False
        deadline_at = run.attempts[-1].deadline_at
        self._fail_attempt(run, attempt, DEADLINE_EXCEEDED,
                           f"no result by the deadline {deadline_at.isoformat()}", True, now)
        return True

    def _fail_attempt(self, run: StepRun, attempt: int, error_code: str, message: str,
                      retryable: bool, now: datetime) -> None:
        retry_at = None
        stopped = run.phase is Phase.FORWARD and self.stopping
        if not stopped and run.retry.retries(error_code, retryable, attempt):
            retry_at = now + timedelta(seconds=run.retry.delay(run.step_id, attempt))
        self._step_attempt_failed(run.step_id, run.phase, attempt, error_code,
                                  str(message)[:MAX_MESSAGE_CHARS], retryable, retry_at, now)
        self._settle(now)

    @event(StepAttemptFailed)
    def _step_attempt_failed(self, step_id: UUID, phase: Phase, attempt: int, error_code: str,
                             message: str, retryable: bool, retry_at: datetime | None,
                             at: datetime) -> None:
        run = self.runs[step_id]
        run.finish_attempt(msgspec.structs.replace(
            run.attempts[-1], outcome=AttemptOutcome.FAILED, finished_at=at,
            error_code=error_code, message=message,
            retryable=retryable, retry_at=retry_at))
        run.retry_at = retry_at
        run.status = StepStatus.FAILED if retry_at is None else StepStatus.RETRY_WAIT
        if run.status is StepStatus.FAILED and phase is Phase.FORWARD and not self.stopping:
            self.failed_step = step_id

    # ------------------------------------------------------------------ cancel

    def cancel(self, reason: str, now: datetime) -> bool:
        """Stop the operation: at once if nothing ran; else dispatch nothing new, let the
        steps in flight report, then undo what succeeded. False if it is already stopping;
        refused once finished, and once an irreversible step was dispatched (what it did
        cannot be undone: the operation goes on to its end)."""
        if self.state in TERMINAL_STATES:
            raise self._refuse("cancel")
        if self.stopping:
            return False
        ran = next((r for r in self.forward_steps() if r.irreversible and r.attempts), None)
        if ran is not None:
            raise self._refuse(f"cancel: step {ran.subsystem}.{ran.action} ran, and what it "
                               "did cannot be undone")
        now = _aware(now)
        self._cancel_requested(str(reason), now)
        if self.state in _NOT_STARTED:
            self._cancelled(now)
        else:
            self._settle(now)
        return True

    @event(CancelRequested)
    def _cancel_requested(self, reason: str, at: datetime) -> None:
        self.cancel_reason = reason

    # ------------------------------------------------------------------ outcome

    def _settle(self, at: datetime) -> None:
        """Move to the state the steps' outcomes call for, if that changed."""
        if self.state is _S.RUNNING:
            if not self.stopping:
                if all(self.runs[sid].status is StepStatus.SUCCEEDED for sid in self._forward):
                    self._succeeded(at)
            elif not any(self.runs[sid].status is StepStatus.IN_FLIGHT
                         for sid in self._forward):
                if self._next_compensation() is not None:
                    self._compensation_started(at)
                elif self.failed_step is None:
                    self._cancelled(at)
                else:
                    self._fail_with(self.runs[self.failed_step], at)
        elif self.state is _S.COMPENSATING:
            run = self._next_compensation()
            if run is None:
                self._rolled_back(at)
            elif run.status is StepStatus.FAILED:
                self._fail_with(run, at)

    def _fail_with(self, run: StepRun, at: datetime) -> None:
        last = run.attempts[-1]
        self._failed(run.step_id, run.phase, last.error_code, last.message, at)

    @event(CompensationStarted)
    def _compensation_started(self, at: datetime) -> None:
        self.state = OperationState.COMPENSATING

    @event(Succeeded)
    def _succeeded(self, at: datetime, note: str = "") -> None:
        self.state, self.finished_at, self.note = OperationState.SUCCEEDED, at, note

    @event(RolledBack)
    def _rolled_back(self, at: datetime) -> None:
        self.state, self.finished_at = OperationState.ROLLED_BACK, at

    @event(Failed)
    def _failed(self, step_id: UUID | None, phase: Phase | None, error_code: str, message: str,
                at: datetime) -> None:
        self.state, self.finished_at = OperationState.FAILED, at
        self.failure = Failure(step_id=step_id, phase=phase, error_code=error_code,
                               message=message)

    @event(Cancelled)
    def _cancelled(self, at: datetime) -> None:
        self.state, self.finished_at = OperationState.CANCELLED, at

    # ------------------------------------------------------------------ queries

    @property
    def is_finished(self) -> bool:
        """Whether the operation reached a terminal state."""
        return self.state in TERMINAL_STATES

    @property
    def stopping(self) -> bool:
        """Whether it was cancelled or a step failed for good: nothing new goes forward."""
        return self.cancel_reason is not None or self.failed_step is not None

    def step(self, step_id: UUID) -> StepRun:
        """The run of a forward step or compensation, by its id."""
        try:
            return self.runs[step_id]
        except KeyError:
            raise NotFoundError(f"operation {self.id} has no step {step_id}") from None

    def forward_steps(self) -> tuple[StepRun, ...]:
        """The forward steps, in plan order."""
        return tuple(self.runs[sid] for sid in self._forward)

    def result_of(self, step_id: UUID) -> msgspec.Raw | None:
        """The result of a step that succeeded."""
        return self.step(step_id).result

    def ready_steps(self, now: datetime) -> tuple[ReadyStep, ...]:
        """Steps to dispatch now: forward steps whose dependencies succeeded, or the next
        compensation (one at a time, latest completed first); retries once their time came."""
        now = _aware(now)
        return tuple(ReadyStep(step_id=run.step_id, phase=run.phase, attempt=run.next_attempt,
                               subsystem=run.subsystem, action=run.action)
                     for run in self._candidates() if self._due(run, now))

    def in_flight(self) -> tuple[StepDispatch, ...]:
        """Every dispatched attempt that has not reported yet (what to publish again)."""
        return tuple(self._dispatch_of(run) for run in self.runs.values()
                     if run.status is StepStatus.IN_FLIGHT)

    def overdue(self, now: datetime) -> tuple[StepDispatch, ...]:
        """In-flight attempts whose deadline has come (call `deadline_passed` for each)."""
        now = _aware(now)
        return tuple(d for d in self.in_flight() if d.deadline_at <= now)

    def next_wakeup(self) -> datetime | None:
        """The earliest deadline in flight or retry to come: when a timer must fire."""
        times = [run.attempts[-1].deadline_at for run in self.runs.values()
                 if run.status is StepStatus.IN_FLIGHT]
        times += [run.retry_at for run in self._candidates()
                  if run.retry_at is not None and run.status is StepStatus.RETRY_WAIT]
        times += [at for run in self._candidates()
                  if (at := self._start_at(run)) is not None and run.status is StepStatus.PENDING]
        return min(times, default=None)

    def _start_at(self, run: StepRun) -> datetime | None:
        """When a delayed step may first be dispatched (None: no delay)."""
        if not run.start_after_seconds or self.started_at is None:
            return None
        return self.started_at + timedelta(seconds=run.start_after_seconds)

    def _due(self, run: StepRun, now: datetime) -> bool:
        start_at = self._start_at(run)
        return _due(run, now) and (start_at is None or start_at <= now)

    def compensations_due(self) -> tuple[UUID, ...]:
        """Forward steps to undo, latest completed first (the order compensations run)."""
        return tuple(sid for sid in reversed(self.completion_order)
                     if self.runs[sid].compensation_id is not None)

    def _candidates(self) -> list[StepRun]:
        """Runs that may be dispatched when their time comes."""
        if self.state is _S.RUNNING and not self.stopping:
            return [run for run in self.forward_steps()
                    if run.status is StepStatus.RETRY_WAIT
                    or (run.status is StepStatus.PENDING and all(
                        self.runs[d].status is StepStatus.SUCCEEDED for d in run.depends_on))]
        if self.state is _S.COMPENSATING:
            run = self._next_compensation()
            if run is not None and run.status in (StepStatus.PENDING, StepStatus.RETRY_WAIT):
                return [run]
        return []

    def _next_compensation(self) -> StepRun | None:
        for sid in self.compensations_due():
            run = self.runs[self.runs[sid].compensation_id]  # type: ignore[index]
            if run.status is not StepStatus.SUCCEEDED:
                return run
        return None

    def _is_ready(self, run: StepRun, now: datetime) -> bool:
        return self._due(run, now) and any(c is run for c in self._candidates())

    def _why_not_ready(self, run: StepRun, now: datetime) -> str:
        start_at = self._start_at(run)
        if start_at is not None and start_at > now:
            return f"it waits until {start_at.isoformat()}"
        if run.status is StepStatus.RETRY_WAIT and run.retry_at and run.retry_at > now:
            return f"retry waits until {run.retry_at.isoformat()}"
        if run.status is not StepStatus.PENDING and run.status is not StepStatus.RETRY_WAIT:
            return run.status.value
        if self.state not in (_S.RUNNING, _S.COMPENSATING):
            return "the operation is not running"
        if run.phase is Phase.FORWARD and self.state is _S.COMPENSATING:
            return "the operation is compensating"
        if self.state is _S.RUNNING and self.stopping:
            return "the operation is stopping"
        if run.phase is Phase.COMPENSATION:
            return "not its turn to compensate"
        return "its dependencies have not succeeded"

    def _dispatch_of(self, run: StepRun) -> StepDispatch:
        last = run.attempts[-1]
        return StepDispatch(operation_id=self.id, step_id=run.step_id, phase=run.phase,
                            attempt=last.number, deadline_at=last.deadline_at,
                            subsystem=run.subsystem, action=run.action,
                            args=run.args if last.args is None else last.args,
                            compensates=run.compensates)


def _due(run: StepRun, now: datetime) -> bool:
    return run.status is StepStatus.PENDING or (
        run.status is StepStatus.RETRY_WAIT and run.retry_at is not None
        and run.retry_at <= now)


def _aware(now: datetime) -> datetime:
    """Times must be timezone-aware: they are compared and stored."""
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise ValidationError(f"now must be a timezone-aware datetime, got {now!r}")
    return now
