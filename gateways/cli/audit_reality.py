"""`cloudkernel audit reality [--host H] [--json]`: every host's libvirt objects compared with
the model, each difference named (`gateways.audit.reality`).

The platform's workers answer for their hosts over NATS, so the workers (`up`, or
`cloudkernel worker --subsystem hypervisor|storage|networkelement`) must run. It checks at
quiescence: an entity an operation holds is skipped, and listed as skipped.

Exit status: 0 clean, 1 differences (listed), 2 bad usage (an unknown host), 3 the store or
NATS cannot be reached (or the store is not migrated).
"""

import argparse
import json
import sys
from typing import Any

from aggregates.errors import ConfigError
from kernel.settings import Settings

EXIT_DIFFERENCES = 1
EXIT_UNREACHABLE = 3


def add_reality_command(actions: Any) -> None:
    """Register `audit reality` on the audit command's subcommands."""
    help_ = "compare every host's libvirt objects with the model; exit 1 on a difference"
    r = actions.add_parser("reality", help=help_, description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--host", default=None, metavar="HOST",
                   help="check only this host (its name or libvirt URI)")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.add_argument("--timeout", type=_positive, default=10.0, metavar="SECONDS",
                   help="how long to wait for a worker's answer (default 10)")
    r.set_defaults(run=cmd_reality)


def cmd_reality(settings: Settings, args: argparse.Namespace) -> int:
    """Print the differences between the hosts and the model."""
    from gateways.audit.reality import audit_reality
    from kernel.bootstrap import open_platform

    try:
        platform = open_platform(settings)
    except ConfigError as e:  # the store does not answer, or is not migrated
        print(f"cloudkernel: error: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        report = audit_reality(platform.app, settings.nats_servers, host=args.host,
                               timeout=args.timeout)
    except ConfigError as e:
        if "NATS" not in str(e):
            raise
        print(f"cloudkernel: error: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        platform.close()
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        for line in report.skipped:
            print(f"skipped: {line}")
        if not report.settled:
            print("note: the log kept moving while the hosts were asked; differences may be "
                  "an operation's passing state: check again at quiescence")
        for d in report.differences:
            print(d)
        print(f"{len(report.differences)} difference(s) on {len(report.hosts)} host(s)"
              + (f", {len(report.skipped)} entities skipped as in flight"
                 if report.skipped else ""))
    return 0 if report.clean else EXIT_DIFFERENCES


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
