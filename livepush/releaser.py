"""The node's timer that publishes scheduled entries when they fall due."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from livepush.brokers.base import Broker
from livepush.errors import BrokerUnavailable
from livepush.scheduled import release_change

log = logging.getLogger("livepush.releaser")

# How often a node looks for feeds with an entry falling due, and how far ahead: a
# look covers the gap to the next one, so each due time gets a timer of its own.
LOOK_SECONDS = 1.0
LOOK_AHEAD = 1.5


class Releaser:
    """Releases scheduled entries on time from every node, each entry once.

    Every node looks once a second at the broker's index of feeds with scheduled
    entries (one read of one key, on Redis), and for each feed with an entry due
    before the next look arms a loop timer at its due time (the broker's clock,
    so nodes whose clocks differ still agree). The timer asks the broker to release
    the feed's due entries: each is claimed in the same atomic step that assigns its
    seq, so when several nodes fire together one publishes it and the others find it
    gone. Cost: one broker read per node per second, whether or not anything is
    scheduled; an entry goes out within a second of its time, or at the next look
    after the broker comes back.
    """

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.released = 0
        self._timers: dict[str, asyncio.TimerHandle] = {}  # feed -> its armed release
        self._releasing: set[str] = set()
        self._looking: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def look(self) -> None:
        """Look for feeds falling due (a loop timer calls this every LOOK_SECONDS)."""
        if self._looking is None or self._looking.done():
            self._looking = self._spawn(self._look())

    async def _look(self) -> None:
        try:
            due = await self.broker.due(LOOK_AHEAD)
        except BrokerUnavailable:
            return  # the next look asks again
        loop = asyncio.get_running_loop()
        now = loop.time()
        for feed, at in due.feeds:
            if feed not in self._timers and feed not in self._releasing:
                delay = max(0.0, (at - due.now) / 1000)
                self._timers[feed] = loop.call_at(now + delay, self._fire, feed)

    def _fire(self, feed: str) -> None:
        del self._timers[feed]
        self._releasing.add(feed)
        self._spawn(self._release(feed))

    async def _release(self, feed: str) -> None:
        try:
            self.released += await self.broker.release(feed, release_change)
        except BrokerUnavailable:
            pass  # still scheduled: the next look after Redis is back finds it
        finally:
            self._releasing.discard(feed)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Logged, and the next look tries again: an entry stays scheduled until a
            # release publishes it, so going on loses nothing.
            log.error("releasing scheduled entries failed", exc_info=task.exception())

    async def aclose(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
