"""The operation engine: accepts operations, applies step outcomes in batches, fires timers.

It never performs a step. Everything it decides is an event: a ready step becomes a
`StepDispatched` event in the same transaction as the change that made it ready, and the
dispatcher (`kernel.dispatch_feed`) publishes those events to the subsystems. Outcomes are
applied many at a time and saved in one transaction (group commit). A duplicate or stale
outcome changes nothing. Timers (retry backoff, step deadlines) are derived from the
operations themselves, so a restarted engine rebuilds them from the log.

The engine keeps the aggregates it saved in memory, and keeps that cache coherent with the
log: before each batch it reads the log written since the last one and drops every cached
aggregate another writer (an `intake` or `api` process, another kernel) changed meanwhile. If
another process wrote one of them between that read and the save, the save fails, the batch's
aggregates are dropped from memory and the batch is applied again to fresh copies; an entity
queue that a copy shows in a state the batch did not expect (`QueueMismatchError`) is treated
the same way, never ignored.

A cloud command whose entities are busy (another operation holds or awaits them) is not
planned on them as they are while that operation changes them: it is accepted with its
command and queued, and planned when it gets them (`_replan`), on the entities as they are
then. If it no longer applies it ends Failed (refused, no step run); if its work is done
already (a second start of a VM the first one started) it ends Succeeded with nothing to run.
Either way nothing of another operation's work is undone: an operation that never started
settles nothing.
"""

import functools
import heapq
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Union
from uuid import UUID, uuid4

import msgspec
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from aggregates.base import audit_context, current_audit
from aggregates.entity_queue import EntityBusyError, EntityQueue, admit, release_all
from aggregates.errors import ConflictError, KernelError, NotFoundError
from aggregates.operation import Operation, OperationState, QueuedCommand
from aggregates.plan import Plan
from aggregates.step_run import StepDispatch
from kernel.command_lane import CommandLane, Request
from kernel.commands import Command, CommandOutcome, CommandService
from kernel.contracts.steps import StepOutcome
from kernel.effects import (
    NO_EFFECTS,
    Effects,
    accept_success,
    bound_args,
    record_failure,
    settle,
)
from kernel.leases import FENCED_SQLSTATE, Fence, FencedError
from kernel.operation_commands import (
    AlreadyDoneError,
    CancelOperation,
    StartOperation,
    StartOperations,
)
from kernel.partitions import Ownership
from kernel.store.application import KernelApplication
from kernel.unit_of_work import EntityQueues, TrialUnitOfWork, UnitOfWork

__all__ = ["ApplyReport", "OperationAccepted", "OperationEngine", "OperationFactory", "utcnow"]

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
BATCH_RETRIES = 5
FOLLOW_PAGE = 1000
TERMINAL_TOPICS = ("operation.Succeeded", "operation.RolledBack", "operation.Failed",
                   "operation.Cancelled")


def utcnow() -> datetime:
    """The engine's default clock."""
    return datetime.now(UTC)


# A cloud command's factory: changes the command's entities through the unit of work and
# returns the operation to run on them, and the command's result.
OperationFactory = Callable[["UnitOfWork", Any, datetime],
                            tuple[StartOperation | None, Any]]


class _MustRunAlone(Exception):
    """A command of a batch must wait for busy entities: the batch runs each on its own."""


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
        self._factories: dict[type[Command], OperationFactory] = dict(operation_commands or {})
        for type_, factory in self._factories.items():
            handlers[type_] = functools.partial(self._handle_factory, factory)
        self._command_decoder: msgspec.json.Decoder[Any] | None = None
        self.commands = CommandService(app, handlers)
        self._lane = CommandLane(self._run_requests, self._lock)
        self._batch_uow: UnitOfWork | None = None
        self._followed: int | None = None  # the log position the cache is coherent with
        # several kernels (PostgreSQL): the partitions this one works; None works them all
        self.ownership: Ownership | None = None

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
            self.follow_log()  # as `_command` does for one
            self._batch_uow = UnitOfWork(self.app, {}, shared=self.cache)
            try:
                outcomes = self.commands.execute_many(
                    [(r.command, r.key, r.actor) for r in batch])
            except Exception:  # _MustRunAlone among them
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
        # what other processes wrote since (another kernel, an intake) is read again: a
        # command checks the entities it reads (a template Ready, say) as they are now
        self.follow_log()
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
        # None: the command changed its entities and needs no step
        made = uow.created()
        entity_ids = spec.entity_ids if spec is not None else tuple(
            a.id for a in uow.changed() if a.id not in made)
        busy = self._busy_queue(uow, set(entity_ids) - made) \
            if command.waits_for_busy_entities else None
        if busy is None:
            if spec is not None:
                self.start_in(uow, spec, now)
            return uow.changed(), result
        if made & set(entity_ids):
            # It makes entities (a volume created and attached to a VM): planning it again
            # would make others than its reply names, and planning it now would read the
            # busy ones mid-change. Refused: it can be sent again once they are free.
            assert busy.owner is not None
            raise EntityBusyError(busy.entity_id, busy.owner,
                                  spec.operation_id if spec and spec.operation_id else uuid4())
        # Another operation is changing these entities: what the factory just planned and
        # changed was read off them mid-change. Drop it; queue the command itself.
        if uow is self._batch_uow:
            raise _MustRunAlone  # its changes are mixed with the batch's other commands
        uow = self._uow = self._command_uow(app)
        queued = QueuedCommand(actor=current_audit().actor,
                               command=msgspec.Raw(msgspec.json.encode(command)))
        if spec is None:
            op_id = getattr(result, "operation_id", None)
            spec = StartOperation(kind=str(type(command).__struct_config__.tag),
                                  plan=Plan(steps=()), entity_ids=entity_ids,
                                  operation_id=op_id if isinstance(op_id, UUID) else None)
        op = self.start_in(uow, spec, now, deferred=queued)
        if isinstance(result, msgspec.Struct) and "operation_id" in result.__struct_fields__:
            result = msgspec.structs.replace(result, operation_id=op.id)  # follow this one
        return uow.changed(), result

    @classmethod
    def _busy(cls, uow: UnitOfWork, entity_ids: Iterable[UUID]) -> bool:
        """Whether another operation holds, or waits for, one of these (existing) entities."""
        return cls._busy_queue(uow, entity_ids) is not None

    @staticmethod
    def _busy_queue(uow: UnitOfWork, entity_ids: Iterable[UUID]) -> EntityQueue | None:
        """The queue of the first of these (existing) entities another operation holds."""
        queues = EntityQueues(uow)
        for entity_id in sorted(entity_ids):
            if entity_id in uow.fresh:
                continue
            queue = queues.get(entity_id)
            if queue is not None and (queue.is_busy or queue.waiting):
                return queue
        return None

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
        own = self.ownership
        if not self.group_commit:
            reports = [self._batch(functools.partial(self._apply_one, o),
                                   own.fence([o.operation_id]) if own else None)
                       for o in outcomes]
            return ApplyReport(applied=sum(r.applied for r in reports),
                               positions=tuple(p for r in reports for p in r.positions))
        fence = own.fence(o.operation_id for o in outcomes) if own else None
        return self._batch(lambda uow, now: self._apply(uow, outcomes, now), fence)

    def fire_due_timers(self) -> int:
        """Handle every deadline and retry whose time has come; returns operations touched."""
        now = self.clock()
        with self._timer_lock:
            popped: list[_Wakeup] = []
            while self._timers and self._timers[0].at <= now:
                popped.append(heapq.heappop(self._timers))
        own = self.ownership
        if own is not None:  # another kernel's now: it keeps its own timers
            popped = [w for w in popped if own.holds(w.operation_id)]
        if not popped:
            return 0
        due = {w.operation_id for w in popped}
        try:
            self._batch(lambda uow, now_: self._fire(uow, due, now_),
                        own.fence(due) if own else None)
        except BaseException:
            with self._timer_lock:  # not handled: they stay due, for the next tick
                for wakeup in popped:
                    heapq.heappush(self._timers, wakeup)
            raise
        return len(due)

    def timer_count(self) -> int:
        """How many wake-ups wait (some may be spare: they change nothing)."""
        with self._timer_lock:
            return len(self._timers)

    def next_timer(self) -> datetime | None:
        """When the earliest timer is due."""
        with self._timer_lock:
            return self._timers[0].at if self._timers else None

    def recover(self) -> int:
        """Rebuild the timers of every unfinished operation from the log (at start-up)."""
        return self.adopt(None)[0]

    def adopt(self, partitions: set[int] | None) -> tuple[int, list[StepDispatch]]:
        """Take on the unfinished operations of these partitions (None: all) from the log:
        cache them, rebuild their timers (a deadline that passed fires at once); how many
        they are, and their attempts in flight, for a new owner to publish again at its
        epoch."""
        own = self.ownership
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
        if partitions is not None and own is not None:
            active = {i for i in active if own.partition(i) in partitions}
        in_flight: list[StepDispatch] = []
        adopted = 0
        with self._lock:
            uow = UnitOfWork(self.app, self.cache)
            for op_id in active:
                self.cache.pop(op_id, None)  # read afresh: another kernel worked it
                op = uow.get(op_id)
                if not isinstance(op, Operation) or op.is_finished:
                    continue
                self.cache[op_id] = op
                self._schedule_timer(op)
                in_flight += op.in_flight()
                adopted += 1
        # Run once now: deadlines that passed while the engine was down fire immediately.
        with self._timer_lock:
            now = self.clock()
            self._timers = [w if w.operation_id not in active else
                            _Wakeup(min(w.at, now), w.operation_id) for w in self._timers]
            heapq.heapify(self._timers)
        return adopted, in_flight

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop the cached operations of partitions another kernel now works."""
        own = self.ownership
        if own is None:
            return
        with self._lock:
            for agg_id in [i for i, a in self.cache.items()
                           if isinstance(a, Operation) and own.partition(i) in partitions]:
                del self.cache[agg_id]

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
        of outcomes does: what the reconciler uses to act on what it observed. With several
        kernels, only the holder of the duty partition may (FencedError otherwise)."""
        own = self.ownership
        return self._batch(work, own.duty_fence() if own else None)

    def start_in(self, uow: UnitOfWork, spec: StartOperation, now: datetime, *,
                 deferred: QueuedCommand | None = None) -> Operation:
        """Accept an operation in a unit of work: it starts at once if its entities are free,
        else it waits in their queues (planned again from `deferred` when it gets them)."""
        op = Operation.accept(kind=spec.kind, plan=spec.plan, now=now,
                              entity_ids=spec.entity_ids, id=spec.operation_id,
                              command=deferred)
        uow.add(op)
        self._admit(uow, op, now)
        return op

    # ------------------------------------------------------------------ scheduling

    def _admit(self, uow: UnitOfWork, op: Operation, now: datetime) -> None:
        admission = admit(EntityQueues(uow), op.id, op.entity_ids,
                          refuse_when_busy=self.refuse_when_busy)
        if admission.ready:
            if not op.planned_on_admission or self._replan(uow, op, now):
                op.start(now)
            self._advance(uow, op, now, was_finished=False)
        else:
            assert admission.waiting_on is not None
            op.wait_for_entity(admission.waiting_on, now)

    def _replan(self, uow: UnitOfWork, op: Operation, now: datetime) -> bool:
        """Plan an operation that waited again, from its command, on its entities as they
        are now that it holds them; False if it ended instead (refused, or nothing to do).
        The command is tried on copies first, so a refusal changes nothing."""
        queued = op.command
        assert queued is not None
        command = self._decode_command(queued.command)
        factory = self._factories[type(command)]
        uow.planning = op.id  # its own holds are not another operation's
        try:
            return self._replan_as(uow, op, factory, command, queued.actor, now)
        finally:
            uow.planning = None

    def _replan_as(self, uow: UnitOfWork, op: Operation, factory: Any, command: Command,
                   actor: str, now: datetime) -> bool:
        with audit_context(actor=actor, correlation_id=op.id,
                           causation_id=f"operation:{op.id}"):
            try:
                trial, _ = factory(TrialUnitOfWork(uow), command, now)
            except AlreadyDoneError as e:
                op.complete_unneeded(f"nothing to do when its turn came: {e}", now)
                return False
            except KernelError as e:
                op.refuse(e.code, f"no longer applies when its turn came: {e}", now)
                return False
            extra = set() if trial is None else set(trial.entity_ids) - set(op.entity_ids)
            if extra and self._busy(uow, extra):
                # Waiting for more while it holds some could deadlock: it ends instead.
                op.refuse(EntityBusyError.code, f"planned again when its turn came, it also "
                          f"needs {sorted(map(str, extra))}, busy with another operation; "
                          "send the command again", now)
                return False
            spec, _ = factory(uow, command, now)  # as tried: on the entities it holds
            if spec is None:
                op.complete_unneeded("done when its turn came, with no step to run", now)
                return False
            if extra and not admit(EntityQueues(uow), op.id, extra).ready:
                # they were free a moment ago, in this same batch
                raise ConflictError(f"operation {op.id}: entities {sorted(map(str, extra))} "
                                    "were taken while it was planned")
            op.replan(spec.plan, now, spec.entity_ids, kind=spec.kind)
        return True

    def _decode_command(self, raw: msgspec.Raw) -> Command:
        if self._command_decoder is None:
            union: Any = Union[tuple(self._factories)]  # noqa: UP007  (built at run time)
            self._command_decoder = msgspec.json.Decoder(union)
        command: Command = self._command_decoder.decode(raw)
        return command

    def _advance(self, uow: UnitOfWork, op: Operation, now: datetime, was_finished: bool) -> None:
        """Dispatch what is ready; when the operation ends, hand its entities to the next."""
        with audit_context(correlation_id=op.id, causation_id=f"operation:{op.id}"):
            while not op.is_finished and (ready := op.ready_steps(now)):
                for step in ready:
                    self._dispatch(uow, op, step.step_id, step.attempt, now)
            if op.is_finished and not was_finished:
                # An operation planned on admission that never started did nothing to settle.
                started = op.started_at is not None or op.command is None
                for spec in settle(self.effects, uow, op, now) if started else ():
                    # queued behind this one on the same entities, released just below
                    self.start_in(uow, spec, now)
                # one cancelled while it waited holds only those before the one it waited for
                waiting_on = op.waiting_on if op.state is OperationState.CANCELLED \
                    and op.started_at is None else None
                for next_id in release_all(EntityQueues(uow), op.id, op.entity_ids,
                                           waiting_on=waiting_on):
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

    def follow_log(self) -> int:
        """Drop from the cache every aggregate changed in the log since the last call by
        anyone but this engine (whose saves the cache holds already); returns how many."""
        with self._lock:
            head = self.app.recorder.max_notification_id() or 0
            if self._followed is None or head < self._followed:
                self._followed, dropped = head, len(self.cache)
                self.cache.clear()  # nothing known about what came before: start afresh
                return dropped
            dropped = 0
            while self._followed < head:
                notes = self.app.recorder.select_notifications(
                    start=self._followed, limit=FOLLOW_PAGE, inclusive_of_start=False)
                if not notes:
                    break
                for note in notes:
                    agg_id = note.originator_id
                    agg_id = agg_id if isinstance(agg_id, UUID) else UUID(agg_id)
                    cached = self.cache.get(agg_id)
                    if cached is not None and cached.version < note.originator_version:
                        del self.cache[agg_id]
                        dropped += 1
                self._followed = notes[-1].id
            return dropped

    def _batch(self, work: Callable[[UnitOfWork, datetime], int],
               fence: Fence | None = None) -> ApplyReport:
        with self._lock:
            self.follow_log()
            fresh = False
            for _attempt in range(BATCH_RETRIES):
                uow = UnitOfWork(self.app, self.cache)
                now = self.clock()
                try:
                    applied = work(uow, now)
                except KernelError as e:
                    # An entity in a state the batch did not expect may be a cached copy that
                    # another process changed after follow_log read the log (a stale queue
                    # says so: QueueMismatchError): once, again on copies read now.
                    self._forget(uow)
                    if fresh:
                        raise
                    log.info("batch: %s: %s; applying it again to fresh copies",
                             type(e).__name__, e)
                    self.cache.clear()
                    fresh = True
                    continue
                except BaseException:
                    # Whatever the batch changed in memory must not outlive it.
                    self._forget(uow)
                    raise
                changed = uow.changed()
                if not changed:
                    self._remember(uow)
                    return ApplyReport(applied=applied)
                try:
                    recordings = self.app.save(*changed, fence=fence) if fence is not None \
                        else self.app.save(*changed)
                except IntegrityError:
                    # Another process wrote one of these aggregates first: start over on
                    # fresh copies (outcomes and timers are idempotent, so re-applying is safe).
                    self._forget(uow)
                    continue
                except BaseException as e:
                    self._forget(uow)
                    if fence is not None and _fenced(e):
                        raise FencedError(f"{fence.owner}: a write for partitions "
                                          f"{sorted(fence.epochs)} was fenced: {e}") from e
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


def _fenced(error: BaseException) -> bool:
    """Whether the store refused a write because its fence failed (the lease moved)."""
    seen: BaseException | None = error
    while seen is not None:
        if getattr(seen, "sqlstate", None) == FENCED_SQLSTATE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
