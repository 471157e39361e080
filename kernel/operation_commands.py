"""The commands of the operation engine itself: accept one operation or many, cancel one."""

from uuid import UUID

from aggregates.errors import ValidationError
from aggregates.plan import Plan
from kernel.commands import Command


class AlreadyDoneError(ValidationError):
    """What a command asks is done already (start a Running VM). Sent so, the command is
    refused like any other that does not apply; an operation that waited behind the one that
    did the work, and is planned again when it gets its entities, ends as succeeded instead,
    with nothing to run."""


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
