"""Whose resource a command acts on: what every gateway passes to `AccessControl.authorize`.

A command that creates a resource names its account; one that acts on an existing resource
names it by id (`vm_id`, `volume_id`, `snapshot_id`, `backup_id`, `address_id`), and the
resource's account owns it. Gateways differ only in where they look the account up (the admin
API in its read models, the NATS intake in the store), so they pass that lookup in.
"""

from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from aggregates.errors import NotFoundError

OWNED_BY_ID = ("vm_id", "volume_id", "snapshot_id", "backup_id", "address_id")
# The read model that names the owning account of a command's target, by id field.
OWNER_MODELS = {"vm_id": "vms", "volume_id": "volumes", "snapshot_id": "snapshots",
                "address_id": "addresses"}

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


def names_target(command: Any) -> bool:
    """Whether the command names an account's resource by id (its target, or another)."""
    return any(isinstance(getattr(command, field, None), UUID) for field in OWNED_BY_ID)


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


def read_model_lookup(views: Mapping[str, Any]) -> AccountLookup:
    """Accounts read from the read models (`views`: by name, those followed here)."""
    def lookup(field: str, target: UUID) -> str | None:
        model = OWNER_MODELS.get(field)
        if model is None or model not in views:
            return None
        row = views[model].get(target)
        return None if row is None else str(row["account"])

    return lookup
