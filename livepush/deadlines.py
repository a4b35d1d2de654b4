"""Deadlines: many items that each expire a fixed time after they arrive, on one timer."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

T = TypeVar("T", bound=Hashable)


class Deadlines(Generic[T]):
    """Items that each expire `seconds` after they were added, unless discarded first.

    One loop timer for all of them, where a timer per item (a `call_later` and its
    `cancel`) costs every connection of a connect storm an allocation in the loop's
    timer heap and two updates of it. All items wait the same time, so they expire in
    arrival order: a dict keeps insertion order, expiry pops from its front, and an
    item that is done waiting leaves from anywhere. Only the items still waiting at
    their deadline cost anything more.

    A subclass says what an item's deadline does (`expired`). `of()` gives the one
    instance of a subclass per loop and wait, made at the first item and let go when
    nothing waits any more.
    """

    _instances: ClassVar[dict[tuple[type, asyncio.AbstractEventLoop, float], Any]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self.loop, self.seconds = loop, seconds
        self.waiting: dict[T, float] = {}  # in arrival order, with their deadlines
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, seconds: float) -> Self:
        key = (cls, loop, seconds)
        found = Deadlines._instances.get(key)
        if found is None:
            found = Deadlines._instances[key] = cls(loop, seconds)
        return cast(Self, found)

    def expired(self, item: T) -> bool:
        """`item`'s deadline has come (it no longer waits): True to wait `seconds` more
        (a connection whose bytes wait unread, say: the loop, not the client, was late)."""
        raise NotImplementedError

    def add(self, item: T) -> None:
        self.waiting[item] = self.loop.time() + self.seconds
        if self.timer is None:
            self.timer = self.loop.call_later(self.seconds, self.expire)

    def discard(self, item: T) -> None:
        self.waiting.pop(item, None)

    def expire(self) -> None:
        """Call `expired` for every item past its deadline; the timer waits for the next."""
        self.timer = None
        waiting, now = self.waiting, self.loop.time()
        while waiting:
            item, deadline = next(iter(waiting.items()))
            if deadline > now:
                self.timer = self.loop.call_at(deadline, self.expire)
                return
            del waiting[item]
            if self.expired(item):
                waiting[item] = now + self.seconds
        self.emptied()

    def emptied(self) -> None:
        """Nothing waits any more and no timer is armed: `of()` makes a new one next time."""
        key = (type(self), self.loop, self.seconds)
        if Deadlines._instances.get(key) is self:
            del Deadlines._instances[key]
