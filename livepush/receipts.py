"""This node's delivery figures per event, batched off the delivery path for the editors."""

from __future__ import annotations

import asyncio

from livepush.brokers.base import Broker
from livepush.errors import BrokerUnavailable
from livepush.tasks import Tasks

FLUSH_SECONDS = 0.1


class Receipts:
    """Collects (feed, seq, subscribers reached, fan-out seconds) after each fan-out,
    and reports them to the broker every FLUSH_SECONDS on a task: a fan-out pays two
    clock reads and a list append per event, nothing per subscriber."""

    def __init__(self, broker: Broker, tasks: Tasks) -> None:
        self.broker = broker
        self.tasks = tasks
        self._batch: list[tuple[str, int, int, float]] = []
        self._flusher: asyncio.TimerHandle | None = None

    def record(self, feed: str, first: int, last: int, delivered: int, seconds: float) -> None:
        """A fan-out of seqs `first`..`last` reached `delivered` sockets in `seconds`."""
        self._batch.extend((feed, seq, delivered, seconds) for seq in range(first, last + 1))
        if self._flusher is None:
            loop = asyncio.get_running_loop()
            self._flusher = loop.call_later(FLUSH_SECONDS, self._flush)

    def _flush(self) -> None:
        self._flusher = None
        batch, self._batch = self._batch, []
        self.tasks.spawn(self._report(batch))

    async def _report(self, batch: list[tuple[str, int, int, float]]) -> None:
        for feed, seq, delivered, seconds in batch:
            try:
                await self.broker.report(feed, seq, delivered, seconds * 1000)
            except BrokerUnavailable:
                return  # figures for editors only: losing them loses no entry

    def cancel(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
