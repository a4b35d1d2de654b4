"""The in-process broker: history, entries and fan-out for a single process, no Redis."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from livepush.brokers.base import IDEMPOTENCY_TTL, BrokerStats, Listener, Receipt, new_epoch
from livepush.entries import now_rfc3339
from livepush.errors import Conflict, InvalidEntry, NotFound
from livepush.feedmeta import initial_meta
from livepush.history import Ring
from livepush.model import (
    About,
    Change,
    Due,
    Event,
    EventType,
    History,
    Position,
    Published,
    Revisions,
    Scheduled,
    Snapshot,
    StoredEntry,
)
from livepush.revisions import scrubbed, stored_purge, stored_revision
from livepush.scheduled import MAX_SCHEDULED
from livepush.timing import Histogram
from livepush.wire import event_payload, join_entry, purged_event

# Idempotency keys remembered per feed at most; the oldest are forgotten first.
MAX_IDEMPOTENCY_KEYS = 100_000


def _forget_expired(keys: OrderedDict[str, tuple[float, Any]], now: float) -> None:
    """Drop expired idempotency keys (oldest first), and the oldest past the maximum."""
    while keys:
        expires, _ = next(iter(keys.values()))
        if expires > now and len(keys) < MAX_IDEMPOTENCY_KEYS:
            break
        keys.popitem(last=False)


def _now_ms() -> int:
    """Wall-clock time in Unix ms: the clock scheduled entries fall due by."""
    return int(time.time() * 1000)


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
    meta: bytes  # feedmeta's JSON
    head: int = 0
    entries: dict[str, _Entry] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # entry ids by creation seq
    idempotency: OrderedDict[str, tuple[float, Published]] = field(default_factory=OrderedDict)
    scheduled: dict[str, Scheduled] = field(default_factory=dict)
    scheduling: OrderedDict[str, tuple[float, Scheduled]] = field(default_factory=OrderedDict)
    revisions: dict[str, list[bytes]] = field(default_factory=dict)  # revisions.py's format
    purges: dict[str, bytes] = field(default_factory=dict)


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
            meta = initial_meta(now_rfc3339())
            feed = self._feeds[name] = _Feed(new_epoch(), Ring(self.history_size), meta)
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
            _forget_expired(state.idempotency, now)
            known = state.idempotency.get(idempotency_key)
            if known is not None:
                return Published(known[1].position, known[1].entry, duplicate=True)

        current = state.entries.get(change.entry_id)
        if change.claim is not None:
            claimed = state.scheduled.get(change.entry_id)
            if claimed is None or claimed.record != change.claim or claimed.publish_at > _now_ms():
                raise NotFound(f"no entry {change.entry_id!r} due in feed {feed!r}")
        if change.type is EventType.FEED_UPDATED:
            if change.expected is not None and state.meta != change.expected:
                raise Conflict(feed)
        elif change.purge is not None:
            if current is None:  # a retracted entry may be purged; a purged one is gone
                raise NotFound(f"no entry {change.entry_id!r} in feed {feed!r}")
        elif change.type is not EventType.CREATED:
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
            state.scheduled.pop(change.entry_id, None)  # a release: claimed above
        elif change.type is EventType.UPDATED:
            assert current is not None
            entry = join_entry(change.entry_parts, seq)
            current.json, current.pinned = entry, change.pinned
        elif change.type is EventType.FEED_UPDATED:
            entry = state.meta = join_entry(change.entry_parts, seq)
        else:
            assert current is not None
            current.live = False
        if entry is not None and change.revision is not None:
            trail = state.revisions.setdefault(change.entry_id, [])
            trail.append(stored_revision(seq, change.revision, entry))
        state.head = seq
        payload = event_payload(
            change.type, feed, seq, entry, change.entry_id, purge=change.purge is not None
        )
        event = Event(feed, state.epoch, seq, change.type, payload, time.time())
        state.history.append(event)
        if change.purge is not None:
            self._purge(state, change.entry_id, stored_purge(seq, change.purge))
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
        entries = tuple(e.json for e in chosen)
        return Snapshot(feed, state.epoch, state.head, entries, state.meta)

    async def entry(self, feed: str, entry_id: str) -> StoredEntry | None:
        found = self._feed(feed).entries.get(entry_id)
        return None if found is None else StoredEntry(found.json, found.live)

    # Stories: metadata, revisions, purges, scheduled entries

    async def about(self, feed: str) -> About:
        state = self._feed(feed)
        return About(state.epoch, state.head, state.meta)

    def _purge(self, state: _Feed, entry_id: str, record: bytes) -> None:
        """Take the entry's text out of history, its entry, its revisions and the answer
        its Idempotency-Key replays; keep the audit record. Costs O(history) for the
        rewrite, O(entries) for the order, O(keys remembered) for the answers."""
        state.history.rewrite(lambda event: purged_event(event, entry_id))
        del state.entries[entry_id]
        state.order.remove(entry_id)
        trail = state.revisions.get(entry_id, [])
        trail[:] = [scrubbed(stored) for stored in trail]
        state.purges[entry_id] = record
        # A retry of its creation (its Idempotency-Key) gets its seq, not its text.
        head = b'{"id":"%s"' % entry_id.encode()
        for key, (expires, published) in state.idempotency.items():
            if published.entry is not None and published.entry.startswith(head):
                state.idempotency[key] = (expires, Published(published.position, None))

    async def revisions(self, feed: str, entry_id: str) -> Revisions | None:
        state = self._feed(feed)
        trail, purge = state.revisions.get(entry_id), state.purges.get(entry_id)
        if trail is None and purge is None:
            return None
        return Revisions(tuple(trail or ()), purge)

    async def schedule(
        self,
        feed: str,
        item: Scheduled,
        *,
        expected: bytes | None = None,
        idempotency_key: str | None = None,
    ) -> Scheduled:
        state = self._feed(feed)
        now = time.monotonic()
        if idempotency_key is not None:
            _forget_expired(state.scheduling, now)
            known = state.scheduling.get(idempotency_key)
            if known is not None:
                return known[1]
        current = state.scheduled.get(item.entry_id)
        if expected is not None:
            if current is None:
                raise NotFound(f"no scheduled entry {item.entry_id!r} in feed {feed!r}")
            if current.record != expected:
                raise Conflict(item.entry_id)
        elif len(state.scheduled) >= MAX_SCHEDULED:
            raise InvalidEntry(
                "too many scheduled entries",
                fields={"publish_at": f"a feed holds at most {MAX_SCHEDULED} scheduled entries"},
            )
        state.scheduled[item.entry_id] = item
        if idempotency_key is not None:
            state.scheduling[idempotency_key] = (now + IDEMPOTENCY_TTL, item)
        return item

    async def scheduled(self, feed: str) -> tuple[Scheduled, ...]:
        items = self._feed(feed).scheduled.values()
        return tuple(sorted(items, key=lambda item: (item.publish_at, item.entry_id)))

    async def unschedule(self, feed: str, entry_id: str) -> None:
        if self._feed(feed).scheduled.pop(entry_id, None) is None:
            raise NotFound(f"no scheduled entry {entry_id!r} in feed {feed!r}")

    async def due(self, ahead: float) -> Due:
        """Costs O(scheduled entries of the process): one process holds few."""
        now = _now_ms()
        until = now + int(ahead * 1000)
        feeds = []
        for name, state in self._feeds.items():
            if state.scheduled:
                first = min(item.publish_at for item in state.scheduled.values())
                if first <= until:
                    feeds.append((name, first))
        return Due(now, tuple(sorted(feeds, key=lambda pair: pair[1])))

    async def release(self, feed: str, change_of: Callable[[Scheduled], Change]) -> int:
        released = 0
        for item in await self.scheduled(feed):
            if item.publish_at > _now_ms():
                break
            try:
                await self.publish(feed, change_of(item))
            except NotFound:
                continue  # cancelled or changed meanwhile
            released += 1
        return released

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
