"""Latency histograms as plain bucket counts, read only when /metrics is scraped."""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Protocol

from livepush.model import Event

# Seconds: from half a millisecond (one Redis round trip on a LAN) to ten seconds,
# finer between 5 and 100 ms, where a turn of the loop and a reader's latency fall.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.025,
    0.035,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram:
    """Counts of observations per bucket, with their sum.

    observe() is one bisect and two additions, cheap enough for every event on the
    delivery path; no prometheus_client object is touched until /metrics is read.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> Iterator[tuple[str, int]]:
        """(upper bound, observations at or below it) as Prometheus buckets, `+Inf` last."""
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            yield ("+Inf" if bound == float("inf") else repr(bound)), total


class LoopLag:
    """How late the event loop runs a timer due every PERIOD: the length of its longest
    turns, which every delivery, publish and handshake behind them waited out.

    One timer for the process (100 wake-ups a second, a few microseconds each); a turn
    that started between two ticks and ended before the next is seen in part or not at
    all, so the histogram's tail says how often the loop stood still, not exactly how long.
    """

    PERIOD = 0.01

    def __init__(self) -> None:
        self.histogram = Histogram()
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = time.monotonic() + self.PERIOD
        self._handle = loop.call_later(self.PERIOD, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        self.histogram.observe(max(0.0, now - self._due))
        self._due = now + self.PERIOD
        self._handle = loop.call_later(self.PERIOD, self._tick, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Ring(Protocol):
    """The recent events of a feed, by seq (feed.Feed.recent)."""

    def at(self, seq: int) -> Event | None: ...


class FanoutTimings:
    """The hub's two histograms: how long one fan-out writes, and how old each of its
    events is when the fan-out has written it to every socket (accept to socket write).

    An event's age is measured against the clock of the node that accepted it: across
    machines, clock skew (keep NTP running) adds to it. Events of unknown age (history
    written before this field existed) are left out.
    """

    __slots__ = ("age", "duration")

    def __init__(self) -> None:
        self.duration = Histogram()
        self.age = Histogram()

    def observe(self, seconds: float, recent: Ring, first: int, last: int) -> None:
        """One fan-out of the events `first`..`last`, which took `seconds`."""
        self.duration.observe(seconds)
        now = time.time()
        for seq in range(first, last + 1):
            event = recent.at(seq)
            if event is not None and event.accepted:
                self.age.observe(now - event.accepted)
