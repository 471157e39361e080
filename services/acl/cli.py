"""`cloudkernel acl ...`: domains, accounts, users, keys, limits, rules and login of the ACL."""

import argparse
import getpass
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aggregates.errors import ValidationError
from kernel.settings import Settings
from services.acl.model.rules import ACL_ROLES, LIMIT_NAMES, ROOT_DOMAIN
from services.acl.service import AclService

CLI_ACTOR = "acl-cli"


def add_acl_commands(sub: Any) -> None:
    """Register `acl ...` on the main parser's subcommands."""
    acl = sub.add_parser("acl", help="the ACL service: domains, accounts, users, keys, rules",
                         description="the ACL service: domains, accounts, users, keys, limits, "
                                     "rules and login (its own log, `acl` application)")
    groups = acl.add_subparsers(metavar="THING")

    def group(name: str, help_: str) -> Any:
        return groups.add_parser(name, help=help_).add_subparsers(metavar="ACTION")

    domain = group("domain", "domains of the tree under ROOT")
    p = domain.add_parser("create", help="create a domain")
    p.add_argument("name")
    p.add_argument("--parent", default=ROOT_DOMAIN, metavar="PATH",
                   help="the parent's path, e.g. ROOT/eng (default ROOT)")
    p.set_defaults(run=cmd_domain_create)
    domain.add_parser("list", help="list domains").set_defaults(run=cmd_domain_list)

    account = group("account", "accounts (tenants) in domains")
    p = account.add_parser("create", help="create an account")
    p.add_argument("name")
    p.add_argument("--domain", default=ROOT_DOMAIN, metavar="PATH")
    p.set_defaults(run=cmd_account_create)
    account.add_parser("list", help="list accounts").set_defaults(run=cmd_account_list)

    user = group("user", "users of accounts")
    p = user.add_parser("create", help="create a user")
    p.add_argument("username")
    p.add_argument("--account", required=True)
    p.add_argument("--role", required=True, choices=ACL_ROLES)
    p.add_argument("--password-stdin", action="store_true",
                   help="read a local password from the first line of stdin")
    p.set_defaults(run=cmd_user_create)
    user.add_parser("list", help="list users").set_defaults(run=cmd_user_list)

    key = group("key", "API keys of users (CK1-HMAC-SHA256)")
    p = key.add_parser("create", help="issue a key; its secret is printed only once")
    p.add_argument("username")
    p.add_argument("--scope", action="extend", nargs="+", default=[], metavar="GLOB",
                   help="command tags or globs the key may send (default: what the role may)")
    p.add_argument("--read-only", action="store_true", help="only read tags (*.list, *.get)")
    p.add_argument("--expires-in", type=float, default=None, metavar="DAYS")
    p.set_defaults(run=cmd_key_create)
    key.add_parser("list", help="list keys (never secrets)").set_defaults(run=cmd_key_list)
    p = key.add_parser("revoke", help="revoke a key for good")
    p.add_argument("key_id")
    p.set_defaults(run=cmd_key_revoke)

    limits = group("limits", "resource limits of accounts and domains")
    p = limits.add_parser("set", help="replace the limits of an account or a domain")
    p.add_argument("target", choices=("account", "domain"))
    p.add_argument("name", help="account name or domain path")
    p.add_argument("limits", nargs="*", metavar="NAME=N",
                   help=f"limits: {', '.join(LIMIT_NAMES)} (-1: none)")
    p.set_defaults(run=cmd_limits_set)

    rule = group("rule", "allow/deny command rules for roles and accounts")
    p = rule.add_parser("add", help="add a rule")
    p.add_argument("effect", choices=("allow", "deny"))
    p.add_argument("pattern", help="a command tag or glob, e.g. vm.destroy or volume.*")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--role", choices=ACL_ROLES)
    target.add_argument("--account")
    p.set_defaults(run=cmd_rule_add)
    rule.add_parser("list", help="list rules").set_defaults(run=cmd_rule_list)

    p = groups.add_parser("login", help="log in (local or LDAP) and print a bearer token")
    p.add_argument("username")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from stdin instead of prompting")
    p.set_defaults(run=cmd_login)


def _open(settings: Settings) -> AclService:
    return AclService.open(settings)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _password(args: argparse.Namespace, *, required: bool) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return getpass.getpass("password: ") if required else None


def cmd_domain_create(settings: Settings, args: argparse.Namespace) -> int:
    """Create a domain."""
    service = _open(settings)
    try:
        d = service.create_domain(args.name, parent=args.parent, actor=CLI_ACTOR)
        print(f"created domain {d.path}")
    finally:
        service.close()
    return 0


def cmd_domain_list(settings: Settings, _: argparse.Namespace) -> int:
    """List domains with their limits."""
    service = _open(settings)
    try:
        domains = sorted(service.directory.domains.values(), key=lambda d: d.path)
        _table(("PATH", "LIMITS"), [(d.path, _limits(d.limits)) for d in domains])
    finally:
        service.close()
    return 0


def cmd_account_create(settings: Settings, args: argparse.Namespace) -> int:
    """Create an account."""
    service = _open(settings)
    try:
        a = service.create_account(args.name, domain=args.domain, actor=CLI_ACTOR)
        print(f"created account {a.name} in {a.domain_path}")
    finally:
        service.close()
    return 0


def cmd_account_list(settings: Settings, _: argparse.Namespace) -> int:
    """List accounts."""
    service = _open(settings)
    try:
        rows = [(a.name, a.domain_path, _limits(a.limits))
                for a in sorted(service.directory.accounts.values(), key=lambda a: a.name)]
        _table(("ACCOUNT", "DOMAIN", "LIMITS"), rows)
    finally:
        service.close()
    return 0


def cmd_user_create(settings: Settings, args: argparse.Namespace) -> int:
    """Create a user, with a local password from stdin if asked."""
    password = _password(args, required=False)
    service = _open(settings)
    try:
        u = service.create_user(args.username, account=args.account, role=args.role,
                                password=password, actor=CLI_ACTOR)
        print(f"created user {u.username} ({u.role}) in account {u.account}")
    finally:
        service.close()
    return 0


def cmd_user_list(settings: Settings, _: argparse.Namespace) -> int:
    """List users (never password hashes)."""
    service = _open(settings)
    try:
        rows = [(u.username, u.role, u.account, u.domain_path, u.source,
                 "disabled" if u.disabled else "active")
                for u in sorted(service.directory.users.values(), key=lambda u: u.username)]
        _table(("USER", "ROLE", "ACCOUNT", "DOMAIN", "SOURCE", "STATUS"), rows)
    finally:
        service.close()
    return 0


def cmd_key_create(settings: Settings, args: argparse.Namespace) -> int:
    """Issue a key and print its id and secret once."""
    service = _open(settings)
    try:
        key, secret = service.create_key(args.username, scope=tuple(args.scope),
                                         read_only=args.read_only,
                                         expires_in_days=args.expires_in, actor=CLI_ACTOR)
    finally:
        service.close()
    print(f"created key for {key.username} (scope {' '.join(key.scope) or 'role'}"
          f"{', read-only' if key.read_only else ''}; expires {_when(key.expires_at)})")
    print(f"key id: {key.key_id}")
    print(f"secret: {secret}")
    print("The secret is shown only now.")
    return 0


def cmd_key_list(settings: Settings, _: argparse.Namespace) -> int:
    """List keys and their state."""
    service = _open(settings)
    try:
        now = datetime.now(UTC)
        rows = [(k.key_id, k.username, " ".join(k.scope) or "*",
                 "yes" if k.read_only else "no", _when(k.expires_at), k.status(now))
                for k in sorted(service.directory.keys.values(), key=lambda k: k.created_at)]
        _table(("ID", "USER", "SCOPE", "READ-ONLY", "EXPIRES", "STATUS"), rows)
    finally:
        service.close()
    return 0


def cmd_key_revoke(settings: Settings, args: argparse.Namespace) -> int:
    """Revoke a key."""
    service = _open(settings)
    try:
        key, changed = service.revoke_key(args.key_id, actor=CLI_ACTOR)
    finally:
        service.close()
    print(f"key {key.key_id} ({key.username}) {'revoked' if changed else 'was already revoked'}")
    return 0


def cmd_limits_set(settings: Settings, args: argparse.Namespace) -> int:
    """Replace the limits of an account or a domain."""
    limits: dict[str, object] = {}
    for item in args.limits:
        name, sep, value = item.partition("=")
        if not sep or not value.lstrip("-").isdigit():
            raise ValidationError(f"limit {item!r}: give NAME=N, e.g. max_vms=10 "
                                  f"(names: {', '.join(LIMIT_NAMES)})")
        limits[name] = int(value)
    service = _open(settings)
    try:
        now = service.set_limits(args.target, args.name, limits, actor=CLI_ACTOR)
    finally:
        service.close()
    print(f"{args.target} {args.name} limits: {_limits(now)}")
    return 0


def cmd_rule_add(settings: Settings, args: argparse.Namespace) -> int:
    """Add an allow or deny rule."""
    kind, target = ("role", args.role) if args.role else ("account", args.account)
    service = _open(settings)
    try:
        service.add_rule(target_kind=kind, target=target, effect=args.effect,
                         pattern=args.pattern, actor=CLI_ACTOR)
    finally:
        service.close()
    print(f"rule added: {args.effect} {args.pattern} for {kind} {target}")
    return 0


def cmd_rule_list(settings: Settings, _: argparse.Namespace) -> int:
    """List the active rules."""
    service = _open(settings)
    try:
        rows = sorted((r.target_kind, r.target, r.effect, r.pattern)
                      for r in service.directory.rules.values())
        _table(("KIND", "TARGET", "EFFECT", "PATTERN"), rows)
    finally:
        service.close()
    return 0


def cmd_login(settings: Settings, args: argparse.Namespace) -> int:
    """Log in and print a bearer token."""
    password = _password(args, required=True) or ""
    service = _open(settings)
    try:
        print(service.login(args.username, password))
    finally:
        service.close()
    return 0


def _limits(limits: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(limits.items())) or "none"


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
