"""`cloudkernel audit`: the auditors' read commands over the platform log.

  history ENTITY          every event of an entity: position, time, topic, actor, operation
                          (correlation id) and cause
  as-of TIME [ENTITY]     an entity's state at a past moment, or the whole fleet's (counts by
                          kind and state, and a listing)
  diff T1 T2              entities created, changed and removed between two moments
  replay [MODEL...]       every read model rebuilt from the log and compared with the live one
  reality [--host H]      every host's libvirt objects compared with the model, each
                          difference named (gateways/cli/audit_reality.py)
  keygen, seal, verify,   the tamper-evident log (gateways/cli/audit_seal.py): signed Merkle
  prove, check-proof      checkpoints, verification, inclusion proofs

TIME is an ISO 8601 time with a timezone (2026-01-01T12:00:00Z, ...+02:00) or a log position
@N. Bad input (an unknown entity, a malformed time, a time before the log, T2 before T1) is
refused with the problem named and exit code 2.
"""

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aggregates.errors import ValidationError
from gateways.cli import audit_read as read
from kernel.settings import Settings

PROGRESS_OVER = 5000  # show a progress bar when the log has more events than this


def add_audit_command(sub: Any) -> None:
    """Register `audit` and its subcommands on the main parser's subcommands."""
    audit = sub.add_parser("audit", help="read the audit trail: history, as-of, diff",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = audit.add_subparsers(metavar="ACTION")
    h = actions.add_parser("history", help="every event of an entity, in log order")
    h.add_argument("entity", metavar="ENTITY",
                   help="an entity's id, or the name of the one VM, volume or host with it")
    h.set_defaults(run=cmd_history)
    a = actions.add_parser("as-of", help="an entity's or the fleet's state at a past moment")
    a.add_argument("time", metavar="TIME", help="ISO 8601 time with a timezone, or @POSITION")
    a.add_argument("entity", metavar="ENTITY", nargs="?", default=None,
                   help="an entity's id or name (default: the whole fleet)")
    a.set_defaults(run=cmd_as_of)
    d = actions.add_parser("diff", help="what changed between two moments")
    d.add_argument("t1", metavar="T1", help="ISO 8601 time with a timezone, or @POSITION")
    d.add_argument("t2", metavar="T2", help="a later moment, same forms")
    d.set_defaults(run=cmd_diff)
    for p in (h, a, d):
        p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    from gateways.cli.audit_replay import add_replay_command

    add_replay_command(actions)
    from gateways.cli.audit_reality import add_reality_command

    add_reality_command(actions)
    try:
        from gateways.cli.audit_seal import add_seal_commands
    except ImportError as e:  # only the module's absence; its own import errors propagate
        if e.name != "gateways.cli.audit_seal":
            raise
    else:
        add_seal_commands(actions)


def cmd_history(settings: Settings, args: argparse.Namespace) -> int:
    """Print every event of one entity."""
    with _app(settings) as app:
        entity_id = read.resolve(app, args.entity)
        with _progress(app, args.json) as progress:
            rows = read.history(app, entity_id, progress)
        current = app.repository.get(entity_id)
        head = read.summary_of(current)
    if args.json:
        print(json.dumps({"entity": head, "events": rows}, indent=2))
        return 0
    table = _table(f"{head['kind']} {head['name'] or ''} {head['id']} — {len(rows)} events",
                   "POS", "VER", "TIME", "TOPIC", "ACTOR", "OPERATION", "CAUSE")
    for r in rows:
        table.add_row(str(r["position"]), str(r["version"]), r["time"], r["topic"],
                      r["actor"] or "", r["correlation_id"] or "", r["causation_id"] or "")
    _print(table)
    return 0


def cmd_as_of(settings: Settings, args: argparse.Namespace) -> int:
    """Print an entity's fields, or the fleet's counts and listing, at a moment."""
    moment = read.parse_moment(args.time)
    with _app(settings) as app:
        read.check_moment(app, moment)
        if args.entity is not None:
            entity_id = read.resolve(app, args.entity)
            agg = read.entity_at(app, entity_id, moment)
            out: dict[str, Any] = {"moment": moment.as_json(), **read.summary_of(agg),
                                   "fields": read.fields_of(agg)}
        else:
            with _progress(app, args.json) as progress:
                fleet = read.fleet_at(app, moment, progress)
            out = {"moment": moment.as_json(), "total": len(fleet),
                   "counts": read.fleet_counts(fleet),
                   "entities": [read.summary_of(a) for a in
                                sorted(fleet.values(), key=lambda a: (read.kind_of(a),
                                                                      str(a.id)))]}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if args.entity is not None:
        table = _table(f"{out['kind']} {out['name'] or ''} {out['id']} at {moment.text} "
                       f"(version {out['version']}, state {out['state']})", "FIELD", "VALUE")
        for name, value in out["fields"].items():
            table.add_row(name, value if isinstance(value, str) else json.dumps(value))
        _print(table)
        return 0
    counts = _table(f"fleet at {moment.text}: {out['total']} entities", "KIND", "STATE",
                    "COUNT")
    for kind, states in out["counts"].items():
        for state, n in states.items():
            counts.add_row(kind, state, str(n))
    _print(counts)
    listing = _table("entities", "ID", "KIND", "NAME", "STATE")
    for row in out["entities"]:
        listing.add_row(row["id"], row["kind"], row["name"] or "", row["state"])
    _print(listing)
    return 0


def cmd_diff(settings: Settings, args: argparse.Namespace) -> int:
    """Print what was created, changed and removed between T1 and T2."""
    t1, t2 = read.parse_moment(args.t1, "T1"), read.parse_moment(args.t2, "T2")
    with _app(settings) as app:
        read.check_moment(app, t1)
        read.check_moment(app, t2)
        _check_order(app, t1, t2)
        with _progress(app, args.json) as progress:
            changes = read.diff(read.fleet_at(app, t1, progress),
                                read.fleet_at(app, t2, progress))
    out = {"from": t1.as_json(), "to": t2.as_json(), **changes}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    table = _table(f"changes from {t1.text} to {t2.text}", "CHANGE", "KIND", "NAME", "ID",
                   "STATE")
    for row in changes["created"]:
        table.add_row("created", row["kind"], row["name"] or "", row["id"], row["state"])
    for label in ("changed", "removed"):
        for row in changes[label]:
            table.add_row(label, row["kind"], row["name"] or "", row["id"],
                          f"{row['from_state']} -> {row['to_state']}")
    _print(table)
    for label in ("created", "changed", "removed"):
        counted = ", ".join(f"{k} {n}" for k, n in changes["counts"][label].items())
        print(f"{label}: {sum(changes['counts'][label].values())}"
              + (f" ({counted})" if counted else ""))
    return 0


def _check_order(app: Any, t1: read.Moment, t2: read.Moment) -> None:
    """Refuse T2 before T1 (a time and a position are compared by the event at the position)."""
    def when(m: read.Moment) -> Any:
        if m.time is not None:
            return m.time
        note = app.recorder.select_notifications(start=m.position, limit=1)[0]
        return app.mapper.to_domain_event(note).timestamp

    if t1.position is not None and t2.position is not None:
        before = t2.position < t1.position
    else:
        before = when(t2) < when(t1)
    if before:
        raise ValidationError(f"T2 {t2.text} is before T1 {t1.text}")


@contextmanager
def _app(settings: Settings) -> Iterator[Any]:
    from kernel.bootstrap import open_platform

    platform = open_platform(settings)
    try:
        yield platform.app
    finally:
        platform.close()


@contextmanager
def _progress(app: Any, quiet: bool) -> Iterator[read.Progress | None]:
    """A progress bar on stderr while reading a long log (none for --json or a short log)."""
    if quiet or read.max_position(app) <= PROGRESS_OVER:
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("reading the log", total=read.max_position(app))

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def _table(title: str, *columns: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _print(renderable: Any) -> None:
    from rich.console import Console

    Console(width=200).print(renderable)
