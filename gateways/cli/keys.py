"""`cloudkernel keys create|list|revoke`: the keys integrators sign their commands with."""

import argparse
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from gateways.access import ApiKey, Keyring, keys_path
from gateways.cli.intake import add_intake_command
from kernel.contracts.access import ROLES
from kernel.settings import Settings


def add_keys_commands(sub: Any) -> None:
    """Register `keys ...` and `intake` on the main parser's subcommands."""
    keys = sub.add_parser("keys", help="API keys that sign integrators' commands over NATS",
                          description="API keys that sign integrators' commands over NATS "
                                      "(the keyring is setting keys_file, default "
                                      "<data_dir>/keys.json)")
    actions = keys.add_subparsers(metavar="ACTION")
    create = actions.add_parser("create", help="create a key; its secret is printed only once")
    create.add_argument("--actor", required=True, metavar="NAME",
                        help="who the key acts as; recorded as the actor of every event")
    create.add_argument("--role", required=True, choices=ROLES,
                        help="admin: every command; integrator: the commands given by --allow")
    create.add_argument("--allow", action="extend", nargs="+", default=[], metavar="TAG",
                        help="command tags an integrator key may send; globs like operation.*")
    create.add_argument("--expires-in", type=float, default=None, metavar="DAYS",
                        help="the key stops working after this many days (default: never)")
    create.set_defaults(run=cmd_keys_create)
    listing = actions.add_parser("list", help="list the keys (never their secrets)")
    listing.set_defaults(run=cmd_keys_list)
    revoke = actions.add_parser("revoke", help="revoke a key for good; a running intake "
                                               "refuses it from its next request")
    revoke.add_argument("key_id", metavar="ID")
    revoke.set_defaults(run=cmd_keys_revoke)
    add_intake_command(sub)


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    """Create a key and print its id and secret."""
    keyring = Keyring(keys_path(settings))
    key = keyring.create(actor=args.actor, role=args.role, allow=args.allow,
                         expires_in_days=args.expires_in)
    known = sorted(_known_tags())
    for pattern in key.allow:
        if not any(fnmatchcase(tag, pattern) for tag in known):
            print(f"cloudkernel: warning: --allow {pattern!r} matches no command this kernel "
                  f"knows ({', '.join(known)})", file=sys.stderr)
    print(f"created key for {key.actor} ({_rights(key)}; expires {_when(key.expires)}) "
          f"in {keyring.path}")
    print(f"key id: {key.id}")
    print(f"secret: {key.secret}")
    print("The secret is shown only now: hand it to the integrator over a safe channel.")
    return 0


def cmd_keys_list(settings: Settings, _: argparse.Namespace) -> int:
    """List every key with its state; never its secret."""
    keyring = Keyring(keys_path(settings))
    keys = keyring.entries()
    if not keys:
        print(f"no keys in {keyring.path}; create one with `cloudkernel keys create`")
        return 0
    now = datetime.now(UTC)
    header = ("ID", "ACTOR", "ROLE", "ALLOWS", "CREATED", "EXPIRES", "STATUS")
    rows = [(k.id, k.actor, k.role, " ".join(k.allow) or "*", _when(k.created),
             _when(k.expires), k.status(now)) for k in keys]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    """Revoke one key."""
    key, changed = Keyring(keys_path(settings)).revoke(args.key_id)
    print(f"key {key.id} ({key.actor}) {'revoked' if changed else 'was already revoked'}")
    return 0


def _rights(key: ApiKey) -> str:
    return "admin: every command" if key.role == "admin" else \
        f"integrator: {', '.join(key.allow)}"


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _known_tags() -> Iterator[str]:
    """Tags of every command type the kernel defines (only to warn about typos)."""
    # Imported for their effect: they define the command types.
    import kernel.inventory.loader
    import kernel.operations  # noqa: F401
    from kernel.commands import Command

    pending: list[type] = [Command]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        tag = getattr(cls, "__struct_config__", None)
        if cls is not Command and tag is not None and isinstance(tag.tag, str):
            yield tag.tag
