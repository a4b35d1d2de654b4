"""A feed's bounded event history and the replay-or-reset decision made from it."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from livepush.model import Event


class Ring:
    """The last `size` events of one feed, oldest first, in seq order without holes.

    The in-process broker keeps its history here; every node keeps a short one per
    watched feed so that most resumes need no broker round trip.
    """

    __slots__ = ("_events",)

    def __init__(self, size: int) -> None:
        self._events: deque[Event] = deque(maxlen=max(size, 0))

    def __len__(self) -> int:
        return len(self._events)

    def append(self, event: Event) -> None:
        """Add the feed's next event; the caller guarantees seq order without holes."""
        if self._events.maxlen:
            self._events.append(event)

    def prepend(self, events: Sequence[Event], head_seq: int) -> int:
        """Put older events in front, as room allows: those of `events` (oldest first)
        that run without a hole up to just before the oldest held event (up to
        `head_seq` when none is held). A history read that reaches further back than
        the ring teaches it what the next joiners behind need. How many were added."""
        held = self._events
        end = held[0].seq - 1 if held else head_seq
        if not events or events[0].seq > end:
            return 0  # nothing older than what is held: a read the ring has learnt already
        room = (held.maxlen or 0) - len(held)
        run: list[Event] = []  # newest first
        for event in reversed(events):
            if len(run) == room:
                break
            if event.seq > end - len(run):
                continue  # newer than what is missing: the ring holds it
            if event.seq < end - len(run):
                break  # a hole: what is older cannot join the ring
            run.append(event)
        held.extendleft(run)  # newest first in, so oldest first held
        return len(run)

    def at(self, seq: int) -> Event | None:
        """The event with `seq`, if the ring holds it."""
        events = self._events
        if not events or not events[0].seq <= seq <= events[-1].seq:
            return None
        return events[seq - events[0].seq]

    def clear(self) -> None:
        self._events.clear()

    def rewrite(self, change: Callable[[Event], Event | None]) -> list[int]:
        """Replace each held event for which `change` returns another (with the same seq);
        the seqs replaced. A purge's tool: costs O(len) calls of `change`."""
        replaced = []
        events = self._events
        for i, event in enumerate(events):
            new = change(event)
            if new is not None:
                events[i] = new
                replaced.append(event.seq)
        return replaced

    def first_seq(self, head_seq: int) -> int:
        """The oldest seq held, or `head_seq + 1` when nothing is held."""
        return self._events[0].seq if self._events else head_seq + 1

    def after(self, seq: int, head: int, limit: int | None = None) -> list[Event] | None:
        """The events after `seq` up to `head`, oldest first; None if the ring does not
        reach back that far. The ring's newest event must be `head` when it holds any.

        Costs O(limit) by indexing from the end: seqs in the ring are contiguous.
        """
        events = self._events
        if seq >= head:
            return []
        if not events or seq < events[0].seq - 1:
            return None
        start = len(events) - (head - seq)
        stop = len(events) if limit is None else min(len(events), start + limit)
        return [events[i] for i in range(start, stop)]


@dataclass(frozen=True, slots=True)
class Replay:
    """Resume: send the events after `since` (none when it is the head), then live ones."""

    since: int


@dataclass(frozen=True, slots=True)
class Reset:
    """The client's position cannot be continued: it reloads the snapshot, then resumes.

    `reason`: "epoch" (another life of the feed), "ahead" (a seq history does not have),
    or "expired" (older than history holds).
    """

    reason: str


@dataclass(frozen=True, slots=True)
class Lost:
    """History lost writes under its own epoch: a seq seen in this epoch is beyond its head.

    The epoch must be renewed before anyone continues: the seqs that follow would
    otherwise pass for the ones already seen, with other entries.
    """


def decide(
    since: int | None, client_epoch: str | None, epoch: str, head_seq: int, first_seq: int
) -> Replay | Reset | Lost:
    """Decide how a reader at (`client_epoch`, `since`) continues a feed: the one place
    where replay or reset is chosen, for clients and for the nodes' own catch-up.

    `first_seq` is the oldest seq history still holds. A seq beyond the head under the
    same epoch proves lost writes (Lost). Without an epoch it can only come from
    another life of the feed (history lost, epoch unknown to the client): continuing
    it would hand the client another life's entries under a seq it has already seen,
    so it is a reset too.
    """
    if client_epoch is not None and client_epoch != epoch:
        return Reset("epoch")
    if since is None:
        return Replay(head_seq)
    if since > head_seq:
        return Lost() if client_epoch is not None else Reset("ahead")
    if since < first_seq - 1:
        return Reset("expired")
    return Replay(since)
