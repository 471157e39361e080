"""The dispatch feed: the log's `StepDispatched` events, in order, as step messages.

The dispatcher follows the log from a durable position (a tracking row in the platform store).
It publishes every dispatched attempt to JetStream with `Nats-Msg-Id = <step id>:<attempt>`
and moves its position only after JetStream acknowledged the whole page, so a restart
publishes again at most what it had not recorded; JetStream's dedup window, and the engine's
"an attempt that is not in flight changes nothing", make such a repeat harmless.
"""

from collections import OrderedDict
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import Tracking

from aggregates.operation import NO_BOUND_ARGS
from aggregates.plan import Plan, compensation_id
from aggregates.step_run import Phase
from kernel.contracts.steps import StepMessage
from kernel.store.application import KernelApplication

DISPATCHER = "dispatcher"
TOPICS = ("operation.Accepted", "operation.Replanned", "operation.StepDispatched")
_Route = tuple[str, str, msgspec.Raw]


class DispatchFeed:
    """Reads dispatched attempts after a position; remembers plans to route them."""

    def __init__(self, app: KernelApplication, *, name: str = DISPATCHER,
                 max_plans: int = 100_000):
        self.app, self.name, self.max_plans = app, name, max_plans
        self._routes: OrderedDict[UUID, dict[UUID, _Route]] = OrderedDict()

    def position(self) -> int:
        """The last log position whose dispatches are known to be published."""
        return self.app.recorder.max_tracking_id(self.name) or 0  # type: ignore[attr-defined]

    def commit(self, position: int) -> None:
        """Record that everything up to `position` is published."""
        if position > self.position():
            self.app.recorder.insert_tracking(Tracking(self.name, position))  # type: ignore[attr-defined]

    def read(self, after: int, limit: int = 1000) -> tuple[list[StepMessage], int]:
        """Step messages dispatched after `after`, and the position they reach."""
        notes = self.app.recorder.select_notifications(
            start=after, limit=limit, inclusive_of_start=False, topics=TOPICS)
        messages: list[StepMessage] = []
        for note in notes:
            event: Any = self.app.mapper.to_domain_event(note)
            op_id = UUID(str(note.originator_id))
            if note.topic in ("operation.Accepted", "operation.Replanned"):
                self._remember(op_id, event.plan)
                continue
            subsystem, action, args = self._route(op_id, event.step_id)
            bound = getattr(event, "args", NO_BOUND_ARGS)  # bound by the kernel at dispatch
            if bytes(bound) != bytes(NO_BOUND_ARGS):
                args = bound
            messages.append(StepMessage(
                step_id=event.step_id, operation_id=op_id, attempt=event.attempt,
                subsystem=subsystem, action=action, args=args, deadline_at=event.deadline_at,
                compensation=event.phase is Phase.COMPENSATION,
            ))
        return messages, (notes[-1].id if notes else after)

    def _remember(self, op_id: UUID, plan: Plan) -> None:
        routes: dict[UUID, _Route] = {}
        for step in plan.steps:
            routes[step.step_id] = (step.subsystem, step.action, step.args)
            if step.compensation is not None:
                c = step.compensation
                routes[compensation_id(step.step_id)] = (c.subsystem, c.action, c.args)
        self._routes[op_id] = routes
        while len(self._routes) > self.max_plans:
            self._routes.popitem(last=False)

    def _route(self, op_id: UUID, step_id: UUID) -> _Route:
        routes = self._routes.get(op_id)
        if routes is None or step_id not in routes:
            # accepted before this feed started, or forgotten: read its plans once (the
            # Accepted one, and any it was planned again with)
            for e in self.app.events.get(op_id):
                if isinstance(getattr(e, "plan", None), Plan):
                    self._remember(op_id, e.plan)  # type: ignore[attr-defined]
                    if step_id in self._routes[op_id]:
                        break
            routes = self._routes[op_id]
        return routes[step_id]
