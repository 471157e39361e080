"""Checking a read-model query before it reaches a store: known filters, typed values, a limit.

Readers (the CLI, the admin API) pass what a person typed, often strings. Values are coerced
to the column's type here, so both stores answer the same, and a bad value is a clear
`QueryError` naming the filter rather than a driver error from the database.
"""

from datetime import datetime
from typing import Any
from uuid import UUID

from aggregates.errors import ValidationError
from projections.models import FLOAT_T, INT_T, TEXT_T, TS_T, UUID_T, RowModel

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


_KINDS = {UUID_T: "a UUID", INT_T: "an integer", FLOAT_T: "a number",
          TS_T: "an ISO 8601 timestamp", TEXT_T: "text"}


class QueryError(ValidationError, ValueError):
    """A read-model query names an unknown filter, a value of the wrong type or a bad limit."""


def coerce(model: type[RowModel], name: str, value: Any) -> Any:
    """The value as the column `name` of `model` holds it; QueryError if it cannot be."""
    kind = next(c.type for c in model.columns if c.name == name)
    if value is None:
        return None
    try:
        if kind == UUID_T:
            return value if isinstance(value, UUID) else UUID(str(value))
        if kind == INT_T:
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise TypeError(type(value).__name__)
            return int(value)
        if kind == FLOAT_T:
            return float(value)
        if kind == TS_T:
            return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        if kind == TEXT_T:
            return value.value if hasattr(value, "value") else str(value)  # enums by value
    except (TypeError, ValueError):
        raise QueryError(f"{model.name}: {name} must be {_KINDS[kind]}, got {value!r}"
                         ) from None
    raise QueryError(f"{model.name}: cannot query by {name} ({kind} column)")


def check_query(model: type[RowModel], limit: int, after: Any,
                filters: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The coerced `after` key and filters of a list query; QueryError for a bad one."""
    unknown = set(filters) - set(model.filters)
    if unknown:
        raise QueryError(f"{model.name}: cannot filter by {sorted(unknown)}; "
                         f"filters are {list(model.filters)}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be from 1 to {MAX_LIMIT}, got {limit!r}")
    return (coerce(model, model.key, after),
            {name: coerce(model, name, value) for name, value in filters.items()})
