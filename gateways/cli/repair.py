"""`cloudkernel repair ENTITY --to STATE --reason TEXT`: un-stick a VM or a volume, audited."""

import argparse
import json
import os
from typing import Any
from uuid import UUID, uuid4

from aggregates.errors import NotFoundError, ValidationError
from kernel.settings import Settings

HELP = "force a VM or volume stuck in a transition to a settled state (audited)"
DESCRIPTION = """\
Force a VM or a volume that an outside failure left stuck in a transition (or a VM left in
Error) to a settled state, instead of editing the database. The repair is a command like any
other: it records vm.Repaired or volume.Repaired with the state left, the state set, the
reason and the actor, in the log, the event stream and the audit index.

  VM:      Starting, Stopping, Migrating  -> Running, Stopped or Error
           Error                          -> Running or Stopped
           Expunging                      -> Error (then vm.destroy removes what is left)
  volume:  Creating -> Allocated;  Attaching, Migrating, Resizing, Snapshotting -> Ready;
           Expunging -> Destroy (then volume.delete tries the delete again)

Capacity follows the state: Stopped or Error gives back the VM's host claims, Running keeps
(or takes) the one on its host and gives back any other; a volume gives back what its failed
operation would have (pool claims, a half-taken snapshot).

Refused, with the reason and what to do instead (exit code 2):
  * an entity an unfinished operation holds: cancel that operation first (operation.cancel);
  * an operation (cancel it instead), or anything but a VM or a volume;
  * a settled entity (Running, Stopped, Ready...): use the ordinary commands;
  * a target that is a transition, or Expunged, or not reachable from the current state
    (a volume never created cannot be Ready; a VM being expunged cannot run);
  * a VM forced to Running or Stopped without a Ready root volume, or to Running on no host
    or on a host without room for it;
  * a reason shorter than 8 characters.
"""


def add_repair_command(sub: Any) -> None:
    """Register `repair` on the main parser's subcommands."""
    p = sub.add_parser("repair", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("entity", metavar="ENTITY",
                   help="the VM's or volume's id, or its name when one VM or volume has it")
    p.add_argument("--to", dest="to_state", required=True, metavar="STATE",
                   help="the state to set: Running, Stopped or Error for a VM; Allocated, "
                        "Ready or Destroy for a volume")
    p.add_argument("--reason", required=True, metavar="TEXT",
                   help="why (at least 8 characters); recorded with the repair")
    p.add_argument("--actor", default=None, metavar="NAME",
                   help="who repairs, recorded as the event's actor (default: the OS user)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=cmd_repair)


def cmd_repair(settings: Settings, args: argparse.Namespace) -> int:
    """Run `entity.repair` through the engine's command path and print what changed."""
    from kernel.bootstrap import open_engine
    from kernel.cloud.repair import RepairDone, RepairEntity

    actor = (args.actor if args.actor is not None else os_user()).strip()
    if not actor or not actor.isprintable():
        raise ValidationError("--actor: a printable name is required")
    if not args.reason.strip():
        raise ValidationError("--reason: say why the entity is repaired")
    platform, engine, _ = open_engine(settings)
    try:
        entity_id = resolve_entity(platform.app, args.entity)
        key = f"repair-{uuid4()}"
        outcome = engine.execute(RepairEntity(entity_id=entity_id, to_state=args.to_state,
                                              reason=args.reason),
                                 idempotency_key=key, actor=actor)
        done = outcome.decode(RepairDone)
        position = _event_position(platform.app, outcome.positions, f"{done.kind}.Repaired")
    finally:
        platform.close()
    if args.json:
        print(json.dumps({
            "entity_id": str(done.entity_id), "kind": done.kind, "name": done.name,
            "from_state": done.from_state, "to_state": done.to_state, "reason": done.reason,
            "actor": actor, "also": list(done.also), "event_position": position,
            "positions": list(outcome.positions), "idempotency_key": key}, indent=2))
        return 0
    print(f"{done.kind} {done.name} ({done.entity_id}): {done.from_state} -> {done.to_state}")
    print(f"  reason: {done.reason}")
    print(f"  actor:  {actor}")
    print(f"  event:  {done.kind}.Repaired at log position {position}")
    for line in done.also:
        print(f"  also:   {line}")
    return 0


def os_user() -> str:
    """The name of the user running the command (its real uid's, not the environment's)."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return f"uid:{os.getuid()}"


def resolve_entity(app: Any, text: str) -> UUID:
    """An id as given, or the id of the one VM or volume with that name (expunged ones only
    when nothing else has it)."""
    try:
        return UUID(text.strip())
    except ValueError:
        pass
    name = text.strip()
    found: list[Any] = []
    for topic in ("vm.Allocated", "volume.Allocated"):
        start = 0
        while True:
            notes = app.recorder.select_notifications(start=start, limit=1000, topics=(topic,),
                                                      inclusive_of_start=False)
            for note in notes:
                if app.mapper.to_domain_event(note).name == name:
                    found.append(app.repository.get(note.originator_id))
            if len(notes) < 1000:
                break
            start = notes[-1].id
    live = [e for e in found if e.state.value != "Expunged"] or found
    if not live:
        raise NotFoundError(f"no VM or volume is named {name!r} (give its id)")
    if len(live) > 1:
        listed = ", ".join(f"{e.KIND} {e.id} ({e.state.value})" for e in live)
        raise ValidationError(f"{name!r} names more than one entity: {listed}; give the id")
    return live[0].id  # type: ignore[no-any-return]


def _event_position(app: Any, positions: tuple[int, ...], topic: str) -> int | None:
    """The log position of the repair's own event among the command's."""
    if not positions:
        return None
    notes = app.recorder.select_notifications(start=min(positions), limit=len(positions),
                                              stop=max(positions), topics=(topic,))
    return next((n.id for n in notes if n.id in positions), None)
