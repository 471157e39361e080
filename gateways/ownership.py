"""Whose resource a command acts on: what every gateway passes to `AccessControl.authorize`.

A command that creates a resource names its account; one that acts on an existing resource
names it by id (`vm_id`, `volume_id`, `snapshot_id`, `backup_id`), and the resource's account
owns it. Gateways differ only in where they look the account up (the admin API in its read
models, the NATS intake in the store), so they pass that lookup in.
"""

from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from aggregates.errors import NotFoundError

OWNED_BY_ID = ("vm_id", "volume_id", "snapshot_id", "backup_id")

# (field, id) -> the owning account, or None when not found
AccountLookup = Callable[[str, UUID], str | None]


def owner_of(command: Any, lookup: AccountLookup) -> str | None:
    """The account that owns the command's target, or that a new resource will belong to;
    None when the command names no account's resource (inventory, hosts, templates...)."""
    account = getattr(command, "account", None)
    if isinstance(account, str):
        return account
    for field in OWNED_BY_ID:
        target = getattr(command, field, None)
        if isinstance(target, UUID):
            found = lookup(field, target)
            if found is not None:
                return found
    return None


def store_lookup(repository: Any) -> AccountLookup:
    """Accounts read from the aggregates themselves (the kernel's store)."""
    def lookup(_field: str, target: UUID) -> str | None:
        try:
            found = repository.get(target)
        except (AggregateNotFoundError, NotFoundError):
            return None
        account = getattr(found, "account", None)
        return account if isinstance(account, str) else None

    return lookup
