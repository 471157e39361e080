"""Prometheus metrics of every cloudkernel process, through prometheus-client.

Each long-running part (the kernel runner, a worker, a relay, the command intake) keeps its
own plain counters, as it always did; it registers them here once (`PROCESS.add`), and a
scrape reads them then: nothing is counted twice and no hot path takes a metrics lock. The
process's registry (`prometheus_client.REGISTRY`) also holds prometheus-client's own process
and Python collectors.

Setting `metrics_port` (0: off) makes a process serve its registry on
`http://<api_host>:<metrics_port>/metrics` (`serve_metrics`); `cloudkernel up` runs every
part in one process, so its port (and its admin API's `GET /metrics`) serves them all. Give
each process of a split deployment a port of its own (CLOUDKERNEL_METRICS_PORT).

What a scrape reads from the store (the log's head, the projections' lag) is read through
`StoreReads`, bounded in time: while the store does not answer, a scrape still answers at
once, with those families left out and `cloudkernel_store_reachable 0`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["PROCESS", "ProcessMetrics", "StoreReads", "lag_families", "reachable_family",
           "serve_metrics"]

Samples = Iterable[tuple[tuple[str, ...], float]]
T = TypeVar("T")


@dataclass(frozen=True)
class _Source:
    name: str
    kind: str  # "counter" or "gauge"
    help: str
    labels: tuple[str, ...]
    owner: weakref.ref[Any]
    read: Callable[[Any], Samples]


class ProcessMetrics(Collector):
    """The counters and gauges the process's parts registered, read at each scrape. A part
    that is gone (garbage-collected) drops out by itself."""

    def __init__(self) -> None:
        """Nothing registered yet."""
        self._sources: list[_Source] = []
        self._lock = threading.Lock()

    def add(self, owner: object, name: str, kind: str, help_: str, labels: tuple[str, ...],
            read: Callable[[Any], Samples]) -> None:
        """Report `read(owner)`'s samples as metric `name` while `owner` lives. Several owners
        may report the same name (two workers in one process): their samples are one family,
        told apart by their labels."""
        if kind not in ("counter", "gauge"):
            raise ValueError(f"metric kind must be counter or gauge, got {kind!r}")
        with self._lock:
            self._sources.append(_Source(name, kind, help_, labels, weakref.ref(owner), read))

    def collect(self) -> Iterator[Metric]:
        """One family per name, with the samples of every live owner."""
        with self._lock:
            self._sources = [s for s in self._sources if s.owner() is not None]
            sources = list(self._sources)
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for source in sources:
            owner = source.owner()
            if owner is None:
                continue
            family = families.get(source.name)
            if family is None:
                cls = CounterMetricFamily if source.kind == "counter" else GaugeMetricFamily
                family = families[source.name] = cls(source.name, source.help,
                                                     labels=source.labels)
            for values, value in source.read(owner):
                family.add_metric(list(values), value)
        yield from families.values()


PROCESS = ProcessMetrics()
REGISTRY.register(PROCESS)
_served: set[tuple[str, int]] = set()


def serve_metrics(host: str, port: int) -> bool:
    """Serve the process's registry on `port` (0: do nothing) in a thread; once per port."""
    if not port or (host, port) in _served:
        return False
    start_http_server(port, addr=host)
    _served.add((host, port))
    return True


def lag_families(lags: dict[str, Any]) -> Iterator[Metric]:
    """Each projection's lag: positions behind the head and the oldest unapplied event's
    age (the `projections run` process reports the same families)."""
    positions = GaugeMetricFamily("cloudkernel_projection_lag_positions",
                                  "Log positions a read model is behind the head.",
                                  labels=["projection"])
    seconds = GaugeMetricFamily("cloudkernel_projection_lag_seconds",
                                "Age of the oldest event a read model has not applied.",
                                labels=["projection"])
    for name, lag in sorted(lags.items()):
        positions.add_metric([name], lag.positions)
        seconds.add_metric([name], lag.seconds)
    yield positions
    yield seconds


class StoreReads:
    """The store reads of a collector, each given `timeout` seconds. A read that fails or does
    not end in time is answered None, and a read still hanging on a dead connection is not
    doubled by the next scrape (one thread, one read at a time)."""

    def __init__(self, timeout: float = 2.0) -> None:
        """Reads wait at most `timeout` seconds."""
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="metrics-store")
        self._pending: Future[Any] | None = None
        self._lock = threading.Lock()

    def read(self, fn: Callable[[], T]) -> T | None:
        """`fn()`'s answer, or None when the store did not give it in time."""
        with self._lock:
            if self._pending is not None and not self._pending.done():
                return None  # the last read still waits for the store
            future = self._pending = self._pool.submit(fn)
        try:
            return future.result(self.timeout)
        except Exception:  # the store is down: the scrape goes on without its families
            return None


def reachable_family(reachable: bool) -> GaugeMetricFamily:
    """`cloudkernel_store_reachable`: 1 when the scrape's store reads were answered."""
    return GaugeMetricFamily("cloudkernel_store_reachable",
                             "1 when this process's store answered the scrape's reads in "
                             "time, else 0 (its store families are left out).",
                             value=1 if reachable else 0)
