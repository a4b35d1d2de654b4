"""The loop-lag histogram: how late the event loop runs its 10 ms timer."""

from __future__ import annotations

import asyncio
import time

from livepush.timing import LoopLag


def late_at_least(lag: LoopLag, seconds: float) -> int:
    """Observations in buckets whose lower bound is at least `seconds`."""
    bounds = (0.0, *lag.histogram.bounds)
    return sum(c for low, c in zip(bounds, lag.histogram.counts, strict=True) if low >= seconds)


async def test_a_turn_that_holds_the_loop_is_seen_as_late_ticks() -> None:
    loop = asyncio.get_running_loop()
    lag = LoopLag()
    lag.start(loop)
    await asyncio.sleep(0.05)
    assert sum(lag.histogram.counts) >= 2  # it ticks by itself
    before = late_at_least(lag, 0.025)
    loop.call_soon(time.sleep, 0.05)  # a callback holds the loop for 50 ms: the tick
    await asyncio.sleep(0.03)  # due in that turn runs 40 ms late or more
    assert late_at_least(lag, 0.025) > before
    lag.stop()
    ticks = sum(lag.histogram.counts)
    await asyncio.sleep(0.03)
    assert sum(lag.histogram.counts) == ticks  # stopped
