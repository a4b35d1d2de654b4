"""Turnstile: lets a crowd of waiting coroutines go on a few per turn of the loop."""

from __future__ import annotations

import asyncio
from collections import deque


class Turnstile:
    """Lets at most `per_turn` waiters through per turn of the loop, in arrival order.

    In a reconnect storm hundreds of joiners wait for the same history read; when it
    ends, every one of them would resume in the one turn that follows and write its
    catch-up (a join and up to 50 events each), tens of milliseconds with every other
    reader's fan-out waiting behind that turn. Through a turnstile
    they resume `per_turn` at a time, one batch per turn, the loop polling its sockets
    between batches. When nobody waits, `wait()` returns at once: no timer, no turn lost.
    """

    def __init__(self, per_turn: int) -> None:
        self.per_turn = per_turn
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.passed = 0  # waiters let through in this turn
        self._turn_scheduled = False

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

    def _turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """A new turn: the next `per_turn` waiters go on (in the turn after this one)."""
        self._turn_scheduled = False
        self.passed = 0
        waiting = self.waiting
        while waiting and self.passed < self.per_turn:
            future = waiting.popleft()
            if not future.done():  # a waiter cancelled meanwhile is skipped
                future.set_result(None)
                self.passed += 1
        if waiting:
            self._schedule(loop)
