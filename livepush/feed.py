"""One feed's ordering on one node, as a state machine that takes events in and hands actions out.

A `Feed` is sans-I/O in the way websockets' protocol is: it never touches a socket,
a timer or the broker. Live events (`receive`), history reads (`receive_history`) and
joins (`join`, `join_history`) go in; what to do comes out as values:

- `Fanout`: one event's frame per format and the subscriptions to write it to, and
  the subscriptions to cut (1013);
- `Send`: bytes for one subscription (`subscribed` and its catch-up, in one write);
- `Reset`: tell one subscription its position cannot be continued;
- `Idle`: nobody is subscribed any more (the shell retires the feed after a while);
- requests, pulled with `request()`: `ReadHistory` (fill a hole, catch up after a
  reconnect) and `RenewEpoch` (writes were lost under the current epoch).

The hub (hub.py) is the shell: it owns the tasks and timers, calls the broker for
the requests and performs the actions. Every order decision is made here, in
arithmetic on seqs, and every replay-or-reset decision by `history.decide`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from livepush.history import Lost, Replay, Ring, decide
from livepush.model import CloseCode, Event, EventType, History
from livepush.wire import (
    encode,
    is_purge,
    purged_event,
    purged_id,
    sse_block,
    sse_message,
    ws_deflate_frame,
    ws_frame,
)

log = logging.getLogger("livepush.feed")

PURGED = EventType.PURGED

# Events a node keeps per watched feed, so most resumes need no broker round trip.
RECENT_EVENTS = 256
# Out-of-order events held while a hole is filled; past this they are dropped and
# the fill reads them from history instead.
MAX_PENDING = 10_000
# Frames kept per feed for catch-ups (all formats); cleared when full.
FRAME_CACHE = 4 * RECENT_EVENTS
# Catch-up runs (the ring's frames from a position to the head, joined) kept per feed
# at its current head, and the longest one kept.
RUN_CACHE = 16
RUN_CACHE_BYTES = 256 * 1024
# Purged entries remembered per feed, for history reads older than their purge.
PURGED_KEPT = 16


class Format(Enum):
    """How a subscription frames events: the same bytes go to every member of a format."""

    WS = "ws"
    WS_DEFLATE = "ws-deflate"  # negotiated permessage-deflate: compressed once per event
    SSE = "sse"

    # Members are singletons compared by identity: hashing them by identity too keeps
    # Enum's Python-level __hash__ out of every lookup of a frame or a group by format.
    __hash__ = object.__hash__


def sse_chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk: SSE rides a chunked response written to the socket."""
    return b"%x\r\n%s\r\n" % (len(data), data)


ENCODERS: dict[Format, Callable[[Event], bytes]] = {
    Format.WS: lambda event: ws_frame(event.payload),
    Format.WS_DEFLATE: lambda event: ws_deflate_frame(event.payload),
    Format.SSE: lambda event: sse_chunk(sse_block(event)),
}


def control(message: dict[str, Any]) -> bytes:
    """A control message as a WebSocket frame."""
    return ws_frame(encode(message))


def sse_control(kind: str, message: dict[str, Any]) -> bytes:
    """A control message as an SSE chunk."""
    return sse_chunk(sse_message(kind, message))


def sse_comment(text: bytes) -> bytes:
    """An SSE comment chunk (keep-alive)."""
    return sse_chunk(b": " + text + b"\n\n")


class Connection(Protocol):
    """A subscriber's socket as the hub sees it; transports implement it."""

    format: Format

    def write(self, data: bytes) -> None:
        """Queue bytes on the socket, framed for `format`; never blocks."""

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""

    def send(self, kind: str, message: dict[str, Any]) -> None:
        """Write one control message (subscribed, reset, receipt, error, pong)."""

    def close(self, code: CloseCode) -> None:
        """Close, aborting the connection if the peer does not read the close."""


class Subscription:
    """One connection's interest in one feed, and the last seq it was sent.

    `write` and `buffered` are the connection's bound methods, looked up once here
    instead of once per event in the hot loop.
    """

    __slots__ = ("buffered", "conn", "feed", "last_seq", "live", "receipts", "write")

    def __init__(self, conn: Connection, feed: str, receipts: bool = False) -> None:
        self.conn = conn
        self.feed = feed
        self.write: Callable[[bytes], None] = conn.write
        self.buffered = conn.buffered
        self.last_seq = -1
        self.live = False
        self.receipts = receipts


class Cut(Enum):
    """Why a live subscription was cut off with 1013 (it resumes from its last seq)."""

    SLOW = "slow"  # more than max_buffer behind: unsent bytes plus what it missed paused
    HOLE = "hole"  # it would miss an event: it joined behind what the node delivers


# Actions: what the shell must do, in order.


@dataclass(frozen=True, slots=True)
class Fanout:
    """Write the feed's next events, `first`..`last`: each format's frames (all of the
    events, joined: one write per socket) to its subscriptions, `partial` to the few
    that already had some of them, then cut `cut`."""

    first: int
    last: int
    writes: list[tuple[bytes, list[Subscription]]]
    partial: list[Send]
    cut: list[tuple[Subscription, Cut]]


@dataclass(frozen=True, slots=True)
class Send:
    """Write `data` (already framed) to one subscription."""

    sub: Subscription
    data: bytes


@dataclass(frozen=True, slots=True)
class Reset:
    """Send `reset`: a WebSocket subscription has ended; an SSE one goes on from `head_seq`."""

    sub: Subscription
    epoch: str
    head_seq: int


@dataclass(frozen=True, slots=True)
class Drop:
    """Cut one subscription with 1013 (it resumes from its last seq when it reconnects)."""

    sub: Subscription
    reason: Cut


@dataclass(frozen=True, slots=True)
class Idle:
    """The feed has no subscription and no join in progress."""


Action = Fanout | Send | Reset | Drop | Idle


# Requests: what the shell must ask the broker.


@dataclass(frozen=True, slots=True)
class ReadHistory:
    """Read history after `after` and hand it to `receive_history` (or `join_history`).

    `backoff`: the last read made no progress (a replica behind?): wait before this one.
    """

    after: int
    backoff: bool = False


@dataclass(frozen=True, slots=True)
class RenewEpoch:
    """History lost writes under `stale`: start a new epoch, then read history again."""

    stale: str


@dataclass(frozen=True, slots=True)
class CatchUp:
    """A join's history read named another life than this node's: once the feed has
    caught up (its own requests answered), read again from the same position."""


Request = ReadHistory | RenewEpoch
JoinRequest = ReadHistory | RenewEpoch | CatchUp


class Feed:
    """One watched feed on this node: its position, recent events, held events and joins.

    The node's position is (`epoch`, `head`): the last seq it delivered. An event that
    is not `head + 1` of the current epoch is held in `pending` (bounded) while the
    hole is read from history; a duplicate is dropped, unless it differs from what
    was delivered under that seq, which proves history lost writes.
    """

    def __init__(self, name: str, *, max_buffer: int, max_pending: int = MAX_PENDING) -> None:
        self.name = name
        self.max_buffer = max_buffer
        self.max_pending = max_pending
        self.epoch = ""
        self.head = 0
        self.synced = False  # the first position is known (set by `start`)
        self.filling = False  # catching up from history: live events wait in `pending`
        self.groups: dict[Format, dict[Subscription, None]] = {fmt: {} for fmt in Format}
        self.joining: set[Subscription] = set()
        self.watchers: set[Subscription] = set()  # want receipts
        # Live subscriptions whose sockets hold more than `pause_at` unsent bytes: no
        # live frame is written to them until they drain (resume()), and they count
        # the bytes of what they miss; past `max_buffer` in all they are cut.
        self.paused: dict[Subscription, int] = {}
        self.pause_at = max_buffer // 4
        self.resume_at = max_buffer // 16
        self.recent = Ring(RECENT_EVENTS)
        self.pending: dict[int, Event] = {}
        self._stale: str | None = None  # an epoch proven to have lost writes
        self._stalled = False  # the last history read made no progress
        self._subscribed: dict[Format, tuple[str, int, bytes]] = {}
        # Events advanced in the current input call, fanned out together at its end.
        self._run: list[Event] = []
        self._run_base = 0  # the head before the run
        # Frames of this epoch's events by (format, seq): every catch-up (a reconnect
        # storm's thousands of joiners) reuses the frame the live path built.
        self._frames: dict[tuple[Format, int], bytes] = {}
        # Catch-up runs by (format, position), all at `_runs_at` (epoch, head): the
        # readers a dead node sends here come back from a few positions, thousands
        # from each, and each position's run is joined once (`_run_after`).
        self._runs: dict[tuple[Format, int], bytes] = {}
        self._runs_at: tuple[str, int] = ("", -1)
        # Entries purged lately (oldest first): a join's history read sent before a
        # purge must not bring their text back (purge()).
        self._purged: dict[str, None] = {}
        self._scrub: tuple[History, History] | None = None  # the last read scrubbed

    # Position

    def start(self, epoch: str, head: int) -> list[Action]:
        """The broker's live stream is on and the feed's position was read."""
        self.epoch, self.head, self.synced = epoch, head, True
        self._drain_pending()
        return self._take_run()

    def request(self) -> Request | None:
        """What the shell must ask the broker next, if anything."""
        if not self.synced:
            return None
        if self._stale is not None:
            return RenewEpoch(self._stale)
        if self.filling:
            return ReadHistory(self.head, self._stalled)
        return None

    def resync(self) -> None:
        """The live stream was interrupted: catch up from history before going on."""
        if self.synced:
            self.filling = True

    def renewed(self) -> None:
        """The stale epoch was renewed: the next history read resets the feed."""
        self._stale = None
        self.filling = True

    # Live events

    def receive(self, *events: Event) -> list[Action]:
        """Events from the broker's live stream (at most once, maybe out of order).

        The events that arrive together (one read of the broker's socket) go out
        together: each socket gets all of them in one write. Nothing waits for a batch
        to fill: a lone event is a batch of one.
        """
        for event in events:
            self._receive(event)
        return self._take_run()

    def _receive(self, event: Event) -> None:
        if not self.synced or self.filling or event.epoch != self.epoch:
            self._hold(event)
            self.filling = self.synced  # another epoch: the catch-up reads its history
        elif event.seq == self.head + 1:
            self._advance(event)
            if self.pending:
                self._drain_pending()
        elif event.seq > self.head + 1:
            self._hold(event)
            self.filling = True  # a hole: pub/sub dropped something
        else:
            seen = self.recent.at(event.seq)
            # A purged event differs from what pub/sub carried, and proves nothing.
            if seen is not None and seen.payload != event.payload and seen.type is not PURGED:
                # The same seq twice with other content: writes under this epoch were lost.
                log.warning("feed %s: history lost writes under epoch %s", self.name, self.epoch)
                self._stale = self.epoch

    def _hold(self, event: Event) -> None:
        if len(self.pending) < self.max_pending:
            self.pending[event.seq] = event

    def _advance_pending(self) -> None:
        """Advance through the held events that now follow the head; drop the passed.

        An event of another epoch stays held: the catch-up that reads the new epoch's
        history resets the feed and keeps it only if it belongs to that life.
        """
        pending = self.pending
        while (event := pending.get(self.head + 1)) is not None and event.epoch == self.epoch:
            del pending[event.seq]
            self._advance(event)
        for seq in [seq for seq in pending if seq <= self.head]:
            del pending[seq]

    def _drain_pending(self) -> None:
        self._advance_pending()
        if self.pending:
            self.filling = True

    def _advance(self, event: Event) -> None:
        """Make `event` (the head's next) the head; it goes out with the run it ends."""
        if not self._run:
            self._run_base = self.head
        self.head = event.seq
        self.recent.append(event)
        self._run.append(event)
        if is_purge(event):
            self.purge(purged_id(event))

    def purge(self, entry_id: str) -> None:
        """An entry was purged (its `entry.deleted` marked so reached this node, in seq
        order): its events in the recent ring, the held ones and the run about to go
        out become `entry.purged`, and their cached frames are dropped, so no resume
        from this node sees its text again. Costs O(RECENT_EVENTS + held events)."""

        def purged(event: Event) -> Event | None:
            return purged_event(event, entry_id)

        self.recent.rewrite(purged)
        self.pending = {seq: purged(event) or event for seq, event in self.pending.items()}
        self._run = [purged(event) or event for event in self._run]
        self._frames.clear()  # frames of history older than the ring may hold it too
        self._runs.clear()
        self._purged[entry_id] = None
        self._scrub = None
        if len(self._purged) > PURGED_KEPT:
            del self._purged[next(iter(self._purged))]

    def _scrubbed(self, history: History) -> History:
        """`history` as it stands after the purges this node has seen (its read may be
        older than one of them). Costs a search of each event for each recent purge,
        once per read however many joiners share it, and only after a purge."""
        if not self._purged:
            return history
        if self._scrub is not None and self._scrub[0] is history:
            return self._scrub[1]
        ids = [(entry_id, entry_id.encode()) for entry_id in self._purged]
        events = []
        for event in history.events:
            for entry_id, raw in ids:
                if raw in event.payload and (purged := purged_event(event, entry_id)):
                    event = purged
                    break
            events.append(event)
        scrubbed = History(history.epoch, history.head_seq, history.first_seq, tuple(events))
        self._scrub = (history, scrubbed)
        return scrubbed

    def _frame(self, fmt: Format, event: Event) -> bytes:
        """`event` framed for `fmt`, built once per epoch however many sockets get it."""
        key = (fmt, event.seq)
        frame = self._frames.get(key)
        if frame is None:
            if len(self._frames) >= FRAME_CACHE:
                self._frames.clear()  # cheaper than an LRU; refilled by the next reads
            frame = self._frames[key] = ENCODERS[fmt](event)
        return frame

    def _run_after(self, fmt: Format, since: int) -> bytes | None:
        """The frames of the ring's events after `since` up to the head, as one write;
        None if the ring does not reach back. Joined once per (format, position) at
        each head: a storm's thousands of readers at one position share it."""
        at = (self.epoch, self.head)
        if self._runs_at != at:
            self._runs.clear()
            self._runs_at = at
        key = (fmt, since)
        run = self._runs.get(key)
        if run is None:
            events = self.recent.after(since, self.head)
            if events is None:
                return None
            run = b"".join([self._frame(fmt, event) for event in events])
            if len(run) <= RUN_CACHE_BYTES:
                if len(self._runs) >= RUN_CACHE:
                    self._runs.clear()
                self._runs[key] = run
        return run

    def _live_after(self, sub: Subscription, data: list[bytes]) -> bytes | None:
        """`data`, then the ring's events after `sub.last_seq`, and `sub` live: all in
        one write; None (nothing done) if the ring does not reach back."""
        run = self._run_after(sub.conn.format, sub.last_seq)
        if run is None:
            return None
        data.append(run)
        sub.last_seq = max(sub.last_seq, self.head)  # the ring is contiguous to the head
        return self._go_live(sub, data)

    def _take_run(self) -> list[Action]:
        """The events advanced since the last call, as one fan-out: the hot loop.

        A subscription at the run's base gets every event of it in one write; one
        already inside it (it joined from history beyond the base) gets the rest; one
        behind the base would see a hole and is cut. One whose socket holds more than
        `pause_at` unsent bytes is paused instead: it is caught up when it drains, and
        cut only once its unsent bytes and what it missed pass `max_buffer`.
        """
        run = self._run
        if not run:
            return []
        self._run = []
        base, last = self._run_base, run[-1].seq
        writes: list[tuple[bytes, list[Subscription]]] = []
        partial: list[Send] = []
        cut: list[tuple[Subscription, Cut]] = []
        stalled: list[Subscription] = []
        pause_at = self.pause_at
        for fmt, subs in self.groups.items():
            if not subs:
                continue
            targets: list[Subscription] = []
            for sub in subs:
                seen = sub.last_seq
                if seen >= last:
                    continue  # joined from history past the run already
                if seen < base:
                    cut.append((sub, Cut.HOLE))
                elif sub.buffered() > pause_at:
                    stalled.append(sub)
                elif seen == base:
                    sub.last_seq = last
                    targets.append(sub)
                else:
                    data = b"".join(self._frame(fmt, e) for e in run if e.seq > seen)
                    partial.append(Send(sub, data))
                    sub.last_seq = last
            if targets:
                writes.append((self._run_frame(fmt, run), targets))
        for sub in stalled:
            self.groups[sub.conn.format].pop(sub)
            self.paused[sub] = 0
        if self.paused:
            cut += self._count_missed(run)
        for sub, _ in cut:
            self._remove(sub)
        return [Fanout(base + 1, last, writes, partial, cut)]

    def _run_frame(self, fmt: Format, run: list[Event]) -> bytes:
        return b"".join([self._frame(fmt, event) for event in run])

    def _count_missed(self, run: list[Event]) -> list[tuple[Subscription, Cut]]:
        """Add the run to what each paused subscription missed; those past `max_buffer`
        in all are cut (memory and catch-up stay bounded)."""
        cut = []
        for sub, missed in self.paused.items():
            behind = [event for event in run if event.seq > sub.last_seq]
            missed += sum(len(self._frame(sub.conn.format, event)) for event in behind)
            self.paused[sub] = missed
            if sub.buffered() + missed > self.max_buffer:
                cut.append((sub, Cut.SLOW))
        return cut

    def resume(self, sub: Subscription) -> tuple[list[Action], ReadHistory | None]:
        """A paused subscription's socket drained: catch it up from the node's recent
        events and make it live again, or ask for history when they do not reach back."""
        if sub not in self.paused:
            return [], None
        data = self._live_after(sub, [])
        if data is None:
            return [], ReadHistory(sub.last_seq)
        del self.paused[sub]
        return [Send(sub, data)], None

    def resume_history(self, sub: Subscription, history: History) -> list[Action]:
        """Catch a paused subscription up from a history read after its last seq; cut it
        if history no longer reaches back to it (it fell behind history)."""
        if sub not in self.paused:
            return []
        history = self._scrubbed(history)
        decision = decide(
            sub.last_seq, self.epoch, history.epoch, history.head_seq, history.first_seq
        )
        if not isinstance(decision, Replay):
            return self.drop(sub, Cut.SLOW)
        fmt = sub.conn.format
        data = []
        for event in history.events:
            if event.seq == sub.last_seq + 1:
                data.append(self._frame(fmt, event))
                sub.last_seq = event.seq
        caught_up = self._live_after(sub, data)
        if caught_up is None:
            return self.drop(sub, Cut.SLOW)  # the node ran past the read meanwhile
        del self.paused[sub]
        return [Send(sub, caught_up)]

    def drop(self, sub: Subscription, reason: Cut) -> list[Action]:
        """Cut `sub` (a paused one past its deadline, or behind history)."""
        if not sub.live:
            return []
        self._remove(sub)
        return [Drop(sub, reason), *self._idle()]

    # History

    def receive_history(self, history: History) -> list[Action]:
        """The answer to `ReadHistory`: advance through it, or reset the feed."""
        start_head = self.head
        decision = decide(self.head, self.epoch, history.epoch, history.head_seq, history.first_seq)
        if isinstance(decision, Lost):
            # History went back under the same epoch: writes were lost.
            self._stale = self.epoch
            return []
        actions: list[Action] = []
        if isinstance(decision, Replay):
            for event in history.events:
                if event.seq == self.head + 1:
                    self._advance(event)
        else:
            actions += self._reset_all(history)
        # Held events of another life than the one history just named are stale (sent
        # before the feed's history was lost): holding them would keep the feed
        # filling for ever. Were one from a life this read had not yet seen (a replica
        # behind), the next live event of that life starts another catch-up.
        if any(event.epoch != self.epoch for event in self.pending.values()):
            self.pending = {s: e for s, e in self.pending.items() if e.epoch == self.epoch}
        self._advance_pending()
        actions += self._take_run()
        if not self.pending and history.head_seq <= self.head:
            self.filling = self._stalled = False
        else:
            self._stalled = self.head == start_head
        return actions

    def _reset_all(self, history: History) -> list[Action]:
        """The feed's history was lost or outran this node: every subscriber starts over."""
        log.warning(
            "feed %s: history lost or outrun (epoch %s -> %s, head %d -> %d); resetting",
            self.name,
            self.epoch,
            history.epoch,
            self.head,
            history.head_seq,
        )
        self.epoch, self.head = history.epoch, history.head_seq
        self.recent.clear()
        self._frames.clear()
        self._runs.clear()
        return [self._reset(sub, history.epoch, history.head_seq) for sub in self.members()]

    # Joining

    def join(self, sub: Subscription, since: int | None, epoch: str | None) -> list[Action] | None:
        """Join without a broker round trip, when this node's recent events reach back.

        None means "not from memory": read history and call `join_history`.
        """
        if not self.synced:
            return None
        first = self.recent.first_seq(self.head)
        decision = decide(since, epoch, self.epoch, self.head, first)
        if not isinstance(decision, Replay):
            return None  # the broker may know better: this node may be behind
        sub.last_seq = decision.since
        data = self._live_after(sub, [self._subscribed_frame(sub, self.epoch, self.head)])
        assert data is not None  # decide() checked the ring reaches back
        return [Send(sub, data)]

    def seed(self, history: History) -> None:
        """Learn from a history read what the ring lacks (`Ring.prepend`), so that the
        next joiners as far behind join from memory; a read of another life teaches
        nothing. `Hub` calls it as a shared read ends; `join_history` for the read it
        is given."""
        history = self._scrubbed(history)
        if history.epoch == self.epoch:
            self.recent.prepend(history.events, self.head)

    def join_history(
        self, sub: Subscription, since: int | None, epoch: str | None, history: History
    ) -> tuple[list[Action], JoinRequest | None]:
        """Join from a history read; the request, if any, must be answered before the
        join is complete: `ReadHistory` (the node moved on while the client read: read
        again from where it got to), `RenewEpoch` or `CatchUp` (then read again as
        before)."""
        # A read of this life teaches the ring: the next joiners as far behind join from
        # memory instead of reading again (a storm's readers come back over seconds).
        self.seed(history)
        history = self._scrubbed(history)  # the seed's, kept (`_scrub`)
        if history.epoch != self.epoch:
            # The feed's history was lost (Redis emptied) and this node has not yet
            # noticed, or the read is older than a change the node already made: the
            # feed catches up first (resetting its subscriptions if its life changed),
            # so this join is answered in the node's life, never in a stale one.
            self.filling = True
            return [], CatchUp()
        decision = decide(since, epoch, history.epoch, history.head_seq, history.first_seq)
        if isinstance(decision, Lost):
            # The client saw a seq this epoch's history no longer has: writes were
            # lost. A new epoch keeps the seqs that follow from passing for the ones
            # it saw; the next read resets it (and the feed).
            return [], RenewEpoch(history.epoch)
        if not isinstance(decision, Replay):
            # The read may be older than the node (same epoch, checked above): an SSE
            # stream going on from the read's head would miss what the node sent since.
            return [self._reset(sub, history.epoch, max(history.head_seq, self.head))], None
        if sub.last_seq < 0 and (joined := self.join(sub, since, epoch)) is not None:
            # The seed above (or the read's own, as it ended) lets most of a storm's
            # joiners who shared this read join from memory: through the run of frames
            # joined once per position, not each walking the read's events. Only a
            # first answer: a join already subscribed gets no second `subscribed`.
            return joined, None
        data: list[bytes] = []
        if sub.last_seq < 0:
            data.append(self._subscribed_frame(sub, history.epoch, history.head_seq))
        sub.last_seq = decision.since
        fmt = sub.conn.format
        for event in history.events:
            if event.seq == sub.last_seq + 1:
                data.append(self._frame(fmt, event))
                sub.last_seq = event.seq
        if sub.last_seq >= self.head:
            return [Send(sub, self._go_live(sub, data))], None
        caught_up = self._live_after(sub, data)
        if caught_up is None:
            return [Send(sub, b"".join(data))], ReadHistory(sub.last_seq)
        return [Send(sub, caught_up)], None

    def _subscribed_frame(self, sub: Subscription, epoch: str, head: int) -> bytes:
        """`subscribed`, encoded once per feed position and format: a reconnect storm of
        thousands of joiners at one head costs one encoding."""
        fmt = sub.conn.format
        cached = self._subscribed.get(fmt)
        if cached is None or cached[0] != epoch or cached[1] != head:
            message = {"type": "subscribed", "feed": self.name, "epoch": epoch, "head_seq": head}
            frame = sse_control("subscribed", message) if fmt is Format.SSE else control(message)
            cached = self._subscribed[fmt] = (epoch, head, frame)
        return cached[2]

    def _go_live(self, sub: Subscription, data: list[bytes]) -> bytes:
        """Make `sub` live; `data` (its catch-up) goes out as one write."""
        sub.live = True
        self.groups[sub.conn.format][sub] = None
        if sub.receipts:
            self.watchers.add(sub)
        return b"".join(data)

    def _reset(self, sub: Subscription, epoch: str, head_seq: int) -> Reset:
        """WebSocket subscriptions end (the client reloads the snapshot and subscribes
        again); SSE streams go on from the new head, since EventSource resumes by itself
        with the `epoch:seq` ids that follow."""
        if sub.conn.format is Format.SSE:
            sub.last_seq = head_seq
            if sub in self.paused:
                self.paused[sub] = 0  # it missed nothing of the new life yet
            elif not sub.live:
                self._go_live(sub, [])
        else:
            self._remove(sub)
        return Reset(sub, epoch, head_seq)

    def begin_join(self, sub: Subscription) -> None:
        """A join that needs the broker has started: the feed is not idle meanwhile."""
        self.joining.add(sub)

    def end_join(self, sub: Subscription) -> list[Action]:
        self.joining.discard(sub)
        return [] if sub.live else self._idle()

    def leave(self, sub: Subscription) -> list[Action]:
        """Remove a subscription; safe to call twice."""
        self._remove(sub)
        return self._idle()

    def _remove(self, sub: Subscription) -> None:
        sub.live = False
        self.groups[sub.conn.format].pop(sub, None)
        self.paused.pop(sub, None)
        self.watchers.discard(sub)

    def _idle(self) -> list[Action]:
        return [Idle()] if self.empty() else []

    def empty(self) -> bool:
        return not self.joining and not self.paused and not any(self.groups.values())

    def subscriptions(self) -> int:
        return len(self.paused) + sum(len(subs) for subs in self.groups.values())

    def members(self) -> list[Subscription]:
        """Every live subscription, paused ones included."""
        return [*self.paused, *(sub for group in self.groups.values() for sub in group)]

    def remove_all(self) -> list[Subscription]:
        """Take every live subscription off the feed (drain): the shell closes them."""
        subs = self.members()
        for sub in subs:
            self._remove(sub)
        return subs
