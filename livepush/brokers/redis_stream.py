"""The live stream: one pub/sub connection per Redis server that carries a watched feed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, cast

from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.crc import key_slot
from redis.exceptions import MovedError, RedisError

from livepush.brokers.base import Listener, Receipt, ShardState
from livepush.brokers.redis_nodes import Nodes, Trouble
from livepush.errors import BrokerUnavailable
from livepush.model import Event, EventType

log = logging.getLogger("livepush.redis")

PREFIX = "lp"
# Reconnect backoff, with full jitter: a failover takes seconds, and a whole fleet of
# nodes must not reconnect in lockstep.
RECONNECT_MIN, RECONNECT_MAX = 0.05, 2.0
# A pub/sub connection that has been silent this long is pinged, so a dead peer
# (a cable pulled, a paused VM) is noticed without waiting for TCP's own timeouts.
IDLE_PING_SECONDS = 5.0
# Subscriptions a (re)connected server must confirm within this long.
CONFIRM_SECONDS = 5.0


def key(feed: str, name: str) -> str:
    # The {feed} hash tag keeps all of a feed's keys in one Redis Cluster slot.
    return f"{PREFIX}:{{{feed}}}:{name}"


def channel_of(feed: str) -> str:
    return key(feed, "events")


def parse_message(feed: str, data: bytes) -> Event | Receipt:
    """Decode a pub/sub message: `<epoch> <seq> <type> <accepted µs>\\n<event JSON>`, or a
    receipt `R <seq> <delivered> <nodes> <fanout ms>`. Fields past the known ones are
    ignored, so a later version may add one without breaking a rolling restart."""
    header, _, payload = data.partition(b"\n")
    fields = header.split(b" ")
    if fields[0] == b"R":
        return Receipt(feed, int(fields[1]), int(fields[2]), int(fields[3]), float(fields[4]))
    accepted = int(fields[3]) / 1e6 if len(fields) > 3 else 0.0
    return Event(
        feed, fields[0].decode(), int(fields[1]), EventType(fields[2].decode()), payload, accepted
    )


class LiveStream:
    """Receives the live events of every watched feed, and says when they were interrupted.

    On one Redis (or a Sentinel's primary) there is one connection, SUBSCRIBE. On a
    cluster there is one connection per primary that owns a watched feed's slot,
    SSUBSCRIBE. Pub/sub is at-most-once, and redis-py would resubscribe silently after
    a reconnect, losing what was published meanwhile: so each connection reconnects
    itself, and once every channel it carries is confirmed again the listener resyncs
    (every watched feed reads history). Cost: an interruption on one shard makes every
    watched feed read its history once, not only that shard's.
    """

    def __init__(self, nodes: Callable[[], Awaitable[Nodes]], trouble: Trouble) -> None:
        self._nodes = nodes
        self.trouble = trouble
        self.listener: Listener | None = None
        self.feeds: dict[str, str] = {}  # channel -> feed, for every watched feed
        self.homes: dict[str, Shard] = {}  # channel -> the shard carrying it
        self.shards: dict[str, Shard] = {}
        self.sharded = False
        self._last: dict[str, tuple[str, int]] = {}  # feed -> last live (epoch, seq)
        self._tasks: set[asyncio.Task[Any]] = set()
        # Counters read by /metrics at scrape time.
        self.resyncs = 0
        self.reconnects = 0
        self.holes = 0

    def start(self, listener: Listener) -> None:
        self.listener = listener
        self.spawn(self._supervise())

    async def _supervise(self) -> None:
        """Connect at once (a plain URL learns here whether it names a cluster), so a
        Redis that cannot be reached is logged and /readyz says so before any use."""
        delay = RECONNECT_MIN
        while True:
            try:
                nodes = await self._nodes()
                self.sharded = nodes.sharded
                if not nodes.sharded:
                    self._shard(nodes, nodes.name)  # the one connection, kept with no feed
                    return
                await nodes.refresh()
                self.trouble.recovered("cluster")
                return
            except BrokerUnavailable as error:
                self.trouble.failed("connection", error)
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, RECONNECT_MAX)

    def connected(self) -> bool:
        return all(shard.connected for shard in self.shards.values()) and (
            self.sharded or bool(self.shards)
        )

    def states(self) -> list[ShardState]:
        return [
            ShardState(name, shard.connected, len(shard.channels))
            for name, shard in sorted(self.shards.items())
        ]

    async def watch(self, feed: str) -> None:
        """Subscribe to the feed's channel; returns once Redis confirmed it (every event
        published afterwards reaches us), or once the connection failed (the resync
        after the reconnect covers the feed)."""
        channel = channel_of(feed)
        self.feeds[channel] = feed
        nodes = await self._nodes()
        if self.feeds.get(channel) != feed or channel in self.homes:
            return
        shard = self._shard(nodes, await nodes.owner(channel))
        if self.feeds.get(channel) == feed and channel not in self.homes:
            await shard.add(channel)

    async def unwatch(self, feed: str) -> None:
        channel = channel_of(feed)
        self.feeds.pop(channel, None)
        self._last.pop(feed, None)
        shard = self.homes.pop(channel, None)
        if shard is not None:
            await shard.remove(channel)
            if self.sharded and not shard.channels:
                await self._close(shard)

    def _shard(self, nodes: Nodes, name: str) -> Shard:
        self.sharded = nodes.sharded
        shard = self.shards.get(name)
        if shard is None:
            shard = self.shards[name] = Shard(self, name, sharded=nodes.sharded)
            shard.task = self.spawn(shard.run())
        return shard

    async def _close(self, shard: Shard) -> None:
        if self.shards.get(shard.name) is shard and not shard.channels:
            del self.shards[shard.name]
            await shard.close()

    def rehome(self, shard: Shard, channels: list[str], *, lost: bool = False) -> None:
        """`shard` no longer carries these channels (their slot moved, or, `lost`, its
        primary failed): subscribe them where they live now, then resync."""
        for channel in channels:
            shard.forget(channel)
            if self.homes.get(channel) is shard:
                del self.homes[channel]
        if self.sharded and not shard.channels:
            self.spawn(self._close(shard))  # one connection per server carrying a feed
        self.spawn(self._rehome(channels, lost))

    async def _rehome(self, channels: list[str], lost: bool) -> None:
        delay = RECONNECT_MIN
        nodes = await self._nodes()
        while True:
            channels = [c for c in channels if c in self.feeds and c not in self.homes]
            if not channels:
                return
            try:
                await nodes.refresh()
                for channel in channels:
                    if channel in self.feeds and channel not in self.homes:
                        shard = self._shard(nodes, await nodes.owner(channel))
                        shard.add_moved(channel, lost=lost)
                return
            except BrokerUnavailable as error:
                self.trouble.failed("cluster", error)
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, RECONNECT_MAX)

    def resync(self) -> None:
        self.resyncs += 1
        self._last.clear()
        if self.listener is not None:
            self.listener.resync()

    def receive(self, channel: bytes, data: bytes) -> None:
        """A message on a channel: an event for the listener, or a receipt."""
        feed = self.feeds.get(channel.decode())
        listener = self.listener
        if feed is None or listener is None:
            return  # unwatched meanwhile
        item = parse_message(feed, data)
        if isinstance(item, Receipt):
            listener.receipt(item)
            return
        last = self._last.get(feed)
        if last is not None and last[0] == item.epoch and item.seq > last[1] + 1:
            self.holes += 1  # pub/sub dropped events: the node fills them from history
        if last is None or last[0] != item.epoch or item.seq > last[1]:
            self._last[feed] = (item.epoch, item.seq)
        listener.deliver(item)

    def flush(self) -> None:
        """The reads are done for now: the listener sends what it was given. A failure
        there is logged, as the loop would log it, and the live stream reads on."""
        if self.listener is not None:
            try:
                self.listener.flush()
            except Exception:
                log.exception("the listener failed to send what the live stream delivered")

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Redis live stream task failed", exc_info=task.exception())

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for shard in list(self.shards.values()):
            await shard.close()


class Shard:
    """One pub/sub connection to one server, and the channels it carries."""

    def __init__(self, stream: LiveStream, name: str, *, sharded: bool) -> None:
        self.stream = stream
        self.name = name
        self.channels: set[str] = set()
        self.waiting: dict[str, asyncio.Future[None]] = {}  # watchers awaiting a confirm
        self.unconfirmed: set[str] = set()  # channels to confirm before the next resync
        self.leaving: Counter[str] = Counter()  # our own unsubscribes not yet confirmed
        self.connected = False
        self.lost = False  # was connected, then failed: the next connect is a reconnect
        self.needs_resync = False
        self.pubsub: PubSub | None = None
        self.task: asyncio.Task[None] | None = None
        self._sharded = sharded
        self._subscribe = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self._unsubscribe = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"

    async def add(self, channel: str) -> None:
        self.stream.homes[channel] = self
        self.channels.add(channel)
        loop = asyncio.get_running_loop()
        waiting = self.waiting.setdefault(channel, loop.create_future())
        if self.pubsub is not None:  # connected, or subscribing its channels right now
            await self._send(self._subscribe, [channel])
        await waiting

    def add_moved(self, channel: str, *, lost: bool) -> None:
        """A channel that lived elsewhere: resync once it is confirmed here (`lost`: its
        connection there failed, which counts as a reconnect)."""
        self.stream.homes[channel] = self
        self.channels.add(channel)
        self.needs_resync = True
        self.lost = self.lost or lost
        self.unconfirmed.add(channel)
        if self.pubsub is not None:
            self.stream.spawn(self._send(self._subscribe, [channel]))

    async def remove(self, channel: str) -> None:
        self.forget(channel)
        if self.pubsub is not None:
            self.leaving[channel] += 1
            # On failure, the reconnect subscribes only to the channels still carried.
            await self._send(self._unsubscribe, [channel])

    def forget(self, channel: str) -> None:
        self.channels.discard(channel)
        self.unconfirmed.discard(channel)
        waiting = self.waiting.pop(channel, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def _send(self, command: str, channels: list[str]) -> None:
        pubsub = self.pubsub
        if pubsub is None:
            return
        with contextlib.suppress(RedisError, OSError):
            # A sharded subscribe names channels of one slot (else CROSSSLOT).
            slots: dict[int, list[str]] = {}
            for channel in channels:
                slots.setdefault(key_slot(channel.encode()) if self._sharded else 0, []).append(
                    channel
                )
            for batch in slots.values():
                await pubsub.execute_command(command, *batch)
            # Errors surface in the reader, which reconnects.

    async def run(self) -> None:
        delay = RECONNECT_MIN
        while True:
            try:
                await self._connect()
                delay = RECONNECT_MIN
                await self._read()
            except (RedisError, OSError, BrokerUnavailable) as error:
                self.stream.trouble.failed(f"pub/sub {self.name}", error)
                self.lost = self.lost or self.connected
            self.connected = False
            if self.channels or self.lost:
                self.needs_resync = True
            for waiting in self.waiting.values():
                if not waiting.done():
                    waiting.set_result(None)  # watchers return; the resync covers them
            self.waiting.clear()
            self.leaving.clear()
            await self._drop()
            # Full jitter: a whole fleet of nodes must not reconnect in lockstep.
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, RECONNECT_MAX)
            if self._sharded and not await self._still_owner():
                return

    async def _still_owner(self) -> bool:
        """After a failure on a cluster, move the channels whose slot another primary
        owns now (a failover) to that primary's shard; end if none are left."""
        nodes = await self.stream._nodes()
        with contextlib.suppress(BrokerUnavailable):
            await nodes.refresh()
        moved = []
        for channel in list(self.channels):
            with contextlib.suppress(BrokerUnavailable):
                if await nodes.owner(channel) != self.name:
                    moved.append(channel)
        if moved:
            self.stream.rehome(self, moved, lost=True)
        if not self.channels and self.stream.shards.get(self.name) is self:
            del self.stream.shards[self.name]
            return False
        return True

    async def _connect(self) -> None:
        nodes = await self.stream._nodes()
        pubsub = nodes.pubsub_client(self.name).pubsub()
        try:
            await pubsub.ping()  # connects (on Sentinel: to the primary it names now)
        except BaseException:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        self.pubsub = pubsub
        self.unconfirmed = set(self.channels)
        self.leaving.clear()
        await self._send(self._subscribe, sorted(self.channels))
        if not self.unconfirmed:
            self._up()

    def _up(self) -> None:
        """Every channel carried is confirmed: events published from now on reach us."""
        if not self.connected:
            self.connected = True
            self.stream.trouble.recovered(f"pub/sub {self.name}")
            log.info("Redis pub/sub %s connected, %d feeds", self.name, len(self.channels))
        if self.lost:
            self.lost = False
            self.stream.reconnects += 1
        if self.needs_resync:
            self.needs_resync = False
            self.stream.resync()

    async def _read(self) -> None:
        pubsub = self.pubsub
        assert pubsub is not None
        loop = asyncio.get_running_loop()
        confirm_by = loop.time() + CONFIRM_SECONDS
        while True:
            try:
                message = await pubsub.get_message(timeout=IDLE_PING_SECONDS)
            except MovedError as moved:
                # A subscribe reached a primary that no longer owns the slot.
                self.stream.rehome(
                    self, [c for c in self.channels if key_slot(c.encode()) == moved.slot_id]
                )
                continue
            if message is None:
                if self.unconfirmed and loop.time() > confirm_by:
                    raise RedisError(f"no subscribe confirmation from {self.name}")
                await pubsub.ping()
                continue
            kind = message["type"]
            if kind == "message" or kind == "smessage":
                self.stream.receive(message["channel"], message["data"])
                if not await _more_read(pubsub):
                    self.stream.flush()  # this read's messages go out now, together
            elif kind == "subscribe" or kind == "ssubscribe":
                self._confirmed(message["channel"].decode())
            elif kind == "unsubscribe" or kind == "sunsubscribe":
                self._unsubscribed(message["channel"].decode())

    def _confirmed(self, channel: str) -> None:
        waiting = self.waiting.pop(channel, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)
        if self.unconfirmed:
            self.unconfirmed.discard(channel)
            if not self.unconfirmed:
                self._up()

    def _unsubscribed(self, channel: str) -> None:
        if self.leaving[channel] > 0:
            self.leaving[channel] -= 1
            if not self.leaving[channel]:
                del self.leaving[channel]
        elif channel in self.channels:
            # Not ours: Redis Cluster unsubscribes a slot's channels when the slot
            # leaves this primary (a migration, a failover that demoted it).
            self.stream.rehome(self, [channel])

    async def _drop(self) -> None:
        pubsub, self.pubsub = self.pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.connected = False
        await self._drop()


async def _more_read(pubsub: PubSub) -> bool:
    """Whether replies already read wait in the connection's buffer. Never waits for
    the socket: hiredis holds whole replies, and this only looks at its buffers."""
    # redis-py types PubSub.connection as None; it is the connection once subscribed.
    connection = cast("Connection | None", pubsub.connection)
    if connection is None:
        return False
    # redis-py 8 renamed can_read_destructive (deprecated since, with a warning).
    can_read = getattr(connection, "can_read", None) or connection.can_read_destructive
    return bool(await can_read())
