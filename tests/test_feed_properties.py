"""The feed core under random interleavings: hypothesis drives a `Feed` with no I/O at all.

A model broker assigns seqs and keeps a short history; a model live stream delivers its
events late, out of order, twice or never; subscriptions join at any `since` and epoch,
read history that may be stale by the time it is applied, stall and drain; history is
lost (a new epoch) or renewed. The test plays the hub's part: it performs the feed's
actions and answers its requests, and checks what every subscriber received:

- each event is the subscriber's previous seq + 1, of its epoch, with the content the
  broker published under that (epoch, seq): never a hole, a duplicate, another life's;
- otherwise the subscription was told (`reset`) or cut (1013), and gets nothing more;
- held events stay within their bound;
- once the stream is quiet and the feed has caught up, every live subscriber stands at
  the broker's head (no silent gap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from livepush.feed import (
    Action,
    CatchUp,
    Cut,
    Drop,
    Fanout,
    Feed,
    Format,
    Idle,
    ReadHistory,
    RenewEpoch,
    Reset,
    Send,
    Subscription,
)
from livepush.model import CloseCode, Event, EventType, History

FEED = "prop"
HISTORY_SIZE = 6
MAX_PENDING = 4
MAX_BUFFER = 1000  # a frame here is about 90 bytes: a paused reader may miss a few


class Store:
    """The broker, reduced to what the feed sees: seqs per epoch and a bounded history."""

    def __init__(self) -> None:
        self.lives = 0
        self.epoch = self._new_epoch()
        self.head = 0
        self.events: list[Event] = []  # the current life's retained history
        self.published: dict[tuple[str, int], bytes] = {}  # every (epoch, seq) ever
        self.count = 0

    def _new_epoch(self) -> str:
        self.lives += 1
        return f"e{self.lives}"

    def publish(self) -> Event:
        self.head += 1
        self.count += 1
        payload = orjson.dumps(
            {"type": "entry.created", "feed": FEED, "seq": self.head, "entry": {"n": self.count}}
        )
        event = Event(FEED, self.epoch, self.head, EventType.CREATED, payload)
        self.events = [*self.events, event][-HISTORY_SIZE:]
        self.published[(self.epoch, self.head)] = payload
        return event

    def history(self, since: int, limit: int = HISTORY_SIZE) -> History:
        first = self.events[0].seq if self.events else self.head + 1
        events = tuple(e for e in self.events if e.seq > since)[:limit]
        return History(self.epoch, self.head, first, events)

    def lose(self) -> None:
        """Redis came back empty: a new life whose seqs start again."""
        self.epoch = self._new_epoch()
        self.head = 0
        self.events = []

    def renew(self, stale: str) -> None:
        """A new epoch for the same events (what a broker does on proof of lost writes)."""
        if self.epoch != stale:
            return
        self.epoch = self._new_epoch()
        self.events = [Event(FEED, self.epoch, e.seq, e.type, e.payload) for e in self.events]
        for event in self.events:
            self.published[(self.epoch, event.seq)] = event.payload


@dataclass(eq=False)
class Peer:
    """A subscriber's socket and what its client made of every byte it was sent."""

    store: Store
    format: Format
    since: int | None
    epoch: str | None
    backlog: int = 0
    position: tuple[str, int] | None = None  # (epoch, last seq) after `subscribed`
    ended: str | None = None  # "reset" or "cut": nothing may arrive after
    events: list[tuple[str, int]] = field(default_factory=list)

    def write(self, data: bytes) -> None:
        messages = _ws_messages(data) if self.format is Format.WS else _sse_messages(data)
        for message in messages:
            self.receive(message)

    def buffered(self) -> int:
        return self.backlog

    def send(self, kind: str, message: dict[str, Any]) -> None:
        self.receive(message)

    def close(self, code: CloseCode) -> None:
        assert code is CloseCode.TRY_AGAIN_LATER
        assert self.ended is None, "closed after it had ended"
        self.ended = "cut"

    def receive(self, message: dict[str, Any]) -> None:
        assert self.ended is None, f"{message['type']} after the subscription ended"
        kind = message["type"]
        if kind == "subscribed":
            assert self.position is None, "subscribed twice"
            if self.epoch is not None:
                assert message["epoch"] == self.epoch, "subscribed to another epoch"
            start = message["head_seq"] if self.since is None else self.since
            self.position = (message["epoch"], start)
        elif kind == "reset":
            if self.format is Format.SSE:
                self.position = (message["epoch"], message["head_seq"])
            else:
                self.ended = "reset"
        else:
            assert self.position is not None, "an event before subscribed"
            epoch, last = self.position
            assert message["seq"] == last + 1, f"seq {message['seq']} after {last}"
            self.position = (epoch, message["seq"])
            self.events.append((epoch, message["seq"]))
            self.check_content(epoch, message)

    def check_content(self, epoch: str, message: dict[str, Any]) -> None:
        published = self.store.published.get((epoch, message["seq"]))
        assert published is not None, f"seq {message['seq']} was never published in {epoch}"
        assert orjson.loads(published) == message, "another life's entry under this seq"


def _ws_messages(data: bytes) -> list[dict[str, Any]]:
    """Every unmasked server text frame in `data`, parsed."""
    messages = []
    while data:
        length, start = data[1], 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        messages.append(orjson.loads(data[start : start + length]))
        data = data[start + length :]
    return messages


def _sse_messages(data: bytes) -> list[dict[str, Any]]:
    """Every SSE block in `data` (HTTP/1.1 chunks), its JSON checked against its id."""
    messages = []
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        block, data = rest[:size], rest[size + 2 :]
        lines = dict(line.split(b": ", 1) for line in block.strip().split(b"\n"))
        message = orjson.loads(lines[b"data"])
        if b"id" in lines:
            assert lines[b"id"].rsplit(b":", 1)[1] == str(message["seq"]).encode()
        messages.append(message)
    return messages


class FeedMachine(RuleBasedStateMachine):
    peers = Bundle("peers")

    def __init__(self) -> None:
        super().__init__()
        self.store = Store()
        self.feed = Feed(FEED, max_buffer=MAX_BUFFER, max_pending=MAX_PENDING)
        self.wire: list[Event] = []  # published, not yet delivered live
        self.sent: list[Event] = []  # delivered live at least once (for duplicates)
        self.subs: dict[int, tuple[Subscription, Peer]] = {}
        self.joins: list[tuple[Subscription, Peer, History]] = []  # history read, not applied
        self.fill: History | None = None  # a history read for the feed, not yet applied

    # Playing the hub

    def perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Fanout):
                for frame, subs in action.writes:
                    for sub in subs:
                        sub.write(frame)
                for send in action.partial:
                    send.sub.write(send.data)
                for sub, reason in action.cut:
                    assert reason in (Cut.SLOW, Cut.HOLE)
                    sub.conn.close(CloseCode.TRY_AGAIN_LATER)
            elif isinstance(action, Send):
                action.sub.write(action.data)
            elif isinstance(action, Drop):
                action.sub.conn.close(CloseCode.TRY_AGAIN_LATER)
            elif isinstance(action, Reset):
                message = {
                    "type": "reset",
                    "feed": FEED,
                    "epoch": action.epoch,
                    "head_seq": action.head_seq,
                }
                action.sub.conn.send("reset", message)
            else:
                assert isinstance(action, Idle)
                assert self.feed.empty()

    # The broker and its live stream

    @initialize(started=st.booleans())
    def begin(self, started: bool) -> None:
        """Most runs start with the feed watched; some see events before its start."""
        if started:
            self.perform(self.feed.start(self.store.epoch, self.store.head))

    @rule(count=st.integers(1, 4))
    def publish(self, count: int) -> None:
        for _ in range(count):
            self.wire.append(self.store.publish())

    @rule(count=st.integers(1, 3))
    def publish_and_deliver(self, count: int) -> None:
        """The common case: events published and delivered at once, in order."""
        events = [self.store.publish() for _ in range(count)]
        self.wire += events
        self.deliver_together_in_order(len(self.wire))

    def deliver_together_in_order(self, count: int) -> None:
        events, self.wire = self.wire[:count], self.wire[count:]
        self.sent.extend(events)
        self.perform(self.feed.receive(*events))

    @precondition(lambda self: self.wire)
    @rule(data=st.data(), in_order=st.booleans())
    def deliver(self, data: st.DataObject, in_order: bool) -> None:
        index = 0 if in_order else data.draw(st.integers(0, len(self.wire) - 1))
        event = self.wire.pop(index)
        self.sent.append(event)
        self.perform(self.feed.receive(event))

    @precondition(lambda self: self.wire)
    @rule(data=st.data())
    def deliver_together(self, data: st.DataObject) -> None:
        """Several events read at once: they go out as one fan-out (one write each)."""
        count = data.draw(st.integers(1, len(self.wire)))
        events = data.draw(st.permutations(self.wire[:count]))
        del self.wire[:count]
        self.sent.extend(events)
        self.perform(self.feed.receive(*events))

    @precondition(lambda self: self.wire)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        """Pub/sub lost an event (the stream is interrupted: the broker says resync)."""
        self.wire.pop(data.draw(st.integers(0, len(self.wire) - 1)))

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        event = data.draw(st.sampled_from(self.sent[-10:]))
        self.perform(self.feed.receive(event))

    @rule()
    def lose_history(self) -> None:
        self.store.lose()

    @rule()
    def resync(self) -> None:
        self.feed.resync()

    # The feed's start and requests

    @precondition(lambda self: not self.feed.synced)
    @rule()
    def start(self) -> None:
        self.perform(self.feed.start(self.store.epoch, self.store.head))

    @precondition(lambda self: isinstance(self.feed.request(), ReadHistory))
    @rule()
    def read_for_fill(self) -> None:
        request = self.feed.request()
        assert isinstance(request, ReadHistory)
        self.fill = self.store.history(request.after)

    @precondition(lambda self: self.fill is not None and self.feed.filling)
    @rule()
    def apply_fill(self) -> None:
        history, self.fill = self.fill, None
        assert history is not None
        self.perform(self.feed.receive_history(history))

    @precondition(lambda self: isinstance(self.feed.request(), RenewEpoch))
    @rule()
    def renew(self) -> None:
        request = self.feed.request()
        assert isinstance(request, RenewEpoch)
        self.store.renew(request.stale)
        self.feed.renewed()

    # Subscribers

    @precondition(lambda self: self.feed.synced)
    @rule(
        target=peers,
        fmt=st.sampled_from([Format.WS, Format.SSE]),
        since=st.none() | st.integers(0, 30),
        epoch_kind=st.sampled_from(["none", "current", "old"]),
    )
    def join(self, fmt: Format, since: int | None, epoch_kind: str) -> Peer:
        epoch = {"none": None, "current": self.store.epoch, "old": "e0"}[epoch_kind]
        peer = Peer(self.store, fmt, since, epoch)
        sub = Subscription(peer, FEED)
        self.subs[id(peer)] = (sub, peer)
        actions = self.feed.join(sub, since, epoch)
        if actions is not None:
            self.perform(actions)
        else:
            self.feed.begin_join(sub)
            self.joins.append((sub, peer, self.store.history(since or 0)))
        return peer

    @precondition(lambda self: self.joins)
    @rule(data=st.data())
    def finish_join(self, data: st.DataObject) -> None:
        """A join's history read is applied, however much the node moved meanwhile."""
        index = data.draw(st.integers(0, len(self.joins) - 1))
        sub, peer, history = self.joins.pop(index)
        for _ in range(10):
            actions, request = self.feed.join_history(sub, peer.since, peer.epoch, history)
            self.perform(actions)
            if isinstance(request, RenewEpoch):
                self.store.renew(request.stale)
            elif isinstance(request, CatchUp):
                self.catch_up()
            elif isinstance(request, ReadHistory):
                peer.since, peer.epoch = request.after, self.feed.epoch
            else:
                break
            history = self.store.history(peer.since or 0)
        else:
            raise AssertionError("a join kept asking for history")
        self.perform(self.feed.end_join(sub))

    @rule(peer=peers, backlog=st.sampled_from([0, MAX_BUFFER // 4 + 1, MAX_BUFFER + 1]))
    def stall(self, peer: Peer, backlog: int) -> None:
        """The socket's unsent bytes: none, enough to pause it, or past the cut."""
        peer.backlog = backlog

    @rule(peer=peers, count=st.integers(1, 12))
    def briefly_slow(self, peer: Peer, count: int) -> None:
        """A reader slow for a few events: paused, then caught up or, past its budget
        (max_buffer), cut; never a hole or a duplicate either way."""
        peer.backlog = MAX_BUFFER // 4 + 1
        for _ in range(count):
            self.wire.append(self.store.publish())
            self.deliver_together_in_order(len(self.wire))
        peer.backlog = 0
        self.resume(self.subs[id(peer)][0])

    @rule(peer=peers)
    def drain(self, peer: Peer) -> None:
        """A paused socket drained: it is caught up from memory or history, or cut."""
        peer.backlog = 0
        self.resume(self.subs[id(peer)][0])

    def resume(self, sub: Subscription) -> None:
        actions, request = self.feed.resume(sub)
        self.perform(actions)
        if request is not None:
            self.perform(self.feed.resume_history(sub, self.store.history(request.after)))

    @rule(peer=peers)
    def stalled_too_long(self, peer: Peer) -> None:
        sub, _ = self.subs[id(peer)]
        if sub in self.feed.paused:
            self.perform(self.feed.drop(sub, Cut.SLOW))

    @rule(peer=consumes(peers))
    def leave(self, peer: Peer) -> None:
        sub, _ = self.subs.pop(id(peer))
        if sub not in {join[0] for join in self.joins}:
            self.perform(self.feed.leave(sub))

    # Invariants

    @invariant()
    def held_events_stay_bounded(self) -> None:
        assert len(self.feed.pending) <= MAX_PENDING

    @invariant()
    def paused_subscriptions_stay_within_max_buffer(self) -> None:
        # What a paused reader missed is bounded (its socket's own backlog is the
        # kernel's and the test's to set; the feed checks both at every fan-out).
        for missed in self.feed.paused.values():
            assert missed <= MAX_BUFFER

    @invariant()
    def live_subscriptions_are_the_feed_members(self) -> None:
        for sub in self.feed.members():
            assert sub.live
            peer = sub.conn
            assert isinstance(peer, Peer)
            assert peer.ended is None

    def catch_up(self) -> None:
        """Answer the feed's requests until it has none (the hub's driver task)."""
        for _ in range(50):
            request = self.feed.request()
            if request is None:
                return
            if isinstance(request, RenewEpoch):
                self.store.renew(request.stale)
                self.feed.renewed()
            else:
                self.perform(self.feed.receive_history(self.store.history(request.after)))
        raise AssertionError("the feed never caught up")

    def teardown(self) -> None:
        """Quiet the stream, let the feed catch up, and find every live subscriber at
        the broker's head: a gap nobody was told about would show here."""
        for sub, _, _ in self.joins:
            self.perform(self.feed.end_join(sub))
        self.joins.clear()
        if not self.feed.synced:
            self.perform(self.feed.start(self.store.epoch, self.store.head))
        while self.wire:
            self.perform(self.feed.receive(self.wire.pop(0)))
        self.feed.resync()
        self.catch_up()
        assert (self.feed.epoch, self.feed.head) == (self.store.epoch, self.store.head)
        for sub in list(self.feed.paused):
            assert isinstance(sub.conn, Peer)
            sub.conn.backlog = 0
            self.resume(sub)
        for sub in self.feed.members():
            peer = sub.conn
            assert isinstance(peer, Peer)
            assert peer.position == (self.store.epoch, self.store.head)


FeedMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None, derandomize=False
)
test_feed_state_machine = FeedMachine.TestCase
