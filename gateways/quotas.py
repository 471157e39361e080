"""Resource limits at the gateway: the ACL service knows each account's and domain's limits,
the read models know what each account uses; a command that would pass a limit of its account,
or of a domain above it (counting every account of that domain's subtree), is refused before
it runs (and writes nothing).

Usage counts what still holds resources: VMs not Destroyed/Expunging/Expunged (their cpu and
memory from their offerings), volumes not Expunged (their GiB, rounded up), public addresses
not released.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from aggregates.offering import ServiceOffering

GIB = 1024**3
_GONE_VMS = frozenset({"Destroyed", "Expunging", "Expunged"})
_GONE_VOLUMES = frozenset({"Expunged"})
_LIMITED = ("vm.deploy", "volume.create", "address.allocate")


@dataclass(frozen=True)
class QuotaContext:
    """Where limits and usage come from: the access control (the ACL's limits), the platform
    application (offerings) and the read models (what each account holds)."""

    access: Any
    app: Any
    views: Mapping[str, Any]  # read-model name -> RowView; vms and volumes are counted

    def view(self, name: str) -> Any:
        """The read model with this name."""
        return self.views[name]


def quota_check(access: Any, app: Any,
                views: Mapping[str, Any]) -> Callable[[str, Any, str | None], None]:
    """`check_quota` bound to these sources: what the NATS intake calls before a command."""
    ctx = QuotaContext(access, app, views)
    return lambda tag, command, owner: check_quota(ctx, tag, command, owner)


def check_quota(ctx: Any, tag: str, command: Any, owner: str | None) -> None:
    """Refuse (ForbiddenError naming the limit) a vm.deploy, volume.create or address.allocate
    that would pass a limit of its account or of a domain above it; other commands pass.
    `ctx` has `access`, `app` and `view(name)` (the admin API's context, or a QuotaContext)."""
    check = getattr(ctx.access, "check_limits", None)
    governs = getattr(ctx.access, "governs", None)
    if owner is None or check is None or tag not in _LIMITED:
        return
    if governs is not None and not governs(owner):
        return  # no limit applies to this account (or the ACL does not know it)
    if tag == "vm.deploy":
        offering = _offering(ctx, command.service_offering_id)
        if offering is None:
            return  # the command itself refuses an unknown offering
        delta = {"vms": 1, "cpu_cores": offering.cpu_cores,
                 "memory_mib": offering.memory_mib}
    elif tag == "address.allocate":
        delta = {"public_addresses": 1}
    else:
        size = getattr(command, "size_bytes", None) or 0
        delta = {"volumes": 1, "volume_gib": -(-size // GIB)}
    used = {owner: usage(ctx, owner)}
    subtrees = getattr(ctx.access, "domain_accounts", None)
    domain_usage: dict[str, dict[str, int]] = {}
    for path, accounts in (subtrees(owner) if subtrees is not None else {}).items():
        total = dict.fromkeys(used[owner], 0)
        for account in accounts:
            if account not in used:
                used[account] = usage(ctx, account)
            for counter, value in used[account].items():
                total[counter] += value
        domain_usage[path] = total
    check(owner, used[owner], delta, domain_usage=domain_usage)


def usage(ctx: Any, account: str) -> dict[str, int]:
    """What the account holds now, by counter."""
    used = {"vms": 0, "cpu_cores": 0, "memory_mib": 0, "volumes": 0, "volume_gib": 0,
            "public_addresses": 0}
    offerings: dict[UUID, ServiceOffering | None] = {}
    for row in _rows(ctx, "vms", account):
        if row["state"] in _GONE_VMS:
            continue
        offering_id = row["offering_id"]
        if offering_id not in offerings:
            offerings[offering_id] = _offering(ctx, offering_id)
        used["vms"] += 1
        known = offerings[offering_id]
        if known is not None:
            used["cpu_cores"] += known.cpu_cores
            used["memory_mib"] += known.memory_mib
    for row in _rows(ctx, "volumes", account):
        if row["state"] not in _GONE_VOLUMES:
            used["volumes"] += 1
            used["volume_gib"] += -(-int(row["size_bytes"]) // GIB)
    used["public_addresses"] = sum(1 for row in _rows(ctx, "addresses", account)
                                   if row["state"] == "Allocated")
    return used


def _rows(ctx: Any, model: str, account: str) -> list[dict[str, Any]]:
    try:
        view = ctx.view(model)
    except KeyError:
        return []  # that read model is not followed here: nothing counted from it
    return list(view.all_rows(account=account))


def _offering(ctx: Any, offering_id: UUID) -> ServiceOffering | None:
    try:
        found: object = ctx.app.repository.get(offering_id)
    except AggregateNotFoundError:
        return None
    return found if isinstance(found, ServiceOffering) else None
