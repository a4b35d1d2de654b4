"""A purge in the feed core, without I/O: the node's recent events, held events and cached
frames lose the entry's text once the purge's `entry.deleted` is delivered in order."""

from __future__ import annotations

from typing import Any

from livepush.feed import Feed, Format, Send, Subscription
from livepush.model import CloseCode, Event, EventType, History
from livepush.wire import event_payload, purged_event

FEED = "purge-core"
EPOCH = "e1"
SECRET, OTHER = "secretentry00001", "otherentry000001"


class Socket:
    """A subscriber's socket that keeps every byte written to it."""

    def __init__(self, fmt: Format = Format.WS) -> None:
        self.format = fmt
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def buffered(self) -> int:
        return 0

    def send(self, kind: str, message: dict[str, Any]) -> None:
        pass

    def close(self, code: CloseCode) -> None:
        pass


def created(seq: int, entry_id: str, body: str) -> Event:
    entry = b'{"id":"%s","seq":%d,"body":"%s"}' % (entry_id.encode(), seq, body.encode())
    payload = event_payload(EventType.CREATED, FEED, seq, entry, entry_id)
    return Event(FEED, EPOCH, seq, EventType.CREATED, payload)


def purge_delete(seq: int, entry_id: str) -> Event:
    payload = event_payload(EventType.DELETED, FEED, seq, None, entry_id, purge=True)
    return Event(FEED, EPOCH, seq, EventType.DELETED, payload)


def started() -> Feed:
    feed = Feed(FEED, max_buffer=1 << 20)
    feed.start(EPOCH, 0)
    return feed


def join_from_memory(feed: Feed, fmt: Format = Format.WS) -> bytes:
    socket = Socket(fmt)
    actions = feed.join(Subscription(socket, FEED), 0, EPOCH)
    assert actions is not None, "the ring reaches back to seq 0"
    for action in actions:
        assert isinstance(action, Send)
        action.sub.write(action.data)
    return socket.data


def test_a_purge_rewrites_the_recent_events_and_drops_cached_frames() -> None:
    feed = started()
    feed.receive(created(1, SECRET, "SECRET-TEXT"), created(2, OTHER, "kept"))
    for fmt in (Format.WS, Format.SSE):
        assert b"SECRET-TEXT" in join_from_memory(feed, fmt)  # frames cached now
    feed.receive(purge_delete(3, SECRET))
    for fmt in (Format.WS, Format.SSE):
        replay = join_from_memory(feed, fmt)
        assert b"SECRET-TEXT" not in replay
        assert b'"type":"entry.purged","feed":"purge-core","seq":1' in replay
        assert b'"kept"' in replay
        assert b'"purged":true' in replay
    kinds = [event.type for event in feed.recent.after(0, feed.head) or []]
    assert kinds == [EventType.PURGED, EventType.CREATED, EventType.DELETED]


def test_events_held_behind_a_hole_are_purged_too() -> None:
    feed = started()
    feed.receive(created(1, OTHER, "first"))
    # Seq 2 was dropped by pub/sub: 3 and the purge (4) wait for it.
    feed.receive(created(3, SECRET, "SECRET-TEXT"), purge_delete(4, SECRET))
    assert feed.head == 1
    history = History(EPOCH, 4, 1, (created(2, OTHER, "second"),))
    feed.receive_history(history)
    assert feed.head == 4
    assert b"SECRET-TEXT" not in join_from_memory(feed)


def test_a_history_read_older_than_the_purge_brings_no_text_back() -> None:
    feed = started()
    stale = History(EPOCH, 2, 1, (created(1, SECRET, "SECRET-TEXT"), created(2, OTHER, "kept")))
    feed.receive(*stale.events, purge_delete(3, SECRET))
    socket = Socket()
    actions, request = feed.join_history(Subscription(socket, FEED), 0, EPOCH, stale)
    assert request is None
    for action in actions:
        assert isinstance(action, Send)
        action.sub.write(action.data)
    assert b"SECRET-TEXT" not in socket.data
    assert b"SECRET-TEXT" not in join_from_memory(feed)  # nor into the frame cache


def test_a_purged_event_seen_again_live_is_not_lost_writes() -> None:
    feed = started()
    original = created(1, SECRET, "SECRET-TEXT")
    feed.receive(original, purge_delete(2, SECRET))
    feed.receive(original)  # a late duplicate of what was purged since
    assert feed.request() is None  # no epoch renewal asked for


def test_purged_event_matches_only_the_entrys_own_events() -> None:
    mentions = b'{"id":"%s","seq":1,"body":"x","meta":{"id":"%s"}}' % (
        OTHER.encode(),
        SECRET.encode(),
    )
    other = Event(
        FEED,
        EPOCH,
        1,
        EventType.CREATED,
        event_payload(EventType.CREATED, FEED, 1, mentions, OTHER),
    )
    assert purged_event(other, SECRET) is None
    assert purged_event(purge_delete(2, SECRET), SECRET) is None  # the purge's own
    retracted = Event(
        FEED, EPOCH, 3, EventType.DELETED, event_payload(EventType.DELETED, FEED, 3, None, SECRET)
    )
    purged = purged_event(retracted, SECRET)
    assert purged is not None
    assert purged.payload == b'{"type":"entry.purged","feed":"purge-core","seq":3,"id":"%s"}' % (
        SECRET.encode()
    )
