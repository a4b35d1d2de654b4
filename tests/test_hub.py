"""The hub on its own: ordering, holes, duplicates, slow subscribers and joins.

The hub talks to connections through a small interface; here a connection is an
in-memory recorder (nothing crosses a socket), and the broker is the in-process one.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson
import pytest

from livepush import hub as hub_module
from livepush.brokers.base import Receipt
from livepush.brokers.memory import MemoryBroker
from livepush.entries import entry_fields, new_entry_id
from livepush.feed import RECENT_EVENTS, Feed, Subscription
from livepush.hub import Format, Hub
from livepush.model import Change, CloseCode, Event, EventType, History
from livepush.wire import entry_template, ws_frame

FEED = "hub"


class Recorder:
    """A connection that keeps what it was sent; `backlog` plays unsent bytes."""

    format = Format.WS

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.controls: list[dict[str, Any]] = []
        self.closed: CloseCode | None = None
        self.backlog = 0

    def write(self, data: bytes) -> None:
        # A join's `subscribed` and catch-up leave in one write: split it into frames.
        for frame in _frames(data):
            message = orjson.loads(_payload(frame))
            if message["type"].startswith("entry."):
                self.frames.append(frame)
            else:
                self.controls.append(message)  # `subscribed` is written pre-encoded too

    def buffered(self) -> int:
        return self.backlog

    def send(self, kind: str, message: dict[str, Any]) -> None:
        self.controls.append(message)

    def close(self, code: CloseCode) -> None:
        self.closed = code

    def seqs(self) -> list[int]:
        return [orjson.loads(_payload(frame))["seq"] for frame in self.frames]


def _payload(frame: bytes) -> bytes:
    """The payload of an unmasked server frame (short or 16-bit length)."""
    return frame[2:] if frame[1] < 126 else frame[4:]


# Splits of each written object, kept with it: the same object written to several
# connections splits into the very same frame objects, so identity still shows that
# one encoding went to everyone.
_SPLITS: dict[int, tuple[bytes, list[bytes]]] = {}


def _frames(data: bytes) -> list[bytes]:
    """The unmasked server frames (short or 16-bit length) one write holds, in order."""
    known = _SPLITS.get(id(data))
    if known is None or known[0] is not data:
        known = _SPLITS[id(data)] = (data, _split(data))
    return known[1]


def _split(data: bytes) -> list[bytes]:
    frames = []
    while data:
        length, start = data[1], 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        frames.append(data[: start + length])
        data = data[start + length :]
    return frames


class Listener:
    """Forwards the broker's live stream to the hub, like app.py's wiring."""

    def __init__(self) -> None:
        self.hub: Hub | None = None

    def deliver(self, event: Event) -> None:
        assert self.hub is not None
        self.hub.deliver(event)

    def flush(self) -> None:
        assert self.hub is not None
        self.hub.flush()

    def resync(self) -> None:
        assert self.hub is not None
        self.hub.resync()

    def receipt(self, receipt: Receipt) -> None:
        assert self.hub is not None
        self.hub.receipt(receipt)


async def _setup(history_size: int = 1000, max_buffer: int = 1 << 20) -> tuple[MemoryBroker, Hub]:
    broker = MemoryBroker(history_size)
    hub = Hub(broker, max_buffer=max_buffer)
    await broker.start(hub)
    return broker, hub


async def _publish(broker: MemoryBroker, count: int) -> None:
    for i in range(count):
        entry_id = new_entry_id()
        fields = entry_fields(
            {"body": f"entry {i}"}, "2026-11-25T07:00:00.000Z", "2026-11-25T07:00:00.000Z"
        )
        await broker.publish(
            FEED, Change(EventType.CREATED, entry_id, entry_template(entry_id, None, fields))
        )


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_each_event_is_framed_once_and_the_same_bytes_go_to_every_subscriber() -> None:
    broker, hub = await _setup()
    conns = [Recorder() for _ in range(3)]
    for conn in conns:
        assert await hub.subscribe(conn, FEED, None, None) is not None
    await _publish(broker, 2)
    await _settle()
    for conn in conns:
        assert conn.seqs() == [1, 2]
    assert conns[0].frames[0] is conns[1].frames[0] is conns[2].frames[0]
    await hub.aclose()


async def test_an_event_after_a_hole_waits_until_the_hole_is_filled_from_history() -> None:
    broker, hub = await _setup()
    conn = Recorder()
    await hub.subscribe(conn, FEED, None, None)
    await _publish(broker, 3)
    await _settle()
    history = await broker.history(FEED, 0, 10)
    later = history.events[2]
    # The live stream skips seq 4 and 5 (pub/sub dropped them); 6 arrives first.
    hub.deliver(Event(FEED, later.epoch, 6, EventType.DELETED, b'{"seq":6}'))
    assert conn.seqs() == [1, 2, 3]  # held, not delivered past the hole
    await hub.aclose()


async def test_a_hole_is_filled_from_history_in_order() -> None:
    broker, hub = await _setup()
    conn = Recorder()
    await hub.subscribe(conn, FEED, None, None)
    listener_hub = hub
    await _publish(broker, 1)
    await _settle()
    # Publish two events the hub never hears about live, then a third it does.
    broker._listener = None  # the live stream drops events
    await _publish(broker, 2)
    broker._listener = listener_hub
    await _publish(broker, 1)
    for _ in range(50):
        await asyncio.sleep(0)
        if conn.seqs() == [1, 2, 3, 4]:
            break
    assert conn.seqs() == [1, 2, 3, 4]
    await hub.aclose()


async def test_a_flush_fans_out_what_was_delivered_without_waiting_for_a_turn() -> None:
    broker, hub = await _setup()
    conn = Recorder()
    await hub.subscribe(conn, FEED, None, None)
    await _publish(broker, 1)
    await _settle()
    epoch = (await broker.history(FEED, 0, 0)).epoch
    for seq in (2, 3):  # read together, as a broker's one read of its socket
        payload = b'{"type":"entry.deleted","seq":%d}' % seq
        hub.deliver(Event(FEED, epoch, seq, EventType.DELETED, payload))
    assert conn.seqs() == [1]  # without a flush: the next turn of the loop
    hub.flush()
    assert conn.seqs() == [1, 2, 3]
    hub.flush()  # nothing more: nothing sent twice
    await _settle()
    assert conn.seqs() == [1, 2, 3]
    await hub.aclose()


async def test_a_duplicate_from_the_live_stream_is_dropped() -> None:
    broker, hub = await _setup()
    conn = Recorder()
    await hub.subscribe(conn, FEED, None, None)
    await _publish(broker, 2)
    await _settle()
    history = await broker.history(FEED, 0, 10)
    hub.deliver(history.events[1])
    assert conn.seqs() == [1, 2]
    await hub.aclose()


async def test_a_slow_subscriber_is_closed_with_1013_and_the_others_still_receive() -> None:
    broker, hub = await _setup(max_buffer=1000)
    slow, fast = Recorder(), Recorder()
    await hub.subscribe(slow, FEED, None, None)
    await hub.subscribe(fast, FEED, None, None)
    await _publish(broker, 1)
    await _settle()
    slow.backlog = 5000
    await _publish(broker, 2)
    await _settle()
    assert slow.closed is CloseCode.TRY_AGAIN_LATER
    assert slow.seqs() == [1]
    assert fast.seqs() == [1, 2, 3]
    assert hub.slow_closed == 1
    await hub.aclose()


class Closing(Recorder):
    """A connection whose transport closes under its subscription (`gone`): from then
    on its write raises, as uvloop's does."""

    def __init__(self) -> None:
        super().__init__()
        self.gone = False

    def write(self, data: bytes) -> None:
        if self.gone:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")
        super().write(data)


async def test_thousands_of_subscriptions_closed_under_a_fanout_are_dropped_in_one_pass() -> None:
    """More closed subscriptions than Python's recursion limit, between two live readers:
    both readers get the event, every closed one leaves the feed (the write went on
    after each raise by recursing once per closed subscription: a RecursionError and
    the fan-out lost for the readers behind)."""
    broker, hub = await _setup()
    first, last = Recorder(), Recorder()
    await hub.subscribe(first, FEED, None, None)
    count = sys.getrecursionlimit() + 500
    closing = [Closing() for _ in range(count)]
    for conn in closing:
        assert hub.try_join(conn, FEED, None, None) is not None
    await hub.subscribe(last, FEED, None, None)
    for conn in closing:
        conn.gone = True
    await _publish(broker, 2)
    await _settle()
    assert first.seqs() == [1, 2]
    assert last.seqs() == [1, 2]
    assert hub.dead_closed == count
    assert hub.subscribers(FEED) == 2
    await hub.aclose()


async def test_a_subscriber_with_since_gets_history_then_live_without_a_seam() -> None:
    broker, hub = await _setup()
    await _publish(broker, 5)
    conn = Recorder()
    joining = asyncio.ensure_future(hub.subscribe(conn, FEED, 2, None))
    await _publish(broker, 2)  # published while it joins
    assert await joining is not None
    await _publish(broker, 1)
    await _settle()
    assert conn.controls[0]["type"] == "subscribed"
    assert conn.seqs() == [3, 4, 5, 6, 7, 8]
    await hub.aclose()


async def test_a_second_subscriber_joins_from_memory_without_awaiting() -> None:
    broker, hub = await _setup()
    await hub.subscribe(Recorder(), FEED, None, None)
    await _publish(broker, 4)
    await _settle()
    conn = Recorder()
    sub = hub.try_join(conn, FEED, 1, None)
    assert sub is not None
    assert conn.seqs() == [2, 3, 4]
    await hub.aclose()


async def test_try_join_defers_to_the_broker_for_positions_the_node_does_not_hold() -> None:
    _broker, hub = await _setup()
    assert hub.try_join(Recorder(), FEED, 0, None) is None  # the feed is not watched yet
    await hub.aclose()


async def test_a_new_epoch_on_the_live_stream_resets_every_subscriber() -> None:
    broker, hub = await _setup()
    conn = Recorder()
    subscribed = await hub.subscribe(conn, FEED, None, None)
    assert subscribed is not None
    await _publish(broker, 2)
    await _settle()
    renewed = await broker.renew_epoch(FEED, conn.controls[0]["epoch"])
    await _publish(broker, 1)
    for _ in range(50):
        await asyncio.sleep(0)
    resets = [c for c in conn.controls if c["type"] == "reset"]
    assert resets == [{"type": "reset", "feed": FEED, "epoch": renewed, "head_seq": 3}]
    assert not subscribed.live  # a WebSocket subscription ends with its reset
    await hub.aclose()


@pytest.mark.parametrize("count", [1000])
async def test_concurrent_first_subscribers_all_register(count: int) -> None:
    broker, hub = await _setup()
    conns = [Recorder() for _ in range(count)]
    subs = await asyncio.gather(*(hub.subscribe(conn, FEED, None, None) for conn in conns))
    assert all(sub is not None for sub in subs)
    await _publish(broker, 1)
    await _settle()
    assert all(conn.seqs() == [1] for conn in conns)
    await hub.aclose()


def test_ws_frames_are_unmasked_text_frames_of_the_payload() -> None:
    frame = ws_frame(b'{"seq":1}')
    assert frame[0] == 0x81
    assert frame[1] == len(b'{"seq":1}')
    assert frame[2:] == b'{"seq":1}'


class CountingBroker(MemoryBroker):
    """The in-process broker, counting the history reads that carry events."""

    def __init__(self) -> None:
        super().__init__(1000)
        self.reads: list[int] = []

    async def history(self, feed: str, since: int, limit: int) -> History:
        if limit:
            self.reads.append(since)
        return await super().history(feed, since, limit)


async def _sixty_before_anyone() -> tuple[CountingBroker, Hub]:
    """A hub on a counting broker whose feed has 60 events published before any
    subscriber: the node's ring holds none of them."""
    broker = CountingBroker()
    hub = Hub(broker)
    await broker.start(hub)
    await _publish(broker, 60)
    return broker, hub


async def test_joiners_in_one_block_of_positions_share_one_history_read() -> None:
    broker, hub = await _sixty_before_anyone()
    conns = [Recorder() for _ in range(50)]
    subs = await asyncio.gather(
        *(hub.subscribe(conn, FEED, 10 + i % 20, None) for i, conn in enumerate(conns))
    )
    assert all(sub is not None for sub in subs)
    assert broker.reads == [0]  # one read, from the block's start, for all fifty
    for i, conn in enumerate(conns):
        assert conn.seqs() == list(range(11 + i % 20, 61))
    await hub.aclose()


async def test_joiners_of_a_shared_read_take_the_seeded_ring_not_each_the_reads_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The read seeds the ring as it ends; each joiner then joins from memory through the
    # run of frames joined once per position, not by walking the read's events itself
    # (in a storm of 10,000 that walk was milliseconds a turn).
    broker, hub = await _sixty_before_anyone()
    framed: list[int] = []  # each event's frame, as a catch-up takes it (cached or not)
    frame = Feed._frame

    def counted(feed: Any, fmt: Format, event: Event) -> bytes:
        framed.append(event.seq)
        return frame(feed, fmt, event)

    monkeypatch.setattr(Feed, "_frame", counted)
    conns = [Recorder() for _ in range(50)]
    subs = await asyncio.gather(
        *(hub.subscribe(conn, FEED, 10 + i % 5, None) for i, conn in enumerate(conns))
    )
    assert all(sub is not None for sub in subs)
    assert broker.reads == [0]
    # One run per position (10 to 14): 50 + 49 + 48 + 47 + 46 frames taken, where a
    # walk per joiner takes ten times as many.
    assert len(framed) == 240
    for i, conn in enumerate(conns):
        assert conn.seqs() == list(range(11 + i % 5, 61))
    await hub.aclose()


async def test_joiners_arriving_one_after_another_behind_the_ring_share_one_read() -> None:
    # A reconnect storm's readers come back over seconds, not in one instant: the
    # first one's read teaches the node's ring what the next ones need.
    broker, hub = await _sixty_before_anyone()
    conns = [Recorder() for _ in range(20)]
    for i, conn in enumerate(conns):
        assert await hub.subscribe(conn, FEED, 40 - i, None) is not None  # each one older
    late = Recorder()
    assert hub.try_join(late, FEED, 21, None) is not None  # from memory, without awaiting
    assert broker.reads == [0]
    for i, conn in enumerate(conns):
        assert conn.seqs() == list(range(41 - i, 61))
    assert late.seqs() == list(range(22, 61))
    await hub.aclose()


async def test_a_joiner_between_a_reads_end_and_its_joiners_turn_joins_from_memory() -> None:
    # The shared read is no longer in flight, and its first joiner has not run yet: in
    # a storm, a turn of the loop brings hundreds of arrivals in that gap. They must
    # find the ring already taught, or each of them reads the block again.
    broker, hub = await _sixty_before_anyone()
    first = asyncio.create_task(hub.subscribe(Recorder(), FEED, 10, None))
    for _ in range(100):  # the feed's watch first syncs, then the join's read starts
        if hub._reads:
            break
        await asyncio.sleep(0)
    (read,) = hub._reads.values()
    late = Recorder()
    joined: list[Subscription | None] = []
    read.add_done_callback(lambda _: joined.append(hub.try_join(late, FEED, 12, None)))
    assert await first is not None
    assert len(joined) == 1
    assert joined[0] is not None  # from memory, in the gap
    assert broker.reads == [0]
    assert late.seqs() == list(range(13, 61))
    await hub.aclose()


async def test_a_paused_subscriber_whose_catch_up_read_never_returns_is_cut_not_left_silent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A paused subscription that drained past the ring waits for a history read to
    catch up. If that read does not come back (Redis stopped), it was exempt from the
    stall deadline: its socket stayed open (an event stream's keepalives flowing) with
    no event sent, for as long as the read hung. It is cut after STALL_SECONDS, as a
    stalled one is, and its client resumes by reconnecting."""
    monkeypatch.setattr(hub_module, "STALL_SECONDS", 0.2)
    broker, hub = await _setup()
    slow, fast = Recorder(), Recorder()
    await hub.subscribe(slow, FEED, None, None)
    await hub.subscribe(fast, FEED, None, None)
    await _publish(broker, 1)
    await _settle()
    slow.backlog = 300_000  # past pause_at (max_buffer / 4), below max_buffer
    await _publish(broker, RECENT_EVENTS + 20)  # what it misses no longer in the ring
    await _settle()
    assert slow.seqs() == [1]
    assert slow.closed is None  # paused, not cut

    never = asyncio.Event()

    async def hangs(feed: str, since: int | None) -> History:
        await never.wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(hub, "_read_for_join", hangs)
    slow.backlog = 0  # it drained: its catch-up reads history, which hangs

    def cut() -> CloseCode | None:  # (read anew each time: the hub sets it)
        return slow.closed

    for _ in range(100):
        if cut() is not None:
            break
        await asyncio.sleep(0.05)
    assert cut() is CloseCode.TRY_AGAIN_LATER
    assert slow.seqs() == [1]
    assert fast.seqs() == list(range(1, RECENT_EVENTS + 22))
    await hub.aclose()
