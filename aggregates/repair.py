"""Repairs: an entity stuck in a transition (or in Error) forced to a settled state.

CloudStack operators fix a VM stuck in Starting or a volume stuck in Migrating by hand, with
SQL. Here a repair is an event of the entity (`VirtualMachine.Repaired`, `Volume.Repaired`)
carrying the state it left, the state it was forced to and the operator's reason; the actor
comes from the audit metadata, like every event's.

A repair is refused when it could hurt:

* from a settled state (Running, Ready...): the ordinary operations change those;
* into a transition (only an operation puts an entity there) or into Expunged (only an
  expunge does, once the storage and addresses are gone);
* into a state the entity's records cannot support (a volume that never learned where its
  storage is cannot be Ready; a VM whose disks were being removed cannot run again);
* without a reason of at least `MIN_REASON_LENGTH` characters.

The rules are tables of state values (strings), so that this module needs neither the VM nor
the volume module; `check_repair` applies them, and each aggregate's `repair` method adds
what only it knows. What a repair does to other entities (host and pool claims, a snapshot)
is the kernel's part (`kernel.cloud.repair`).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from aggregates.errors import DomainRuleError, ValidationError

MIN_REASON_LENGTH = 8
MAX_REASON_LENGTH = 1000


class RepairRefusedError(DomainRuleError):
    """A repair would be dangerous or pointless; the message says what to do instead."""

    code = "repair_refused"


@dataclass(frozen=True)
class RepairRules:
    """Which stuck states of one entity kind a repair leaves, for which settled states."""

    kind: str
    # stuck state -> the settled states a repair may force it to
    stuck: Mapping[str, tuple[str, ...]]
    # settled state -> the commands that change it instead
    settled: Mapping[str, str]
    # (from, to) -> why that repair is refused and what to do instead
    refused: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # a state no repair sets -> the command that reaches it
    reached_by: Mapping[str, str] = field(default_factory=dict)

    @property
    def targets(self) -> tuple[str, ...]:
        """Every state a repair of this kind may set, in a stable order."""
        return tuple(dict.fromkeys(t for ts in self.stuck.values() for t in ts))

    def state(self, state_type: type[Enum], name: str) -> Any:
        """The state named `name` (any case); ValidationError listing the repair targets."""
        for state in state_type:
            if state.value.lower() == str(name).strip().lower():
                return state
        raise ValidationError(f"to_state: {name!r} is not a {self.kind} state; a {self.kind} is "
                              f"repaired to one of {', '.join(self.targets)}")


VM_REPAIRS = RepairRules(
    kind="vm",
    stuck={
        "Starting": ("Running", "Stopped", "Error"),
        "Stopping": ("Running", "Stopped", "Error"),
        "Migrating": ("Running", "Stopped", "Error"),
        "Error": ("Running", "Stopped"),
        "Expunging": ("Error",),
    },
    settled={
        "Allocated": "vm.destroy removes it",
        "Running": "use vm.stop, vm.reboot, vm.migrate or vm.destroy",
        "Stopped": "use vm.start or vm.destroy",
        "Destroyed": "its expunge (vm.destroy) removes it",
        "Expunged": "it is gone for good",
    },
    refused={
        ("Expunging", "Running"): "its disks and addresses were being removed; repair it to "
                                  "Error, then vm.destroy removes what is left",
        ("Expunging", "Stopped"): "its disks and addresses were being removed; repair it to "
                                  "Error, then vm.destroy removes what is left",
    },
    reached_by={"Allocated": "vm.deploy", "Starting": "vm.start", "Stopping": "vm.stop",
                "Migrating": "vm.migrate", "Destroyed": "vm.destroy",
                "Expunging": "vm.destroy"},
)

VOLUME_REPAIRS = RepairRules(
    kind="volume",
    stuck={
        "Creating": ("Allocated",),
        "Attaching": ("Ready",),
        "Migrating": ("Ready",),
        "Resizing": ("Ready",),
        "Snapshotting": ("Ready",),
        "Expunging": ("Destroy",),
    },
    settled={
        "Allocated": "use volume.delete",
        "Ready": "use volume.attach, volume.detach, volume.resize, volume.migrate, "
                 "volume.snapshot or volume.delete",
        "Destroy": "volume.delete expunges it",
        "Expunged": "it is gone for good",
    },
    refused={
        ("Creating", "Ready"): "the kernel never learned where its storage is (no path); "
                               "repair it to Allocated, then volume.delete removes it",
        ("Creating", "Destroy"): "repair it to Allocated, then volume.delete removes it",
        ("Expunging", "Ready"): "its storage was being deleted; repair it to Destroy, then "
                                "volume.delete tries the delete again",
        ("Expunging", "Allocated"): "its storage was being deleted; repair it to Destroy, "
                                    "then volume.delete tries the delete again",
    },
    reached_by={"Creating": "volume.create", "Attaching": "volume.attach",
                "Migrating": "volume.migrate", "Resizing": "volume.resize",
                "Snapshotting": "volume.snapshot", "Expunging": "volume.delete"},
)

NEVER_REASON = {
    "Expunged": "a repair never removes an entity: only an expunge does, once its storage "
                "and addresses are gone",
}


def check_reason(label: str, reason: str) -> str:
    """The reason of a repair of `label`, stripped; ValidationError if too short or long."""
    why = reason.strip() if isinstance(reason, str) else ""
    if len(why) < MIN_REASON_LENGTH:
        raise ValidationError(f"reason: say why {label} is repaired, in at least "
                              f"{MIN_REASON_LENGTH} characters (it is recorded with the repair)")
    if len(why) > MAX_REASON_LENGTH:
        raise ValidationError(f"reason: at most {MAX_REASON_LENGTH} characters")
    return why


def check_repair(rules: RepairRules, label: str, state: Enum, to_state: Enum,
                 reason: str) -> str:
    """Refuse a repair of the entity `label` from `state` to `to_state` that the rules do
    not allow (RepairRefusedError, saying what to do instead); return the reason, stripped."""
    why = check_reason(label, reason)
    src, dst = state.value, to_state.value
    refusal = f"{label} is {src}: cannot repair it to {dst}"
    if dst in NEVER_REASON:
        raise RepairRefusedError(f"{refusal}: {NEVER_REASON[dst]}")
    if dst not in rules.targets:
        how = rules.reached_by.get(dst, f"the {rules.kind} operations")
        raise RepairRefusedError(f"{refusal}: a repair sets only {', '.join(rules.targets)}; "
                                 f"{dst} is reached through {how}")
    if src in rules.settled:
        raise RepairRefusedError(f"{label} is {src}, a settled state: nothing is stuck, so "
                                 f"there is nothing to repair; {rules.settled[src]}")
    if src == dst:
        raise RepairRefusedError(f"{label} is {src} already")
    if (src, dst) in rules.refused:
        raise RepairRefusedError(f"{refusal}: {rules.refused[src, dst]}")
    allowed = rules.stuck.get(src, ())
    if dst not in allowed:
        raise RepairRefusedError(f"{refusal}: from {src} a repair sets "
                                 f"{' or '.join(allowed) or 'nothing'}")
    return why
