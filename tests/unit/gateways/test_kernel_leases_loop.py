"""The kernel's lease loop when PostgreSQL refuses at once: it retries three times per lease
period, not in a spin, and after a period without a renewal it works no partition."""

import asyncio
import time
from typing import Any

from gateways.stream.kernel_runner import KernelRunner
from kernel.leases import TickResult
from kernel.operations import OperationEngine
from kernel.store.testing import scratch_application


class RefusingTable:
    """A lease table whose database refuses every connection, after a first good tick."""

    partitions, period = 4, 0.6

    def __init__(self) -> None:
        self.ticks = 0

    def tick(self, owner: str, held: Any) -> TickResult:
        self.ticks += 1
        if self.ticks == 1:
            return TickResult(taken={p: 1 for p in range(self.partitions)})
        raise ConnectionRefusedError("connection refused")

    def release(self, owner: str, leases: Any) -> None:
        raise ConnectionRefusedError("connection refused")

    def leave(self, owner: str) -> None:
        raise ConnectionRefusedError("connection refused")


def test_a_refused_tick_is_retried_at_the_loop_pace_and_the_partitions_lapse() -> None:
    app = scratch_application()
    table = RefusingTable()
    runner = KernelRunner(OperationEngine(app), None, [], leases=table,  # type: ignore[arg-type]
                          name="k")
    runner._adopt = lambda *a: asyncio.sleep(0)  # type: ignore[method-assign,assignment]

    async def scenario() -> tuple[int, dict[int, int]]:
        stop = asyncio.Event()
        loop = asyncio.create_task(runner._lease_loop(None, stop, lambda: True))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        assert runner.ownership is not None and len(runner.ownership.held()) == 4
        await asyncio.sleep(1.4)
        held = runner.ownership.held()
        stop.set()
        await loop
        return table.ticks, held

    started = time.monotonic()
    ticks, held = asyncio.run(scenario())
    assert held == {}  # not renewed for a lease period: no partition is worked here
    # 1.5 s at three ticks per 0.6 s period: about 8, never hundreds
    assert 3 <= ticks <= 12, ticks
    assert runner.stats["lease_errors"] == ticks - 1
    assert time.monotonic() - started < 5
    app.close()
