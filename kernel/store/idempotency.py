"""Idempotency records: a command's key, the fingerprint of its payload, and its first result."""

import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

import msgspec


class IdempotencyRecord(msgspec.Struct, frozen=True):
    """What a recorder writes beside a command's events, in the same transaction."""

    key: str
    fingerprint: bytes
    result: bytes


def records_of(kwargs: Mapping[str, Any]) -> list[IdempotencyRecord]:
    """The idempotency records a save was given: none, one, or a batch of commands' records."""
    given = kwargs.get("idempotency")
    if given is None:
        return []
    if isinstance(given, IdempotencyRecord):
        return [given]
    return list(given)


def fingerprint(payload: bytes) -> bytes:
    """A stable digest of a command's canonical payload."""
    return hashlib.sha256(payload).digest()


class IdempotencyLedger(Protocol):
    """Reads the idempotency records a recorder wrote (SQLite and PostgreSQL recorders do)."""

    def lookup_idempotency(self, key: str) -> IdempotencyRecord | None:
        """The record for `key`, or None if the key was never used."""
        ...
