"""Every aggregate: explicit, resolvable event topics and typed, tuple-only event fields."""

import dataclasses
import typing
from datetime import datetime
from decimal import Decimal
from enum import Enum
from types import NoneType, UnionType
from uuid import UUID

import msgspec
import pytest
from eventsourcing.domain import CanMutateAggregate
from eventsourcing.utils import get_topic, resolve_topic

from aggregates import ALL_AGGREGATES
from aggregates.base import PlatformAggregate

EVENTS = [(agg, cls) for agg in ALL_AGGREGATES for cls in vars(agg).values()
          if isinstance(cls, type) and issubclass(cls, CanMutateAggregate)]
SCALARS = (UUID, str, int, float, bool, datetime, Decimal, NoneType, msgspec.Raw)


def _decodable(tp: object) -> bool:
    origin = typing.get_origin(tp)
    if origin is tuple or origin is dict:
        return all(_decodable(arg) for arg in typing.get_args(tp) if arg is not Ellipsis)
    if origin is UnionType or origin is typing.Union:
        return all(_decodable(arg) for arg in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, Enum):
        return all(isinstance(member.value, str) for member in tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):  # plans: frozen, field by field
        hints = typing.get_type_hints(tp)
        return tp.__struct_config__.frozen and all(
            _decodable(hints[name]) for name in tp.__struct_fields__)
    return tp in SCALARS


def test_every_aggregate_is_listed_once() -> None:
    assert len(set(ALL_AGGREGATES)) == len(ALL_AGGREGATES) == 24
    for agg in ALL_AGGREGATES:
        assert issubclass(agg, PlatformAggregate)
        assert resolve_topic(agg.TOPIC) is agg
        assert agg.__dict__["KIND"] and agg.__dict__["TOPIC"] == agg.TOPIC


@pytest.mark.parametrize(("agg", "cls"), EVENTS, ids=[c.TOPIC for _, c in EVENTS])
def test_event_topic_is_explicit_and_resolves(agg: type, cls: type) -> None:
    topic = cls.TOPIC  # type: ignore[attr-defined]
    assert topic == f"{agg.TOPIC}.{cls.__name__}"  # type: ignore[attr-defined]
    assert get_topic(cls) == topic
    assert resolve_topic(topic) is cls


@pytest.mark.parametrize(("agg", "cls"), EVENTS, ids=[c.TOPIC for _, c in EVENTS])
def test_event_fields_decode_by_type(agg: type, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in ("originator_id", "originator_version"):
            continue  # stored in their own columns, not in the event state
        assert _decodable(hints[field.name]), f"{cls.TOPIC}.{field.name}: {hints[field.name]}"
