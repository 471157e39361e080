"""Fixtures for the aggregate unit tests."""

from collections.abc import Callable
from typing import Any

import pytest

from aggregates.base import PlatformAggregate
from aggregates.errors import InvalidTransitionError

Refused = Callable[[PlatformAggregate, Callable[[], Any], str], InvalidTransitionError]


def _assert_refused(aggregate: PlatformAggregate, call: Callable[[], Any],
                    action: str) -> InvalidTransitionError:
    """Call, expect InvalidTransitionError naming entity, state and action, and no change."""
    version, pending = aggregate.version, len(aggregate.pending_events)
    state = aggregate.state  # type: ignore[attr-defined]
    with pytest.raises(InvalidTransitionError) as info:
        call()
    error = info.value
    message = str(error)
    assert aggregate.KIND in message
    assert str(aggregate.id) in message
    assert state.value in message
    assert action in message
    assert error.action == action and error.state is state
    assert error.to_dict()["state"] == state.value
    assert aggregate.version == version
    assert len(aggregate.pending_events) == pending
    return error


@pytest.fixture
def refused() -> Refused:
    """Assert that a call is refused as an invalid transition and changes nothing."""
    return _assert_refused
