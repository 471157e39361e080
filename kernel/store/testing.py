"""Helpers for tests: the real mapper and recorder on an in-memory SQLite database."""

from typing import Any, TypeVar
from uuid import uuid4

from kernel.store.application import SQLITE_RECORDER, KernelApplication

A = TypeVar("A")


class ScratchApplication(KernelApplication):
    """An application on a private in-memory SQLite database."""

    name = "scratch"


def scratch_application() -> ScratchApplication:
    """A fresh application whose store lives only in this process's memory."""
    return ScratchApplication(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": f"file:ck_{uuid4().hex}?mode=memory&cache=shared",
            "APPLICATION_RECORDER_TOPIC": SQLITE_RECORDER,
            "CREATE_TABLE": "y",
        }
    )


_shared: ScratchApplication | None = None


def roundtrip(aggregate: A) -> A:
    """Save the aggregate's pending events through the real store and read it back."""
    global _shared
    if _shared is None:
        _shared = scratch_application()
    _shared.save(aggregate)  # type: ignore[arg-type]
    loaded: Any = _shared.repository.get(aggregate.id)  # type: ignore[attr-defined]
    return loaded  # type: ignore[no-any-return]
