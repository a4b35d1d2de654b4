"""Deadlines: many items on one loop timer, each expiring a fixed time after it came."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from livepush.deadlines import Deadlines

SECONDS = 10.0


class Clock:
    """The loop as Deadlines uses it, with a clock the test moves and timers it records."""

    def __init__(self) -> None:
        self.now = 0.0
        self.armed: list[float] = []  # when each timer asked for was due

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        return self.call_at(self.now + delay, callback)

    def call_at(self, when: float, callback: Callable[[], None]) -> object:
        self.armed.append(when)
        return object()


class Recorded(Deadlines[str]):
    """Deadlines that record what expired, keep `again` waiting once, and their end."""

    def __init__(self, clock: Clock, again: set[str]) -> None:
        super().__init__(cast(asyncio.AbstractEventLoop, clock), SECONDS)
        self.again = again
        self.expired_items: list[str] = []
        self.ended = 0

    def expired(self, item: str) -> bool:
        self.expired_items.append(item)
        if item in self.again:
            self.again.discard(item)
            return True  # waits one period more
        return False

    def emptied(self) -> None:
        self.ended += 1
        super().emptied()


def test_items_expire_in_arrival_order_unless_discarded_and_may_wait_again() -> None:
    clock = Clock()
    deadlines = Recorded(clock, again={"late"})
    for item in ("a", "gone", "late", "b"):
        deadlines.add(item)
    deadlines.discard("gone")  # done waiting before its deadline: never expires
    deadlines.discard("never added")  # harmless
    assert clock.armed == [SECONDS]  # one timer for all four
    clock.now = SECONDS
    deadlines.expire()
    assert deadlines.expired_items == ["a", "late", "b"]
    assert list(deadlines.waiting) == ["late"]  # given another period
    assert clock.armed == [SECONDS, 2 * SECONDS]
    assert deadlines.ended == 0
    clock.now = 2 * SECONDS
    deadlines.expire()
    assert deadlines.expired_items == ["a", "late", "b", "late"]
    assert deadlines.waiting == {}
    assert (deadlines.ended, deadlines.timer, len(clock.armed)) == (1, None, 2)


def test_an_item_added_later_expires_at_its_own_deadline_on_the_same_timer() -> None:
    clock = Clock()
    deadlines = Recorded(clock, again=set())
    deadlines.add("first")
    timer: Any = deadlines.timer
    clock.now = SECONDS / 2
    deadlines.add("second")
    assert deadlines.timer is timer  # still the one timer
    clock.now = SECONDS
    deadlines.expire()
    assert deadlines.expired_items == ["first"]  # the second's deadline is ahead
    assert clock.armed == [SECONDS, 1.5 * SECONDS]  # the timer waits for it
    clock.now = 1.5 * SECONDS
    deadlines.expire()
    assert deadlines.expired_items == ["first", "second"]
    assert deadlines.ended == 1


class Forgetting(Deadlines[str]):
    def expired(self, item: str) -> bool:
        return False


def test_of_gives_one_instance_per_kind_loop_and_wait_until_nothing_waits() -> None:
    clock = Clock()
    loop = cast(asyncio.AbstractEventLoop, clock)
    first = Forgetting.of(loop, SECONDS)
    assert Forgetting.of(loop, SECONDS) is first
    other_wait = Forgetting.of(loop, 2 * SECONDS)  # another wait: its own timer
    other_kind = Deadlines[str].of(loop, SECONDS)
    assert first not in (other_wait, other_kind)
    first.add("a")
    clock.now = SECONDS
    first.expire()  # nothing waits any more: let go
    again = Forgetting.of(loop, SECONDS)
    assert again is not first
    assert again.waiting == {}
    for left in (again, other_wait, other_kind):
        left.emptied()
