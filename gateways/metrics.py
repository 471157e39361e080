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
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["PROCESS", "ProcessMetrics", "lag_families", "serve_metrics"]

Samples = Iterable[tuple[tuple[str, ...], float]]


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
