"""In-process fan-out: each feed's subscriptions, in seq order, one encoding per event."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from livepush.brokers.base import Broker, Receipt
from livepush.errors import BrokerUnavailable
from livepush.history import Replay, Ring, decide
from livepush.model import CloseCode, Event, History
from livepush.wire import encode, sse_block, sse_message, ws_deflate_frame, ws_frame

log = logging.getLogger("livepush.hub")

# Events a node keeps per watched feed, so most resumes need no broker round trip.
RECENT_EVENTS = 256
# Out-of-order events held while a hole is filled; past this they are dropped and
# the fill reads them from history instead.
MAX_PENDING = 10_000
# A feed nobody subscribes to any more stays watched this long: a reconnecting
# reader (or a reconnect storm) finds it synced and resumes from memory.
RETIRE_AFTER = 10.0
RECEIPT_FLUSH_SECONDS = 0.1


class Format(Enum):
    """How a subscription frames events: the same bytes go to every member of a format."""

    WS = "ws"
    WS_DEFLATE = "ws-deflate"  # negotiated permessage-deflate: compressed once per event
    SSE = "sse"


def _sse_chunk(data: bytes) -> bytes:
    # SSE rides an HTTP/1.1 chunked response written straight to the socket.
    return b"%x\r\n%s\r\n" % (len(data), data)


ENCODERS: dict[Format, Callable[[Event], bytes]] = {
    Format.WS: lambda event: ws_frame(event.payload),
    Format.WS_DEFLATE: lambda event: ws_deflate_frame(event.payload),
    Format.SSE: lambda event: _sse_chunk(sse_block(event)),
}


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
        self.write = conn.write
        self.buffered = conn.buffered
        self.last_seq = -1
        self.live = False
        self.receipts = receipts


@dataclass(eq=False)
class _Feed:
    name: str
    epoch: str = ""
    head: int = 0  # last seq delivered on this node
    synced: asyncio.Future[None] | None = None
    groups: dict[Format, dict[Subscription, None]] = field(
        default_factory=lambda: {fmt: {} for fmt in Format}
    )
    joining: set[Subscription] = field(default_factory=set)
    watchers: set[Subscription] = field(default_factory=set)  # want receipts
    recent: Ring = field(default_factory=lambda: Ring(RECENT_EVENTS))
    pending: dict[int, Event] = field(default_factory=dict)
    filling: asyncio.Task[None] | None = None
    subscribed: dict[Format, tuple[str, int, bytes]] = field(default_factory=dict)
    retire: asyncio.TimerHandle | None = None

    def empty(self) -> bool:
        return not self.joining and not any(self.groups.values())


class Hub:
    """Fans each feed's events out to this process's subscriptions, in seq order.

    deliver() never awaits: it writes one pre-encoded frame per format to every live
    subscription, and a subscription whose socket holds more than `max_buffer`
    unsent bytes is closed with 1013 (it resumes from its last seq). There is no
    backpressure and no per-subscriber queue: the kernel's socket buffer plus
    `max_buffer` is all the memory a slow reader can cost.
    """

    def __init__(self, broker: Broker, *, max_buffer: int = 1 << 20) -> None:
        self.broker = broker
        self.max_buffer = max_buffer
        self.feeds: dict[str, _Feed] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._receipts: list[tuple[str, int, int, float]] = []
        self._flusher: asyncio.TimerHandle | None = None
        # Counters read by /metrics at scrape time; nothing else on the hot path.
        self.events_received = 0
        self.deliveries = 0
        self.slow_closed = 0
        self.resets = 0

    # Subscribing

    def try_join(
        self,
        conn: Connection,
        feed: str,
        since: int | None,
        epoch: str | None,
        *,
        receipts: bool = False,
    ) -> Subscription | None:
        """Join at once, without awaiting, when this node holds what the client needs:
        the feed is watched and synced, and its recent events reach back to `since`.

        None means "not from memory": call subscribe(). A reconnect storm after a
        node restart or a network blip mostly takes this path: no broker round trip.
        """
        state = self.feeds.get(feed)
        if state is None or state.synced is None or not state.synced.done():
            return None
        if state.synced.exception() is not None:
            return None
        sub = Subscription(conn, feed, receipts)
        if not self._join_from_memory(state, sub, since, epoch):
            return None
        if state.retire is not None:
            state.retire.cancel()
            state.retire = None
        return sub

    async def subscribe(
        self,
        conn: Connection,
        feed: str,
        since: int | None,
        epoch: str | None,
        *,
        receipts: bool = False,
    ) -> Subscription | None:
        """Join `conn` to `feed` after seq `since`: history first, then live, no seam.

        Returns None when the client got a `reset` instead (WebSocket), or raises
        BrokerUnavailable. Shared state changes before the first await, so
        concurrent first subscribers all register (the broadcaster race).
        """
        state = self._feed(feed)
        sub = Subscription(conn, feed, receipts)
        state.joining.add(sub)
        try:
            assert state.synced is not None
            await asyncio.shield(state.synced)
            if self._join_from_memory(state, sub, since, epoch):
                return sub
            while True:
                history = await self.broker.history(
                    feed, since if since is not None else 0, self.broker.history_size
                )
                if state.synced is None or self.feeds.get(feed) is not state:
                    raise BrokerUnavailable("the feed was reset while subscribing")
                if epoch == history.epoch and since is not None and since > history.head_seq:
                    # The client saw a seq this epoch's history no longer has: writes
                    # were lost. A new epoch keeps the seqs that follow from passing
                    # for the ones it saw; the next read resets it (and the feed).
                    await self.broker.renew_epoch(feed, epoch)
                    continue
                if self._join_from_history(state, sub, since, epoch, history):
                    return sub if sub.live else None
                since, epoch = sub.last_seq, state.epoch  # the node moved on: read again
        finally:
            state.joining.discard(sub)
            if not sub.live:
                self._maybe_retire(state)

    def _join_from_memory(
        self, state: _Feed, sub: Subscription, since: int | None, epoch: str | None
    ) -> bool:
        """Join without a broker round trip when this node's recent events reach back."""
        if epoch is not None and epoch != state.epoch:
            return False
        if since is None:
            since = state.head
        events = state.recent.after(since, state.head) if since <= state.head else None
        if events is None:
            return False
        self._send_subscribed(state, sub, state.epoch, state.head)
        sub.last_seq = since
        self._go_live(state, sub, events)
        return True

    def _join_from_history(
        self,
        state: _Feed,
        sub: Subscription,
        since: int | None,
        epoch: str | None,
        history: History,
    ) -> bool:
        """Join from a broker history read; False if it must be read again."""
        if history.epoch != state.epoch:
            # The feed's history was lost (Redis emptied) and this node has not yet
            # noticed: catch the feed up, which resets every subscription on it.
            self._catch_up(state)
            self._reset(sub, history.epoch, history.head_seq)
            return True
        decision = decide(since, epoch, history.epoch, history.head_seq, history.first_seq)
        if not isinstance(decision, Replay):
            self._reset(sub, history.epoch, history.head_seq)
            return True
        if sub.last_seq < 0:
            self._send_subscribed(state, sub, history.epoch, history.head_seq)
        sub.last_seq = decision.since
        for event in history.events:
            if event.seq == sub.last_seq + 1:
                sub.write(ENCODERS[sub.conn.format](event))
                sub.last_seq = event.seq
        if sub.last_seq >= state.head:
            self._go_live(state, sub, [])
            return True
        events = state.recent.after(sub.last_seq, state.head)
        if events is None:
            return False
        self._go_live(state, sub, events)
        return True

    def _send_subscribed(self, state: _Feed, sub: Subscription, epoch: str, head: int) -> None:
        """Write `subscribed`, encoded once per feed position and format: a reconnect
        storm of thousands of joiners at one head costs one encoding."""
        fmt = sub.conn.format
        cached = state.subscribed.get(fmt)
        if cached is None or cached[0] != epoch or cached[1] != head:
            message = {"type": "subscribed", "feed": state.name, "epoch": epoch, "head_seq": head}
            frame = sse_control("subscribed", message) if fmt is Format.SSE else control(message)
            cached = state.subscribed[fmt] = (epoch, head, frame)
        sub.write(cached[2])

    def _go_live(self, state: _Feed, sub: Subscription, catch_up: list[Event]) -> None:
        for event in catch_up:
            if event.seq == sub.last_seq + 1:
                sub.write(ENCODERS[sub.conn.format](event))
                sub.last_seq = event.seq
        sub.live = True
        state.groups[sub.conn.format][sub] = None
        if sub.receipts:
            state.watchers.add(sub)

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove a subscription; safe to call twice."""
        state = self.feeds.get(sub.feed)
        sub.live = False
        if state is None:
            return
        state.groups[sub.conn.format].pop(sub, None)
        state.watchers.discard(sub)
        self._maybe_retire(state)

    def _reset(self, sub: Subscription, epoch: str, head_seq: int) -> None:
        """Tell a subscription its position cannot be continued.

        WebSocket subscriptions end (the client reloads the snapshot and subscribes
        again); SSE streams continue from the new head, since EventSource resumes
        by itself with the `epoch:seq` ids that follow.
        """
        self.resets += 1
        message = {"type": "reset", "feed": sub.feed, "epoch": epoch, "head_seq": head_seq}
        sub.conn.send("reset", message)
        if sub.conn.format is Format.SSE:
            sub.last_seq = head_seq
            state = self.feeds.get(sub.feed)
            if state is not None and not sub.live:
                self._go_live(state, sub, [])
        else:
            self.unsubscribe(sub)

    # Feed state

    def _feed(self, name: str) -> _Feed:
        state = self.feeds.get(name)
        if state is None:
            state = self.feeds[name] = _Feed(name)
            state.synced = asyncio.get_running_loop().create_future()
            self.spawn(self._watch(state))
        elif state.retire is not None:
            state.retire.cancel()
            state.retire = None
        return state

    async def _watch(self, state: _Feed) -> None:
        assert state.synced is not None
        try:
            await self.broker.watch(state.name)
            history = await self.broker.history(state.name, 0, 0)
        except BrokerUnavailable as error:
            if self.feeds.get(state.name) is state:
                del self.feeds[state.name]
            state.synced.set_exception(error)
            state.synced.exception()  # retrieved: joiners see it through shield()
            self.spawn(self.broker.unwatch(state.name))
            return
        state.epoch, state.head = history.epoch, history.head_seq
        state.synced.set_result(None)
        self._drain_pending(state)

    def _maybe_retire(self, state: _Feed) -> None:
        if state.empty() and state.retire is None and self.feeds.get(state.name) is state:
            loop = asyncio.get_running_loop()
            state.retire = loop.call_later(RETIRE_AFTER, self._retire, state)

    def _retire(self, state: _Feed) -> None:
        state.retire = None
        if not state.empty() or self.feeds.get(state.name) is not state:
            return
        del self.feeds[state.name]
        if state.filling is not None:
            state.filling.cancel()
        self.spawn(self.broker.unwatch(state.name))

    # Delivering (the Listener interface)

    def deliver(self, event: Event) -> None:
        """An event from the broker's live stream: deliver it, or hold it until in order."""
        state = self.feeds.get(event.feed)
        if state is None:
            return
        self.events_received += 1
        if state.synced is None or not state.synced.done() or state.filling is not None:
            self._hold(state, event)
        elif event.epoch != state.epoch:
            self._hold(state, event)
            self._catch_up(state)
        elif event.seq == state.head + 1:
            self._advance(state, event)
            if state.pending:
                self._drain_pending(state)
        elif event.seq > state.head + 1:
            self._hold(state, event)
            self._catch_up(state)  # a hole: pub/sub dropped something
        else:
            seen = state.recent.at(event.seq)
            if seen is not None and seen.payload != event.payload:
                self._history_rewritten(state)  # the same seq twice, with other content

    def _hold(self, state: _Feed, event: Event) -> None:
        if len(state.pending) < MAX_PENDING:
            state.pending[event.seq] = event

    def _advance_pending(self, state: _Feed) -> None:
        """Deliver the held events that now follow the head, in order; drop the passed.

        An event of another epoch stays held: the catch-up that reads the new epoch's
        history resets the feed and keeps it only if it belongs to that life.
        """
        pending = state.pending
        while (event := pending.get(state.head + 1)) is not None and event.epoch == state.epoch:
            del pending[event.seq]
            self._advance(state, event)
        for seq in [seq for seq in pending if seq <= state.head]:
            del pending[seq]

    def _drain_pending(self, state: _Feed) -> None:
        self._advance_pending(state)
        if state.pending:
            self._catch_up(state)

    def _advance(self, state: _Feed, event: Event) -> None:
        """Deliver the feed's next event to every live subscription: the hot loop."""
        started = time.perf_counter()
        seq = event.seq
        state.head = seq
        state.recent.append(event)
        delivered = 0
        cut: list[Subscription] = []
        limit = self.max_buffer
        for fmt, subs in state.groups.items():
            if not subs:
                continue
            frame = ENCODERS[fmt](event)
            for sub in list(subs):
                if sub.last_seq + 1 != seq:
                    if sub.last_seq < seq:
                        cut.append(sub)  # a hole would follow: resume instead
                    continue  # joined from history past this seq already
                if sub.buffered() > limit:
                    cut.append(sub)
                    continue
                sub.write(frame)
                sub.last_seq = seq
                delivered += 1
        for sub in cut:
            self.slow_closed += 1
            self.unsubscribe(sub)
            sub.conn.close(CloseCode.TRY_AGAIN_LATER)
        self.deliveries += delivered
        if delivered:
            self._receipts.append((state.name, seq, delivered, time.perf_counter() - started))
            if self._flusher is None:
                loop = asyncio.get_running_loop()
                self._flusher = loop.call_later(RECEIPT_FLUSH_SECONDS, self._flush_receipts)

    def _catch_up(self, state: _Feed) -> None:
        if state.filling is None and state.synced is not None and state.synced.done():
            state.filling = self.spawn(self._fill(state))

    async def _fill(self, state: _Feed) -> None:
        """Read history after this node's head until the feed is whole again."""
        delay = 0.05
        try:
            while self.feeds.get(state.name) is state:
                start_head = state.head
                try:
                    history = await self.broker.history(
                        state.name, state.head, self.broker.history_size
                    )
                except BrokerUnavailable:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                if history.epoch == state.epoch and history.head_seq < state.head:
                    # History went back under the same epoch: writes were lost.
                    await self.broker.renew_epoch(state.name, state.epoch)
                    continue
                if history.epoch != state.epoch or history.first_seq > state.head + 1:
                    self._reset_feed(state, history)
                else:
                    for event in history.events:
                        if event.seq == state.head + 1:
                            self._advance(state, event)
                self._advance_pending(state)
                if not state.pending and history.head_seq <= state.head:
                    return
                if state.head == start_head:
                    # A hole history cannot fill yet (a replica behind?): back off.
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            state.filling = None

    def _reset_feed(self, state: _Feed, history: History) -> None:
        """The feed's history was lost or outran this node: every subscriber starts over."""
        log.warning(
            "feed %s: history lost or outrun (epoch %s -> %s, head %d -> %d); resetting",
            state.name,
            state.epoch,
            history.epoch,
            state.head,
            history.head_seq,
        )
        state.epoch, state.head = history.epoch, history.head_seq
        state.recent.clear()
        state.pending = {s: e for s, e in state.pending.items() if e.epoch == state.epoch}
        for subs in state.groups.values():
            for sub in list(subs):
                self._reset(sub, history.epoch, history.head_seq)

    def _history_rewritten(self, state: _Feed) -> None:
        """Writes under the node's epoch were lost: renew the epoch, then reset everyone."""
        log.warning("feed %s: history lost writes under epoch %s", state.name, state.epoch)

        async def renew() -> None:
            try:
                await self.broker.renew_epoch(state.name, state.epoch)
            except BrokerUnavailable:
                return  # the next resync after the broker returns finds the same proof
            self._catch_up(state)

        self.spawn(renew())

    def resync(self) -> None:
        """The broker's live stream was interrupted: catch every feed up from history."""
        for state in list(self.feeds.values()):
            self._catch_up(state)

    # Receipts

    def receipt(self, receipt: Receipt) -> None:
        """Totals for an event reached us: tell the editors watching its feed."""
        state = self.feeds.get(receipt.feed)
        if state is None or not state.watchers:
            return
        message = {
            "type": "receipt",
            "feed": receipt.feed,
            "seq": receipt.seq,
            "delivered": receipt.delivered,
            "nodes": receipt.nodes,
            "fanout_ms": round(receipt.fanout_ms, 3),
        }
        for sub in list(state.watchers):
            sub.conn.send("receipt", message)

    def _flush_receipts(self) -> None:
        self._flusher = None
        batch, self._receipts = self._receipts, []
        self.spawn(self._report(batch))

    async def _report(self, batch: list[tuple[str, int, int, float]]) -> None:
        for feed, seq, delivered, seconds in batch:
            try:
                await self.broker.report(feed, seq, delivered, seconds * 1000)
            except BrokerUnavailable:
                return  # figures for editors only: losing them loses no entry

    # Life cycle

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as a task the hub owns: cancelled and awaited by aclose()."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hub task failed", exc_info=task.exception())

    def subscriptions(self) -> int:
        return sum(len(subs) for state in self.feeds.values() for subs in state.groups.values())

    def close_all(self, code: CloseCode) -> None:
        """Close every subscribed connection with `code` (drain, restart)."""
        for state in list(self.feeds.values()):
            for subs in state.groups.values():
                for sub in list(subs):
                    self.unsubscribe(sub)
                    sub.conn.close(code)

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        for state in self.feeds.values():
            if state.retire is not None:
                state.retire.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def control(message: dict[str, Any]) -> bytes:
    """A control message as a WebSocket frame."""
    return ws_frame(encode(message))


def sse_control(kind: str, message: dict[str, Any]) -> bytes:
    """A control message as an SSE chunk."""
    return _sse_chunk(sse_message(kind, message))


def sse_comment(text: bytes) -> bytes:
    """An SSE comment chunk (keep-alive)."""
    return _sse_chunk(b": " + text + b"\n\n")
