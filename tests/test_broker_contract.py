"""The broker contract, run in-process against every broker: memory and a real Redis."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from livepush.brokers.base import Broker, Receipt
from livepush.brokers.memory import MemoryBroker
from livepush.brokers.redis import RedisBroker
from livepush.entries import entry_fields, new_entry_id, now_rfc3339, rfc3339
from livepush.errors import Conflict, NotFound
from livepush.feedmeta import changed_meta, initial_meta
from livepush.model import Change, Event, EventType, Published, Scheduled
from livepush.revisions import purge_record, revision_record, stored_revision
from livepush.scheduled import release_change, scheduled_record
from livepush.schema import parse_new_entry
from livepush.wire import entry_template, event_payload
from tests.redis_topologies import Cluster, RedisNode, replicas_online
from tests.support import HOST, RedisServer, wait_until

FEED = "contract"
WAIT = 10.0


class Recorder:
    """A listener that keeps what the broker hands it and lets a test wait for it."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.calls: list[str] = []  # "deliver" and "flush", in order
        self.resyncs = 0
        self._changed = asyncio.Event()

    def deliver(self, event: Event) -> None:
        self.events.append(event)
        self.calls.append("deliver")
        self._changed.set()

    def flush(self) -> None:
        self.calls.append("flush")
        self._changed.set()

    def resync(self) -> None:
        self.resyncs += 1
        self._changed.set()

    def receipt(self, receipt: Receipt) -> None:
        pass

    def of(self, feed: str) -> list[Event]:
        return [event for event in self.events if event.feed == feed]

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        async def until() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(until(), WAIT)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


MakeBroker = Callable[..., Awaitable[tuple[Broker, Recorder]]]


@pytest.fixture(scope="module")
def contract_cluster() -> Iterator[Cluster]:
    """Redis Cluster, three primaries: each test starts on emptied primaries."""
    cluster = Cluster(primaries=3, replicas=0)
    try:
        yield cluster.start()
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def replicated_redis() -> Iterator[tuple[RedisNode, RedisNode]]:
    """A primary and its replica, for LIVEPUSH_REDIS_MIN_REPLICAS=1."""
    root = Path(tempfile.mkdtemp(prefix="livepush-contract-"))
    primary = RedisNode(root).start()
    replica = RedisNode(root, "--replicaof", HOST, str(primary.port)).start()
    try:
        wait_until(lambda: replicas_online(primary) == 1, 20, "the replica to catch up")
        yield primary, replica
    finally:
        replica.kill()
        primary.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["memory", "redis", "cluster", "replicated"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[MakeBroker]:
    """Start brokers of the parametrized kind (history_size=...); all closed after:
    in-process, one Redis, Redis Cluster, and one Redis with a replica every write
    waits for (LIVEPUSH_REDIS_MIN_REPLICAS=1)."""
    url, min_replicas = None, 0
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
    elif request.param == "cluster":
        cluster = request.getfixturevalue("contract_cluster")
        for port in cluster.primary_ports():
            cluster.node(port).call("FLUSHALL")
        url = cluster.url
    elif request.param == "replicated":
        primary, _ = request.getfixturevalue("replicated_redis")
        primary.call("FLUSHALL")
        url, min_replicas = f"redis://{primary.address}/0", 1
    started: list[Broker] = []

    async def make(history_size: int = 1000) -> tuple[Broker, Recorder]:
        broker: Broker
        if url is None:
            broker = MemoryBroker(history_size)
        else:
            broker = RedisBroker(url, history_size, min_replicas=min_replicas)
        recorder = Recorder()
        await broker.start(recorder)
        started.append(broker)
        return broker, recorder

    yield make
    for broker in started:
        await broker.aclose()


@pytest.fixture
async def broker(make_broker: MakeBroker) -> Broker:
    return (await make_broker())[0]


# Changes built as the ingest API builds them


def created(body: str = "text", **fields: Any) -> Change:
    entry = parse_new_entry({"body": body, **fields})
    entry_id, now = new_entry_id(), now_rfc3339()
    return Change(
        EventType.CREATED,
        entry_id,
        entry_template(entry_id, None, entry_fields(entry, now, now)),
        pinned=entry["pinned"],
    )


def updated(stored: bytes, **patch: Any) -> Change:
    entry = orjson.loads(stored)
    entry.update(patch)
    fields = entry_fields(entry, entry["published_at"], now_rfc3339())
    return Change(
        EventType.UPDATED,
        entry["id"],
        entry_template(entry["id"], entry["seq"], fields),
        pinned=bool(fields["pinned"]),
        expected=stored,
    )


def deleted(entry_id: str) -> Change:
    return Change(EventType.DELETED, entry_id)


def entry_of(published: Published) -> dict[str, Any]:
    assert published.entry is not None
    entry: dict[str, Any] = orjson.loads(published.entry)
    return entry


async def publish_many(broker: Broker, count: int, feed: str = FEED) -> list[Published]:
    return [await broker.publish(feed, created(f"entry {i}")) for i in range(count)]


def seqs_of(entries: tuple[bytes, ...]) -> list[int]:
    return [orjson.loads(entry)["seq"] for entry in entries]


# The live stream


@pytest.mark.parametrize("make_broker", ["redis", "cluster"], indirect=True)
async def test_the_live_stream_flushes_its_listener_once_it_has_read_what_arrived(
    make_broker: MakeBroker,
) -> None:
    # The hub sends on a flush instead of a turn of the loop later. (The in-process
    # broker hands events over on the loop; it needs none.)
    broker, recorder = await make_broker()
    await broker.watch(FEED)
    await publish_many(broker, 3)
    await recorder.wait_for(
        lambda: len(recorder.of(FEED)) == 3 and recorder.calls[-1] == "flush",
        "three events, then a flush",
    )
    assert 1 <= recorder.calls.count("flush") <= 3  # at most one per read


# Seqs and epochs


async def test_feed_exists_from_first_use_with_head_zero(broker: Broker) -> None:
    history = await broker.history(FEED, 0, 10)
    assert history.head_seq == 0
    assert history.epoch
    assert history.events == ()


async def test_first_publish_gets_seq_one_and_keeps_the_epoch_reported_before_it(
    broker: Broker,
) -> None:
    before = await broker.history(FEED, 0, 0)
    published = await broker.publish(FEED, created())
    assert published.position.seq == 1
    assert published.position.epoch == before.epoch
    assert (await broker.history(FEED, 0, 0)).epoch == before.epoch


async def test_published_entry_carries_its_id_and_the_event_seq(broker: Broker) -> None:
    await publish_many(broker, 2)
    change = created("third", title="T")
    published = await broker.publish(FEED, change)
    entry = entry_of(published)
    assert entry["id"] == change.entry_id
    assert entry["seq"] == published.position.seq == 3
    assert entry["body"] == "third"
    assert entry["title"] == "T"
    assert not published.duplicate


async def test_seqs_are_contiguous_under_concurrent_publishes(broker: Broker) -> None:
    published = await asyncio.gather(*(broker.publish(FEED, created(str(i))) for i in range(200)))
    assert sorted(p.position.seq for p in published) == list(range(1, 201))
    history = await broker.history(FEED, 0, 1000)
    assert history.head_seq == 200
    assert [event.seq for event in history.events] == list(range(1, 201))


async def test_feeds_have_their_own_seqs(broker: Broker) -> None:
    await publish_many(broker, 3, "one")
    assert (await broker.publish("two", created())).position.seq == 1
    assert (await broker.history("one", 0, 0)).head_seq == 3


# History


async def test_history_returns_the_events_after_since_oldest_first(broker: Broker) -> None:
    await publish_many(broker, 6)
    history = await broker.history(FEED, 2, 100)
    assert history.head_seq == 6
    assert history.first_seq == 1
    assert [event.seq for event in history.events] == [3, 4, 5, 6]
    assert all(event.feed == FEED and event.epoch == history.epoch for event in history.events)


async def test_history_returns_at_most_limit_events(broker: Broker) -> None:
    await publish_many(broker, 6)
    history = await broker.history(FEED, 1, 2)
    assert [event.seq for event in history.events] == [2, 3]
    assert history.head_seq == 6


async def test_history_after_the_head_is_empty(broker: Broker) -> None:
    await publish_many(broker, 3)
    assert (await broker.history(FEED, 3, 100)).events == ()


async def test_history_payloads_equal_what_the_listener_receives(
    make_broker: MakeBroker,
) -> None:
    broker, recorder = await make_broker()
    await broker.watch(FEED)
    first = await broker.publish(FEED, created("one", tags=["a"]))
    stored = entry_of(first)
    await broker.publish(FEED, updated(first.entry or b"", title="Corrected"))
    await broker.publish(FEED, deleted(stored["id"]))
    await recorder.wait_for(lambda: len(recorder.of(FEED)) == 3, "three live events")
    history = await broker.history(FEED, 0, 100)
    assert [(e.seq, e.type, e.payload) for e in history.events] == [
        (e.seq, e.type, e.payload) for e in recorder.of(FEED)
    ]
    assert [orjson.loads(e.payload)["type"] for e in history.events] == [
        "entry.created",
        "entry.updated",
        "entry.deleted",
    ]


async def test_history_is_bounded_to_history_size(make_broker: MakeBroker) -> None:
    broker, _ = await make_broker(history_size=5)
    await publish_many(broker, 8)
    history = await broker.history(FEED, 3, 100)
    assert history.head_seq == 8
    assert history.first_seq == 4
    assert [event.seq for event in history.events] == [4, 5, 6, 7, 8]


async def test_history_since_older_than_held_returns_what_is_held(
    make_broker: MakeBroker,
) -> None:
    # Both brokers answer the same: the held events, and first_seq shows the gap.
    broker, _ = await make_broker(history_size=5)
    await publish_many(broker, 8)
    history = await broker.history(FEED, 0, 100)
    assert history.first_seq == 4
    assert [event.seq for event in history.events] == [4, 5, 6, 7, 8]


# Idempotency


async def test_idempotency_key_retry_returns_the_first_result_and_publishes_nothing(
    broker: Broker,
) -> None:
    first = await broker.publish(FEED, created("once"), idempotency_key="key-1")
    retry = await broker.publish(FEED, created("once"), idempotency_key="key-1")
    assert retry.duplicate
    assert not first.duplicate
    assert retry.position == first.position
    assert retry.entry == first.entry
    assert (await broker.history(FEED, 0, 0)).head_seq == 1


async def test_other_idempotency_keys_publish_anew(broker: Broker) -> None:
    await broker.publish(FEED, created(), idempotency_key="key-1")
    second = await broker.publish(FEED, created(), idempotency_key="key-2")
    assert not second.duplicate
    assert second.position.seq == 2


# Corrections and retractions


async def test_update_records_the_new_revision_keeping_id_and_seq(broker: Broker) -> None:
    first = await broker.publish(FEED, created("draft"))
    second = await broker.publish(FEED, updated(first.entry or b"", body="final"))
    entry = entry_of(second)
    assert second.position.seq == 2
    assert entry["id"] == entry_of(first)["id"]
    assert entry["seq"] == 1
    assert entry["body"] == "final"
    stored = await broker.entry(FEED, entry["id"])
    assert stored is not None
    assert stored.live
    assert stored.json == second.entry


async def test_update_whose_expected_revision_no_longer_matches_is_a_conflict(
    broker: Broker,
) -> None:
    first = await broker.publish(FEED, created("draft"))
    stale = first.entry or b""
    await broker.publish(FEED, updated(stale, body="first correction"))
    with pytest.raises(Conflict):
        await broker.publish(FEED, updated(stale, body="second correction"))
    assert (await broker.history(FEED, 0, 0)).head_seq == 2


async def test_update_of_an_unknown_entry_is_not_found(broker: Broker) -> None:
    await publish_many(broker, 1)
    change = Change(EventType.UPDATED, "nosuchentry00000", (b'{"id":"nosuchentry00000"}',))
    with pytest.raises(NotFound):
        await broker.publish(FEED, change)
    assert (await broker.history(FEED, 0, 0)).head_seq == 1


async def test_delete_of_an_unknown_entry_is_not_found(broker: Broker) -> None:
    await publish_many(broker, 1)
    with pytest.raises(NotFound):
        await broker.publish(FEED, deleted("nosuchentry00000"))
    assert (await broker.history(FEED, 0, 0)).head_seq == 1


async def test_update_of_a_retracted_entry_is_not_found(broker: Broker) -> None:
    first = await broker.publish(FEED, created())
    await broker.publish(FEED, deleted(entry_of(first)["id"]))
    with pytest.raises(NotFound):
        await broker.publish(FEED, updated(first.entry or b"", body="too late"))
    assert (await broker.history(FEED, 0, 0)).head_seq == 2


async def test_delete_of_a_retracted_entry_is_not_found(broker: Broker) -> None:
    first = await broker.publish(FEED, created())
    await broker.publish(FEED, deleted(entry_of(first)["id"]))
    with pytest.raises(NotFound):
        await broker.publish(FEED, deleted(entry_of(first)["id"]))
    assert (await broker.history(FEED, 0, 0)).head_seq == 2


async def test_retracted_entry_is_kept_but_not_live(broker: Broker) -> None:
    first = await broker.publish(FEED, created())
    await broker.publish(FEED, deleted(entry_of(first)["id"]))
    stored = await broker.entry(FEED, entry_of(first)["id"])
    assert stored is not None
    assert not stored.live


async def test_entry_never_published_is_none(broker: Broker) -> None:
    assert await broker.entry(FEED, "nosuchentry00000") is None


# Snapshot


async def test_snapshot_is_newest_first_and_consistent_with_its_head(broker: Broker) -> None:
    await publish_many(broker, 4)
    snapshot = await broker.snapshot(FEED, 50, None)
    assert snapshot.feed == FEED
    assert snapshot.head_seq == 4
    assert snapshot.epoch == (await broker.history(FEED, 0, 0)).epoch
    assert seqs_of(snapshot.entries) == [4, 3, 2, 1]
    await broker.publish(FEED, created("after"))
    continued = await broker.history(FEED, snapshot.head_seq, 100)
    assert [event.seq for event in continued.events] == [5]


async def test_snapshot_holds_at_most_limit_entries(broker: Broker) -> None:
    await publish_many(broker, 6)
    assert seqs_of((await broker.snapshot(FEED, 2, None)).entries) == [6, 5]


async def test_snapshot_before_pages_back(broker: Broker) -> None:
    await publish_many(broker, 6)
    page = await broker.snapshot(FEED, 2, 5)
    assert seqs_of(page.entries) == [4, 3]
    assert page.head_seq == 6
    assert seqs_of((await broker.snapshot(FEED, 2, 3)).entries) == [2, 1]
    assert (await broker.snapshot(FEED, 2, 1)).entries == ()


async def test_snapshot_leaves_retracted_entries_out(broker: Broker) -> None:
    published = await publish_many(broker, 3)
    await broker.publish(FEED, deleted(entry_of(published[1])["id"]))
    snapshot = await broker.snapshot(FEED, 50, None)
    assert seqs_of(snapshot.entries) == [3, 1]
    assert snapshot.head_seq == 4


async def test_snapshot_holds_the_current_revision(broker: Broker) -> None:
    first = await broker.publish(FEED, created("draft"))
    corrected = await broker.publish(FEED, updated(first.entry or b"", body="final"))
    assert (await broker.snapshot(FEED, 50, None)).entries == (corrected.entry,)


async def test_snapshot_first_page_includes_older_pinned_entries(broker: Broker) -> None:
    pinned = await broker.publish(FEED, created("pinned", pinned=True))
    await publish_many(broker, 5)
    snapshot = await broker.snapshot(FEED, 2, None)
    assert seqs_of(snapshot.entries) == [6, 5, 1]
    assert snapshot.entries[-1] == pinned.entry


async def test_snapshot_later_pages_leave_pinned_entries_to_the_first(broker: Broker) -> None:
    await broker.publish(FEED, created("pinned", pinned=True))
    await publish_many(broker, 5)
    assert seqs_of((await broker.snapshot(FEED, 2, 5)).entries) == [4, 3]


async def test_snapshot_leaves_out_an_unpinned_entry(broker: Broker) -> None:
    first = await broker.publish(FEED, created("pinned", pinned=True))
    await publish_many(broker, 3)
    await broker.publish(FEED, updated(first.entry or b"", pinned=False))
    assert seqs_of((await broker.snapshot(FEED, 2, None)).entries) == [4, 3]


async def test_snapshot_leaves_out_a_retracted_pinned_entry(broker: Broker) -> None:
    first = await broker.publish(FEED, created("pinned", pinned=True))
    await publish_many(broker, 3)
    await broker.publish(FEED, deleted(entry_of(first)["id"]))
    assert seqs_of((await broker.snapshot(FEED, 2, None)).entries) == [4, 3]


# The live stream


async def test_watched_feed_events_reach_the_listener_in_order(make_broker: MakeBroker) -> None:
    broker, recorder = await make_broker()
    await broker.watch(FEED)
    await publish_many(broker, 20)
    await recorder.wait_for(lambda: len(recorder.of(FEED)) >= 20, "20 live events")
    assert [event.seq for event in recorder.of(FEED)] == list(range(1, 21))


async def test_live_event_payload_is_the_spec_event(make_broker: MakeBroker) -> None:
    broker, recorder = await make_broker()
    await broker.watch(FEED)
    published = await broker.publish(FEED, created("live"))
    await recorder.wait_for(lambda: bool(recorder.of(FEED)), "a live event")
    (event,) = recorder.of(FEED)
    assert event.epoch == published.position.epoch
    assert event.type is EventType.CREATED
    assert orjson.loads(event.payload) == {
        "type": "entry.created",
        "feed": FEED,
        "seq": 1,
        "entry": entry_of(published),
    }
    # Byte for byte what wire.event_payload builds (on Redis, publish.lua builds it).
    entry_id = entry_of(published)["id"]
    assert event.payload == event_payload(EventType.CREATED, FEED, 1, published.entry, entry_id)


async def test_redis_and_memory_brokers_send_the_same_event_bytes(
    redis_server: RedisServer,
) -> None:
    # publish.lua (on Redis) and wire.event_payload (in-process) each build the event
    # JSON; a subscriber's bytes must not depend on which one its node runs. The same
    # changes go to both: created entries (the seq spliced into the entry), two
    # corrections, a retraction; seqs of one and two digits.
    feed = "same.bytes_feed-1"
    brokers: list[Broker] = [MemoryBroker(1000), RedisBroker(redis_server.url, 1000)]
    recorders = [Recorder(), Recorder()]
    for broker, recorder in zip(brokers, recorders, strict=True):
        await broker.start(recorder)
        await broker.watch(feed)

    async def publish_to_both(change: Change) -> bytes:
        entries = [(await broker.publish(feed, change)).entry for broker in brokers]
        assert entries[0] == entries[1]
        return entries[0] or b""

    try:
        body = 'He said "guilty" \u2014 caf\u00e9 \U0001f4f0 <b>&amp;</b>\n\\ end'
        meta = {"source": {"url": "https://example.com/?a=1&b=2"}, "n": 3, "x": None}
        first = await publish_to_both(created(body, title="T", tags=["a", "b"], meta=meta))
        for i in range(8):
            await publish_to_both(created(f"entry {i}", pinned=i % 2 == 0))
        corrected = await publish_to_both(updated(first, title=None, pinned=True))
        await publish_to_both(updated(corrected, body="corrected again"))
        await publish_to_both(deleted(orjson.loads(first)["id"]))
        for recorder in recorders:

            def all_arrived(recorder: Recorder = recorder) -> bool:
                return len(recorder.of(feed)) >= 12

            await recorder.wait_for(all_arrived, "12 live events")

        live = [[event.payload for event in recorder.of(feed)] for recorder in recorders]
        assert live[0] == live[1]
        histories = [await broker.history(feed, 0, 100) for broker in brokers]
        assert [event.payload for event in histories[0].events] == live[0]
        assert [event.payload for event in histories[1].events] == live[0]
        snapshots = [await broker.snapshot(feed, 100, None) for broker in brokers]
        assert snapshots[0].entries == snapshots[1].entries
        # The key order clients receive: type, feed, seq, then the entry or its id.
        last = {EventType.CREATED: "entry", EventType.UPDATED: "entry", EventType.DELETED: "id"}
        for event in recorders[0].of(feed):
            assert list(orjson.loads(event.payload)) == ["type", "feed", "seq", last[event.type]]
    finally:
        for broker in brokers:
            await broker.aclose()


async def test_feeds_watched_while_the_broker_connects_get_their_live_events(
    make_broker: MakeBroker,
) -> None:
    # A new watch every loop turn from the broker's start until the first watch has
    # returned (the broker is listening): some land while it subscribes earlier ones.
    broker, recorder = await make_broker()
    first = asyncio.ensure_future(broker.watch("early-0"))
    watches = [first]
    while not first.done() and len(watches) < 10_000:
        await asyncio.sleep(0)
        watches.append(asyncio.ensure_future(broker.watch(f"early-{len(watches)}")))
    await asyncio.gather(*watches)
    feeds = {f"early-{i}" for i in range(len(watches))}
    for feed in sorted(feeds):
        await broker.publish(feed, created())

    def missing() -> set[str]:
        return feeds - {event.feed for event in recorder.events}

    try:
        await recorder.wait_for(lambda: not missing(), "an event of every watched feed")
    except AssertionError:
        raise AssertionError(f"{len(missing())} of {len(feeds)} feeds got nothing") from None


# Stories: feed metadata, revisions, purges, scheduled entries


def feed_updated(current: bytes, **patch: Any) -> Change:
    meta = changed_meta(current, patch, now_rfc3339())
    return Change(EventType.FEED_UPDATED, "", (meta,), expected=current)


def revised(change: Change, token: str = "desk", changed: tuple[str, ...] = ("body",)) -> Change:
    return replace(change, revision=revision_record(now_rfc3339(), token, list(changed)))


def purging(entry_id: str, reason: str = "court order") -> Change:
    return Change(EventType.DELETED, entry_id, purge=purge_record(now_rfc3339(), "legal", reason))


def to_schedule(body: str, at_ms: int, token: str = "desk") -> Scheduled:
    entry_id = new_entry_id()
    fields = parse_new_entry({"body": body, "title": "EMBARGO"})
    at = rfc3339(datetime.fromtimestamp(at_ms / 1000, UTC))
    record = scheduled_record(entry_id, at, fields, token, now_rfc3339())
    return Scheduled(entry_id, at_ms, record)


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_new_feed_is_live_with_its_creation_time(broker: Broker) -> None:
    about = await broker.about(FEED)
    meta = orjson.loads(about.meta)
    assert meta["status"] == "live"
    assert meta["title"] is None
    assert meta["description"] is None
    assert meta["ended_at"] is None
    assert datetime.fromisoformat(meta["created_at"]) <= datetime.now(UTC)
    assert about.head_seq == 0
    assert about.epoch == (await broker.history(FEED, 0, 0)).epoch
    assert (await broker.snapshot(FEED, 10, None)).meta == about.meta


async def test_feed_updated_takes_the_next_seq_and_sets_the_metadata(
    make_broker: MakeBroker,
) -> None:
    broker, recorder = await make_broker()
    await broker.watch(FEED)
    await publish_many(broker, 2)
    before = (await broker.about(FEED)).meta
    published = await broker.publish(FEED, feed_updated(before, title="Kupiansk", status="paused"))
    assert published.position.seq == 3
    meta = orjson.loads(published.entry or b"")
    assert meta["title"] == "Kupiansk"
    assert meta["status"] == "paused"
    assert meta["created_at"] == orjson.loads(before)["created_at"]
    assert (await broker.about(FEED)).meta == published.entry
    assert (await broker.snapshot(FEED, 10, None)).meta == published.entry
    payload = event_payload(EventType.FEED_UPDATED, FEED, 3, published.entry, "")
    await recorder.wait_for(lambda: len(recorder.of(FEED)) == 3, "three live events")
    assert recorder.of(FEED)[-1].payload == payload
    assert recorder.of(FEED)[-1].type is EventType.FEED_UPDATED
    assert (await broker.history(FEED, 2, 10)).events[0].payload == payload
    assert orjson.loads(payload) == {"type": "feed.updated", "feed": FEED, "seq": 3, "meta": meta}


async def test_feed_updated_on_stale_metadata_is_a_conflict(broker: Broker) -> None:
    before = (await broker.about(FEED)).meta
    await broker.publish(FEED, feed_updated(before, title="First"))
    with pytest.raises(Conflict):
        await broker.publish(FEED, feed_updated(before, title="Second"))
    assert (await broker.history(FEED, 0, 0)).head_seq == 1


async def test_revisions_are_kept_oldest_first_with_their_records(broker: Broker) -> None:
    first_change = revised(created("draft"), "night-desk", ("body",))
    first = await broker.publish(FEED, first_change)
    second_change = revised(updated(first.entry or b"", body="final"), "copy-desk", ("body",))
    second = await broker.publish(FEED, second_change)
    revisions = await broker.revisions(FEED, entry_of(first)["id"])
    assert revisions is not None
    assert revisions.purge is None
    assert revisions.records == (
        stored_revision(1, first_change.revision or b"", first.entry or b""),
        stored_revision(2, second_change.revision or b"", second.entry or b""),
    )
    assert await broker.revisions(FEED, "nosuchentry00000") is None


async def test_purge_rewrites_history_and_drops_the_text_everywhere(
    make_broker: MakeBroker,
) -> None:
    broker, recorder = await make_broker()
    await broker.watch(FEED)
    secret = await broker.publish(FEED, revised(created("the secret")))
    other = await broker.publish(FEED, created("another entry"))
    secret_id = entry_of(secret)["id"]
    await broker.publish(FEED, revised(updated(secret.entry or b"", body="the secret, again")))
    purged = await broker.publish(FEED, purging(secret_id))
    assert purged.position.seq == 4
    history = await broker.history(FEED, 0, 100)
    assert [event.type for event in history.events] == [
        EventType.PURGED,
        EventType.CREATED,
        EventType.PURGED,
        EventType.DELETED,
    ]
    assert history.events[0].payload == event_payload(EventType.PURGED, FEED, 1, None, secret_id)
    assert history.events[1].payload == event_payload(
        EventType.CREATED, FEED, 2, other.entry, entry_of(other)["id"]
    )
    delete = event_payload(EventType.DELETED, FEED, 4, None, secret_id, purge=True)
    assert history.events[3].payload == delete
    assert orjson.loads(delete) == {
        "type": "entry.deleted",
        "feed": FEED,
        "seq": 4,
        "id": secret_id,
        "purged": True,
    }
    assert all(b"secret" not in event.payload for event in history.events)
    assert await broker.entry(FEED, secret_id) is None
    snapshot = await broker.snapshot(FEED, 50, None)
    assert snapshot.entries == (other.entry,)
    revisions = await broker.revisions(FEED, secret_id)
    assert revisions is not None
    assert len(revisions.records) == 2
    assert all(b"secret" not in record for record in revisions.records)
    assert revisions.purge is not None
    assert b"court order" in revisions.purge
    assert revisions.purge.startswith(b"4\n")
    await recorder.wait_for(lambda: len(recorder.of(FEED)) == 4, "four live events")
    assert recorder.of(FEED)[-1].payload == delete
    with pytest.raises(NotFound):
        await broker.publish(FEED, purging(secret_id))


async def test_a_purged_entrys_idempotent_retry_gets_its_seq_but_not_its_text(
    broker: Broker,
) -> None:
    first = await broker.publish(FEED, created("the secret"), idempotency_key="k-1")
    await broker.publish(FEED, purging(entry_of(first)["id"]))
    retry = await broker.publish(FEED, created("the secret"), idempotency_key="k-1")
    assert retry.duplicate
    assert retry.position == first.position
    assert retry.entry is None
    assert (await broker.history(FEED, 0, 0)).head_seq == 2


async def test_a_retracted_entry_can_be_purged(broker: Broker) -> None:
    first = await broker.publish(FEED, created("retracted text"))
    await broker.publish(FEED, deleted(entry_of(first)["id"]))
    await broker.publish(FEED, purging(entry_of(first)["id"]))
    history = await broker.history(FEED, 0, 100)
    assert [event.type for event in history.events] == [
        EventType.PURGED,
        EventType.PURGED,
        EventType.DELETED,
    ]


async def test_purge_of_an_unknown_entry_is_not_found(broker: Broker) -> None:
    await publish_many(broker, 1)
    with pytest.raises(NotFound):
        await broker.publish(FEED, purging("nosuchentry00000"))
    assert (await broker.history(FEED, 0, 0)).head_seq == 1


async def test_a_scheduled_entry_is_listed_until_it_is_released_once(broker: Broker) -> None:
    await publish_many(broker, 2)
    later = to_schedule("later", now_ms() + 600_000)
    due = to_schedule("due", now_ms() - 1000)
    assert await broker.schedule(FEED, later) == later
    assert await broker.schedule(FEED, due) == due
    assert await broker.scheduled(FEED) == (due, later)
    assert (await broker.history(FEED, 0, 0)).head_seq == 2
    found = await broker.due(1.0)
    assert [feed for feed, _ in found.feeds] == [FEED]
    assert found.feeds[0][1] == due.publish_at
    assert abs(found.now - now_ms()) < 60_000

    assert await broker.release(FEED, release_change) == 1
    assert await broker.release(FEED, release_change) == 0
    history = await broker.history(FEED, 0, 100)
    assert history.head_seq == 3
    entry = orjson.loads(history.events[-1].payload)["entry"]
    assert (entry["id"], entry["seq"], entry["body"]) == (due.entry_id, 3, "due")
    assert entry["published_at"] == orjson.loads(due.record)["publish_at"]
    assert await broker.scheduled(FEED) == (later,)
    assert FEED not in [feed for feed, _ in (await broker.due(1.0)).feeds]
    revisions = await broker.revisions(FEED, due.entry_id)
    assert revisions is not None
    assert b'"token":"desk"' in revisions.records[0]


async def test_two_brokers_release_a_due_entry_once(make_broker: MakeBroker) -> None:
    (one, _), (two, _) = await make_broker(), await make_broker()
    items = [to_schedule(f"due {i}", now_ms() - 1000) for i in range(5)]
    for item in items:
        await one.schedule(FEED, item)
    released = await asyncio.gather(
        *(broker.release(FEED, release_change) for broker in (one, two, one, two))
    )
    # In-process brokers are separate worlds: the second one holds nothing.
    assert sum(released) == 5
    history = await one.history(FEED, 0, 100)
    assert [event.seq for event in history.events] == [1, 2, 3, 4, 5]
    ids = [orjson.loads(event.payload)["entry"]["id"] for event in history.events]
    assert sorted(ids) == sorted(item.entry_id for item in items)


async def test_a_scheduled_entry_is_released_only_when_due(broker: Broker) -> None:
    item = to_schedule("not yet", now_ms() + 60_000)
    await broker.schedule(FEED, item)
    assert await broker.release(FEED, release_change) == 0
    with pytest.raises(NotFound):
        await broker.publish(FEED, release_change(item))  # a claim before its time
    assert (await broker.history(FEED, 0, 0)).head_seq == 0
    assert FEED not in [feed for feed, _ in (await broker.due(1.0)).feeds]
    assert [feed for feed, _ in (await broker.due(120.0)).feeds] == [FEED]


async def test_a_changed_scheduled_entry_replaces_the_old_and_voids_its_claim(
    broker: Broker,
) -> None:
    old = to_schedule("first draft", now_ms() - 1000)
    await broker.schedule(FEED, old)
    new = replace(old, record=old.record.replace(b"first draft", b"final text"))
    assert await broker.schedule(FEED, new, expected=old.record) == new
    with pytest.raises(Conflict):
        await broker.schedule(FEED, new, expected=old.record)
    with pytest.raises(NotFound):
        await broker.publish(FEED, release_change(old))
    assert await broker.scheduled(FEED) == (new,)
    assert await broker.release(FEED, release_change) == 1
    history = await broker.history(FEED, 0, 10)
    assert orjson.loads(history.events[0].payload)["entry"]["body"] == "final text"
    with pytest.raises(NotFound):
        await broker.schedule(FEED, new, expected=new.record)  # released: gone


async def test_a_cancelled_scheduled_entry_is_never_released(broker: Broker) -> None:
    item = to_schedule("cancelled", now_ms() - 1000)
    await broker.schedule(FEED, item)
    await broker.unschedule(FEED, item.entry_id)
    with pytest.raises(NotFound):
        await broker.unschedule(FEED, item.entry_id)
    assert await broker.scheduled(FEED) == ()
    assert await broker.release(FEED, release_change) == 0
    assert (await broker.history(FEED, 0, 0)).head_seq == 0
    assert FEED not in [feed for feed, _ in (await broker.due(1.0)).feeds]


async def test_scheduling_again_with_an_idempotency_key_stores_once(broker: Broker) -> None:
    first = to_schedule("once", now_ms() + 60_000)
    assert await broker.schedule(FEED, first, idempotency_key="k-1") == first
    retry = to_schedule("once", now_ms() + 60_000)
    assert await broker.schedule(FEED, retry, idempotency_key="k-1") == first
    assert await broker.scheduled(FEED) == (first,)


async def test_redis_and_memory_brokers_send_the_same_story_bytes(
    redis_server: RedisServer,
) -> None:
    feed = "same.story"
    brokers: list[Broker] = [MemoryBroker(1000), RedisBroker(redis_server.url, 1000)]
    for broker in brokers:
        await broker.start(Recorder())
    try:
        meta = initial_meta("2024-11-14T09:00:00.000Z")
        change = Change(EventType.FEED_UPDATED, "", (changed_meta(meta, {"title": "T"}, "x"),))
        first_change = revised(created("text", title="T"))
        second = Change(EventType.DELETED, first_change.entry_id, purge=b'{"reason":"r"}')
        for broker in brokers:
            await broker.publish(feed, change)
            await broker.publish(feed, first_change)
            await broker.publish(feed, second)
        histories = [await broker.history(feed, 0, 100) for broker in brokers]
        assert [e.payload for e in histories[0].events] == [e.payload for e in histories[1].events]
        trails = [await broker.revisions(feed, first_change.entry_id) for broker in brokers]
        assert trails[0] == trails[1]
    finally:
        for broker in brokers:
            await broker.aclose()
