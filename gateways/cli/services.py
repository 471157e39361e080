"""`cloudkernel services`: the Services Directory: list, show, enable, disable, deregister.

Registrations are read from the platform's event store; enable, disable and deregister run
through the platform's command service (audited, with the OS user as the actor, like
`cloudkernel repair`). Live instances come from the NATS KV bucket the services heartbeat
into, when NATS is reachable; otherwise the output says that liveness is unknown.
"""

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

from aggregates.errors import ConfigError, NotFoundError, ValidationError
from kernel.contracts.services import require_service_name
from kernel.settings import Settings

HELP = "the Services Directory: registered services, their live instances, enable/disable"
NATS_TIMEOUT = 2.0


def add_services_commands(sub: Any) -> None:
    """Register `services ...` on the main parser's subcommands."""
    p = sub.add_parser("services", help=HELP, description=HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_list)
    actions = p.add_subparsers(metavar="ACTION")
    ls = actions.add_parser("list", help="every registered service (the default)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(run=cmd_list)
    show = actions.add_parser("show", help="one service with its live instances")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    show.set_defaults(run=cmd_show)
    key = actions.add_parser(
        "key", help="write a service's key to a file, to run it on another machine",
        description="Write the service's own key (made in the keyring if it has none) to FILE "
                    "(mode 0600). Copy it to <data_dir>/services/NAME.key on the machine that "
                    "runs the service.")
    key.add_argument("name", metavar="NAME")
    key.add_argument("--out", required=True, type=Path, metavar="FILE")
    key.set_defaults(run=cmd_key)
    for action, help_ in (("enable", "switch a service on"),
                          ("disable", "switch a service off (it keeps running, refusing its "
                                      "own clients); orchestration is not affected"),
                          ("deregister", "remove a service from the directory")):
        q = actions.add_parser(action, help=help_, description=help_)
        q.add_argument("name", metavar="NAME")
        if action == "disable":
            q.add_argument("--reason", required=True, metavar="TEXT", help="why (recorded)")
        q.add_argument("--actor", default=None, metavar="NAME",
                       help="who does it, recorded as the event's actor (default: the OS user)")
        q.add_argument("--json", action="store_true", help="print JSON instead of text")
        q.set_defaults(run=cmd_switch, action=action)


def cmd_key(settings: Settings, args: argparse.Namespace) -> int:
    """Write a service's key to a file for another machine."""
    from gateways.service_keys import export_service_key

    if args.out.exists() and args.out.is_dir():
        raise ValidationError(f"--out {args.out} is a directory; name a file")
    made = export_service_key(settings, args.name, args.out)
    print(f"service {args.name}: key {made.key_id} written to {args.out} (mode 0600); copy it "
          f"to <data_dir>/services/{args.name}.key where the service runs")
    return 0


def _registrations(settings: Settings, name: str | None = None) -> list[dict[str, Any]]:
    from gateways.stream.services_directory import StoreRegistrations
    from kernel.bootstrap import open_platform

    platform = open_platform(settings)
    try:
        source = StoreRegistrations(platform.app)
        if name is None:
            return source.all()
        found = source.get(name)
    finally:
        platform.close()
    if found is None:
        raise NotFoundError(f"no service {name!r} is registered (see `cloudkernel services`)")
    return [found]


def live_instances_or_none(settings: Settings,
                           name: str | None = None) -> tuple[list[dict[str, Any]] | None, str]:
    """The live instances from the KV bucket, or None and why when NATS is unreachable."""
    import msgspec

    from kernel.contracts.connection import connect
    from kernel.contracts.liveness import live_instances

    async def read() -> list[dict[str, Any]]:
        nc = await connect(settings.nats_servers, name="cloudkernel-cli",
                           timeout=NATS_TIMEOUT)
        try:
            found = await live_instances(nc.jetstream(), name)
            return [msgspec.to_builtins(h) for h in found]
        finally:
            await nc.close()

    try:
        return asyncio.run(read()), ""
    except (ConfigError, OSError, TimeoutError) as e:
        return None, f"live instances unknown: NATS at {', '.join(settings.nats_servers)} " \
                     f"is not reachable ({type(e).__name__})"
    except Exception as e:  # a NATS without JetStream, or another refusal
        return None, f"live instances unknown: {type(e).__name__}: {e}"


def _joined(docs: Sequence[dict[str, Any]], live: list[dict[str, Any]] | None,
            note: str) -> list[dict[str, Any]]:
    out = []
    for doc in docs:
        mine = None if live is None else [h for h in live if h["name"] == doc["name"]]
        out.append({**doc, "live": None if mine is None else len(mine), "instances": mine,
                    **({"liveness": note} if note else {})})
    return out


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    """Print every registered service with how many instances are alive."""
    docs = _registrations(settings)
    live, note = live_instances_or_none(settings) if docs else ([], "")
    rows = _joined(docs, live, note)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print("no services are registered")
        return 0
    table = [("NAME", "VERSION", "STATE", "LIVE", "ENDPOINTS")]
    for r in rows:
        table.append((r["name"], r["version"], r["state"],
                      "?" if r["live"] is None else str(r["live"]),
                      " ".join(f"{k}={v}" for k, v in r["endpoints"].items())))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    if note:
        print(f"({note})")
    return 0


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    """Print one service: its registration and live instances."""
    name = require_service_name(args.name)
    docs = _registrations(settings, name)
    live, note = live_instances_or_none(settings, name)
    [doc] = _joined(docs, live, note)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    print(f"service {doc['name']} {doc['version']}: {doc['state']}"
          f"{' (' + doc['disabled_reason'] + ')' if doc['disabled_reason'] else ''}")
    if doc["description"]:
        print(f"  {doc['description']}")
    for key, url in doc["endpoints"].items():
        print(f"  endpoint  {key}: {url}")
    for subject in doc["consumes"]:
        print(f"  consumes  {subject}")
    for subject in doc["publishes"]:
        print(f"  publishes {subject}")
    print(f"  registered {doc['registered_at']}, updated {doc['updated_at']}")
    if doc["instances"] is None:
        print(f"  ({note})")
    elif not doc["instances"]:
        print("  no live instance")
    for h in doc["instances"] or ():
        print(f"  instance {h['instance_id']} on {h['host']} pid {h['pid']} "
              f"{h['version']}, last heartbeat {time.time() - h['at']:.1f}s ago"
              f"{'' if h['enabled'] else ', disabled'}")
    return 0


def cmd_switch(settings: Settings, args: argparse.Namespace) -> int:
    """Run service.enable, service.disable or service.deregister through the platform."""
    from gateways.cli.repair import os_user
    from kernel.bootstrap import open_platform
    from kernel.cloud.services import (
        DeregisterService,
        DisableService,
        EnableService,
        ServiceChanged,
    )

    name = require_service_name(args.name)
    actor = (args.actor if args.actor is not None else os_user()).strip()
    if not actor or not actor.isprintable():
        raise ValidationError("--actor: a printable name is required")
    if actor.startswith("service:"):
        raise ValidationError("--actor: service:* actors are the services' own keys")
    command: Any
    if args.action == "enable":
        command = EnableService(name=name)
    elif args.action == "disable":
        command = DisableService(name=name, reason=args.reason)
    else:
        command = DeregisterService(name=name)
    platform = open_platform(settings)
    try:
        outcome = platform.commands.execute(command, idempotency_key=f"cli-{uuid4()}",
                                            actor=actor)
    finally:
        platform.close()
    done = outcome.decode(ServiceChanged)
    if args.json:
        print(json.dumps({"name": done.name, "change": done.change, "state": done.state,
                          "enabled": done.enabled, "actor": actor,
                          "positions": list(outcome.positions)}, indent=2))
        return 0
    what = "already " + done.state.lower() if done.change == "unchanged" else done.change
    print(f"service {done.name}: {what}")
    return 0
