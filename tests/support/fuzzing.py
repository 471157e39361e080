"""Schemathesis with every check it has, as `st run --checks all` runs it: each operation of a
live document in the examples, coverage and fuzzing phases, positive and negative, every
failure collected (not only the first), deduplicated by operation and kind.

The phases are built with schemathesis' own test builder (the one its pytest plugin and its
engine use), so the coverage phase's cases (a missing required header or body, an undeclared
method, boundary values) are sent too; the test function validates each answer with no
`checks`, which runs every check the configuration enables (all of them, by default), plus
the caller's own.
"""

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hypothesis
import requests
import schemathesis
from schemathesis.checks import CHECKS, is_check_class, load_all_checks
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation.hypothesis.builder import (
    HypothesisTestConfig,
    HypothesisTestMode,
    create_test,
)
from schemathesis.generation.overrides import Override

PHASES = [HypothesisTestMode.EXAMPLES, HypothesisTestMode.COVERAGE, HypothesisTestMode.FUZZING]
_QUIET_HEADERS = ("Cloudkernel-", "Accept", "User-Agent", "Connection")
Check = Callable[..., Any]


def every_check() -> list[str]:
    """The names of every check schemathesis registered (what `--checks all` runs)."""
    load_all_checks()
    return sorted(c.__name__ for c in CHECKS.get_all() if not is_check_class(c))


def assert_every_check_enabled(schema: Any) -> None:
    """Fail unless the schema's configuration runs every check (none switched off)."""
    config = schema.config.checks_config_for()
    off = [name for name in every_check() if not config.get_by_name(name=name).enabled]
    assert not off, f"checks switched off: {off}"


def _failures_of(e: BaseException) -> Iterable[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        for inner in e.exceptions:
            yield from _failures_of(inner)
    else:
        yield e


def _describe(case: schemathesis.Case, response: Any, failure: BaseException) -> str:
    """The request as sent, the answer and the failure, shortened for a report."""
    phase = case.meta.phase.name.value if case.meta else ""
    request = response.request
    body = request.body or b""
    sent = body[:600] if isinstance(body, bytes | str) else repr(body)[:600]
    headers = {k: v[:60] for k, v in request.headers.items() if not k.startswith(_QUIET_HEADERS)}
    return (f"[{phase}] {request.method} {request.url[:300]} headers={headers} "
            f"body={sent!r}\n    -> {response.status_code} {response.text[:300]}\n    "
            + str(failure)[:800].replace("\n", "\n    "))


def fuzz_operation(operation: Any, session: requests.Session, failures: dict[str, str], *,
                   max_examples: int, deadline_ms: int,
                   additional_checks: Sequence[Check] = (),
                   path_parameters: dict[str, str] | None = None) -> int:
    """Send `operation` every case of the three phases and check each answer with all the
    checks; add each distinct failure (by operation, kind and title) to `failures`. Returns
    the number of cases sent."""
    sent = 0
    label = f"{operation.method.upper()} {operation.path}"
    pinned = "" if not path_parameters else f" {path_parameters}"

    def test(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        response = case.call(session=session)
        try:
            case.validate_response(response, additional_checks=list(additional_checks),
                                   transport_kwargs={"session": session})
        except (FailureGroup, Failure, AssertionError) as e:
            for failure in _failures_of(e):
                title = getattr(failure, "title", type(failure).__name__)
                key = f"{label}{pinned}: {type(failure).__name__}: {title}"
                if key not in failures:
                    failures[key] = _describe(case, response, failure)

    settings = hypothesis.settings(max_examples=max_examples, deadline=deadline_ms,
                                   database=None, derandomize=True,
                                   suppress_health_check=list(hypothesis.HealthCheck))
    built = create_test(operation=operation, test_func=test, config=HypothesisTestConfig(
        project=operation.schema.config, modes=PHASES, settings=settings,
        override=Override(path_parameters=dict(path_parameters or {}))))
    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        built()  # Unsatisfiable: nothing to negate in an operation without parameters
    return sent
