"""The Redis broker: seqs, history and entries in Redis, events over one pub/sub connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from importlib import resources
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from livepush.brokers.base import IDEMPOTENCY_TTL, Listener, Receipt, new_epoch
from livepush.errors import BrokerUnavailable, Conflict, NotFound
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

log = logging.getLogger("livepush.redis")

PREFIX = "lp"
RECONNECT_MIN, RECONNECT_MAX = 0.05, 5.0
# A pub/sub connection that has been silent this long is pinged, so a dead peer
# (a cable pulled, a paused VM) is noticed without waiting for TCP's own timeouts.
IDLE_PING_SECONDS = 5.0
# A node's subscriber counts stay valid this long: it reports far more often, so only
# a node that died stops counting.
PRESENCE_TTL = 15.0


def _key(feed: str, name: str) -> str:
    # The {feed} hash tag keeps all of a feed's keys in one Redis Cluster slot.
    return f"{PREFIX}:{{{feed}}}:{name}"


def channel_of(feed: str) -> str:
    return _key(feed, "events")


def _script(name: str) -> str:
    return resources.files("livepush.brokers").joinpath(name).read_text()


def parse_message(feed: str, data: bytes) -> Event | Receipt:
    """Decode a pub/sub message: `<epoch> <seq> <type>\\n<event JSON>`, or a receipt
    `R <seq> <delivered> <nodes> <fanout ms>`."""
    header, _, payload = data.partition(b"\n")
    fields = header.split(b" ")
    if fields[0] == b"R":
        return Receipt(feed, int(fields[1]), int(fields[2]), int(fields[3]), float(fields[4]))
    epoch, seq, kind = fields
    return Event(feed, epoch.decode(), int(seq), EventType(kind.decode()), payload)


class RedisBroker:
    """Feeds in Redis, shared by every node; publish is one Lua script.

    Live events come over ONE pub/sub connection per process, subscribed to the
    channels of the feeds that have local subscribers. Pub/sub is at-most-once and
    redis-py would resubscribe silently after a reconnect, losing what was published
    meanwhile: so this broker reconnects itself, with backoff, and calls
    `listener.resync()` after every reconnect for the hub to catch up from history.
    """

    def __init__(self, url: str, history_size: int = 1000, publish_command: str = "PUBLISH"):
        self.history_size = history_size
        self._url = url
        self._publish_command = publish_command
        # No automatic retries: a publish retried after a lost reply could run twice.
        # The publisher gets 503 and retries with its Idempotency-Key instead.
        options: dict[str, Any] = {
            "socket_connect_timeout": 2.0,
            "socket_timeout": 5.0,
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 0),
        }
        # A bounded pool that waits for a free connection instead of failing with
        # "Too many connections" under a burst of concurrent publishes.
        pool = BlockingConnectionPool.from_url(url, max_connections=64, timeout=5, **options)
        self._redis = Redis(connection_pool=pool)
        self._pubsub_redis = Redis.from_url(url, **{**options, "socket_timeout": None})
        self._publish = self._redis.register_script(_script("publish.lua"))
        self._history = self._redis.register_script(_script("history.lua"))
        self._snapshot = self._redis.register_script(_script("snapshot.lua"))
        self._receipt = self._redis.register_script(_script("receipt.lua"))
        self._renew = self._redis.register_script(_script("renew.lua"))
        self._presence = self._redis.register_script(_script("presence.lua"))
        self._subscribers = self._redis.register_script(_script("subscribers.lua"))
        self._listener: Listener | None = None
        self._pubsub: PubSub | None = None
        self._channels: dict[str, str] = {}  # channel -> feed, for every watched feed
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self, listener: Listener) -> None:
        self._listener = listener
        self._task = asyncio.create_task(self._listen(), name="livepush-redis-listen")

    # Writes and reads

    async def publish(
        self, feed: str, change: Change, *, idempotency_key: str | None = None
    ) -> Published:
        keys = [
            _key(feed, "meta"),
            _key(feed, "log"),
            _key(feed, "entries"),
            _key(feed, "live"),
            _key(feed, "pinned"),
            _key(feed, "idem:" + (idempotency_key or "")),
            channel_of(feed),
        ]
        args: list[str | bytes | int] = [
            new_epoch(),
            change.type.value,
            change.entry_id,
            feed,
            int(change.pinned),
            self.history_size,
            change.expected or b"",
            IDEMPOTENCY_TTL if idempotency_key is not None else "",
            self._publish_command,
            *change.entry_parts,
        ]
        reply = await self._call(self._publish, keys, args)
        status = reply[0]
        if status == b"not_found":
            raise NotFound(f"no entry {change.entry_id!r} in feed {feed!r}")
        if status == b"conflict":
            raise Conflict(change.entry_id)
        header, _, entry = reply[1].partition(b"\n")
        epoch, seq = header.split(b" ")
        return Published(
            Position(epoch.decode(), int(seq)), entry or None, duplicate=status == b"duplicate"
        )

    async def history(self, feed: str, since: int, limit: int) -> History:
        keys = [_key(feed, "meta"), _key(feed, "log")]
        reply = await self._call(self._history, keys, [new_epoch(), since, limit])
        epoch = reply[0].decode()
        rows = reply[3:]
        events = tuple(
            Event(feed, epoch, int(rows[i]), EventType(rows[i + 1].decode()), rows[i + 2])
            for i in range(0, len(rows), 3)
        )
        return History(epoch, int(reply[1]), int(reply[2]), events)

    async def snapshot(self, feed: str, limit: int, before: int | None) -> Snapshot:
        keys = [_key(feed, "meta"), _key(feed, "entries"), _key(feed, "live"), _key(feed, "pinned")]
        args = [new_epoch(), limit, "" if before is None else before]
        reply = await self._call(self._snapshot, keys, args)
        return Snapshot(feed, reply[0].decode(), int(reply[1]), tuple(reply[2:]))

    async def entry(self, feed: str, entry_id: str) -> StoredEntry | None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hget(_key(feed, "entries"), entry_id)
                pipe.zscore(_key(feed, "live"), entry_id)
                found, score = await pipe.execute()
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(f"Redis is unavailable: {error}") from None
        return None if found is None else StoredEntry(found, score is not None)

    async def renew_epoch(self, feed: str, stale: str) -> str:
        epoch = await self._call(self._renew, [_key(feed, "meta")], [stale, new_epoch()])
        return str(epoch.decode())

    async def report(self, feed: str, seq: int, delivered: int, fanout_ms: float) -> None:
        keys = [_key(feed, "receipts"), channel_of(feed)]
        args = [seq, delivered, f"{fanout_ms:.3f}", self._publish_command]
        await self._call(self._receipt, keys, args)

    async def publish_presence(self, node: str, counts: dict[str, int]) -> None:
        ttl_ms = int(PRESENCE_TTL * 1000)
        for feed, count in counts.items():
            await self._call(self._presence, [_key(feed, "nodes")], [node, count, ttl_ms])

    async def subscribers(self, feed: str, node: str) -> int:
        return int(await self._call(self._subscribers, [_key(feed, "nodes")], [node]))

    async def ready(self) -> bool:
        try:
            return bool(await self._redis.ping()) and self.connected.is_set()
        except (RedisError, OSError):
            return False

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(f"Redis is unavailable: {error}") from None

    # The live stream

    async def watch(self, feed: str) -> None:
        channel = channel_of(feed)
        self._channels[channel] = feed
        while self._pubsub is None or not self.connected.is_set():
            # A reconnect in progress may have listed its channels before this one was
            # added: wait for it, then subscribe here too (subscribing twice is harmless).
            await self.connected.wait()
        confirmed = self._confirmed.setdefault(channel, asyncio.get_running_loop().create_future())
        try:
            await self._pubsub.subscribe(channel)
        except (RedisError, OSError):
            return  # the listener notices the broken connection and resubscribes
        # Redis confirms in order with the messages: once confirmed, every event
        # published afterwards reaches us, so a history read after this is gap-free.
        await confirmed

    async def unwatch(self, feed: str) -> None:
        channel = channel_of(feed)
        self._channels.pop(channel, None)
        self._confirmed.pop(channel, None)
        if self._pubsub is not None and self.connected.is_set():
            # On failure, the reconnect subscribes only to the channels still watched.
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(channel)

    async def _listen(self) -> None:
        delay = RECONNECT_MIN
        while True:
            try:
                await self._connect()
                delay = RECONNECT_MIN
                await self._read()
            except (RedisError, OSError) as error:
                log.warning(
                    "Redis pub/sub connection lost (%s); reconnecting in %.2fs", error, delay
                )
            self.connected.clear()
            for future in self._confirmed.values():
                if not future.done():
                    future.set_result(None)  # watchers return; the resync covers them
            self._confirmed.clear()
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.aclose()  # type: ignore[no-untyped-call]
                self._pubsub = None
            # Full jitter: a whole fleet of nodes must not reconnect in lockstep.
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, RECONNECT_MAX)

    async def _connect(self) -> None:
        pubsub = self._pubsub_redis.pubsub()
        await pubsub.ping()  # connects, or raises
        channels = list(self._channels)
        if channels:
            await pubsub.subscribe(*channels)
            pending = set(channels)
            while pending:
                message = await pubsub.get_message(timeout=5.0)
                if message is None:
                    raise RedisError("no subscribe confirmation from Redis")
                if message["type"] == "subscribe":
                    pending.discard(message["channel"].decode())
        self._pubsub = pubsub
        self.connected.set()
        log.info("Redis pub/sub connected, %d feeds watched", len(channels))
        if self._listener is not None:
            self._listener.resync()

    async def _read(self) -> None:
        pubsub, listener = self._pubsub, self._listener
        assert pubsub is not None
        assert listener is not None
        while True:
            message = await pubsub.get_message(timeout=IDLE_PING_SECONDS)
            if message is None:
                await pubsub.ping()
                continue
            kind = message["type"]
            if kind == "message":
                channel = message["channel"].decode()
                feed = self._channels.get(channel)
                if feed is None:
                    continue  # unwatched meanwhile
                item = parse_message(feed, message["data"])
                if isinstance(item, Receipt):
                    listener.receipt(item)
                else:
                    listener.deliver(item)
            elif kind == "subscribe":
                future = self._confirmed.pop(message["channel"].decode(), None)
                if future is not None and not future.done():
                    future.set_result(None)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()
        await self._pubsub_redis.aclose()
