"""The turnstile lets a crowd of waiters go on a few per turn of the loop, in order."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from livepush.turnstile import Turnstile


class Turns:
    """Counts the turns of the loop: one step per turn while it runs."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.count = 0
        self.handle = self.loop.call_soon(self.step)

    def step(self) -> None:
        self.count += 1
        self.handle = self.loop.call_soon(self.step)


async def test_a_crowd_goes_through_per_turn_at_a_time_in_arrival_order() -> None:
    turns, gate = Turns(), Turnstile(per_turn=8)
    went: list[tuple[int, int]] = []  # (waiter, turn)

    async def waiter(number: int) -> None:
        await gate.wait()
        went.append((number, turns.count))

    tasks = [asyncio.create_task(waiter(n)) for n in range(100)]
    await asyncio.gather(*tasks)
    turns.handle.cancel()
    assert [number for number, _ in went] == list(range(100))
    per_turn = Counter(turn for _, turn in went)
    assert max(per_turn.values()) <= 8
    assert len(per_turn) >= 100 // 8


async def test_a_waiter_cancelled_in_line_is_skipped_and_the_rest_go_on() -> None:
    gate = Turnstile(per_turn=1)
    went: list[int] = []

    async def waiter(number: int) -> None:
        await gate.wait()
        went.append(number)

    tasks = [asyncio.create_task(waiter(n)) for n in range(5)]
    await asyncio.sleep(0)  # all in line (the first went through)
    tasks[2].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert went == [0, 1, 3, 4]
    with pytest.raises(asyncio.CancelledError):
        await tasks[2]


async def test_nobody_waiting_means_no_wait() -> None:
    gate = Turnstile(per_turn=2)
    step = gate.wait().__await__()
    with pytest.raises(StopIteration):
        step.send(None)  # finished in its first step: it never yielded to the loop
