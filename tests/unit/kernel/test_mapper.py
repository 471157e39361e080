"""The msgspec mapper: typed round trips, explicit topics everywhere, and upcasting."""

import dataclasses
import inspect
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import Aggregate, event
from eventsourcing.utils import get_topic, resolve_topic
from support.store import write_v1_gadget
from support.upcasting import _define

import aggregates
from aggregates.base import PlatformAggregate, audit_context
from kernel.store.application import SQLITE_RECORDER, KernelApplication
from kernel.store.mapper import MsgspecMapper


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


class Sample(PlatformAggregate):
    TOPIC = "test.sample"

    class Event(PlatformAggregate.Event):
        TOPIC = "test.sample.Event"

    class Made(Event, PlatformAggregate.Created):
        TOPIC = "test.sample.Made"
        ref: UUID
        colour: Colour
        tags: tuple[str, ...]
        when: datetime
        price: Decimal
        ratio: float
        maybe: str | None
        limits: dict[str, int]

    @event(Made)
    def __init__(self, ref: UUID, colour: Colour, tags: tuple[str, ...], when: datetime,
                 price: Decimal, ratio: float, maybe: str | None,
                 limits: dict[str, int]) -> None:
        self.ref, self.colour, self.tags, self.when = ref, colour, tags, when
        self.price, self.ratio, self.maybe, self.limits = price, ratio, maybe, limits


def test_round_trip_keeps_every_type() -> None:
    mapper = MsgspecMapper()
    with audit_context("alice", uuid4(), "cmd:1"):
        s = Sample(ref=uuid4(), colour=Colour.BLUE, tags=("a", "b"),
                   when=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
                   price=Decimal("12.3400"), ratio=1.5, maybe=None, limits={"cpu": 4})
    original = s.pending_events[0]
    stored = mapper.to_stored_event(original)
    assert stored.topic == "test.sample.Made"
    assert b"originator_id" not in stored.state  # it has its own column
    back = mapper.to_domain_event(stored)
    assert back == original
    assert type(back.colour) is Colour and type(back.tags) is tuple
    assert back.price == Decimal("12.3400") and back.actor == "alice"


def test_smaller_than_the_library_json_transcoder() -> None:
    from eventsourcing.application import Application

    from aggregates.host import Host

    h = Host.register(name="h", uri="test:///default", zone_id=uuid4(), pod_id=uuid4(),
                      cluster_id=uuid4(), cpu_cores=4, cpu_mhz=1000, memory_mib=1024)
    ev = h.pending_events[0]
    library = Application().mapper.to_stored_event(ev).state
    ours = MsgspecMapper().to_stored_event(ev).state
    assert len(ours) < 0.8 * len(library)


def _event_classes() -> list[tuple[type[Aggregate], type]]:
    found = []
    for agg in aggregates.ALL_AGGREGATES:
        for name, member in vars(agg).items():
            if inspect.isclass(member) and issubclass(member, Aggregate.Event) \
                    and name not in ("Event", "Created"):
                found.append((agg, member))
    return found


def test_every_aggregate_and_event_has_its_own_explicit_topic() -> None:
    topics: dict[str, type] = {}
    classes = _event_classes()
    assert len(classes) > 40
    for agg, cls in classes:
        # `@event(Cls)` swaps in a generated subclass; the literal sits on the class it wraps.
        owner = next((k for k in cls.__mro__ if "TOPIC" in k.__dict__), None)
        assert owner is not None and owner.__qualname__ == cls.__qualname__, \
            f"{cls.__qualname__} has no explicit TOPIC of its own"
        topic = owner.__dict__["TOPIC"]
        assert topic.startswith(agg.__dict__["TOPIC"] + "."), topic
        assert topic not in topics, f"{topic} used by {topics.get(topic)} and {cls}"
        topics[topic] = cls
        assert get_topic(cls) == topic and resolve_topic(topic) is cls
        assert ":" not in topic, "topics must not depend on module paths"
        field_names = {f.name for f in dataclasses.fields(cls)}
        assert {"actor", "correlation_id", "causation_id"} <= field_names


def test_upcasting_v1_events_to_v3(tmp_path: Path) -> None:
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "upcast.db"),
        "APPLICATION_RECORDER_TOPIC": SQLITE_RECORDER,
        "CREATE_TABLE": "y",
    }
    gadget_id = write_v1_gadget(env)
    gadget_cls = _define("v2")

    class App(KernelApplication):
        name = "upcast"

    app = App(env=env)
    try:
        gadget = app.repository.get(gadget_id)
        assert type(gadget) is gadget_cls
        assert (gadget.name, gadget.color, gadget.size) == ("widget", "grey", 1)
        assert (gadget.price, gadget.currency) == (Decimal("9.99"), "EUR")
        gadget.price_at(Decimal("5"))  # new events are written at the current version
        app.save(gadget)
        stored = app.recorder.select_events(gadget_id)
        assert b'"class_version":2' in stored[-1].state
        assert app.repository.get(gadget_id).currency == "USD"
    finally:
        app.close()


def test_undecodable_state_names_the_event() -> None:
    from eventsourcing.persistence import MapperDeserialisationError, StoredEvent

    bad = StoredEvent(originator_id=uuid4(), originator_version=3, topic="test.sample.Made",
                      state=b'{"ref": 12}')
    with pytest.raises(MapperDeserialisationError, match=r"test.sample.Made .* v3"):
        MsgspecMapper().to_domain_event(bad)
