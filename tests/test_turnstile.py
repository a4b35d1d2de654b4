"""The turnstile lets a crowd of waiters go on a batch per turn of the loop, in order,
each batch about its budget's worth of their work."""

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


class Clock:
    """Time that passes only when a waiter says its work took some."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def crowd(gate: Turnstile, clock: Clock, costs: list[float]) -> list[tuple[int, int]]:
    """Waiters, one per cost, each taking its cost of the clock once through; the
    (waiter, turn) each went on in."""
    turns = Turns()
    went: list[tuple[int, int]] = []

    async def waiter(number: int) -> None:
        await gate.wait()
        went.append((number, turns.count))
        clock.now += costs[number]

    await asyncio.gather(*(asyncio.create_task(waiter(n)) for n in range(len(costs))))
    turns.handle.cancel()
    return went


def batches(went: list[tuple[int, int]]) -> list[int]:
    """How many went on in each turn that let any through, in order."""
    per_turn = Counter(turn for _, turn in went)
    return [per_turn[turn] for turn in sorted(per_turn)]


async def test_a_crowd_goes_through_a_budget_per_turn_in_arrival_order() -> None:
    clock = Clock()
    gate = Turnstile(budget=0.001, first=8, clock=clock)
    went = await crowd(gate, clock, [0.001 / 8] * 100)
    assert [number for number, _ in went] == list(range(100))
    assert max(batches(went)) <= 8
    assert len(batches(went)) >= 100 // 8


async def test_the_batch_follows_what_the_last_batch_cost() -> None:
    # 16 go on at once and 16 in the first turn, as the gate starts, both untimed; they
    # cost a quarter of the budget each, so 4 per turn follow; when the work gets 32
    # times cheaper, 32 per turn do.
    clock = Clock()
    gate = Turnstile(budget=0.001, first=16, clock=clock)
    costs = [0.001 / 4] * 60 + [0.001 / 32] * 200
    sizes = batches(await crowd(gate, clock, costs))
    assert sizes[:9] == [16, 16, 4, 4, 4, 4, 4, 4, 4]
    # the first cheap waiters share a batch with the last dear ones, then 32 a turn
    assert max(sizes) == 32
    assert sizes[-2] == 32


async def test_work_that_takes_no_measurable_time_goes_through_at_most_max_per_turn() -> None:
    clock = Clock()
    gate = Turnstile(budget=0.001, first=2, clock=clock)
    sizes = batches(await crowd(gate, clock, [0.0] * 2000))
    assert max(sizes) == Turnstile.MAX_PER_TURN


async def test_a_batch_that_overran_the_budget_lets_one_through_next() -> None:
    clock = Clock()
    gate = Turnstile(budget=0.001, first=4, clock=clock)
    sizes = batches(await crowd(gate, clock, [0.01] * 10))
    assert sizes == [4, 4, 1, 1]  # the first two batches are untimed


async def test_a_waiter_cancelled_in_line_is_skipped_and_the_rest_go_on() -> None:
    gate = Turnstile(budget=0.001, first=1)
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
    gate = Turnstile(budget=0.001, first=2)
    step = gate.wait().__await__()
    with pytest.raises(StopIteration):
        step.send(None)  # finished in its first step: it never yielded to the loop
