"""What every aggregate state machine checks after an attempted command."""

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from aggregates.base import PlatformAggregate
from aggregates.errors import InvalidTransitionError
from kernel.store.testing import roundtrip

# modest, so that the whole stateful suite stays well under a minute
MACHINE_SETTINGS = settings(max_examples=100, stateful_step_count=30, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow])


def attempt(aggregate: PlatformAggregate, call: Callable[[], Any],
            expected: type[Exception] | None, events: int | None = 1) -> Any:
    """Run a command; it must succeed with `events` new events, or fail with exactly
    `expected` and leave the aggregate untouched (same version, same state)."""
    before_version = aggregate.version
    before_pending = len(aggregate.pending_events)
    if expected is None:
        result = call()
        if events is not None:
            assert aggregate.version == before_version + events
            assert len(aggregate.pending_events) == before_pending + events
        return result
    before = copy.deepcopy({k: v for k, v in vars(aggregate).items()
                            if k != "_pending_events"})
    with pytest.raises(expected) as info:
        call()
    assert type(info.value) is expected, f"wanted {expected.__name__}, got {info.value!r}"
    if expected is InvalidTransitionError:
        message = str(info.value)
        assert aggregate.KIND in message
        assert aggregate.state.value in message  # type: ignore[attr-defined]
    assert aggregate.version == before_version
    assert len(aggregate.pending_events) == before_pending
    assert {k: v for k, v in vars(aggregate).items() if k != "_pending_events"} == before
    return None


def assert_roundtrips(aggregate: PlatformAggregate) -> None:
    """The aggregate read back from the event store equals the live one."""
    loaded = roundtrip(aggregate)
    assert loaded == aggregate
    assert loaded.version == aggregate.version
