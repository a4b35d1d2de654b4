"""Turnstile: lets a crowd of waiting coroutines go on about `budget` seconds per turn."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from time import perf_counter


class Turnstile:
    """Lets waiters through in arrival order, as many per turn of the loop as do about
    `budget` seconds of work between them.

    In a reconnect storm hundreds of joiners wait for the same history read; when it
    ends, every one of them would resume in the one turn that follows and write its
    catch-up (a join and up to 50 events each), tens of milliseconds with every other
    reader's fan-out waiting behind that turn. Through a turnstile they resume a batch
    per turn, the loop polling its sockets between batches. When nobody waits, `wait()`
    returns at once: no timer, no turn lost.

    A batch's size comes from what the batch before cost: a callback queued just
    before its wake-ups reads the clock, and the next turn's callback, queued just
    after them, reads it again. What a waiter does costs more with a longer catch-up,
    so a fixed count per turn would be a few hundred microseconds one day and several
    milliseconds the next (64 joiners were 5 to 6 ms a turn in a storm of 10,000).
    """

    MAX_PER_TURN = 512

    def __init__(
        self, budget: float, first: int = 16, clock: Callable[[], float] = perf_counter
    ) -> None:
        self.budget = budget
        self.per_turn = first  # until a batch has been timed
        self.clock = clock
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.passed = 0  # waiters let through in this turn
        self._turn_scheduled = False
        self._batch = 0  # waiters woken by the last turn, timed by the next
        self._batch_started: float | None = None

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.waiting and self.passed < self.per_turn:
            self.passed += 1
            self._schedule(loop)
            return
        future: asyncio.Future[None] = loop.create_future()
        self.waiting.append(future)
        self._schedule(loop)
        await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            loop.call_soon(self._turn, loop)

    def _mark(self) -> None:
        self._batch_started = self.clock()

    def _turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """A new turn: the next batch goes on (in the turn after this one)."""
        self._turn_scheduled = False
        started, self._batch_started = self._batch_started, None
        if started is not None and self._batch:
            # The last batch ran between _mark and this call: nothing else was queued
            # in between (callbacks run in the order they were queued).
            spent = self.clock() - started
            fits = round(self._batch * self.budget / spent) if spent > 0 else self.MAX_PER_TURN
            self.per_turn = max(1, min(self.MAX_PER_TURN, fits))
        self.passed = 0
        waiting = self.waiting
        if waiting:
            loop.call_soon(self._mark)
        while waiting and self.passed < self.per_turn:
            future = waiting.popleft()
            if not future.done():  # a waiter cancelled meanwhile is skipped
                future.set_result(None)
                self.passed += 1
        # Timed by the next turn, if there is one soon (waiters left); a turn that comes
        # later, at a new arrival, would time the loop's idle moments as well.
        self._batch = self.passed if waiting else 0
        if waiting:
            self._schedule(loop)
