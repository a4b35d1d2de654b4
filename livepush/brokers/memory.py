"""The in-process broker: history, entries and fan-out for a single process, no Redis."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from livepush.brokers.base import IDEMPOTENCY_TTL, BrokerStats, Listener, Receipt, new_epoch
from livepush.errors import Conflict, NotFound
from livepush.history import Ring
from livepush.model import (
    Change,
    Event,
    EventType,
    History,
    Position,
    Published,
    Snapshot,
    StoredEntry,
)
from livepush.timing import Histogram
from livepush.wire import event_payload, join_entry

# Idempotency keys remembered per feed at most; the oldest are forgotten first.
MAX_IDEMPOTENCY_KEYS = 100_000


@dataclass(slots=True)
class _Entry:
    json: bytes
    seq: int
    live: bool = True
    pinned: bool = False


@dataclass(slots=True)
class _Feed:
    epoch: str
    history: Ring
    head: int = 0
    entries: dict[str, _Entry] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # entry ids by creation seq
    idempotency: OrderedDict[str, tuple[float, Published]] = field(default_factory=OrderedDict)


class MemoryBroker:
    """Every feed in this process's memory; publish() is atomic because it never awaits.

    Its cost: nothing survives the process, and only this process's subscribers are
    reached. A restart gives every feed a new epoch, so resuming clients get `reset`.
    """

    def __init__(self, history_size: int = 1000) -> None:
        self.history_size = history_size
        self._feeds: dict[str, _Feed] = {}
        self._listener: Listener | None = None
        self.renewals = 0
        self.publish_seconds = Histogram()  # never waits on I/O: how long the work takes

    def _feed(self, name: str) -> _Feed:
        feed = self._feeds.get(name)
        if feed is None:
            feed = self._feeds[name] = _Feed(new_epoch(), Ring(self.history_size))
        return feed

    async def start(self, listener: Listener) -> None:
        self._listener = listener

    async def publish(
        self, feed: str, change: Change, *, idempotency_key: str | None = None
    ) -> Published:
        started = time.perf_counter()
        try:
            return self._publish(feed, change, idempotency_key)
        finally:
            self.publish_seconds.observe(time.perf_counter() - started)

    def _publish(self, feed: str, change: Change, idempotency_key: str | None) -> Published:
        state = self._feed(feed)
        now = time.monotonic()
        if idempotency_key is not None:
            while state.idempotency:
                expires, _ = next(iter(state.idempotency.values()))
                if expires > now and len(state.idempotency) < MAX_IDEMPOTENCY_KEYS:
                    break
                state.idempotency.popitem(last=False)
            known = state.idempotency.get(idempotency_key)
            if known is not None:
                return Published(known[1].position, known[1].entry, duplicate=True)

        current = state.entries.get(change.entry_id)
        if change.type is not EventType.CREATED:
            if current is None or not current.live:
                raise NotFound(f"no entry {change.entry_id!r} in feed {feed!r}")
            if change.expected is not None and current.json != change.expected:
                raise Conflict(change.entry_id)

        seq = state.head + 1
        entry: bytes | None = None
        if change.type is EventType.CREATED:
            entry = join_entry(change.entry_parts, seq)
            state.entries[change.entry_id] = _Entry(entry, seq, pinned=change.pinned)
            state.order.append(change.entry_id)
        elif change.type is EventType.UPDATED:
            assert current is not None
            entry = join_entry(change.entry_parts, seq)
            current.json, current.pinned = entry, change.pinned
        else:
            assert current is not None
            current.live = False
        state.head = seq
        event = Event(
            feed,
            state.epoch,
            seq,
            change.type,
            event_payload(change.type, feed, seq, entry, change.entry_id),
            time.time(),
        )
        state.history.append(event)
        published = Published(Position(state.epoch, seq), entry)
        if idempotency_key is not None:
            state.idempotency[idempotency_key] = (now + IDEMPOTENCY_TTL, published)
        if self._listener is not None:
            # Fan out after the publisher's answer is on its way, in seq order.
            asyncio.get_running_loop().call_soon(self._listener.deliver, event)
        return published

    async def history(self, feed: str, since: int, limit: int) -> History:
        state = self._feed(feed)
        first = state.history.first_seq(state.head)
        # Like Redis: a `since` older than history gets what history still holds.
        events = state.history.after(max(since, first - 1), state.head, limit) or []
        return History(state.epoch, state.head, first, tuple(events))

    async def snapshot(self, feed: str, limit: int, before: int | None) -> Snapshot:
        state = self._feed(feed)
        chosen: list[_Entry] = []
        for entry_id in reversed(state.order):
            entry = state.entries[entry_id]
            if not entry.live or (before is not None and entry.seq >= before):
                continue
            if len(chosen) >= limit:
                break
            chosen.append(entry)
        if before is None:
            oldest = chosen[-1].seq if chosen else state.head + 1
            pinned = [e for e in state.entries.values() if e.live and e.pinned and e.seq < oldest]
            chosen.extend(sorted(pinned, key=lambda e: e.seq, reverse=True))
        return Snapshot(feed, state.epoch, state.head, tuple(e.json for e in chosen))

    async def entry(self, feed: str, entry_id: str) -> StoredEntry | None:
        found = self._feed(feed).entries.get(entry_id)
        return None if found is None else StoredEntry(found.json, found.live)

    async def renew_epoch(self, feed: str, stale: str) -> str:
        state = self._feed(feed)
        if state.epoch == stale:
            state.epoch = new_epoch()
            self.renewals += 1
        return state.epoch

    async def watch(self, feed: str) -> None:
        self._feed(feed)

    async def unwatch(self, feed: str) -> None:
        return None

    async def report(self, feed: str, seq: int, delivered: int, fanout_ms: float) -> None:
        # One process: the totals are this node's figures.
        if self._listener is not None:
            self._listener.receipt(Receipt(feed, seq, delivered, 1, fanout_ms))

    async def publish_presence(self, node: str, counts: dict[str, int]) -> None:
        return None  # one process: there is no other node to tell

    async def subscribers(self, feed: str, node: str) -> int:
        return 0

    async def ready(self) -> bool:
        return True

    def stats(self) -> BrokerStats:
        return BrokerStats(renewals=self.renewals, publish_seconds=self.publish_seconds)

    async def report_node(self, node: str, report: bytes) -> None:
        return None  # one process: `livepush stats --url` reads its /metrics

    async def aclose(self) -> None:
        self._listener = None
