"""`cloudkernel webhooks ...`: add, list, enable, disable, remove, history, redeliver, serve."""

import argparse
import logging
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aggregates.errors import ValidationError
from gateways.webhooks.model import Delivery, Status, check_subject_patterns, check_url
from gateways.webhooks.store import WebhookStore, open_webhook_store
from kernel.settings import Settings

log = logging.getLogger("cloudkernel.webhooks")
Run = Callable[[Settings, argparse.Namespace], int]


def add_webhook_commands(sub: Any) -> None:
    """Register `webhooks` and its actions on the `cloudkernel` subparsers."""
    hooks = sub.add_parser("webhooks", help="HTTP endpoints subscribed to event subjects",
                           description="Webhooks: signed HTTP deliveries of public events.")
    actions = hooks.add_subparsers(metavar="ACTION")

    def action(name: str, run: Run, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help_, description=help_)
        p.set_defaults(run=run)
        return p

    add = action("add", cmd_add, "subscribe an http(s) URL to event subjects; prints its "
                                 "id and its secret (shown once)")
    add.add_argument("url")
    add.add_argument("--subject", action="append", required=True, metavar="PATTERN",
                     help="NATS subject pattern, repeatable, e.g. 'cloudkernel.events.vm.>' "
                          "or 'cloudkernel.events.*.Created'")
    add.add_argument("--description", default="", metavar="TEXT")
    action("list", cmd_list, "list webhooks and their delivery counts (secrets are not shown)")
    for name, run, help_ in (
            ("remove", cmd_remove, "delete a webhook with its delivery history"),
            ("disable", cmd_disable, "stop a webhook: no new deliveries, nothing sent"),
            ("enable", cmd_enable, "start a disabled webhook again")):
        action(name, run, help_).add_argument("id", metavar="WEBHOOK_ID")
    history = action("deliveries", cmd_deliveries,
                     "delivery history with every attempt, latest events first")
    history.add_argument("--webhook", metavar="WEBHOOK_ID")
    history.add_argument("--status", choices=[s.value for s in Status])
    history.add_argument("--limit", type=int, default=20, metavar="N",
                         help="at most N deliveries (1 to 1000, default 20)")
    again = action("redeliver", cmd_redeliver,
                   "send a dead delivery again, or every dead delivery of a webhook")
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("delivery", nargs="?", metavar="DELIVERY_ID")
    which.add_argument("--dead", metavar="WEBHOOK_ID",
                       help="every dead delivery of this webhook")
    serve = action("serve", cmd_serve,
                   "consume EVENTS and send deliveries until SIGINT/SIGTERM")
    serve.add_argument("--nats-url", action="append", default=None, metavar="URL",
                       help="NATS server, repeatable (default: setting nats_urls, else the "
                            "embedded server)")
    serve.add_argument("--concurrency", type=int, default=16, metavar="N",
                       help="webhooks sending at once (default 16)")
    serve.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                       help="of one HTTP attempt (default 10)")
    serve.add_argument("--max-attempts", type=int, default=8, metavar="N",
                       help="attempts before a delivery is dead (default 8)")


def _open(settings: Settings) -> WebhookStore:
    return open_webhook_store(settings)


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_add(settings: Settings, args: argparse.Namespace) -> int:
    """Add a webhook; its secret is printed here and never again."""
    check_url(args.url)
    check_subject_patterns(args.subject)
    store = _open(settings)
    try:
        hook, secret = store.add_webhook(args.url, args.subject, args.description)
    finally:
        store.close()
    print(f"webhook {hook.id} -> {hook.url} ({', '.join(hook.subjects)})")
    print(f"secret {secret}")
    print("keep the secret: it signs every delivery (Cloudkernel-Signature) and is not "
          "shown again")
    return 0


def cmd_list(settings: Settings, _: argparse.Namespace) -> int:
    """Print every webhook; never its secret."""
    store = _open(settings)
    try:
        hooks, counts = store.list_webhooks(), store.counts()
    finally:
        store.close()
    if not hooks:
        print("no webhooks (add one with `cloudkernel webhooks add URL --subject PATTERN`)")
    for h in hooks:
        c = counts.get(h.id, {})
        print(f"{h.id}  {'active' if h.active else 'disabled'}  {h.url}")
        print(f"    subjects: {' '.join(h.subjects)}")
        print(f"    deliveries: {c.get('pending', 0)} pending, {c.get('delivered', 0)} "
              f"delivered, {c.get('dead', 0)} dead; created {_when(h.created_at)}"
              + (f"; {h.description}" if h.description else ""))
    return 0


def _set_active(settings: Settings, webhook_id: str, active: bool) -> int:
    store = _open(settings)
    try:
        hook = store.set_active(webhook_id, active)
    finally:
        store.close()
    print(f"webhook {hook.id} {'enabled' if hook.active else 'disabled'}")
    return 0


def cmd_disable(settings: Settings, args: argparse.Namespace) -> int:
    """Disable a webhook."""
    return _set_active(settings, args.id, False)


def cmd_enable(settings: Settings, args: argparse.Namespace) -> int:
    """Enable a webhook."""
    return _set_active(settings, args.id, True)


def cmd_remove(settings: Settings, args: argparse.Namespace) -> int:
    """Delete a webhook and its history."""
    store = _open(settings)
    try:
        removed = store.remove_webhook(args.id)
    finally:
        store.close()
    print(f"webhook {args.id} removed, with {removed} deliveries")
    return 0


def _describe(d: Delivery) -> list[str]:
    state = {Status.PENDING: f"next attempt {_when(d.next_attempt_at)}",
             Status.DELIVERED: f"delivered {_when(d.delivered_at)}",
             Status.DEAD: "dead"}[d.status]
    lines = [f"{d.id}  {d.status.value:9}  position {d.position}  {d.subject}",
             f"    webhook {d.webhook_id}; created {_when(d.created_at)}; {state}; "
             f"{d.attempts} attempt(s) this round"]
    for a in d.history:
        outcome = a.error or f"HTTP {a.http_status}"
        lines.append(f"    #{a.attempt_no}  {_when(a.at)}  {outcome}  "
                     f"{a.duration_ms:.0f} ms")
    return lines


def cmd_deliveries(settings: Settings, args: argparse.Namespace) -> int:
    """Print the delivery history with its attempts."""
    store = _open(settings)
    try:
        found = store.list_deliveries(webhook_id=args.webhook, status=args.status,
                                      limit=args.limit)
    finally:
        store.close()
    if not found:
        print("no deliveries")
    for d in found:
        print("\n".join(_describe(d)))
    return 0


def cmd_redeliver(settings: Settings, args: argparse.Namespace) -> int:
    """Put dead deliveries back in their queue (`webhooks serve` sends them)."""
    store = _open(settings)
    try:
        if args.dead:
            n = store.redeliver_dead(args.dead)
            print(f"{n} dead deliveries of webhook {args.dead} queued again")
        elif args.delivery:
            d = store.redeliver(args.delivery)
            print(f"delivery {d.id} (position {d.position}) queued again")
        else:  # argparse allows an empty positional in the group
            raise ValidationError("give a DELIVERY_ID or --dead WEBHOOK_ID")
    finally:
        store.close()
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Run the webhook service until SIGINT/SIGTERM."""
    import asyncio

    from gateways.webhooks.model import RetryPolicy
    from gateways.webhooks.service import WebhookService

    if args.concurrency < 1 or args.timeout <= 0:
        raise ValidationError("--concurrency must be >= 1 and --timeout > 0")
    policy = RetryPolicy(max_attempts=args.max_attempts)
    servers = args.nats_url or list(settings.nats_servers)
    store = _open(settings)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        service = WebhookService(store, servers, policy=policy, concurrency=args.concurrency,
                                 timeout=args.timeout, replicas=settings.nats_replicas)
        task = asyncio.create_task(service.run(stop))
        ready = asyncio.create_task(service.ready.wait())
        await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
        if service.ready.is_set():
            print(f"webhooks: serving from NATS at {', '.join(servers)}; Ctrl-C stops it",
                  flush=True)
        ready.cancel()
        await task

    try:
        asyncio.run(serve())
    finally:
        store.close()
    print("webhooks: stopped", flush=True)
    return 0
