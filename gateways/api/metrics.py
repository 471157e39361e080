"""`GET /metrics`: Prometheus text exposition of the kernel's queues, steps, drift and lag.

Written by hand (text format 0.0.4): a few counters, gauges and histograms do not justify a
dependency and its global registry. Sources:

* HTTP requests and their latency, by route (the API's own middleware);
* the engine's command queue (commands waiting for the next group commit) and the kernel
  runner's counters (steps published, outcomes applied and ignored, result batches);
* the reconciler's counters: drift found between the model and reality;
* each projection's lag behind the log (positions and seconds) and the log head;
* step latencies, retries and failures, by subsystem: `StepStats` follows the log from the
  moment the API started (counters are per process, as Prometheus expects) and pairs each
  step's dispatch with its outcome.
"""

import bisect
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from uuid import UUID

from aiohttp import web

from aggregates.operation import Operation
from aggregates.step_run import Phase
from kernel.store.application import KernelApplication

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels, extra: Labels = ()) -> str:
    items = (*labels, *extra)
    if not items:
        return ""
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in items)
    return "{" + text + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Histogram:
    """A thread-safe Prometheus histogram with labels."""

    def __init__(self, name: str, help_: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_, buckets
        self._lock = threading.Lock()
        self._series: dict[Labels, list[float]] = {}  # bucket counts..., sum, count

    def observe(self, value: float, labels: Labels = ()) -> None:
        """Count one observation."""
        with self._lock:
            series = self._series.setdefault(labels, [0.0] * (len(self.buckets) + 2))
            series[bisect.bisect_left(self.buckets, value)] += 1
            series[-2] += value
            series[-1] += 1

    def render(self) -> list[str]:
        """The exposition lines."""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            snapshot = {k: list(v) for k, v in self._series.items()}
        for labels, series in sorted(snapshot.items()):
            cumulative = 0.0
            for bound, count in zip((*self.buckets, float("inf")), series, strict=False):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f"{self.name}_bucket{_labels(labels, (('le', le),))} "
                             f"{cumulative:g}")
            lines.append(f"{self.name}_sum{_labels(labels)} {series[-2]:.6f}")
            lines.append(f"{self.name}_count{_labels(labels)} {series[-1]:g}")
        return lines


def family(name: str, kind: str, help_: str, samples: Iterable[tuple[Labels, float]]) -> list[str]:
    """The exposition lines of a counter or gauge family."""
    return [f"# HELP {name} {help_}", f"# TYPE {name} {kind}",
            *(f"{name}{_labels(labels)} {value:g}" for labels, value in samples)]


_STEP_TOPICS = tuple(t.TOPIC for t in (Operation.Accepted, Operation.StepDispatched,
                                       Operation.StepSucceeded, Operation.StepAttemptFailed))


class StepStats:
    """Step latencies, retries and failures by subsystem, followed from the log."""

    def __init__(self, app: KernelApplication, page: int = 5000) -> None:
        self.app, self.page = app, page
        self.position = app.recorder.max_notification_id() or 0
        self.latency = Histogram("cloudkernel_step_duration_seconds",
                                 "Time from a step attempt's dispatch to its outcome.",
                                 STEP_BUCKETS)
        self.retries: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self._subsystem: dict[UUID, str] = {}
        self._dispatched: dict[tuple[UUID, int], Any] = {}
        self._lock = threading.Lock()

    def catch_up(self, max_pages: int = 20) -> None:
        """Read the log's new step events (bounded, so a scrape stays quick)."""
        with self._lock:
            for _ in range(max_pages):
                notes = self.app.recorder.select_notifications(
                    start=self.position, limit=self.page, topics=_STEP_TOPICS,
                    inclusive_of_start=False)
                for n in notes:
                    self._take(self.app.mapper.to_domain_event(n))
                if len(notes) < self.page:
                    head = self.app.recorder.max_notification_id() or 0
                    self.position = max(self.position, notes[-1].id if notes else head)
                    return
                self.position = notes[-1].id

    def _take(self, e: Any) -> None:
        if isinstance(e, Operation.Accepted):
            for step in e.plan.steps:
                self._subsystem[step.step_id] = step.subsystem
        elif isinstance(e, Operation.StepDispatched):
            self._dispatched[(e.step_id, e.attempt)] = e.at
        elif isinstance(e, Operation.StepSucceeded | Operation.StepAttemptFailed):
            subsystem = self._subsystem.get(e.step_id, "unknown") \
                if e.phase is Phase.FORWARD else "compensation"
            at = self._dispatched.pop((e.step_id, e.attempt), None)
            outcome = "succeeded" if isinstance(e, Operation.StepSucceeded) else "failed"
            if at is not None:
                self.latency.observe(max(0.0, (e.at - at).total_seconds()),
                                     (("subsystem", subsystem), ("outcome", outcome)))
            if isinstance(e, Operation.StepAttemptFailed):
                if e.retry_at is not None:
                    self.retries[subsystem] += 1
                else:
                    self.failures[subsystem] += 1
            if outcome == "succeeded" or getattr(e, "retry_at", None) is None:
                self._subsystem.pop(e.step_id, None)

    def render(self) -> list[str]:
        """The exposition lines."""
        return [*self.latency.render(),
                *family("cloudkernel_step_retries_total", "counter",
                        "Step attempts that failed and will be retried.",
                        [((("subsystem", s),), n) for s, n in sorted(self.retries.items())]),
                *family("cloudkernel_step_failures_total", "counter",
                        "Steps that failed for good.",
                        [((("subsystem", s),), n) for s, n in sorted(self.failures.items())])]


class HttpStats:
    """Requests by route and status, and their latency."""

    def __init__(self) -> None:
        self.requests: Counter[Labels] = Counter()
        self.latency = Histogram("cloudkernel_http_request_duration_seconds",
                                 "Admin API request latency by route.", LATENCY_BUCKETS)

    def render(self) -> list[str]:
        """The exposition lines."""
        return [*family("cloudkernel_http_requests_total", "counter",
                        "Admin API requests by route, method and status.",
                        sorted(self.requests.items())),
                *self.latency.render()]

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        """Count and time every request (outside the error middleware: errors count too)."""
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            info = request.match_info.route
            route = info.name or ("unmatched" if info.resource is None
                                  else info.resource.canonical)
            self.requests[(("route", route), ("method", request.method),
                           ("status", str(status)))] += 1
            self.latency.observe(time.perf_counter() - started, (("route", route),))


def core_metrics(ctx: Any, steps: StepStats) -> list[str]:
    """Blocking: the engine's, kernel's, reconciler's, projections' and steps' lines."""
    lines: list[str] = []
    lane = getattr(getattr(ctx, "engine", None), "_lane", None)
    if lane is not None:
        lines += family("cloudkernel_command_queue_depth", "gauge",
                        "Commands waiting for the engine's next group commit.",
                        [((), len(lane.requests))])
    if ctx.kernel_stats is not None:
        for key, value in sorted(ctx.kernel_stats().items()):
            lines += family(f"cloudkernel_kernel_{key}_total", "counter",
                            f"Kernel runner: {key.replace('_', ' ')}.", [((), value)])
    if ctx.drift_stats is not None:
        lines += family("cloudkernel_drift_total", "counter",
                        "Differences between the model and reality the reconciler handled.",
                        [((("kind", k),), v) for k, v in sorted(ctx.drift_stats().items())])
    head = ctx.app.recorder.max_notification_id() or 0
    lines += family("cloudkernel_log_head", "gauge", "The event log's last position.",
                    [((), head)])
    lags = {name: runner.lag() for name, runner in ctx.runners.items()}
    lines += family("cloudkernel_projection_lag_positions", "gauge",
                    "Log positions a read model is behind the head.",
                    [((("projection", n),), lag.positions) for n, lag in sorted(lags.items())])
    lines += family("cloudkernel_projection_lag_seconds", "gauge",
                    "Age of the oldest event a read model has not applied.",
                    [((("projection", n),), lag.seconds) for n, lag in sorted(lags.items())])
    steps.catch_up()
    lines += steps.render()
    return lines

