"""The Redis broker: seqs, history and entries in Redis, events over Redis pub/sub."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import orjson
from redis.exceptions import ResponseError

from livepush.brokers.base import IDEMPOTENCY_TTL, BrokerStats, Listener, new_epoch
from livepush.brokers.redis_nodes import Command, Nodes, Scripts, Trouble, connect
from livepush.brokers.redis_stream import PREFIX, LiveStream, channel_of, key
from livepush.brokers.redis_url import parse_redis_url, redact
from livepush.entries import now_rfc3339
from livepush.errors import BrokerUnavailable, Conflict, InvalidEntry, NotFound
from livepush.feedmeta import initial_meta
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
from livepush.scheduled import MAX_SCHEDULED
from livepush.timing import Histogram

__all__ = ["PREFIX", "RedisBroker", "channel_of"]

log = logging.getLogger("livepush.redis")

# A node's subscriber counts stay valid this long: it reports far more often, so only
# a node that died stops counting.
PRESENCE_TTL = 15.0
# How long a write waits for LIVEPUSH_REDIS_MIN_REPLICAS replicas before it is a 503.
REPLICA_WAIT_MS = 1000
# Every node's report for `livepush stats`: one key per node, and one sorted set of
# the nodes (scored by when their report expires); each in a slot of its own.
NODES_KEY = f"{PREFIX}:nodes"
NODE_REPORT_TTL = 15.0


# The feeds with scheduled entries, each scored by its earliest due time (Unix ms): one
# key in a slot of its own, so only a hint. Each feed's own schedule (in its slot) is
# the truth, and a release claims an entry there, in the script that publishes it.
SCHEDULES_KEY = f"{PREFIX}:schedules"
# Feeds one look at the index returns at most (the rest wait for the next look).
DUE_FEEDS = 500
# Waits before each retry of a release whose outcome is unknown.
RELEASE_RETRIES = (0.1, 0.5)


def node_key(node: str) -> str:
    return f"{PREFIX}:node:{{{node}}}"


def _script(name: str) -> str:
    return resources.files("livepush.brokers").joinpath(name).read_text()


class RedisBroker:
    """Feeds in Redis, shared by every node; publish is one Lua script on the feed's slot.

    Works on one Redis, on a Sentinel-managed primary and on Redis Cluster (see
    `redis_url` for the URL forms, `redis_nodes` for where each command goes and
    `redis_stream` for the live stream).

    `min_replicas` > 0: each write is followed by WAIT on the same connection; a write
    that fewer replicas hold within REPLICA_WAIT_MS is a 503 whose outcome is unknown
    (the publisher retries with its Idempotency-Key), and its event is published only
    once the replicas hold it. Reads that subscribers see (history, snapshot) wait the
    same way, so while the replicas keep up nothing a failover can lose is shown. They
    are not refused when replicas are missing (readers keep their pages): they answer
    after REPLICA_WAIT_MS, and may then show a write answered 503, which a failover
    before any replica holds it takes back (announced with `reset`). Cost: one more
    round trip per publish, and the replicas' lag on every publish and every read.
    """

    def __init__(self, url: str, history_size: int = 1000, *, min_replicas: int = 0) -> None:
        self.history_size = history_size
        self.min_replicas = min_replicas
        self._url = url
        self._target = parse_redis_url(url)
        self._scripts = Scripts()
        self._publish = self._scripts.register(_script("publish.lua"))
        self._history = self._scripts.register(_script("history.lua"))
        self._snapshot = self._scripts.register(_script("snapshot.lua"))
        self._entry = self._scripts.register(_script("entry.lua"))
        self._receipt = self._scripts.register(_script("receipt.lua"))
        self._renew = self._scripts.register(_script("renew.lua"))
        self._presence = self._scripts.register(_script("presence.lua"))
        self._subscribers = self._scripts.register(_script("subscribers.lua"))
        self._about = self._scripts.register(_script("about.lua"))
        self._revisions = self._scripts.register(_script("revisions.lua"))
        self._schedule = self._scripts.register(_script("schedule.lua"))
        self._unschedule = self._scripts.register(_script("unschedule.lua"))
        self._scheduled = self._scripts.register(_script("scheduled.lua"))
        self._due = self._scripts.register(_script("due.lua"))
        self._nodes: Nodes | None = None
        self._connecting = asyncio.Lock()
        self.trouble = Trouble()
        self.stream = LiveStream(self.nodes, self.trouble)
        # Counters and histograms read by /metrics at scrape time.
        self.publish_seconds = Histogram()
        self.publish_errors = 0
        self.renewals = 0

    async def start(self, listener: Listener) -> None:
        log.info("Redis broker on %s", redact(self._url))
        self.stream.start(listener)

    async def nodes(self) -> Nodes:
        """The servers, found on first use (a plain URL may name a cluster node)."""
        if self._nodes is None:
            async with self._connecting:
                if self._nodes is None:
                    self._nodes = await connect(self._target, self._scripts)
        return self._nodes

    async def _run(self, feed: str, commands: list[Command]) -> list[Any]:
        """Run commands on the feed's slot; a script's own error is a 503 too."""
        nodes = await self.nodes()
        results = await nodes.execute(key(feed, "meta"), commands)
        for result in results:
            if isinstance(result, ResponseError):
                raise BrokerUnavailable(f"Redis refused a command: {result}")
        return results

    def _script_call(self, sha: str, keys: list[str], args: list[Any]) -> Command:
        return ("EVALSHA", sha, len(keys), *keys, *args)

    def _replicated(self, commands: list[Command]) -> list[Command]:
        """`commands`, then WAIT for the replicas, when min_replicas asks for it."""
        if self.min_replicas:
            return [*commands, ("WAIT", self.min_replicas, REPLICA_WAIT_MS)]
        return commands

    def _check_replicas(self, results: list[Any]) -> None:
        if self.min_replicas and results[-1] < self.min_replicas:
            raise BrokerUnavailable(
                f"only {results[-1]} of {self.min_replicas} Redis replicas hold the write "
                "in time: outcome unknown, retry with the same Idempotency-Key"
            )

    # Writes and reads

    async def publish(
        self, feed: str, change: Change, *, idempotency_key: str | None = None
    ) -> Published:
        started = time.perf_counter()
        try:
            published = await self._publish_once(feed, change, idempotency_key)
        except BrokerUnavailable:
            self.publish_errors += 1
            raise
        self.publish_seconds.observe(time.perf_counter() - started)
        return published

    async def _publish_once(
        self, feed: str, change: Change, idempotency_key: str | None
    ) -> Published:
        nodes = await self.nodes()
        keys = [
            key(feed, "meta"),
            key(feed, "log"),
            key(feed, "entries"),
            key(feed, "live"),
            key(feed, "pinned"),
            key(feed, "idem:" + (idempotency_key or "")),
            channel_of(feed),
            key(feed, "schedule"),
            key(feed, "scheduled"),
            key(feed, "revisions:" + change.entry_id),
            key(feed, "purges"),
            key(feed, "log:rewrite"),
            key(feed, "idem-of"),
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
            nodes.publish_command,
            int(time.time() * 1e6),
            "1" if self.min_replicas else "",
            initial_meta(now_rfc3339()),
            change.revision or b"",
            change.claim or b"",
            change.purge or b"",
            *change.entry_parts,
        ]
        results = await self._run(
            feed, self._replicated([self._script_call(self._publish, keys, args)])
        )
        reply = results[0]
        status = reply[0]
        if status == b"not_found":
            raise NotFound(f"no entry {change.entry_id!r} in feed {feed!r}")
        if status == b"conflict":
            raise Conflict(change.entry_id)
        self._check_replicas(results)
        if len(reply) > 2 and reply[2]:
            # The replicas hold it: now it may go out (deferred by min_replicas).
            await self._run(feed, [(nodes.publish_command, channel_of(feed), reply[2])])
        if len(reply) > 3 and reply[3]:
            self.renewals += 1  # publish.lua found history ahead of the head: writes lost
        header, _, entry = reply[1].partition(b"\n")
        epoch, seq = header.split(b" ")
        return Published(
            Position(epoch.decode(), int(seq)), entry or None, duplicate=status == b"duplicate"
        )

    async def history(self, feed: str, since: int, limit: int) -> History:
        keys = [key(feed, "meta"), key(feed, "log")]
        args = [new_epoch(), since, limit, "1" if self.min_replicas else ""]
        results = await self._run(
            feed, self._replicated([self._script_call(self._history, keys, args)])
        )
        reply = results[0]  # too few replicas in time: answered anyway (see above)
        epoch = reply[0].decode()
        rows = reply[3:]
        events = tuple(
            Event(
                feed,
                epoch,
                int(rows[i]),
                EventType(rows[i + 1].decode()),
                rows[i + 2],
                int(rows[i + 3]) / 1e6,
            )
            for i in range(0, len(rows), 4)
        )
        return History(epoch, int(reply[1]), int(reply[2]), events)

    async def snapshot(self, feed: str, limit: int, before: int | None) -> Snapshot:
        keys = [key(feed, "meta"), key(feed, "entries"), key(feed, "live"), key(feed, "pinned")]
        args = [new_epoch(), limit, "" if before is None else before]
        args += ["1" if self.min_replicas else "", initial_meta(now_rfc3339())]
        results = await self._run(
            feed, self._replicated([self._script_call(self._snapshot, keys, args)])
        )
        reply = results[0]  # too few replicas in time: answered anyway (see above)
        return Snapshot(feed, reply[0].decode(), int(reply[1]), tuple(reply[3:]), reply[2])

    async def entry(self, feed: str, entry_id: str) -> StoredEntry | None:
        keys = [key(feed, "entries"), key(feed, "live")]
        (reply,) = await self._run(feed, [self._script_call(self._entry, keys, [entry_id])])
        found, score = reply
        return None if found is None else StoredEntry(found, score is not None)

    # Stories: metadata, revisions, scheduled entries

    async def about(self, feed: str) -> About:
        args = [new_epoch(), initial_meta(now_rfc3339())]
        call = self._script_call(self._about, [key(feed, "meta")], args)
        ((epoch, head, meta),) = await self._run(feed, [call])
        return About(epoch.decode(), int(head), meta)

    async def revisions(self, feed: str, entry_id: str) -> Revisions | None:
        keys = [key(feed, "revisions:" + entry_id), key(feed, "purges")]
        (reply,) = await self._run(feed, [self._script_call(self._revisions, keys, [entry_id])])
        purge, records = reply[0], tuple(reply[1:])
        if purge is None and not records:
            return None
        return Revisions(records, purge)

    async def schedule(
        self,
        feed: str,
        item: Scheduled,
        *,
        expected: bytes | None = None,
        idempotency_key: str | None = None,
    ) -> Scheduled:
        # The index first too: were this node to die between the script and the index,
        # the entry would otherwise wait for the feed's next scheduling.
        await self._hint_at_most(feed, item.publish_at)
        keys = [
            key(feed, "schedule"),
            key(feed, "scheduled"),
            key(feed, "sidem:" + (idempotency_key or "")),
        ]
        args = [
            item.entry_id,
            item.publish_at,
            item.record,
            expected or b"",
            IDEMPOTENCY_TTL if idempotency_key is not None else "",
            MAX_SCHEDULED,
        ]
        results = await self._run(
            feed, self._replicated([self._script_call(self._schedule, keys, args)])
        )
        reply = results[0]
        status = reply[0]
        if status == b"not_found":
            raise NotFound(f"no scheduled entry {item.entry_id!r} in feed {feed!r}")
        if status == b"conflict":
            raise Conflict(item.entry_id)
        if status == b"full":
            raise InvalidEntry(
                "too many scheduled entries",
                fields={"publish_at": f"a feed holds at most {MAX_SCHEDULED} scheduled entries"},
            )
        self._check_replicas(results)
        if reply[2]:
            await self._hint_at_most(feed, int(reply[2]))
        header, _, record = reply[1].partition(b"\n")
        at, entry_id = header.split(b" ")
        return Scheduled(entry_id.decode(), int(at), record)

    async def _read_schedule(self, feed: str, due_only: bool) -> tuple[int | None, list[Scheduled]]:
        """The feed's earliest due time and its scheduled entries (or the due ones)."""
        keys = [key(feed, "schedule"), key(feed, "scheduled")]
        call = self._script_call(self._scheduled, keys, ["1" if due_only else ""])
        ((first, *rows),) = await self._run(feed, [call])
        items = [
            Scheduled(rows[i].decode(), int(float(rows[i + 1])), rows[i + 2])
            for i in range(0, len(rows), 3)
            if rows[i + 2]
        ]
        return (int(float(first)) if first else None), items

    async def scheduled(self, feed: str) -> tuple[Scheduled, ...]:
        return tuple((await self._read_schedule(feed, due_only=False))[1])

    async def unschedule(self, feed: str, entry_id: str) -> None:
        keys = [key(feed, "schedule"), key(feed, "scheduled")]
        call = self._script_call(self._unschedule, keys, [entry_id])
        results = await self._run(feed, self._replicated([call]))
        if not results[0]:
            raise NotFound(f"no scheduled entry {entry_id!r} in feed {feed!r}")
        self._check_replicas(results)
        await self._hint(feed)

    async def due(self, ahead: float) -> Due:
        nodes = await self.nodes()
        call = self._script_call(self._due, [SCHEDULES_KEY], [int(ahead * 1000), DUE_FEEDS])
        ((now, *rows),) = await nodes.execute(SCHEDULES_KEY, [call])
        feeds = tuple((rows[i].decode(), int(float(rows[i + 1]))) for i in range(0, len(rows), 2))
        return Due(int(now), feeds)

    async def release(self, feed: str, change_of: Callable[[Scheduled], Change]) -> int:
        _, items = await self._read_schedule(feed, due_only=True)
        released = 0
        for item in items:
            try:
                released += await self._release_one(feed, change_of(item))
            except NotFound:
                continue  # released by another node, cancelled or changed meanwhile
        await self._hint(feed)
        return released

    async def _release_one(self, feed: str, change: Change) -> int:
        """Publish one claim; 1 if this call published it. A claim is a write no client
        retries: so it carries an Idempotency-Key of its own, and an attempt whose
        outcome is unknown (a lost reply, replicas late for LIVEPUSH_REDIS_MIN_REPLICAS)
        is retried here, which publishes its event if the first attempt did not."""
        key = "release:" + change.entry_id

        async def claim() -> int:
            published = await self.publish(feed, change, idempotency_key=key)
            return 0 if published.duplicate else 1

        for delay in RELEASE_RETRIES:
            try:
                return await claim()
            except BrokerUnavailable:
                await asyncio.sleep(delay)
        return await claim()  # the last attempt: its failure is the caller's

    async def _hint(self, feed: str) -> None:
        """Point the index at the feed's earliest scheduled entry, or take the feed out.

        The index lives in another slot than the feed, so this cannot be atomic with
        the feed's schedule: it writes, then reads the schedule again, and lowers the
        hint if an entry was scheduled meanwhile (whose own `_hint_at_most` may have
        landed before this write and been overwritten by it). A hint too early only
        costs a look; none at all would leave an entry unreleased.
        """
        first, _ = await self._read_schedule(feed, due_only=True)
        nodes = await self.nodes()
        update = (
            ("ZREM", SCHEDULES_KEY, feed) if first is None else ("ZADD", SCHEDULES_KEY, first, feed)
        )
        await nodes.execute(SCHEDULES_KEY, [update])
        again, _ = await self._read_schedule(feed, due_only=True)
        if again is not None and (first is None or again < first):
            await self._hint_at_most(feed, again)

    async def _hint_at_most(self, feed: str, at: int) -> None:
        """Make the index say the feed has an entry due at `at` or earlier."""
        nodes = await self.nodes()
        await nodes.execute(SCHEDULES_KEY, [("ZADD", SCHEDULES_KEY, "LT", at, feed)])

    async def renew_epoch(self, feed: str, stale: str) -> str:
        fresh = new_epoch()
        (epoch,) = await self._run(
            feed, [self._script_call(self._renew, [key(feed, "meta")], [stale, fresh])]
        )
        if epoch.decode() == fresh:
            self.renewals += 1  # this call renewed it (not another node, not before)
        return str(epoch.decode())

    async def report(self, feed: str, seq: int, delivered: int, fanout_ms: float) -> None:
        nodes = await self.nodes()
        keys = [key(feed, "receipts"), channel_of(feed)]
        args = [seq, delivered, f"{fanout_ms:.3f}", nodes.publish_command]
        await self._run(feed, [self._script_call(self._receipt, keys, args)])

    async def publish_presence(self, node: str, counts: dict[str, int]) -> None:
        # One script per feed (its key lives on the feed's slot), all at once.
        ttl_ms = int(PRESENCE_TTL * 1000)
        calls = [
            (feed, self._script_call(self._presence, [key(feed, "nodes")], [node, count, ttl_ms]))
            for feed, count in counts.items()
        ]
        results = await asyncio.gather(
            *(self._run(feed, [call]) for feed, call in calls), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def subscribers(self, feed: str, node: str) -> int:
        (total,) = await self._run(
            feed, [self._script_call(self._subscribers, [key(feed, "nodes")], [node])]
        )
        return int(total)

    async def report_node(self, node: str, report: bytes) -> None:
        """Keep this node's figures where `livepush stats` finds every node's."""
        nodes = await self.nodes()
        ttl_ms = int(NODE_REPORT_TTL * 1000)
        expires = int(time.time() * 1000) + ttl_ms
        await nodes.execute(node_key(node), [("SET", node_key(node), report, "PX", ttl_ms)])
        await nodes.execute(
            NODES_KEY,
            [
                ("ZADD", NODES_KEY, expires, node),
                ("ZREMRANGEBYSCORE", NODES_KEY, "-inf", int(time.time() * 1000)),
                ("PEXPIRE", NODES_KEY, ttl_ms),
            ],
        )

    async def node_reports(self) -> list[dict[str, Any]]:
        """Every live node's last report (`livepush stats`)."""
        nodes = await self.nodes()
        now_ms = int(time.time() * 1000)
        (names,) = await nodes.execute(NODES_KEY, [("ZRANGEBYSCORE", NODES_KEY, now_ms, "+inf")])
        reports = []
        for name in names:
            report_key = node_key(name.decode())
            (report,) = await nodes.execute(report_key, [("GET", report_key)])
            if isinstance(report, bytes):
                reports.append(orjson.loads(report))
        return reports

    async def ready(self) -> bool:
        try:
            nodes = await self.nodes()
        except BrokerUnavailable:
            return False
        return await nodes.ping() and self.stream.connected()

    def stats(self) -> BrokerStats:
        stream = self.stream
        return BrokerStats(
            reconnects=stream.reconnects,
            resyncs=stream.resyncs,
            holes=stream.holes,
            renewals=self.renewals,
            connect_errors=self.trouble.failures,
            publish_errors=self.publish_errors,
            publish_seconds=self.publish_seconds,
            shards=tuple(stream.states()),
        )

    # The live stream

    async def watch(self, feed: str) -> None:
        await self.stream.watch(feed)

    async def unwatch(self, feed: str) -> None:
        await self.stream.unwatch(feed)

    async def aclose(self) -> None:
        await self.stream.aclose()
        if self._nodes is not None:
            await self._nodes.aclose()
