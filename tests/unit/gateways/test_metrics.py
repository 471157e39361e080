"""The process's metrics: parts register their counters once, a scrape reads them then, and a
part that is gone drops out."""

import gc

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateways.metrics import ProcessMetrics


class Part:
    def __init__(self, name: str, n: int) -> None:
        self.name, self.n = name, n


def test_samples_of_every_live_owner_in_one_family() -> None:
    metrics = ProcessMetrics()
    registry = CollectorRegistry()
    registry.register(metrics)
    a, b = Part("a", 3), Part("b", 5)
    for part in (a, b):
        metrics.add(part, "ck_things", "counter", "Things.", ("part",),
                    lambda p: [((p.name,), p.n)])
        metrics.add(part, "ck_depth", "gauge", "Depth.", (), lambda p: [((), p.n * 10)])
    a.n = 4  # read at the scrape, not at registration
    text = generate_latest(registry).decode()
    assert '# TYPE ck_things_total counter' in text
    assert 'ck_things_total{part="a"} 4.0' in text and 'ck_things_total{part="b"} 5.0' in text
    assert text.count("# TYPE ck_depth gauge") == 1
    del b, part  # the loop variable held the last part too
    gc.collect()
    text = generate_latest(registry).decode()
    assert 'part="b"' not in text and 'ck_things_total{part="a"} 4.0' in text


def test_only_counters_and_gauges() -> None:
    with pytest.raises(ValueError, match="counter or gauge"):
        ProcessMetrics().add(Part("a", 1), "x", "histogram", "X.", (), lambda p: [])
