"""ImageStore: adding, read-only and removal."""

from collections.abc import Callable
from uuid import uuid4

import pytest

from aggregates.base import audit_context
from aggregates.errors import InvalidTransitionError, ValidationError
from aggregates.image_store import ImageStore, ImageStoreProtocol, ImageStoreState
from kernel.store.testing import roundtrip

Refused = Callable[..., InvalidTransitionError]


def make_store(**overrides: object) -> ImageStore:
    """A valid NFS image store."""
    args: dict = {"name": f"sec-{uuid4().hex[:8]}", "zone_id": uuid4(),
                  "url": "nfs://10.0.0.6/export/secondary"}
    args.update(overrides)
    return ImageStore.add(**args)


def test_add_defaults() -> None:
    store = make_store(name="sec1", zone_id=None, protocol=ImageStoreProtocol.S3,
                       url="https://s3.example.com/bucket")
    assert store.id == ImageStore.create_id("sec1")
    assert store.zone_id is None and store.writable
    assert store.state is ImageStoreState.READ_WRITE


@pytest.mark.parametrize("overrides", [{"name": ""}, {"url": "10.0.0.6:/export"}])
def test_bad_arguments_are_refused(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        make_store(**overrides)


def test_read_only_and_remove(refused: Refused) -> None:
    store = make_store()
    refused(store, store.make_read_write, "make read-write")
    store.make_read_only()
    assert not store.writable
    refused(store, store.make_read_only, "make read-only")
    store.make_read_write()
    store.remove()
    assert store.state is ImageStoreState.REMOVED
    refused(store, store.remove, "remove")
    refused(store, store.make_read_only, "make read-only")
    assert roundtrip(store) == store


def test_audit_metadata_lands_on_events() -> None:
    with audit_context("bob"):
        store = make_store()
        store.make_read_only()
    assert {e.actor for e in store.pending_events} == {"bob"}
