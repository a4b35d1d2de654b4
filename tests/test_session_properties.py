"""Property tests of the WebSocket message handler: a Session on a real hub (in-process
broker) fed any sequence of frames, with and without tokens, private feeds included.

Whatever the client sends, the session answers only with the messages the SPEC
names, never raises, never holds more feeds than its limit, gives no event of a
private feed to a client without its token, and leaves nothing behind in the hub
once the socket closes.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livepush.brokers.memory import MemoryBroker
from livepush.config import Settings
from livepush.model import Change, CloseCode, EventType
from livepush.runtime import Runtime
from livepush.transports.ws import Session
from livepush.wire import entry_template
from tests.jwts import SECRET, mint

FEEDS = ["open", "vip", "members-a"]
MAX_FEEDS = 2


class FakeSocket:
    """A `transports.base.Socket` that keeps what the session writes."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed_with: CloseCode | None = None

    def write(self, data: bytes) -> None:
        self.written += data

    def buffered(self) -> int:
        return 0

    @property
    def closing(self) -> bool:
        return self.closed_with is not None

    def close(self, code: CloseCode) -> None:
        if self.closed_with is None:
            self.closed_with = code

    def keepalive(self) -> None:
        pass

    def messages(self) -> list[dict[str, Any]]:
        """The server's unmasked text frames, decoded."""
        found, data, at = [], bytes(self.written), 0
        while at < len(data):
            assert data[at] == 0x81, "one unfragmented text frame per message"
            length, at = data[at + 1] & 0x7F, at + 2
            if length == 126:
                (length,), at = struct.unpack("!H", data[at : at + 2]), at + 2
            elif length == 127:
                (length,), at = struct.unpack("!Q", data[at : at + 8]), at + 8
            found.append(orjson.loads(data[at : at + length]))
            at += length
        return found


# Minted at import, so valid for a day: the whole suite may run before this module.
DAY = 86400
VIP, MEMBERS, EXPIRED = mint(["vip"], DAY), mint(["members-*"], DAY), mint(["vip"], -10)
READERS = {"vip": {VIP, "publisher"}, "members-a": {MEMBERS, "publisher"}}
tokens = st.sampled_from([None, "garbage", VIP, MEMBERS, EXPIRED, "publisher"])
subscribes = st.builds(
    lambda feed, since, epoch, receipts, token: orjson.dumps(
        {
            "type": "subscribe",
            "feed": feed,
            **({} if since is None else {"since": since}),
            **({} if epoch is None else {"epoch": epoch}),
            **({"receipts": True} if receipts else {}),
            **({} if token is None else {"token": token}),
        }
    ),
    st.sampled_from([*FEEDS, "Bad!"]),
    st.none() | st.integers(min_value=-1, max_value=5),
    st.none() | st.sampled_from(["stale", 5]),
    st.booleans(),
    tokens,
)
frames = st.one_of(
    subscribes,
    st.sampled_from(FEEDS).map(lambda f: orjson.dumps({"type": "unsubscribe", "feed": f})),
    st.just(b'{"type":"ping"}'),
    st.binary(max_size=40),
    st.just(b"x" * 5000),
)
SERVER_TYPES = {
    "subscribed",
    "entry.created",
    "reset",
    "error",
    "pong",
    "receipt",
    "unsubscribed",
}


async def drive(sent: list[bytes]) -> tuple[FakeSocket, Runtime, Session]:
    settings = Settings(
        demo=False,
        max_feeds_per_connection=MAX_FEEDS,
        publish_tokens=("publisher",),
        private_feeds=("vip", "members-*"),
        jwt_secret=SECRET,
    )
    broker = MemoryBroker(100)
    runtime = Runtime(settings, broker)
    await broker.start(runtime.hub)
    for feed in FEEDS:  # one entry each, so a subscription from 0 replays an event
        entry = entry_template("e1", None, {"body": "x"})
        await broker.publish(feed, Change(EventType.CREATED, "e1", entry))
    socket = FakeSocket()
    session = Session(socket, False, runtime)
    try:
        for data in sent:
            session.receive(data)
            await asyncio.sleep(0)  # joins that need the broker run between messages
        for _ in range(20):  # let pending joins finish
            if not session.pending:
                break
            await asyncio.sleep(0.001)
        assert len(session.subs.keys() | session.pending.keys()) <= MAX_FEEDS
    finally:
        session.closed()
        await runtime.hub.aclose()
        await broker.aclose()
    return socket, runtime, session


def test_a_reader_token_gets_its_private_feed_and_nothing_else() -> None:
    sent = [
        orjson.dumps({"type": "subscribe", "feed": "vip", "since": 0, "token": VIP}),
        orjson.dumps({"type": "subscribe", "feed": "members-a", "since": 0, "token": VIP}),
    ]
    socket, runtime, _ = asyncio.run(drive(sent))
    kinds = [(m["type"], m.get("feed"), m.get("code")) for m in socket.messages()]
    # The refusal is answered at once; the join reads the broker first.
    assert kinds == [
        ("error", "members-a", "forbidden"),
        ("subscribed", "vip", None),
        ("entry.created", "vip", None),
    ]
    assert runtime.hub.subscriptions() == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, max_size=12))
def test_any_messages_get_only_spec_answers_and_leave_nothing_behind(sent: list[bytes]) -> None:
    socket, runtime, _ = asyncio.run(drive(sent))
    messages = socket.messages()
    assert {m["type"] for m in messages} <= SERVER_TYPES
    for message in messages:
        if message["type"] == "error":
            assert isinstance(message["code"], str)
            assert isinstance(message["message"], str)
    # No event of a private feed without a token that may read it: every `subscribed`
    # to one followed a subscribe carrying such a token.
    subscribed = [orjson.loads(data) for data in sent if data.startswith(b'{"type":"subscribe"')]
    readers = {
        message["feed"]
        for message in subscribed
        if message.get("token") in READERS.get(message["feed"], ())
    }
    for message in messages:
        if message["type"] in ("subscribed", "entry.created") and message["feed"] != "open":
            assert message["feed"] in readers
    assert runtime.hub.subscriptions() == 0
    assert runtime.ws_connections == 0
    assert socket.closed_with in (None, CloseCode.POLICY)
