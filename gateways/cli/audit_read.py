"""The read side of `cloudkernel audit`: moments, log folds, entity states and fleet diffs.

Everything here reads the platform log only (no projection must be up to date): an entity's
history is its events with their log positions; its state at a moment is the aggregate rebuilt
from its events up to that moment; the fleet at a moment is every aggregate folded from the log
up to it, in one pass.
"""

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.utils import get_topic

from aggregates.errors import NotFoundError, ValidationError

PAGE = 1000
GONE_STATES = frozenset({"Expunged", "Removed", "Deleted", "Destroyed", "Destroy"})
NAMED_TOPICS = ("vm.Allocated", "volume.Allocated", "host.Registered")
# Progress(done, total) called while reading the log; total is the log's last position.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Moment:
    """A past moment: a time (aware) or a log position (`@N`), as the user wrote it."""

    text: str
    time: datetime | None = None
    position: int | None = None

    def includes(self, position: int, event: Any | None) -> bool:
        """Whether the event at this log position happened at or before the moment."""
        if self.position is not None:
            return position <= self.position
        assert self.time is not None and event is not None
        return bool(event.timestamp <= self.time)

    def as_json(self) -> dict[str, Any]:
        """The moment as given, parsed."""
        return {"text": self.text, "time": self.time.isoformat() if self.time else None,
                "position": self.position}


def parse_moment(text: str, what: str = "TIME") -> Moment:
    """An ISO 8601 time with a timezone (or Z), or a log position `@N`; ValidationError else."""
    raw = text.strip()
    if raw.startswith("@"):
        digits = raw[1:]
        if not digits.isdigit() or int(digits) < 1:
            raise ValidationError(f"{what} {text!r}: a log position is @N with N a whole "
                                  f"number from 1 (e.g. @120)")
        return Moment(text=raw, position=int(digits))
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationError(f"{what} {text!r} is not an ISO 8601 time (e.g. "
                              f"2026-01-01T12:00:00Z) nor a log position (@N)") from None
    if when.tzinfo is None:
        raise ValidationError(f"{what} {text!r} has no timezone: add Z or an offset such as "
                              f"+02:00")
    return Moment(text=raw, time=when)


def notifications(app: Any, stop: int | None = None,
                  progress: Progress | None = None) -> Iterator[Any]:
    """The log's notifications in order, read in pages, up to position `stop` (inclusive)."""
    total = max_position(app)
    start = 0
    while True:
        notes = app.recorder.select_notifications(start=start, limit=PAGE,
                                                  inclusive_of_start=False)
        for note in notes:
            if stop is not None and note.id > stop:
                return
            yield note
        if progress is not None and notes:
            progress(notes[-1].id, total)
        if len(notes) < PAGE:
            return
        start = notes[-1].id


def max_position(app: Any) -> int:
    """The position of the log's last event (0 when the log is empty)."""
    return int(app.recorder.max_notification_id() or 0)


def check_moment(app: Any, moment: Moment) -> None:
    """Refuse a moment before the log's first event, or a position past its end."""
    first = app.recorder.select_notifications(start=None, limit=1)
    if not first:
        raise ValidationError("the log is empty: there is no past state to show")
    if moment.position is not None:
        last = max_position(app)
        if moment.position < first[0].id:
            raise ValidationError(f"{moment.text} is before the log's first event "
                                  f"(@{first[0].id})")
        if moment.position > last:
            raise ValidationError(f"{moment.text} is after the log's last event (@{last})")
        return
    began = app.mapper.to_domain_event(first[0]).timestamp
    if moment.time is not None and moment.time < began:
        raise ValidationError(f"{moment.text} is before the log's first event "
                              f"({began.isoformat()})")


def resolve(app: Any, text: str, progress: Progress | None = None) -> UUID:
    """An entity's id as given (it must have events), or the id of the one VM, volume or host
    with that name."""
    raw = text.strip()
    try:
        entity_id = UUID(raw)
    except ValueError:
        return _by_name(app, raw)
    if not app.recorder.select_events(entity_id, limit=1):
        raise NotFoundError(f"no entity has the id {entity_id}")
    return entity_id


def _by_name(app: Any, name: str) -> UUID:
    found: dict[UUID, str] = {}
    start = 0
    while True:
        notes = app.recorder.select_notifications(start=start, limit=PAGE, topics=NAMED_TOPICS,
                                                  inclusive_of_start=False)
        for note in notes:
            if getattr(app.mapper.to_domain_event(note), "name", None) == name:
                found[UUID(str(note.originator_id))] = note.topic.split(".")[0]
        if len(notes) < PAGE:
            break
        start = notes[-1].id
    if not found:
        raise NotFoundError(f"unknown entity {name!r}: no VM, volume or host has that name or "
                            f"id")
    if len(found) > 1:
        listed = ", ".join(f"{kind} {i}" for i, kind in found.items())
        raise ValidationError(f"{name!r} names more than one entity ({listed}); give the id")
    return next(iter(found))


def history(app: Any, entity_id: UUID, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Every event of the entity, in log order, with its position and audit metadata."""
    rows = []
    for note in notifications(app, progress=progress):
        if note.originator_id != entity_id:
            continue
        event = app.mapper.to_domain_event(note)
        rows.append({"position": note.id, "version": note.originator_version,
                     "time": event.timestamp.isoformat(), "topic": note.topic,
                     "actor": getattr(event, "actor", None),
                     "correlation_id": _text(getattr(event, "correlation_id", None)),
                     "causation_id": _text(getattr(event, "causation_id", None))})
    return rows


def entity_at(app: Any, entity_id: UUID, moment: Moment) -> Any:
    """The aggregate as it was at the moment (NotFoundError if it did not exist yet)."""
    version = None
    if moment.position is not None:
        versions = list(_versions_of(app, entity_id, moment.position))
        version = versions[-1] if versions else None
    else:
        for event in app.repository.event_store.get(entity_id):
            if moment.includes(0, event):
                version = event.originator_version
    if version is None:
        raise NotFoundError(f"entity {entity_id} did not exist yet at {moment.text}")
    return app.repository.get(entity_id, version=version)


def _versions_of(app: Any, entity_id: UUID, stop: int) -> Iterator[int]:
    for note in notifications(app, stop=stop):
        if note.originator_id == entity_id:
            yield note.originator_version


def fleet_at(app: Any, moment: Moment, progress: Progress | None = None) -> dict[UUID, Any]:
    """Every aggregate as it was at the moment, folded from the log in one pass."""
    aggregates: dict[UUID, Any] = {}
    for note in notifications(app, stop=moment.position, progress=progress):
        event = app.mapper.to_domain_event(note)
        if not moment.includes(note.id, event):
            break
        key = UUID(str(note.originator_id))
        aggregates[key] = event.mutate(aggregates.get(key))
    return aggregates


def state_of(aggregate: Any) -> str:
    """The entity's state label: its state, or a host's status/resource state."""
    parts: list[str] = []
    for name in ("state", "status", "resource_state"):
        value = getattr(aggregate, name, None)
        if value is not None and str(_text(value)) not in parts:
            parts.append(str(_text(value)))
    return "/".join(parts) or "-"


def kind_of(aggregate: Any) -> str:
    """The entity's kind (vm, host, volume...)."""
    return str(getattr(aggregate, "KIND", None) or get_topic(type(aggregate)).split(":")[-1])


def fields_of(aggregate: Any) -> dict[str, Any]:
    """The aggregate's public attributes (and id, version, times), JSON-safe."""
    out: dict[str, Any] = {"id": str(aggregate.id), "version": aggregate.version,
                           "created_on": _json(aggregate.created_on),
                           "modified_on": _json(aggregate.modified_on)}
    for name, value in sorted(vars(aggregate).items()):
        if not name.startswith("_"):
            out[name] = _json(value)
    return out


def summary_of(aggregate: Any) -> dict[str, Any]:
    """One listing row: id, kind, name, state, version."""
    return {"id": str(aggregate.id), "kind": kind_of(aggregate),
            "name": _text(getattr(aggregate, "name", None)), "state": state_of(aggregate),
            "version": aggregate.version}


def fleet_counts(aggregates: dict[UUID, Any]) -> dict[str, dict[str, int]]:
    """How many entities of each kind are in each state."""
    counts: dict[str, dict[str, int]] = {}
    for agg in aggregates.values():
        by_state = counts.setdefault(kind_of(agg), {})
        by_state[state_of(agg)] = by_state.get(state_of(agg), 0) + 1
    return {k: dict(sorted(v.items())) for k, v in sorted(counts.items())}


def diff(before: dict[UUID, Any], after: dict[UUID, Any]) -> dict[str, Any]:
    """Entities created, changed (state before -> after, fields changed) and removed between
    two folds of the log."""
    created: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    removed: list[dict[str, Any]] = []
    for key in sorted(after, key=str):
        new = after[key]
        old = before.get(key)
        if old is None:
            created.append(summary_of(new))
            continue
        if old.version == new.version:
            continue
        was, now = fields_of(old), fields_of(new)
        row = {**summary_of(new), "from_state": state_of(old), "to_state": state_of(new),
               "from_version": old.version,
               "fields": sorted(k for k in now if k not in ("version", "modified_on")
                                and now[k] != was.get(k))}
        gone = state_of(new).split("/")[0] in GONE_STATES
        (removed if gone and state_of(old).split("/")[0] not in GONE_STATES
         else changed).append(row)
    return {"created": created, "changed": changed, "removed": removed,
            "counts": {name: _count_kinds(rows) for name, rows in
                       (("created", created), ("changed", changed), ("removed", removed))}}


def _count_kinds(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    return dict(sorted(counts.items()))


def _text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Enum):
        return value.value
    return str(value)


def _json(value: Any) -> Any:
    """A JSON-safe copy: enums by value, ids and times as text, containers recursively."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Enum):
        return _json(value.value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(_json(k)): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_json(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if isinstance(value, msgspec.Raw):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, msgspec.Struct):
        return {f: _json(getattr(value, f)) for f in value.__struct_fields__}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "__dict__"):
        return {k: _json(v) for k, v in vars(value).items() if not k.startswith("_")}
    return str(value)
