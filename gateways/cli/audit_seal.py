"""`cloudkernel audit keygen|seal|verify|prove|check-proof|export`: tamper evidence for the log.

The audit folder (--dir, default <data_dir>/audit) keeps the signed checkpoints, the sealed
leaf records and the sealer's tree; keygen writes signing.key (0600) and signing.pub there by
default. Exit codes: 0 fine, 1 tampering found or a proof that does not hold, 2 bad input
(no key, no checkpoints, a position outside the tree...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aggregates.errors import ValidationError
from kernel.settings import Settings

EXIT_TAMPERED = 1


def add_seal_commands(actions: Any) -> None:
    """Register the tamper-evidence actions on `audit`'s subparsers."""
    k = actions.add_parser("keygen", help="create the Ed25519 key pair that signs checkpoints")
    k.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where to write signing.key and signing.pub (default <data_dir>/audit)")
    k.add_argument("--force", action="store_true", help="replace an existing key")
    k.set_defaults(run=cmd_keygen)

    s = actions.add_parser("seal", help="seal the log: Merkle tree and signed checkpoints")
    _dir_option(s)
    s.add_argument("--key", type=Path, default=None, metavar="PATH",
                   help="the private key (default <dir>/signing.key)")
    s.add_argument("--every", type=int, default=1000, metavar="K",
                   help="write a checkpoint every K events (default 1000)")
    s.add_argument("--interval", type=float, default=60.0, metavar="SECONDS",
                   help="with --follow, checkpoint pending events after this long (default 60)")
    s.add_argument("--follow", action="store_true",
                   help="keep following the log until Ctrl-C (default: seal once and stop)")
    s.add_argument("--poll", type=float, default=1.0, metavar="SECONDS",
                   help="with --follow, how often to read the log (default 1)")
    s.add_argument("--publish", action="store_true",
                   help="publish each checkpoint on NATS subject cloudkernel.audit.checkpoints")
    s.set_defaults(run=cmd_seal)

    v = actions.add_parser("verify", help="recompute the tree from the store; name tampering")
    _dir_option(v)
    v.add_argument("--public-key", type=Path, default=None, metavar="PATH",
                   help="the public key (default <dir>/signing.pub)")
    v.add_argument("--json", action="store_true", help="print JSON instead of text")
    v.set_defaults(run=cmd_verify)

    p = actions.add_parser("prove", help="print an inclusion proof of one event, or (with "
                           "--consistency) proof that a checkpoint extends an older one (JSON)")
    p.add_argument("position", type=int, nargs="?", default=None, metavar="POSITION",
                   help="the event's log position")
    _dir_option(p)
    p.add_argument("--checkpoint", type=int, default=None, metavar="SIZE",
                   help="the checkpoint's tree size (default: the latest checkpoint)")
    p.add_argument("--consistency", type=int, nargs="+", default=None,
                   metavar=("OLD_SIZE", "NEW_SIZE"),
                   help="prove that the checkpoint of tree size NEW_SIZE (default: the latest) "
                   "extends the one of OLD_SIZE: the log was only appended to between them")
    p.set_defaults(run=cmd_prove)

    c = actions.add_parser("check-proof", help="check a proof (or, with --export, an "
                           "export) with the public key alone")
    c.add_argument("file", type=Path, metavar="FILE", help="the JSON `audit prove` printed, or "
                   "the file `audit export` wrote")
    c.add_argument("--public-key", type=Path, required=True, metavar="PATH")
    c.add_argument("--export", action="store_true", help="FILE is an `audit export` file")
    c.add_argument("--trusted", type=Path, default=None, metavar="CHECKPOINT",
                   help="a consistency proof must start from this checkpoint, which you hold "
                   "(a checkpoints.jsonl line, or an earlier proof file)")
    c.set_defaults(run=cmd_check_proof)

    e = actions.add_parser("export", help="write a range of events as JSONL with the proof "
                           "material (the signed checkpoint and the tree's leaf hashes)")
    e.add_argument("--from", dest="first", type=int, required=True, metavar="POSITION")
    e.add_argument("--to", dest="last", type=int, required=True, metavar="POSITION")
    e.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="write here (default: standard output)")
    _dir_option(e)
    e.set_defaults(run=cmd_export)


def _dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", type=Path, default=None, metavar="DIR",
                   help="the audit folder (default <data_dir>/audit)")


def audit_dir(settings: Settings, given: Path | None) -> Path:
    """The audit folder: --dir, else <data_dir>/audit."""
    return given if given is not None else Path(settings.data_dir) / "audit"


def cmd_keygen(settings: Settings, args: argparse.Namespace) -> int:
    """Write a new key pair."""
    from gateways.audit.keys import generate_keys

    private, public, kid = generate_keys(audit_dir(settings, args.out), force=args.force)
    print(f"private key: {private} (mode 0600; keep it off the database host's backups)")
    print(f"public key:  {public}")
    print(f"key id:      {kid}")
    return 0


def cmd_seal(settings: Settings, args: argparse.Namespace) -> int:
    """Seal once, or follow the log until SIGINT/SIGTERM."""
    from gateways.audit.keys import PRIVATE_NAME, load_private_key
    from gateways.audit.seal import Checkpoint, Sealer

    folder = audit_dir(settings, args.dir)
    key = load_private_key(args.key or folder / PRIVATE_NAME)
    if args.poll <= 0 or args.interval < 0:
        raise ValidationError("--poll must be positive and --interval not negative")
    made: list[Checkpoint] = []
    with _app(settings) as app:
        sealer = Sealer(app, folder, key, every=args.every, interval=args.interval,
                        on_checkpoint=made.append)
        if args.follow:
            from gateways.audit.follower import SealFollower

            follower = SealFollower(sealer, settings.nats_servers, poll=args.poll,
                                    publish=args.publish, replicas=settings.nats_replicas)
            asyncio.run(_until_signal(follower))
            made = follower.made
        else:
            sealer.seal_once()
            if args.publish:
                asyncio.run(_publish_all(settings, made))
    for cp in made[-5:]:
        print(f"checkpoint tree_size={cp.tree_size} root={cp.root_hash} at {cp.timestamp}")
    print(f"{len(made)} checkpoints written to {folder}")
    return 0


async def _publish_all(settings: Settings, checkpoints: list[Any]) -> None:
    import nats

    from gateways.audit.follower import publish_checkpoints

    nc = await nats.connect(servers=list(settings.nats_servers))
    try:
        await publish_checkpoints(nc, checkpoints, replicas=settings.nats_replicas)
    finally:
        await nc.close()


async def _until_signal(follower: Any) -> None:
    """Run the sealing follower until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await follower.run(stop)


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Verify the store against the checkpoints; exit 1 when tampering is found."""
    from gateways.audit.keys import PUBLIC_NAME, load_public_key
    from gateways.audit.verify import verify_store

    folder = audit_dir(settings, args.dir)
    public = load_public_key(args.public_key or folder / PUBLIC_NAME)
    with _app(settings) as app:
        report = verify_store(app, folder, public)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0 if report.clean else EXIT_TAMPERED


def cmd_prove(settings: Settings, args: argparse.Namespace) -> int:
    """Print the inclusion proof of one position, or a consistency proof."""
    from gateways.audit.prove import prove, prove_consistency

    if args.consistency is not None:
        if args.position is not None or args.checkpoint is not None:
            raise ValidationError("--consistency OLD_SIZE [NEW_SIZE] takes no POSITION and no "
                                  "--checkpoint")
        if len(args.consistency) > 2:
            raise ValidationError("--consistency takes OLD_SIZE and at most one NEW_SIZE, not "
                                  f"{len(args.consistency)} sizes")
        sizes = args.consistency
        proof = prove_consistency(audit_dir(settings, args.dir), sizes[0],
                                  sizes[1] if len(sizes) == 2 else None)
        print(json.dumps(proof, indent=2))
        return 0
    if args.position is None:
        raise ValidationError("give the POSITION of the event to prove, or --consistency "
                              "OLD_SIZE [NEW_SIZE]")
    if args.position < 1:
        raise ValidationError(f"POSITION must be 1 or more, not {args.position}")
    with _app(settings) as app:
        proof = prove(app, audit_dir(settings, args.dir), args.position, args.checkpoint)
    print(json.dumps(proof, indent=2))
    return 0


def cmd_check_proof(_: Settings, args: argparse.Namespace) -> int:
    """Check a proof (or an export) with the standalone verifier."""
    from gateways.audit.verifier import run, run_export

    if args.export:
        if args.trusted is not None:
            raise ValidationError("--trusted is for consistency proofs, not exports")
        return run_export(str(args.file), str(args.public_key))
    return run(str(args.file), str(args.public_key),
               None if args.trusted is None else str(args.trusted))


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    """Write the export of a range of positions."""
    from gateways.audit.export import export_lines

    with _app(settings) as app:
        lines = list(export_lines(app, audit_dir(settings, args.dir), args.first, args.last))
    text = "\n".join(lines) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"exported positions {args.first}..{args.last} ({len(lines) - 2} events) to "
              f"{args.out}")
    return 0


@contextmanager
def _app(settings: Settings) -> Iterator[Any]:
    from kernel.bootstrap import open_platform

    platform = open_platform(settings)
    try:
        yield platform.app
    finally:
        platform.close()
