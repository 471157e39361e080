"""`cloudkernel contracts`: regenerate or check the integrator contracts under docs/contracts."""

import argparse
import sys
from pathlib import Path
from typing import Any

from kernel.settings import Settings

EXIT_OUT_OF_DATE = 1
EXIT_USAGE = 2


def add_contracts_commands(sub: Any) -> None:
    """Register `contracts write [DIR]` and `contracts check [DIR]`."""
    from gateways.contracts.documents import DEFAULT_DIR

    p = sub.add_parser("contracts", help="JSON Schemas and AsyncAPI document for integrators",
                       description="The JSON Schemas of every public event and command and the "
                                   "AsyncAPI document, generated from the code.")
    p.set_defaults(run=lambda _settings, _args: _usage(p))
    actions = p.add_subparsers(metavar="ACTION")
    write = actions.add_parser("write", help="regenerate the documents",
                               description="Regenerate the documents from the code; an event "
                                           "whose class version went up keeps its old schema "
                                           "as events/<topic>.v<N>.json.")
    write.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR,
                       help=f"contracts folder (default {DEFAULT_DIR})")
    write.set_defaults(run=cmd_write)
    check = actions.add_parser("check", help="exit 1 when the documents are out of date",
                               description="Compare the documents with the code; exit 1 and "
                                           "list what differs when they are out of date.")
    check.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR,
                       help=f"contracts folder (default {DEFAULT_DIR})")
    check.set_defaults(run=cmd_check)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def cmd_write(_: Settings, args: argparse.Namespace) -> int:
    """Write every document that changed."""
    from gateways.contracts.documents import write

    changes = write(args.dir)
    for line in changes:
        print(line)
    print(f"{args.dir}: {len(changes)} change(s)" if changes else f"{args.dir}: up to date")
    return 0


def cmd_check(_: Settings, args: argparse.Namespace) -> int:
    """List what differs; exit 1 if anything does."""
    from gateways.contracts.documents import check

    problems = check(args.dir)
    if not problems:
        print(f"{args.dir}: contracts up to date")
        return 0
    for line in problems:
        print(line, file=sys.stderr)
    print(f"{args.dir}: {len(problems)} contract document(s) differ from the code; run "
          f"`cloudkernel contracts write` and commit the result", file=sys.stderr)
    return EXIT_OUT_OF_DATE
