"""Run a subsystem plugin's steps as the worker runtime does, without NATS.

Each step is encoded as a StepMessage (args as JSON, routed by the args Struct's tag), run by
the real `StepRunner`, and its outcome decoded, so tests exercise the same decoding and error
mapping as a worker.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

import msgspec

from kernel.contracts.steps import StepMessage, StepOutcome, step_encoder
from subsystems.registry import load_registry
from subsystems.runner import StepRunner

T = TypeVar("T")


class PluginSteps:
    """One plugin, opened, with a runner; `ok()` and `fail()` perform steps."""

    def __init__(self, subsystem: str, config: dict[str, Any] | None = None) -> None:
        self.plugin = load_registry([subsystem], {subsystem: config or {}}) \
            .plugin(subsystem).subsystem
        self.plugin.open()
        self.runner = StepRunner(self.plugin, worker="test")

    def run(self, args: msgspec.Struct, *, step_id: UUID | None = None,
            compensation: bool = False, deadline_seconds: float = 300.0) -> StepOutcome:
        """Perform one step; return its outcome."""
        tag = type(args).__struct_config__.tag
        assert isinstance(tag, str)
        subsystem, _, action = tag.partition(".")
        step = StepMessage(step_id=step_id or uuid4(), operation_id=uuid4(), attempt=1,
                           subsystem=subsystem, action=action,
                           args=msgspec.Raw(msgspec.json.encode(args)),
                           deadline_at=datetime.now(UTC) + timedelta(seconds=deadline_seconds),
                           compensation=compensation)
        verdict = self.runner.run(step_encoder.encode(step))
        assert verdict.outcome is not None
        return verdict.outcome

    def ok(self, args: msgspec.Struct, result_type: type[T], **kwargs: Any) -> T:
        """Perform a step that must succeed; its result decoded as `result_type`."""
        outcome = self.run(args, **kwargs)
        assert outcome.ok, f"{type(args).__name__} failed: {outcome.error_code} " \
                           f"{outcome.message}"
        return msgspec.json.decode(outcome.result, type=result_type)

    def fail(self, args: msgspec.Struct, **kwargs: Any) -> StepOutcome:
        """Perform a step that must fail; its outcome."""
        outcome = self.run(args, **kwargs)
        assert not outcome.ok, f"{type(args).__name__} unexpectedly succeeded: " \
                               f"{msgspec.json.decode(outcome.result)}"
        return outcome
