"""`GET /v1/operations/{id}`: an operation's progress, with every step of its plan.

The counts come from the operations read model; the steps (subsystem, action, status,
attempts, last error) from the Operation aggregate itself, so a just-accepted operation is
shown even before the read model caught up. Cancelling is `POST /v1/operations/{id}/cancel`
(a command route, see `gateways.api.commands`).
"""

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from aiohttp import web
from eventsourcing.application import AggregateNotFoundError

from aggregates.errors import NotFoundError
from aggregates.operation import Operation
from aggregates.step_run import StepRun
from gateways.api.context import CONTEXT, ApiContext, authenticator
from gateways.api.inventory import _visible, one_wait_for, wait_for_position

_encode = msgspec.json.Encoder().encode


class StepView(msgspec.Struct, kw_only=True):
    """One step of an operation as the API shows it."""

    step_id: UUID
    phase: str
    subsystem: str
    action: str
    status: str
    attempts: int
    depends_on: tuple[UUID, ...]
    compensates: UUID | None = None
    last_error_code: str | None = None
    last_error: str | None = None
    retry_at: datetime | None = None


def step_view(run: StepRun) -> StepView:
    """The API's view of a step run."""
    failed = [a for a in run.attempts if a.error_code or a.message]
    last = failed[-1] if failed else None
    return StepView(step_id=run.step_id, phase=run.phase.value, subsystem=run.subsystem,
                    action=run.action, status=run.status.value, attempts=len(run.attempts),
                    depends_on=tuple(run.depends_on), compensates=run.compensates,
                    last_error_code=last.error_code if last else None,
                    last_error=last.message if last else None, retry_at=run.retry_at)


def operation_document(ctx: ApiContext, op: Operation) -> dict[str, Any]:
    """The operation's row (or what the aggregate knows, while the read model lags) and
    its steps, forward steps first."""
    row = ctx.view("operations").get(op.id) if "operations" in ctx.runners else None
    forward = op.forward_steps()
    ids = {r.step_id for r in forward}
    steps = [*forward, *(r for r in op.runs.values() if r.step_id not in ids)]
    doc: dict[str, Any] = dict(row) if row is not None else {
        "id": op.id, "kind": op.kind, "accepted_at": op.accepted_at,
        "started_at": op.started_at, "finished_at": op.finished_at}
    doc["state"] = op.state.value
    doc.update(entity_ids=list(op.entity_ids), version=op.version,
               cancel_reason=op.cancel_reason,
               failure=None if op.failure is None else {
                   "step_id": op.failure.step_id,
                   "phase": None if op.failure.phase is None else op.failure.phase.value,
                   "error_code": op.failure.error_code, "message": op.failure.message},
               steps=[step_view(r) for r in steps])
    return doc


async def get_operation(request: web.Request) -> web.Response:
    """`GET /v1/operations/{id}`."""
    ctx = request.app[CONTEXT]
    wait_for = one_wait_for(request)
    who = authenticator(request)
    text = request.match_info["id"]

    def read() -> bytes:
        _visible(ctx, who(), "operations", "get")
        wait_for_position(ctx, "operations", wait_for)
        try:
            op: Any = ctx.app.repository.get(UUID(text))
        except (ValueError, AggregateNotFoundError):
            raise NotFoundError(f"no operation {text[:80]!r}") from None
        if not isinstance(op, Operation):
            raise NotFoundError(f"no operation {text[:80]!r}")
        return _encode(operation_document(ctx, op))

    return web.Response(body=await ctx.call(read), content_type="application/json")


def add_operation_routes(app: web.Application) -> None:
    """Register `GET /v1/operations/{id}`."""
    app.router.add_get("/v1/operations/{id}", get_operation, name="get_operations")
