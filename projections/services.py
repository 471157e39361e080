"""The services read model: one row per registration of the Services Directory.

`version` is the service's own version (what it registered); `revision` is the version of
its registration aggregate (the other read models call that `version`).

Liveness (which instances heartbeat now) is not here: it lives in the NATS KV bucket the
services heartbeat into (`kernel.contracts.liveness`), because it is not an event.
"""

from collections.abc import Callable
from typing import Any, ClassVar

from aggregates.service import ServiceRegistration, ServiceState
from projections.models import (
    INT_T,
    JSON_T,
    TEXT_T,
    TS_T,
    UUID_T,
    Column,
    Handler,
    Row,
    RowModel,
)

S = ServiceRegistration


def _registered(_: Row | None, e: Any) -> Row:
    return {"id": e.originator_id, "name": e.name, "version": e.version,
            "endpoints": dict(e.endpoints), "consumes": list(e.consumes),
            "publishes": list(e.publishes), "description": e.description,
            "state": ServiceState.ENABLED.value, "enabled": True, "disabled_reason": "",
            "registered_at": e.timestamp, **_stamp(e)}


def _stamp(e: Any) -> Row:
    # `version` is the service's own version here; the aggregate's is `revision`.
    return {"revision": e.originator_version, "updated_at": e.timestamp}


def update_with(fn: Callable[[Row, Any], Row]) -> Handler:
    """A handler computed from the row and the event, stamped with `_stamp`."""

    def apply(row: Row | None, e: Any) -> Row | None:
        return None if row is None else {**fn(dict(row), e), **_stamp(e)}

    return apply


def _updated(r: Row, e: Any) -> Row:
    r.update(version=e.version, endpoints=dict(e.endpoints), consumes=list(e.consumes),
             publishes=list(e.publishes), description=e.description)
    if r["state"] == ServiceState.DEREGISTERED.value:  # as the aggregate: registered anew
        r.update(state=ServiceState.ENABLED.value, enabled=True, disabled_reason="",
                 registered_at=e.timestamp)
    return r


class ServiceModel(RowModel):
    """Registered services: queryable by name and state."""

    name = "services"
    columns = (
        Column("id", UUID_T, nullable=False),
        Column("name", TEXT_T, nullable=False),
        Column("version", TEXT_T, nullable=False),
        Column("endpoints", JSON_T, nullable=False),
        Column("consumes", JSON_T, nullable=False),
        Column("publishes", JSON_T, nullable=False),
        Column("description", TEXT_T, nullable=False),
        Column("state", TEXT_T, nullable=False),
        Column("enabled", JSON_T, nullable=False),
        Column("disabled_reason", TEXT_T, nullable=False),
        Column("registered_at", TS_T, nullable=False),
        Column("revision", INT_T, nullable=False),
        Column("updated_at", TS_T, nullable=False),
    )
    filters = ("name", "state")
    handlers: ClassVar[dict[type[Any], Handler]] = {
        S.Registered: _registered,
        S.Updated: update_with(_updated),
        S.Enabled: update_with(lambda r, _e: {**r, "state": ServiceState.ENABLED.value,
                                              "enabled": True, "disabled_reason": ""}),
        S.Disabled: update_with(lambda r, e: {**r, "state": ServiceState.DISABLED.value,
                                              "enabled": False, "disabled_reason": e.reason}),
        S.Deregistered: update_with(lambda r, _e: {**r, "state":
                                                   ServiceState.DEREGISTERED.value,
                                                   "enabled": False}),
    }
