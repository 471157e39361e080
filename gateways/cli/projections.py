"""`cloudkernel projections`: read models' lag, rebuild with a progress bar, a runner process."""

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec
from prometheus_client import REGISTRY
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from aggregates.errors import ValidationError
from gateways.metrics import StoreReads, lag_families, reachable_family
from kernel.bootstrap.processes import projection_runners
from kernel.settings import Settings

Run = Callable[[Settings, argparse.Namespace], int]


def add_projection_commands(sub: Any) -> None:
    """Register `projections [status]`, `projections rebuild` and `projections run`."""
    p = sub.add_parser("projections", help="read models: lag, rebuild, run",
                       description="Read models: their lag behind the log, rebuild, run.")
    p.set_defaults(run=cmd_status, json=False)
    actions = p.add_subparsers(metavar="ACTION")
    status = actions.add_parser("status", help="each projection's position and lag (default)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(run=cmd_status)
    rebuild = actions.add_parser(
        "rebuild", help="rebuild projections from the log, with a progress bar",
        description="Replay the log into projections. Each rebuild is one transaction: "
                    "readers see the old rows until it commits, and a runner that is following "
                    "the log meanwhile waits, then carries on from the rebuilt position.")
    rebuild.add_argument("names", nargs="*", metavar="NAME", help="projections to rebuild")
    rebuild.add_argument("--all", action="store_true", help="rebuild every projection")
    rebuild.add_argument("--no-progress", action="store_true",
                         help="no progress bar (the summary line is still printed)")
    rebuild.set_defaults(run=cmd_rebuild)
    run = actions.add_parser("run", help="follow the log into projections until SIGINT/SIGTERM")
    run.add_argument("names", nargs="*", metavar="NAME", help="projections to run (default all)")
    run.set_defaults(run=cmd_run, serves=True)


class _Lags(Collector):
    """This process's projections' lag, for its metrics port."""

    def __init__(self, runners: list[Any]) -> None:
        self.runners = runners
        self._store = StoreReads()

    def collect(self) -> Iterator[Metric]:
        lags = self._store.read(lambda: {r.name: r.lag() for r in self.runners})
        yield reachable_family(lags is not None)
        if lags is not None:
            yield from lag_families(lags)


def _models() -> dict[str, Any]:
    from projections.catalog import MODELS

    return MODELS


def _chosen(names: Sequence[str], everything: bool) -> list[str]:
    models = _models()
    if everything or not names:
        return list(models)
    unknown = [n for n in names if n not in models]
    if unknown:
        raise ValidationError(f"unknown projection {', '.join(unknown)}; "
                              f"projections are {', '.join(models)}")
    return list(dict.fromkeys(names))


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Print each projection's position, the log head and the lag."""
    with projection_runners(settings, _chosen((), True)) as runners:
        lags = [(r.name, r.lag()) for r in runners]
    if getattr(args, "json", False):
        print(msgspec.json.encode([
            {"name": name, "position": lag.position, "head": lag.head,
             "lag_positions": lag.positions, "lag_seconds": round(lag.seconds, 3)}
            for name, lag in lags]).decode())
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"projections ({settings.store})")
    for column in ("projection", "position", "log head", "behind", "oldest unapplied"):
        table.add_column(column, justify="left" if column == "projection" else "right")
    for name, lag in lags:
        table.add_row(name, f"{lag.position:,}", f"{lag.head:,}", f"{lag.positions:,}",
                      f"{lag.seconds:.1f} s" if lag.positions else "-")
    Console().print(table)
    return 0


def cmd_rebuild(settings: Settings, args: argparse.Namespace) -> int:
    """Rebuild the named projections (or all), one after the other."""
    if not args.names and not args.all:
        raise ValidationError("name the projections to rebuild, or pass --all "
                              f"(projections are {', '.join(_models())})")
    names = _chosen(args.names, args.all)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    with projection_runners(settings, names) as runners:
        for runner in runners:
            show = not args.no_progress and console.is_terminal
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                          MofNCompleteColumn(), TaskProgressColumn(), TimeRemainingColumn(),
                          console=console, disable=not show, transient=True) as bar:
                task = bar.add_task(runner.name, total=max(1, runner.head()))

                def advance(position: int, head: int, task: Any = task,
                            bar: Progress = bar) -> None:
                    bar.update(task, completed=position, total=max(1, head))

                report = runner.rebuild(progress=advance)
            print(f"{runner.name}: rebuilt to position {report.position:,}: "
                  f"{report.events:,} log positions in {report.seconds:.2f} s "
                  f"({report.events_per_second:,.0f}/s)", flush=True)
    return 0


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Follow the log into the named projections until SIGINT/SIGTERM."""
    names = _chosen(args.names, False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with projection_runners(settings, names) as runners:
        for runner in runners:
            runner.start()
        lags = _Lags(runners)
        REGISTRY.register(lags)
        print(f"projections running: {', '.join(names)}", flush=True)
        try:
            while not stop.wait(0.5):
                failed = [r for r in runners if r.error is not None]
                if failed:
                    print(f"projection {failed[0].name} stopped: {failed[0].error}",
                          file=sys.stderr)
                    break
        finally:
            started = time.monotonic()
            for runner in runners:
                try:
                    runner.stop()
                except Exception as e:  # reported above; stop the others regardless
                    print(f"projection {runner.name}: {e}", file=sys.stderr)
            elapsed = time.monotonic() - started
    print(f"projections stopped ({elapsed:.1f} s)", flush=True)
    return 1 if any(r.error is not None for r in runners) else 0
