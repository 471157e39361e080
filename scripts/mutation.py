"""Mutation testing of the kernel's core modules (`make mutation`; not part of CI).

The modules (`only_mutate`) and the tests each mutant meets
(`pytest_add_cli_args_test_selection`) are mutmut's own settings in pyproject.toml's
`[tool.mutmut]`. The tests are the fast tiers' tests of those modules: the unit tests of the
aggregates, the operations and the kernel, and the stateful machines of queues, hosts (and
their placement claims) and the operation saga. The other machines and the rest of the unit
tier reach these modules only through the whole engine: they would add minutes to every
surviving mutant and little else. mutmut's stats run then gives each mutated function only
the tests that call it, fastest first.

This script runs mutmut with one worker (the machine is shared), from a fresh `mutants/`
folder each time (new tests must be seen by the stats run; `--resume` runs again only what
the last run left alive or undecided), and prints one row per module:
mutants, killed, survived, equivalent, score = killed / (mutants - equivalent). A mutant the
tests stop by a timeout is killed; one no test reaches survived. Every survivor is listed.

Decorated methods. mutmut skips every decorated function but `staticmethod` and
`classmethod`, so the `@event` methods, where an aggregate's state actually changes (and which
run again on every replay), were never mutated. mutmut 3.8 builds its trampoline as one more
decorator under the function's own (`@event(X) @_mutmut_mutated(...) def f`), and the
trampoline keeps the original's signature (`functools.wraps`), which is all eventsourcing
reads from the function; only the copies it makes of the function (the original and each
mutant, called by the trampoline) must not carry `@event` too, or each copy would register as
the event's method. So this script patches mutmut, in this process, before it runs (its
workers are forked from it): a method whose only decorator is `event(...)` is mutated, and its
copies are made without the decorator. The production code is not touched, the mutants keep
their real names (`aggregates.host.xǁHostǁ_capacity_claimed__mutmut_1`), and mutmut's
per-function test selection works for them as for any method. One limit: eventsourcing binds
each call with the trampoline's signature, the original's, so a mutant of a parameter's
default in an @event method never takes effect (`JUDGED_EQUIVALENT` lists those that
survive). The patch leans on two of
mutmut's internals, so pyproject.toml pins mutmut to 3.8.x; `_patch_mutmut` fails loudly if
they moved.

Equivalent mutants. A survivor is "equivalent" (wording-only) when it changes nothing but the
text of string literals (mutmut's `"XX...XX"` and case changes) and each literal it changes is
text for people, by its place in the code: inside a `raise` statement, inside the arguments of
a call to an exception class (a name ending in `Error`, or `Refusal`) or of a method in
`MESSAGE_CALLS` (whose string arguments only ever end up in a message or in a recorded
reason), or returned by a function in `MESSAGE_FUNCTIONS`. Equivalent mutants are listed
separately, never dropped silently. So are the few survivors judged equivalent by reading
them (`JUDGED_EQUIVALENT`, each with why). Anything else that survives is a blind spot of the
tests.
"""

import argparse
import ast
import difflib
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MUTANTS = Path("mutants")
# Methods whose string arguments are only text for people: the action named in a refusal's
# message, the reason recorded with a state change.
MESSAGE_CALLS = frozenset({"_refuse", "_require", "_require_preparing",
                           "_refuse_in_maintenance", "_resource_state_changed"})
# Functions whose returned strings are only ever part of a message.
MESSAGE_FUNCTIONS = frozenset({"_why_not_ready"})
# Survivors judged equivalent by reading them, beyond wording: mutant -> why no test can
# tell it from the original. Keyed by mutmut's name, which stays put while the function does.
JUDGED_EQUIVALENT = {
    **{f"aggregates.host.xǁHostǁ_evacuation_started__mutmut_{n}":
       "zip(..., strict=True) -> None/False/absent: both tuples come from one mapping "
       "(`evacuate` passes its keys and its values), so they never differ in length"
       for n in (5, 8, 9)},
    # A default of an @event method's parameter: eventsourcing binds each call with the
    # trampoline's signature, which is the original's, so such a mutant never takes effect
    # here (the tests do see the default: a plain success records note "").
    **{f"aggregates.operation.xǁOperationǁ{name}__mutmut_1":
       "a default of an @event method's parameter: never in effect under the trampoline"
       for name in ("_replanned", "_succeeded")},
    "aggregates.operation.xǁOperationǁnext_wakeup__mutmut_7":
        "`retry_at is not None or status is RETRY_WAIT` for `and`: a run's retry_at is set "
        "exactly while it waits for a retry (a failed attempt sets both, a dispatch clears "
        "both), so the two conditions never differ",
    "aggregates.operation.xǁOperationǁ_candidates__mutmut_12":
        "`run is not None or run.status in (...)` for `and`: while compensating there always "
        "is a next compensation (none left settles RolledBack at once), and it is pending, "
        "waiting for a retry or in flight (a failed one settles Failed at once); every caller "
        "skips an in-flight run by its status",
    "aggregates.host.xǁHostǁ_evacuation_failed__mutmut_3":
        "`without(operation_id)` also when operation_id is None: no migration has the id "
        "None, so it returns the same migrations",
}
# The decorator mutmut is taught to see through (see the module docstring).
EVENT_DECORATOR = "event"


# ------------------------------------------------------------------ mutating @event methods

def _is_event_method(node: Any) -> bool:
    """A function whose only decorator is a call of `event` (eventsourcing's `@event(X)`)."""
    import libcst as cst

    if not isinstance(node, cst.FunctionDef) or len(node.decorators) != 1:
        return False
    decorator = node.decorators[0].decorator
    return (isinstance(decorator, cst.Call) and isinstance(decorator.func, cst.Name)
            and decorator.func.value == EVENT_DECORATOR)


def _patch_mutmut() -> None:
    """Let mutmut mutate `@event` methods: see the module docstring."""
    from mutmut.mutation import file_mutation

    visitor = file_mutation.MutationVisitor
    skip: Callable[[Any, Any], bool] = visitor._skip_node_and_children
    arrange = file_mutation.function_trampoline_arrangement

    def skip_but_event_methods(self: Any, node: Any) -> bool:
        if _is_event_method(node):
            return bool(node.name.value in file_mutation.NEVER_MUTATE_FUNCTION_NAMES)
        return skip(self, node)

    def arrange_event_methods(function: Any, mutants: Any, class_name: str | None) -> Any:
        if not _is_event_method(function):
            return arrange(function, mutants, class_name)
        # the copies without @event; the trampoline (first method node) gets it back on top
        declarations, methods, assignments, names = arrange(
            function.with_changes(decorators=[]), mutants, class_name)
        trampoline: Any = methods[0]
        methods = [trampoline.with_changes(decorators=[*function.decorators,
                                                       *trampoline.decorators]),
                   *methods[1:]]
        return declarations, methods, assignments, names

    visitor._skip_node_and_children = skip_but_event_methods  # type: ignore[method-assign]
    file_mutation.function_trampoline_arrangement = arrange_event_methods


# ------------------------------------------------------------------ running mutmut

def run_mutmut(modules: Sequence[str], *, resume: bool = False) -> None:
    """Mutate `modules` afresh and run their mutants with one worker; with `resume`, run
    again only the last run's survivors and undecided mutants (not the equivalent ones)."""
    from mutmut.configuration import config

    _patch_mutmut()
    config().only_mutate = list(modules)
    names: list[str] = []
    if resume:
        names = [m.name for score in read_results(modules) for m in score.survivors]
        if not names:
            return
    else:
        shutil.rmtree(MUTANTS, ignore_errors=True)
    from mutmut.__main__ import cli

    try:
        cli(["run", "--max-children", "1", *names], standalone_mode=False)
    except SystemExit as e:  # mutmut exits on a failed clean run or stats run
        if e.code:
            raise


# ------------------------------------------------------------------ reading the results

@dataclass
class Mutant:
    """One mutant of a module: its name, what mutmut found, and the change it made."""

    name: str
    status: str
    diff: list[str]
    wording_only: bool = False

    @property
    def equivalent(self) -> bool:
        """A survivor no test can kill: wording only, or judged so (`JUDGED_EQUIVALENT`)."""
        return self.status == "survived" and (self.wording_only or self.name in JUDGED_EQUIVALENT)


@dataclass
class ModuleScore:
    """What became of a module's mutants."""

    path: str
    mutants: list[Mutant] = field(default_factory=list)

    def count(self, *statuses: str) -> int:
        """How many mutants ended in one of `statuses`."""
        return sum(m.status in statuses for m in self.mutants)

    @property
    def killed(self) -> int:
        """Mutants some test noticed (a failure or a timeout)."""
        return self.count("killed", "timeout")

    @property
    def equivalent(self) -> list[Mutant]:
        """Survivors no test can kill."""
        return [m for m in self.mutants if m.equivalent]

    @property
    def survivors(self) -> list[Mutant]:
        """Every other mutant the tests let through."""
        return [m for m in self.mutants
                if m.status not in ("killed", "timeout") and not m.equivalent]

    @property
    def score(self) -> float:
        """Killed over the mutants that can be killed at all."""
        return self.killed / max(1, len(self.mutants) - len(self.equivalent))


def read_results(modules: Sequence[str]) -> list[ModuleScore]:
    """Each module's mutants as mutmut left them in `mutants/`."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code

    scores = []
    for path in modules:
        data = SourceFileMutationData(path=path)
        data.load()
        functions = _functions(ast.parse((MUTANTS / path).read_text()))
        score = ModuleScore(path)
        for key, exit_code in sorted(data.exit_code_by_key.items()):
            function = key.rpartition(".")[2]
            original = functions[function.rpartition("__mutmut_")[0] + "__mutmut_orig"]
            mutated = functions[function]
            status = status_by_exit_code[exit_code]
            score.mutants.append(Mutant(key, status, _diff(original, mutated),
                                        status == "survived" and wording_only(original, mutated)))
        scores.append(score)
    return scores


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def _diff(original: ast.FunctionDef, mutated: ast.FunctionDef) -> list[str]:
    def lines(function: ast.FunctionDef) -> list[str]:
        return ast.unparse(_renamed(function)).splitlines()

    return [line for line in difflib.unified_diff(lines(original), lines(mutated), lineterm="",
                                                  n=0)
            if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def _renamed(function: ast.FunctionDef) -> ast.FunctionDef:
    copy = ast.parse(ast.unparse(function)).body[0]
    assert isinstance(copy, ast.FunctionDef)
    copy.name = function.name.rpartition("__mutmut_")[0]
    copy.decorator_list = []
    return copy


# ------------------------------------------------------------------ the wording rule

def wording_only(original: ast.FunctionDef, mutated: ast.FunctionDef) -> bool:
    """Whether the mutant changes only string literals, each in a place that is text for people
    (see the module docstring)."""
    before, after = _renamed(original), _renamed(mutated)
    if ast.dump(_blanked(before)) != ast.dump(_blanked(after)):
        return False  # something else than a string's text changed
    parents = {child: node for node in ast.walk(before) for child in ast.iter_child_nodes(node)}
    changed = [a for a, b in zip(ast.walk(before), ast.walk(after), strict=True)
               if isinstance(a, ast.Constant) and isinstance(a.value, str)
               and a.value != getattr(b, "value", None)]
    return bool(changed) and all(_is_message(node, parents, before) for node in changed)


def _blanked(function: ast.FunctionDef) -> ast.FunctionDef:
    copy = ast.parse(ast.unparse(function)).body[0]
    for node in ast.walk(copy):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = ""
    assert isinstance(copy, ast.FunctionDef)
    return copy


def _is_message(node: ast.AST, parents: dict[ast.AST, ast.AST], function: ast.FunctionDef) -> bool:
    for ancestor in _ancestors(node, parents):
        if isinstance(ancestor, ast.Raise):
            return True
        if isinstance(ancestor, ast.Call) and _is_message_call(ancestor):
            return True
        if isinstance(ancestor, ast.Return) and _plain(function.name) in MESSAGE_FUNCTIONS:
            return True
    return False


def _plain(name: str) -> str:
    """A function's own name from mutmut's (`xǁClassǁname`, `x_name`)."""
    return name.rpartition("ǁ")[2] if "ǁ" in name else name.removeprefix("x_")


def _ancestors(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> Iterator[ast.AST]:
    while node in parents:
        node = parents[node]
        yield node


def _is_message_call(call: ast.Call) -> bool:
    callee = call.func
    name = callee.id if isinstance(callee, ast.Name) else \
        callee.attr if isinstance(callee, ast.Attribute) else ""
    return name.endswith("Error") or name == "Refusal" or name in MESSAGE_CALLS


# ------------------------------------------------------------------ the report

def report(scores: Sequence[ModuleScore], seconds: float) -> None:
    """The table, then every equivalent mutant and every survivor with its change."""
    print(f"\n{'module':<28} {'mutants':>7} {'killed':>7} {'survived':>8} {'equivalent':>10}"
          f" {'score':>7}")
    for s in scores:
        print(f"{s.path:<28} {len(s.mutants):>7} {s.killed:>7} {len(s.survivors):>8}"
              f" {len(s.equivalent):>10} {s.score:>7.1%}")
    print(f"({seconds:.0f} s)")
    equivalent = [m for s in scores for m in s.equivalent]
    listings = (("equivalent: wording only", [m for m in equivalent if m.wording_only]),
                ("equivalent: judged so", [m for m in equivalent if not m.wording_only]),
                ("survivors", [m for s in scores for m in s.survivors]))
    for title, mutants in listings:
        print(f"\n{title}: {len(mutants)}")
        for m in mutants:
            print(f"  {m.name} ({m.status})")
            if m.name in JUDGED_EQUIVALENT:
                print(f"      why: {JUDGED_EQUIVALENT[m.name]}")
            for line in m.diff:
                print(f"      {line.strip()}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run mutmut over the modules (all of `[tool.mutmut] only_mutate`, or those named)."""
    from mutmut.configuration import config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="paths among [tool.mutmut] only_mutate")
    parser.add_argument("--report-only", action="store_true",
                        help="print the table of the last run, run nothing")
    parser.add_argument("--resume", action="store_true",
                        help="run again the last run's survivors and the mutants it left "
                             "undecided, against the tests as they are now (mutmut finds the "
                             "tests added since); killed and equivalent ones keep their result")
    args = parser.parse_args(argv)
    known = list(config().only_mutate)
    unknown = sorted(set(args.modules) - set(known))
    if unknown:
        parser.error(f"not in [tool.mutmut] only_mutate: {unknown}")
    modules = args.modules or known
    start = time.monotonic()
    if not args.report_only:
        run_mutmut(modules, resume=args.resume)
    report(read_results(modules), time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
