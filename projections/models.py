"""Read models as pure folds: a row per entity, changed by the entity's events.

A model names its table, its key, its typed columns and the event classes it reads. `fold`
takes the row as it stands (or None), one domain event and its log position, and returns the
new row (or None to leave nothing). The stores (projections/views.py) batch a page of events:
they load the rows the page touches, fold every event in memory, and upsert the changed rows
with the tracking position in one transaction.

This module holds the base and the VM and operation models; the others live beside it
(fleet, networks, storage, audit) and `projections.catalog.MODELS` lists them all.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from eventsourcing.utils import get_topic

from aggregates.operation import Operation
from aggregates.step_run import Phase
from aggregates.vm import PowerState, VirtualMachine, VmState

Row = dict[str, Any]
Handler = Callable[[Row | None, Any], Row | None]

# Column types the stores know how to declare and convert. A JSON_T value is a JSON-native
# Python value (dict with str keys, list, str, int, float, bool, None).
UUID_T, TEXT_T, INT_T, TS_T, FLOAT_T, JSON_T = "uuid", "text", "int", "ts", "float", "json"


@dataclass(frozen=True)
class Column:
    """A read-model column: its name and type (UUID_T, TEXT_T, INT_T, TS_T, FLOAT_T, JSON_T)."""

    name: str
    type: str
    nullable: bool = True


# Every entity model ends with these: the aggregate version and time of the last event.
STAMP_COLUMNS = (Column("version", INT_T, nullable=False),
                 Column("updated_at", TS_T, nullable=False))


def stamp(e: Any) -> Row:
    """The stamp columns for a row changed by this event."""
    return {"version": e.originator_version, "updated_at": e.timestamp}


class RowModel:
    """A read model: rows keyed by `key`, folded from the events in `handlers`."""

    name: ClassVar[str]
    key: ClassVar[str] = "id"
    columns: ClassVar[tuple[Column, ...]]
    filters: ClassVar[tuple[str, ...]] = ()  # queryable (and indexed) columns
    handlers: ClassVar[dict[type[Any], Handler]]

    @classmethod
    def topics(cls) -> tuple[str, ...]:
        """The stored topics of the events this model reads; () means every topic."""
        return tuple(sorted(get_topic(c) for c in cls.handlers))

    @classmethod
    def column_names(cls) -> tuple[str, ...]:
        """The names of the columns, key first."""
        return tuple(c.name for c in cls.columns)

    @classmethod
    def row_key(cls, event: Any, position: int) -> Any:
        """The key of the row the event at this log position changes: the aggregate's id."""
        return event.originator_id

    @classmethod
    def fold(cls, row: Row | None, event: Any, position: int) -> Row | None:
        """The row after the event at this log position (unknown events leave it as it was)."""
        handler = cls.handlers.get(type(event))
        if handler is None:
            return row
        return handler(row, event)


def set_values(**values: Any) -> Handler:
    """A handler that sets constant values and stamps the row with the event's time."""

    def apply(row: Row | None, e: Any) -> Row | None:
        if row is None:
            return None
        return {**row, **values, "version": e.originator_version, "updated_at": e.timestamp}

    return apply


def update_with(fn: Callable[[Row, Any], Row]) -> Handler:
    """A handler computed from the row and the event, stamped with the event's time."""

    def apply(row: Row | None, e: Any) -> Row | None:
        if row is None:
            return None
        new = fn(dict(row), e)
        new["version"] = e.originator_version
        new["updated_at"] = e.timestamp
        return new

    return apply


# --------------------------------------------------------------------------- VMs

V = VirtualMachine
_VS = VmState


def _vm_allocated(_: Row | None, e: Any) -> Row:
    return {
        "id": e.originator_id, "name": e.name, "account": e.account,
        "state": _VS.ALLOCATED.value, "power_state": PowerState.UNKNOWN.value,
        "host_id": None, "destination_host_id": None, "zone_id": e.zone_id,
        "offering_id": e.service_offering_id, "last_error": "",
        "version": e.originator_version, "updated_at": e.timestamp,
    }


def _vm_migrated(r: Row, _: Any) -> Row:
    r.update(state=_VS.RUNNING.value, host_id=r["destination_host_id"],
             destination_host_id=None, last_error="")
    return r


def _vm_repaired(r: Row, e: Any) -> Row:
    # as VirtualMachine._repaired: Stopped leaves the host, Running keeps it
    r.update(state=e.to_state.value, destination_host_id=None,
             last_error="" if e.to_state is _VS.RUNNING else e.reason)
    if e.to_state is _VS.STOPPED:
        r["host_id"] = None
    return r


class VmModel(RowModel):
    """VMs: queryable by account, state and host."""

    name = "vms"
    columns = (
        Column("id", UUID_T, nullable=False),
        Column("name", TEXT_T, nullable=False),
        Column("account", TEXT_T, nullable=False),
        Column("state", TEXT_T, nullable=False),
        Column("power_state", TEXT_T, nullable=False),
        Column("host_id", UUID_T),
        Column("destination_host_id", UUID_T),
        Column("zone_id", UUID_T, nullable=False),
        Column("offering_id", UUID_T, nullable=False),
        Column("last_error", TEXT_T, nullable=False),
        Column("version", INT_T, nullable=False),
        Column("updated_at", TS_T, nullable=False),
    )
    filters = ("account", "state", "host_id", "zone_id")
    handlers: ClassVar[dict[type[Any], Handler]] = {
        V.Allocated: _vm_allocated,
        V.StartRequested: update_with(lambda r, e: {**r, "state": _VS.STARTING.value,
                                                    "host_id": e.host_id}),
        V.Started: set_values(state=_VS.RUNNING.value, last_error=""),
        V.StartFailed: update_with(lambda r, e: {**r, "state": _VS.STOPPED.value,
                                                 "host_id": None, "last_error": e.reason}),
        V.StopRequested: set_values(state=_VS.STOPPING.value),
        V.Stopped: set_values(state=_VS.STOPPED.value, host_id=None, last_error=""),
        V.StopFailed: update_with(lambda r, e: {**r, "state": _VS.RUNNING.value,
                                                "last_error": e.reason}),
        V.MigrationRequested: update_with(lambda r, e: {**r, "state": _VS.MIGRATING.value,
                                                        "destination_host_id":
                                                            e.destination_host_id}),
        V.Migrated: update_with(_vm_migrated),
        V.MigrationFailed: update_with(lambda r, e: {**r, "state": _VS.RUNNING.value,
                                                     "destination_host_id": None,
                                                     "last_error": e.reason}),
        V.Destroyed: set_values(state=_VS.DESTROYED.value, host_id=None),
        V.Recovered: set_values(state=_VS.STOPPED.value),
        V.ExpungeRequested: set_values(state=_VS.EXPUNGING.value, host_id=None),
        V.Expunged: set_values(state=_VS.EXPUNGED.value),
        V.Failed: update_with(lambda r, e: {**r, "state": _VS.ERROR.value,
                                            "destination_host_id": None,
                                            "last_error": e.reason}),
        V.PowerObserved: update_with(lambda r, e: {**r, "power_state": e.power_state.value}),
        V.StoppedOutOfBand: update_with(lambda r, e: {**r, "state": _VS.STOPPED.value,
                                                      "host_id": None,
                                                      "last_error": e.reason}),
        V.AdoptedRunning: update_with(lambda r, e: {**r, "state": _VS.RUNNING.value,
                                                    "host_id": e.host_id, "last_error": ""}),
        V.Repaired: update_with(_vm_repaired),
    }


# --------------------------------------------------------------------------- operations

O = Operation  # noqa: E741


def _op_accepted(_: Row | None, e: Any) -> Row:
    return {
        "id": e.originator_id, "kind": e.kind, "state": "Accepted",
        "steps_total": len(e.plan.steps), "steps_succeeded": 0, "steps_failed": 0,
        "steps_in_flight": 0, "accepted_at": e.at, "started_at": None, "finished_at": None,
        "version": e.originator_version, "updated_at": e.timestamp,
    }


def _op_finished(state: str) -> Handler:
    return update_with(lambda r, e: {**r, "state": state, "finished_at": e.at})


def _op_dispatched(r: Row, e: Any) -> Row:
    if e.phase is Phase.FORWARD:
        r["steps_in_flight"] += 1
    return r


def _op_succeeded(r: Row, e: Any) -> Row:
    if e.phase is Phase.FORWARD:
        r["steps_in_flight"] -= 1
        r["steps_succeeded"] += 1
    return r


def _op_attempt_failed(r: Row, e: Any) -> Row:
    if e.phase is Phase.FORWARD:
        r["steps_in_flight"] -= 1
        if e.retry_at is None:
            r["steps_failed"] += 1
    return r


class OperationModel(RowModel):
    """Operations with the progress of their forward steps."""

    name = "operations"
    columns = (
        Column("id", UUID_T, nullable=False),
        Column("kind", TEXT_T, nullable=False),
        Column("state", TEXT_T, nullable=False),
        Column("steps_total", INT_T, nullable=False),
        Column("steps_succeeded", INT_T, nullable=False),
        Column("steps_failed", INT_T, nullable=False),
        Column("steps_in_flight", INT_T, nullable=False),
        Column("accepted_at", TS_T, nullable=False),
        Column("started_at", TS_T),
        Column("finished_at", TS_T),
        Column("version", INT_T, nullable=False),
        Column("updated_at", TS_T, nullable=False),
    )
    filters = ("kind", "state")
    handlers: ClassVar[dict[type[Any], Handler]] = {
        O.Accepted: _op_accepted,
        O.WaitingForEntity: set_values(state="Waiting"),
        O.Replanned: update_with(lambda r, e: {**r, "steps_total": len(e.plan.steps),
                                               "kind": e.kind or r["kind"]}),
        O.Started: update_with(lambda r, e: {**r, "state": "Running", "started_at": e.at}),
        O.StepDispatched: update_with(_op_dispatched),
        O.StepSucceeded: update_with(_op_succeeded),
        O.StepAttemptFailed: update_with(_op_attempt_failed),
        O.CompensationStarted: set_values(state="Compensating"),
        O.Succeeded: _op_finished("Succeeded"),
        O.RolledBack: _op_finished("RolledBack"),
        O.Failed: _op_finished("Failed"),
        O.Cancelled: _op_finished("Cancelled"),
    }
