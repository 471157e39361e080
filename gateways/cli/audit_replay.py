"""`cloudkernel audit replay`: rebuild every read model from the log into a scratch store and
compare it, row by row, with the live one.

The scratch models fold the log up to exactly the position each live model has applied, so a
difference is a row the live model holds that the log does not explain: a bug, or an edit made
outside the platform. The scratch store is a temporary SQLite folder whatever the live store is
(the fold is the same code on both, and rows read back as the same values). Exit status: 0 when
every model matches, 1 when one differs, 2 for bad input.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from aggregates.errors import ValidationError
from kernel.settings import Settings

MAX_SHOWN = 20
RETRIES = 3


def add_replay_command(actions: Any) -> None:
    """Register `audit replay` on the audit command's subparsers."""
    p = actions.add_parser("replay", help="rebuild the read models from the log into a scratch "
                           "store and compare them with the live ones")
    p.add_argument("models", metavar="MODEL", nargs="*",
                   help="read models to check (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_replay)


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    """Replay and compare; print the differences."""
    from kernel.bootstrap import open_platform
    from projections.catalog import MODELS

    names = list(dict.fromkeys(args.models)) or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValidationError(f"unknown read model(s) {', '.join(unknown)}; known: "
                              f"{', '.join(MODELS)}")
    platform = open_platform(settings)
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ck-replay-") as scratch_dir:
            scratch = Settings(data_dir=Path(scratch_dir), store="sqlite")
            for name in names:
                results.append(compare(platform.app, MODELS[name], settings, scratch))
    finally:
        platform.close()
    different = [r for r in results if r["differences"]]
    if args.json:
        print(json.dumps({"models": results, "clean": not different}, default=str, indent=2))
    else:
        _print(results)
    return 1 if different else 0


def compare(app: Any, model: Any, live_settings: Settings, scratch: Settings) -> dict[str, Any]:
    """Fold the log into a scratch copy of `model` up to the live model's position; the rows
    that differ (missing, extra, or with other values)."""
    from projections.runner import ProjectionRunner
    from projections.views import open_view

    class UpTo(ProjectionRunner):
        """A runner that stops at a given position instead of the log head."""

        until = 0

        def head(self) -> int:
            return self.until

    live = open_view(model, live_settings)
    copy = open_view(model, scratch, create_table=True)
    try:
        for _attempt in range(RETRIES):  # the live model may move on while it is read
            position = live.max_tracking_id(app.name) or 0
            rows = {r[model.key]: r for r in live.all_rows()}
            if (live.max_tracking_id(app.name) or 0) == position:
                break
        runner = UpTo(app, copy)
        runner.until = position
        runner.run_once()
        expected = {r[model.key]: r for r in copy.all_rows()}
    finally:
        live.close()
        copy.close()
    differences: list[dict[str, Any]] = []
    for key in sorted(set(rows) | set(expected), key=str):
        have, want = rows.get(key), expected.get(key)
        if have == want:
            continue
        if have is None or want is None:
            differences.append({"key": key, "kind": "missing" if have is None else "extra"})
            continue
        fields = sorted(f for f in set(have) | set(want) if have.get(f) != want.get(f))
        differences.append({"key": key, "kind": "changed", "fields": {
            f: {"live": have.get(f), "log": want.get(f)} for f in fields}})
    return {"model": model.name, "position": position, "rows": len(rows),
            "differences": differences}


def _print(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="read models rebuilt from the log, compared with the live ones")
    for column in ("model", "position", "rows", "differences"):
        table.add_column(column)
    for r in results:
        table.add_row(r["model"], str(r["position"]), str(r["rows"]),
                      str(len(r["differences"])) if r["differences"] else "none")
    console = Console(file=sys.stdout)
    console.print(table)
    for r in results:
        for d in r["differences"][:MAX_SHOWN]:
            if d["kind"] == "changed":
                detail = "; ".join(f"{f}: live {v['live']!r}, log says {v['log']!r}"
                                   for f, v in d["fields"].items())
            else:
                detail = ("the log has this row, the live model does not"
                          if d["kind"] == "missing" else
                          "the live model has this row, the log does not explain it")
            console.print(f"{r['model']} {d['key']}: {d['kind']}: {detail}")
        if len(r["differences"]) > MAX_SHOWN:
            console.print(f"{r['model']}: {len(r['differences']) - MAX_SHOWN} more")
