"""Catch-up runs in the feed core, without I/O: the ring's frames from a position to the
head are joined once per (format, position) and head, and never outlive either."""

from __future__ import annotations

import re

import pytest

from livepush import feed as feed_module
from livepush.feed import Feed, Format, ReadHistory, Send, Subscription
from livepush.model import History
from tests.test_feed_purge import EPOCH, FEED, SECRET, Socket, created, started


def join(feed: Feed, since: int, fmt: Format = Format.WS) -> tuple[Subscription, bytes]:
    socket = Socket(fmt)
    sub = Subscription(socket, FEED)
    actions = feed.join(sub, since, EPOCH)
    assert actions is not None, "the ring reaches back"
    for action in actions:
        assert isinstance(action, Send)
        action.sub.write(action.data)
    return sub, socket.data


def test_readers_at_one_position_get_the_same_run_and_the_next_event_makes_a_new_one() -> None:
    feed = started()
    feed.receive(*(created(seq, f"entry{seq:011d}", f"text {seq}") for seq in range(1, 6)))
    first, first_data = join(feed, 2)
    second, second_data = join(feed, 2)
    assert first_data == second_data
    assert b"text 3" in first_data
    assert b"text 5" in first_data
    assert b"text 2" not in first_data
    assert first.last_seq == second.last_seq == 5
    assert first.live
    assert second.live
    feed.receive(created(6, "entry00000000006", "text 6"))  # the head moves on
    third, third_data = join(feed, 2)
    assert b"text 6" in third_data  # not the run cached at head 5
    assert third_data.index(b"text 5") < third_data.index(b"text 6")
    assert third.last_seq == 6
    _, at_head = join(feed, 6)
    assert b"text" not in at_head  # only `subscribed`
    _, in_sse = join(feed, 2, Format.SSE)
    assert in_sse.count(b"event: entry.created") == 4  # each format its own run


def test_a_run_too_long_to_keep_is_still_sent_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_module, "RUN_CACHE_BYTES", 10)
    feed = started()
    feed.receive(*(created(seq, f"entry{seq:011d}", f"text {seq}") for seq in range(1, 4)))
    _, data = join(feed, 0)
    assert [b"text 1" in data, b"text 2" in data, b"text 3" in data] == [True] * 3
    assert feed._runs == {}
    _, again = join(feed, 0)
    assert again == data


def test_a_purge_leaves_no_run_with_the_entrys_text() -> None:
    feed = started()
    feed.receive(created(1, SECRET, "SECRET-TEXT"), created(2, "otherentry000001", "kept"))
    _, before = join(feed, 0)
    assert b"SECRET-TEXT" in before
    feed.purge(SECRET)
    _, after = join(feed, 0)
    assert b"SECRET-TEXT" not in after
    assert b'"kept"' in after


def test_a_join_that_read_twice_gets_one_subscribed_when_the_second_read_seeds_the_ring() -> None:
    # The node moved on while the client read: its first read ends at 30, the ring
    # starts at 61, so the join asks for the rest (ReadHistory). The second read
    # brings 31..100 and seeds the ring back to 31: the join ends from memory then,
    # but the client already has its `subscribed` and 11..30.
    feed = Feed(FEED, max_buffer=1 << 20)
    feed.start(EPOCH, 60)
    feed.receive(*(created(seq, f"entry{seq:011d}", f"text {seq}") for seq in range(61, 101)))
    events = [created(seq, f"entry{seq:011d}", f"text {seq}") for seq in range(1, 101)]
    socket = Socket()
    sub = Subscription(socket, FEED)
    feed.begin_join(sub)
    actions, request = feed.join_history(sub, 10, EPOCH, History(EPOCH, 30, 1, tuple(events[:30])))
    assert isinstance(request, ReadHistory)
    assert request.after == 30
    for action in actions:
        assert isinstance(action, Send)
        action.sub.write(action.data)
    second = History(EPOCH, 100, 1, tuple(events[30:]))
    actions, request = feed.join_history(sub, 30, EPOCH, second)
    assert request is None
    for action in actions:
        assert isinstance(action, Send)
        action.sub.write(action.data)
    assert socket.data.count(b'"type":"subscribed"') == 1
    seqs = [int(s) for s in re.findall(rb'"body":"text (\d+)"', socket.data)]
    assert seqs == list(range(11, 101))
    assert sub.live
