"""`GET /metrics`: Prometheus exposition of the kernel's queues, steps, drift and lag, through
prometheus-client.

The admin API's own families live in a registry of its app (`ApiMetrics.registry`: several
apps may run in one process, in tests); the page also carries the process's registry
(`gateways.metrics`: the kernel runner's, workers', relays' and intake's counters, and
prometheus-client's process and Python collectors), so that `cloudkernel up`, which runs
every part in one process, shows them all here. Sources:

* HTTP requests and their latency, by route (the API's own middleware);
* the engine's command queue (commands waiting for the next group commit);
* the reconciler's counters: drift found between the model and reality;
* each projection's lag behind the log (positions and seconds) and the log head;
* step latencies, retries and failures, by subsystem: `StepStats` follows the log from the
  moment the API started (counters are per process, as Prometheus expects) and pairs each
  step's dispatch with its outcome.
"""

import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from uuid import UUID

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aggregates.operation import Operation
from aggregates.step_run import Phase
from gateways.metrics import StoreReads, lag_families, reachable_family
from kernel.store.application import KernelApplication

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

_STEP_TOPICS = tuple(t.TOPIC for t in (Operation.Accepted, Operation.StepDispatched,
                                       Operation.StepSucceeded, Operation.StepAttemptFailed))


class StepStats:
    """Step latencies, retries and failures by subsystem, followed from the log."""

    def __init__(self, app: KernelApplication, registry: CollectorRegistry,
                 page: int = 5000) -> None:
        self.app, self.page = app, page
        self.position = app.recorder.max_notification_id() or 0
        self.latency = Histogram("cloudkernel_step_duration_seconds",
                                 "Time from a step attempt's dispatch to its outcome.",
                                 ["subsystem", "outcome"], buckets=STEP_BUCKETS,
                                 registry=registry)
        self.retries = Counter("cloudkernel_step_retries",
                               "Step attempts that failed and will be retried.", ["subsystem"],
                               registry=registry)
        self.failures = Counter("cloudkernel_step_failures", "Steps that failed for good.",
                                ["subsystem"], registry=registry)
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
                self.latency.labels(subsystem, outcome).observe(
                    max(0.0, (e.at - at).total_seconds()))
            if isinstance(e, Operation.StepAttemptFailed):
                if e.retry_at is not None:
                    self.retries.labels(subsystem).inc()
                else:
                    self.failures.labels(subsystem).inc()
            if outcome == "succeeded" or getattr(e, "retry_at", None) is None:
                self._subsystem.pop(e.step_id, None)


class HttpStats:
    """Requests by route and status, and their latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("cloudkernel_http_requests",
                                "Admin API requests by route, method and status.",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("cloudkernel_http_request_duration_seconds",
                                 "Admin API request latency by route.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=registry)

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
            self.requests.labels(route, request.method, str(status)).inc()
            self.latency.labels(route).observe(time.perf_counter() - started)


class CoreMetrics(Collector):
    """The engine's, reconciler's, projections' and log's families, read at each scrape
    (blocking: the API scrapes in its context's thread pool; the store's reads are bounded
    in time, `StoreReads`)."""

    def __init__(self, ctx: Any, store: StoreReads) -> None:
        """Read from the API's context, the store through `store`."""
        self.ctx = ctx
        self._store = store

    def collect(self) -> Iterator[Metric]:
        """The families, each read now."""
        ctx = self.ctx
        lane = getattr(getattr(ctx, "engine", None), "_lane", None)
        if lane is not None:
            yield GaugeMetricFamily("cloudkernel_command_queue_depth",
                                    "Commands waiting for the engine's next group commit.",
                                    value=len(lane.requests))
        if ctx.drift_stats is not None:
            drift = CounterMetricFamily(
                "cloudkernel_drift", "Differences between the model and reality the "
                "reconciler handled.", labels=["kind"])
            for kind, n in sorted(ctx.drift_stats().items()):
                drift.add_metric([kind], n)
            yield drift
        read = self._store.read(lambda: (
            ctx.app.recorder.max_notification_id() or 0,
            {name: runner.lag() for name, runner in ctx.runners.items()}))
        yield reachable_family(read is not None)
        if read is not None:
            head, lags = read
            yield GaugeMetricFamily("cloudkernel_log_head", "The event log's last position.",
                                    value=head)
            yield from lag_families(lags)


class ApiMetrics:
    """The admin API's registry: HTTP, steps and the core families."""

    def __init__(self, ctx: Any) -> None:
        """Families of the API over `ctx`."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.http = HttpStats(self.registry)
        self.steps = StepStats(ctx.app, self.registry)
        self.store = StoreReads()  # a scrape waits for the store 2 s at most
        self.registry.register(CoreMetrics(ctx, self.store))
        self._shared: _Shared | None = None

    def share(self) -> bool:
        """Put the API's families in the process's registry too, so that the process's
        metrics port serves them (an API served by the process; one at a time: False if
        another API of this process shares its families already)."""
        if self._shared is None:
            shared = _Shared(self)
            try:
                REGISTRY.register(shared)
            except ValueError:  # another API's families are there
                return False
            self._shared = shared
        return True

    def unshare(self) -> None:
        """Take the API's families out of the process's registry."""
        if self._shared is not None:
            REGISTRY.unregister(self._shared)
            self._shared = None

    def render(self) -> bytes:
        """Blocking: the API's families (the steps followed up to now) and the process's."""
        self.store.read(self.steps.catch_up)
        if self._shared is not None:
            return generate_latest(REGISTRY)
        return generate_latest(self.registry) + generate_latest(REGISTRY)


class _Shared(Collector):
    """An API's registry as one collector of the process's registry."""

    def __init__(self, metrics: ApiMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        self.metrics.store.read(self.metrics.steps.catch_up)
        yield from self.metrics.registry.collect()
