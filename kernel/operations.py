"""The operation engine: accepts operations, applies step outcomes in batches, fires timers.

It never performs a step. Everything it decides is an event: a ready step becomes a
`StepDispatched` event in the same transaction as the change that made it ready, and the
dispatcher (`kernel.dispatch_feed`) publishes those events to the subsystems. Outcomes are
applied many at a time and saved in one transaction (group commit). A duplicate or stale
outcome changes nothing. Timers (retry backoff, step deadlines) are derived from the
operations themselves, so a restarted engine rebuilds them from the log.

The engine keeps the aggregates it saved in memory; if another process wrote one of them
first, the save fails, the batch's aggregates are dropped from memory and the batch is applied
again to fresh copies.
"""

import functools
import heapq
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from aggregates.base import audit_context
from aggregates.entity_queue import admit, release_all
from aggregates.errors import ConflictError, KernelError, NotFoundError
from aggregates.operation import Operation
from aggregates.plan import Plan
from kernel.command_lane import CommandLane, Request
from kernel.commands import Command, CommandOutcome, CommandService
from kernel.contracts import StepOutcome
from kernel.effects import NO_EFFECTS, Effects, accept_success, bound_args, record_failure, settle
from kernel.store.application import KernelApplication
from kernel.unit_of_work import EntityQueues, UnitOfWork

__all__ = ["ApplyReport", "CancelOperation", "OperationAccepted", "OperationEngine",
           "OperationFactory", "StartOperation", "StartOperations", "UnitOfWork", "utcnow"]

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
BATCH_RETRIES = 5
TERMINAL_TOPICS = ("operation.Succeeded", "operation.RolledBack", "operation.Failed",
                   "operation.Cancelled")


def utcnow() -> datetime:
    """The engine's default clock."""
    return datetime.now(UTC)


class StartOperation(Command, frozen=True, kw_only=True, tag="operation.start"):
    """Accept an operation: a kind, its plan and the entities it changes."""

    kind: str
    plan: Plan
    entity_ids: tuple[UUID, ...] = ()
    operation_id: UUID | None = None


class StartOperations(Command, frozen=True, kw_only=True, tag="operation.start_many"):
    """Accept many operations in one transaction (bulk submission)."""

    operations: tuple[StartOperation, ...]


class CancelOperation(Command, frozen=True, kw_only=True, tag="operation.cancel"):
    """Stop an operation and compensate what already ran."""

    operation_id: UUID
    reason: str = "cancelled by request"


# A cloud command's factory: changes the command's entities through the unit of work and
# returns the operation to run on them, and the command's result.
OperationFactory = Callable[["UnitOfWork", Any, datetime],
                            tuple[StartOperation | None, Any]]


class OperationAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """The result of StartOperation."""

    operation_id: UUID
    state: str


@dataclass
class ApplyReport:
    """What one batch of outcomes did."""

    applied: int = 0
    ignored: int = 0
    positions: tuple[int, ...] = ()


@dataclass(order=True)
class _Wakeup:
    at: datetime
    operation_id: UUID = field(compare=False)


class OperationEngine:
    """Owns the lifecycle of operations; thread-safe, one batch at a time."""

    def __init__(self, app: KernelApplication, *, refuse_when_busy: bool = False,
                 clock: Clock = utcnow, on_saved: Callable[[], None] | None = None,
                 group_commit: bool = True, effects: Effects = NO_EFFECTS,
                 operation_commands: Mapping[type[Command], OperationFactory] | None = None):
        self.app, self.clock, self.refuse_when_busy = app, clock, refuse_when_busy
        self.effects = effects
        self.on_saved = on_saved
        # False saves each outcome on its own: the naive design the benchmark compares with.
        self.group_commit = group_commit
        self.cache: dict[UUID, Aggregate] = {}
        self._timers: list[_Wakeup] = []
        self._lock = threading.RLock()  # one batch, command or recovery at a time
        # The heap has its own lock: the event loop asks `next_timer` every tick and must not
        # wait for a batch that holds `_lock` through its commit.
        self._timer_lock = threading.Lock()
        handlers: dict[type[Command], Any] = {
            StartOperation: self._handle_start, StartOperations: self._handle_start_many,
            CancelOperation: self._handle_cancel}
        for type_, factory in (operation_commands or {}).items():
            handlers[type_] = functools.partial(self._handle_factory, factory)
        self.commands = CommandService(app, handlers)
        self._lane = CommandLane(self._run_requests, self._lock)
        self._batch_uow: UnitOfWork | None = None

    # ------------------------------------------------------------------ commands

    def submit(self, kind: str, plan: Plan, entity_ids: Iterable[UUID] = (), *,
               idempotency_key: str, actor: str = "system",
               operation_id: UUID | None = None) -> CommandOutcome:
        """Accept an operation (idempotent by key); it starts at once if its entities are free."""
        command = StartOperation(kind=kind, plan=plan, entity_ids=tuple(entity_ids),
                                 operation_id=operation_id)
        with self._lock:
            return self._command(command, idempotency_key, actor)

    def submit_many(self, operations: Sequence[StartOperation], *, idempotency_key: str,
                    actor: str = "system") -> CommandOutcome:
        """Accept many operations in one transaction (idempotent by key)."""
        with self._lock:
            return self._command(StartOperations(operations=tuple(operations)),
                                 idempotency_key, actor)

    def cancel(self, operation_id: UUID, reason: str, *, idempotency_key: str,
               actor: str = "system") -> CommandOutcome:
        """Cancel an operation: nothing new runs, what ran is compensated."""
        command = CancelOperation(operation_id=operation_id, reason=reason)
        with self._lock:
            return self._command(command, idempotency_key, actor)

    def execute(self, command: Command, *, idempotency_key: str,
                actor: str = "system") -> CommandOutcome:
        """Run any of the engine's commands as decoded from the wire (admin API, NATS),
        group-committed with the commands that wait beside it (`kernel.command_lane`)."""
        return self._lane.execute(command, idempotency_key, actor)

    def _run_requests(self, batch: list[Request]) -> None:
        if len(batch) > 1:
            self._batch_uow = UnitOfWork(self.app, {}, shared=self.cache)
            try:
                outcomes = self.commands.execute_many(
                    [(r.command, r.key, r.actor) for r in batch])
            except Exception:
                # One of them is refused, or the save lost a race: each on its own, below.
                self._forget(self._batch_uow)
            else:
                self._remember(self._batch_uow)
                for request, outcome in zip(batch, outcomes, strict=True):
                    request.finish(outcome, None)
                return
            finally:
                self._batch_uow = None
        for request in batch:
            try:
                request.finish(self._command(request.command, request.key, request.actor),
                               None)
            except Exception as e:
                request.finish(None, e)

    def _command_uow(self, app: KernelApplication) -> UnitOfWork:
        """The unit of work of a command's handler: the batch's, when commands are batched."""
        if self._batch_uow is not None:
            self._batch_uow.begin_command()
            return self._batch_uow
        return UnitOfWork(app, {}, shared=self.cache)

    def _command(self, command: Command, key: str, actor: str) -> CommandOutcome:
        self._uow = UnitOfWork(self.app, self.cache)
        try:
            outcome = self.commands.execute(command, idempotency_key=key, actor=actor)
        except BaseException:
            self._forget(self._uow)
            raise
        self._remember(self._uow)
        return outcome

    def _handle_start(self, app: KernelApplication,
                      command: StartOperation) -> tuple[Sequence[Aggregate], Any]:
        # Fresh copies, not the cache: after a lost race the command service runs the handler
        # again, and must not meet the objects the failed attempt already changed.
        uow = self._uow = self._command_uow(app)
        op = self.start_in(uow, command, self.clock())
        return uow.changed(), OperationAccepted(operation_id=op.id, state=op.state.value)

    def _handle_start_many(self, app: KernelApplication,
                           command: StartOperations) -> tuple[Sequence[Aggregate], Any]:
        uow = self._uow = self._command_uow(app)
        now = self.clock()
        accepted = []
        for spec in command.operations:
            op = self.start_in(uow, spec, now)
            accepted.append(OperationAccepted(operation_id=op.id, state=op.state.value))
        return uow.changed(), accepted

    def _handle_factory(self, factory: "OperationFactory", app: KernelApplication,
                        command: Command) -> tuple[Sequence[Aggregate], Any]:
        # A cloud command (deploy a VM...): the factory changes its entities and says which
        # operation to run, all saved in one transaction.
        uow = self._uow = self._command_uow(app)
        now = self.clock()
        spec, result = factory(uow, command, now)
        if spec is not None:  # None: the command changed its entities, and needs no step
            self.start_in(uow, spec, now)
        return uow.changed(), result

    def _handle_cancel(self, app: KernelApplication,
                       command: CancelOperation) -> tuple[Sequence[Aggregate], Any]:
        uow = self._uow = self._command_uow(app)
        now = self.clock()
        op: Operation = uow.get(command.operation_id)
        if not isinstance(op, Operation):
            raise NotFoundError(f"no operation {command.operation_id}")
        was_finished = op.is_finished
        op.cancel(command.reason, now)
        self._advance(uow, op, now, was_finished)
        return uow.changed(), {"operation_id": str(op.id), "state": op.state.value}

    # ------------------------------------------------------------------ outcomes and timers

    def apply_outcomes(self, outcomes: Sequence[StepOutcome]) -> ApplyReport:
        """Apply a batch of outcomes to their operations and save everything in one transaction."""
        if not outcomes:
            return ApplyReport()
        if not self.group_commit:
            reports = [self._batch(functools.partial(self._apply_one, o)) for o in outcomes]
            return ApplyReport(applied=sum(r.applied for r in reports),
                               positions=tuple(p for r in reports for p in r.positions))
        return self._batch(lambda uow, now: self._apply(uow, outcomes, now))

    def fire_due_timers(self) -> int:
        """Handle every deadline and retry whose time has come; returns operations touched."""
        now = self.clock()
        with self._timer_lock:
            popped: list[_Wakeup] = []
            while self._timers and self._timers[0].at <= now:
                popped.append(heapq.heappop(self._timers))
        if not popped:
            return 0
        due = {w.operation_id for w in popped}
        try:
            self._batch(lambda uow, now_: self._fire(uow, due, now_))
        except BaseException:
            with self._timer_lock:  # not handled: they stay due, for the next tick
                for wakeup in popped:
                    heapq.heappush(self._timers, wakeup)
            raise
        return len(due)

    def next_timer(self) -> datetime | None:
        """When the earliest timer is due."""
        with self._timer_lock:
            return self._timers[0].at if self._timers else None

    def recover(self) -> int:
        """Rebuild the timers of every unfinished operation from the log (at start-up)."""
        accepted: set[UUID] = set()
        finished: set[UUID] = set()
        start, page = 0, 5000
        while True:
            notes = self.app.recorder.select_notifications(
                start=start, limit=page, inclusive_of_start=False,
                topics=("operation.Accepted", *TERMINAL_TOPICS))
            for note in notes:
                (accepted if note.topic == "operation.Accepted" else finished).add(
                    UUID(str(note.originator_id)))
            if len(notes) < page:
                break
            start = notes[-1].id
        active = accepted - finished
        uow = UnitOfWork(self.app, self.cache)
        with self._lock:
            for op_id in active:
                op = uow.get(op_id)
                self.cache[op_id] = op
                self._schedule_timer(op)
        # Run once now: deadlines that passed while the engine was down fire immediately.
        with self._timer_lock:
            self._timers = [_Wakeup(min(w.at, self.clock()), w.operation_id) for w in self._timers]
            heapq.heapify(self._timers)
        return len(active)

    def _apply(self, uow: UnitOfWork, outcomes: Sequence[StepOutcome], now: datetime) -> int:
        applied = 0
        for out in outcomes:
            op = uow.find(out.operation_id)
            if not isinstance(op, Operation) or out.step_id not in op.runs:
                log.warning("outcome for unknown step %s of operation %s ignored",
                            out.step_id, out.operation_id)
                continue
            was_finished = op.is_finished
            with audit_context(actor=f"subsystem:{out.subsystem}", correlation_id=op.id,
                               causation_id=f"step:{out.msg_id}"):
                changed = self._record(uow, op, out, now)
                if changed:
                    applied += 1
                    self._advance(uow, op, now, was_finished)
        return applied

    def _record(self, uow: UnitOfWork, op: Operation, out: StepOutcome, now: datetime) -> bool:
        """Record an outcome and its effect on the entities; False if it is stale."""
        run = op.step(out.step_id)
        if not run.is_current(out.attempt):
            return False  # a duplicate or late report: no effect either
        code, message, retryable = out.error_code or "error", out.message, out.retryable
        if out.ok:
            refusal = accept_success(self.effects, uow, op, run, out.attempt, out.result, now)
            if refusal is None:
                return op.record_success(out.step_id, out.attempt, out.result, now)
            code, message, retryable = refusal.code, str(refusal), refusal.retryable
        record_failure(self.effects, uow, op, run, out.attempt, code, message, now)
        return op.record_failure(out.step_id, out.attempt, code, message, retryable, now)

    def _apply_one(self, outcome: StepOutcome, uow: UnitOfWork, now: datetime) -> int:
        return self._apply(uow, [outcome], now)

    def _fire(self, uow: UnitOfWork, due: set[UUID], now: datetime) -> int:
        for op_id in due:
            op = uow.find(op_id)
            if not isinstance(op, Operation) or op.is_finished:
                continue
            was_finished = op.is_finished
            with audit_context(correlation_id=op.id, causation_id="timer"):
                for late in op.overdue(now):
                    op.deadline_passed(late.step_id, late.attempt, now)
                self._advance(uow, op, now, was_finished)
        return 0

    def run_batch(self, work: Callable[["UnitOfWork", datetime], int]) -> ApplyReport:
        """Change entities and start operations (`start_in`) in one transaction, as a batch
        of outcomes does: what the reconciler uses to act on what it observed."""
        return self._batch(work)

    def start_in(self, uow: UnitOfWork, spec: StartOperation, now: datetime) -> Operation:
        """Accept an operation in a unit of work: it starts at once if its entities are free,
        else it waits in their queues."""
        op = Operation.accept(kind=spec.kind, plan=spec.plan, now=now,
                              entity_ids=spec.entity_ids, id=spec.operation_id)
        uow.add(op)
        self._admit(uow, op, now)
        return op

    # ------------------------------------------------------------------ scheduling

    def _admit(self, uow: UnitOfWork, op: Operation, now: datetime) -> None:
        admission = admit(EntityQueues(uow), op.id, op.entity_ids,
                          refuse_when_busy=self.refuse_when_busy)
        if admission.ready:
            op.start(now)
            self._advance(uow, op, now, was_finished=False)
        else:
            assert admission.waiting_on is not None
            op.wait_for_entity(admission.waiting_on, now)

    def _advance(self, uow: UnitOfWork, op: Operation, now: datetime, was_finished: bool) -> None:
        """Dispatch what is ready; when the operation ends, hand its entities to the next."""
        with audit_context(correlation_id=op.id, causation_id=f"operation:{op.id}"):
            while not op.is_finished and (ready := op.ready_steps(now)):
                for step in ready:
                    self._dispatch(uow, op, step.step_id, step.attempt, now)
            if op.is_finished and not was_finished:
                for spec in settle(self.effects, uow, op, now):
                    # queued behind this one on the same entities, released just below
                    self.start_in(uow, spec, now)
                for next_id in release_all(EntityQueues(uow), op.id, op.entity_ids):
                    waiting = uow.get(next_id)
                    if isinstance(waiting, Operation) and not waiting.is_finished:
                        self._admit(uow, waiting, now)

    def _dispatch(self, uow: UnitOfWork, op: Operation, step_id: UUID, attempt: int,
                  now: datetime) -> None:
        """Dispatch an attempt with its bound arguments; if they cannot be bound, the
        attempt fails at once, for good (the entities are not as the plan needs them)."""
        run = op.step(step_id)
        try:
            args = bound_args(self.effects, uow, op, run, attempt, now)
        except KernelError as e:
            op.dispatch(step_id, now)
            record_failure(self.effects, uow, op, run, attempt, e.code, str(e), now)
            op.record_failure(step_id, attempt, e.code, f"cannot bind arguments: {e}", False,
                              now)
            return
        op.dispatch(step_id, now, args)

    def watch_deadlines(self, deadlines: Iterable[tuple[UUID, datetime]]) -> None:
        """Wake up at these operations' step deadlines (a spare wake-up changes nothing)."""
        with self._timer_lock:
            for operation_id, at in deadlines:
                heapq.heappush(self._timers, _Wakeup(at, operation_id))

    def _schedule_timer(self, op: Operation) -> None:
        wake = None if op.is_finished else op.next_wakeup()
        if wake is not None:
            with self._timer_lock:
                heapq.heappush(self._timers, _Wakeup(wake, op.id))

    # ------------------------------------------------------------------ saving

    def _batch(self, work: Callable[[UnitOfWork, datetime], int]) -> ApplyReport:
        with self._lock:
            for _attempt in range(BATCH_RETRIES):
                uow = UnitOfWork(self.app, self.cache)
                now = self.clock()
                try:
                    applied = work(uow, now)
                except BaseException:
                    # Whatever the batch changed in memory must not outlive it.
                    self._forget(uow)
                    raise
                changed = uow.changed()
                if not changed:
                    self._remember(uow)
                    return ApplyReport(applied=applied)
                try:
                    recordings = self.app.save(*changed)
                except IntegrityError:
                    # Another process wrote one of these aggregates first: start over on
                    # fresh copies (outcomes and timers are idempotent, so re-applying is safe).
                    self._forget(uow)
                    continue
                except BaseException:
                    self._forget(uow)
                    raise
                self._remember(uow)
                return ApplyReport(applied=applied,
                                   positions=tuple(r.notification.id for r in recordings))
        raise ConflictError(f"a batch lost {BATCH_RETRIES} races with other writers")

    def _remember(self, uow: UnitOfWork) -> None:
        for agg in uow.touched.values():
            if isinstance(agg, Operation) and agg.is_finished:
                self.cache.pop(agg.id, None)
            else:
                self.cache[agg.id] = agg
        for op in uow.operations():
            self._schedule_timer(op)
        if self.on_saved is not None:
            self.on_saved()

    def _forget(self, uow: UnitOfWork) -> None:
        for agg_id in uow.touched:
            self.cache.pop(agg_id, None)
