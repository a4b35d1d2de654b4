"""The socket contract (transports/base.Socket), on both socket classes over real sockets."""

from __future__ import annotations

import asyncio
import socket
import struct
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, cast

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from livepush.app import create_app
from livepush.config import Settings
from livepush.model import CloseCode
from livepush.transports.base import ABORT_AFTER, Socket
from livepush.transports.fastws import Deflate, FastPath, FastSocket, Keepalive, Negotiated
from livepush.transports.sse import LAST_CHUNK, SseSocket, StreamHost
from livepush.transports.uvicorn import (
    FirstRequest,
    LivepushHttpProtocol,
    _FirstRequests,
    _Handshakes,
)
from tests.test_handshake import read_head, upgrade_request
from tests.test_hostile_sockets import close_code, frame

HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


class Host:
    """A StreamHost over a bare transport, as uvicorn's protocol is over its connection."""

    def __init__(self, transport: asyncio.Transport, keep_alive: bool) -> None:
        self.transport = transport
        self.keep_alive = keep_alive
        self.ended = False

    def take_response(self, stream: SseSocket) -> asyncio.Transport:
        return self.transport

    def end_response(self) -> bool:
        self.ended = True
        if not self.keep_alive:
            self.transport.close()
        return self.transport.is_closing()


@asynccontextmanager
async def connected() -> AsyncIterator[
    tuple[asyncio.Transport, asyncio.StreamReader, asyncio.StreamWriter]
]:
    """A server-side transport and the peer's reader and writer, over a real socket pair."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    try:
        yield transport, reader, writer
    finally:
        transport.abort()
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


def fast_socket(
    transport: asyncio.Transport, deflate: Deflate | None = None, max_size: int = 65536
) -> FastSocket:
    fast = FastSocket(transport, None, deflate, set(), max_size, None)
    transport.set_protocol(fast)
    return fast


def listened(
    transport: asyncio.Transport, deflate: Deflate | None = None, max_size: int = 65536
) -> tuple[FastSocket, Messages]:
    """A FastSocket over `transport` and the messages it hands its session."""
    websocket = fast_socket(transport, deflate, max_size)
    messages = Messages()
    websocket.detach(messages)
    return websocket, messages


class Messages:
    """The messages a socket hands its session (a fastws.MessageHandler)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.ended = False

    def receive(self, data: bytes) -> None:
        self.received.append(data)

    def closed(self) -> None:
        self.ended = True


async def gone(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the peer receives until the connection ends (closed or reset)."""
    received = b""
    with suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            received += chunk
    return received


async def test_each_socket_class_is_a_socket() -> None:
    async with connected() as (ws_transport, _, _), connected() as (sse_transport, _, _):
        # Annotated: mypy checks each class against the protocol, member by member.
        websocket: Socket = fast_socket(ws_transport)
        host: StreamHost = Host(sse_transport, keep_alive=True)
        stream: Socket = SseSocket(host, HEAD, lambda: None)
        assert isinstance(websocket, Socket)
        assert isinstance(stream, Socket)


async def test_a_websocket_close_sends_its_code_then_aborts_a_peer_that_does_not_answer() -> None:
    async with connected() as (transport, reader, _):
        websocket = fast_socket(transport)
        websocket.close(CloseCode.TRY_AGAIN_LATER)
        assert websocket.closing
        header, length = await asyncio.wait_for(reader.readexactly(2), 5)
        assert (header, length) == (0x88, 2)  # one close frame, unmasked
        assert struct.unpack("!H", await reader.readexactly(2)) == (1013,)
        assert await gone(reader, ABORT_AFTER + 5) == b""  # no answer: aborted


async def test_a_websocket_ping_unanswered_at_its_next_turn_closes_with_1011() -> None:
    async with connected() as (transport, reader, _):
        websocket = fast_socket(transport)
        websocket.keepalive()
        assert (await asyncio.wait_for(reader.readexactly(2), 5))[0] == 0x89  # a ping
        await reader.readexactly(4)  # its payload
        websocket.keepalive()  # the next turn: still no pong
        header, length = await asyncio.wait_for(reader.readexactly(2), 5)
        assert header == 0x88
        assert struct.unpack("!H", (await reader.readexactly(length))[:2]) == (1011,)
        assert await gone(reader, 5) == b""


async def test_an_event_stream_closes_with_its_last_chunk_and_ends_the_response() -> None:
    async with connected() as (transport, reader, _):
        host = Host(transport, keep_alive=False)
        ends: list[None] = []
        stream = SseSocket(host, HEAD, lambda: ends.append(None))
        stream.close(CloseCode.SERVICE_RESTART)
        stream.close(CloseCode.SERVICE_RESTART)  # again: nothing more
        assert stream.closing
        assert ends == [None]  # at once, and once: its subscription goes then
        assert host.ended
        assert await gone(reader, 5) == HEAD + LAST_CHUNK


async def test_a_too_slow_event_stream_is_aborted_without_its_last_chunk() -> None:
    async with connected() as (transport, reader, _):
        host = Host(transport, keep_alive=True)
        stream = SseSocket(host, HEAD, lambda: None)
        await asyncio.wait_for(reader.readexactly(len(HEAD)), 5)
        stream.close(CloseCode.TRY_AGAIN_LATER)
        assert host.ended  # uvicorn is told the response is over
        assert await gone(reader, 5) == b""


async def test_an_event_stream_whose_reader_left_ends_at_once() -> None:
    async with connected() as (transport, _, _):
        ends: list[None] = []
        stream = SseSocket(Host(transport, keep_alive=True), HEAD, lambda: ends.append(None))
        stream.connection_lost(None)  # what the host calls when the connection is gone
        assert ends == [None]  # before any other callback: no fan-out writes to it
        assert stream.closing


async def test_whole_text_frames_split_anywhere_arrive_whole_without_websockets() -> None:
    async with connected() as (transport, _, _):
        websocket, messages = listened(transport)
        sent = [b'{"type":"ping"}', b"x" * 300, '{"é":1}'.encode()]  # 300: a 16-bit length
        data = b"".join(frame(message) for message in sent)
        for at in range(len(data)):  # one byte at a time, as a slow network may
            websocket.data_received(data[at : at + 1])
        websocket.data_received(data + data[:7])  # two at once, and a third begun
        assert messages.received == sent * 2
        websocket.data_received(data[7:])
        assert messages.received == sent * 3
        assert not websocket.websockets_reads  # ~90 µs and 1.4 KiB a socket never paid


async def test_a_ping_is_answered_and_a_pong_settles_the_keepalive() -> None:
    async with connected() as (transport, reader, writer):
        websocket = fast_socket(transport)
        writer.write(frame(b"hi", 0x9))
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x8a\x02hi"  # a pong
        websocket.keepalive()
        head = await asyncio.wait_for(reader.readexactly(2), 5)
        assert head == b"\x89\x04"  # our ping, with 4 bytes to answer
        writer.write(frame(await reader.readexactly(4), 0xA))
        await asyncio.sleep(0.2)  # the pong arrives
        websocket.keepalive()  # the next turn: answered, so another ping, not a close
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\x89\x04"
        assert not websocket.websockets_reads


async def test_a_close_from_the_client_is_echoed_then_the_connection_ends() -> None:
    async with connected() as (transport, reader, writer):
        _, messages = listened(transport)
        goodbye = struct.pack("!H", 1001) + b"bye"
        writer.write(frame(b'{"type":"ping"}') + frame(goodbye, 0x8) + frame(b"after"))
        assert await gone(reader, 5) == b"\x88\x05" + goodbye  # echoed, then closed
        assert messages.received == [b'{"type":"ping"}']  # nothing read after the close
        assert messages.ended


async def test_a_fragmented_message_hands_the_socket_to_websockets_which_reads_on() -> None:
    async with connected() as (transport, reader, writer):
        websocket, messages = listened(transport)
        websocket.data_received(frame(b'{"a":1}'))
        websocket.data_received(frame(b'{"b"', fin=False) + frame(b":2}", 0x0) + frame(b"{}"))
        assert messages.received == [b'{"a":1}', b'{"b":2}', b"{}"]
        assert websocket.websockets_reads
        writer.write(frame(b"yo", 0x9))  # websockets answers pings from now on
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x8a\x02yo"
        websocket.close(CloseCode.NORMAL)  # through websockets, which awaits the answer
        assert await close_code(reader) == 1000


def compressed(message: bytes) -> bytes:
    """A client text frame compressed as a browser compresses it (RFC 7692, no context)."""
    deflater = zlib.compressobj(6, zlib.DEFLATED, -12)
    data = deflater.compress(message) + deflater.flush(zlib.Z_SYNC_FLUSH)
    return frame(data[:-4], rsv=0b100)  # RSV1; the empty block's 00 00 ff ff left off


DEFLATE: Deflate = (True, True, 12, 12, {})  # as livepush negotiates it


async def test_a_compressed_message_is_inflated_without_websockets() -> None:
    async with connected() as (transport, _, _):
        websocket, messages = listened(transport, DEFLATE)
        sent = [b'{"type":"subscribe","feed":"a"}', b'{"type":"ping"}' * 50]
        websocket.data_received(b"".join(compressed(message) for message in sent))
        assert messages.received == sent
        assert not websocket.websockets_reads


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (compressed(b"x" * 5000), 1009),  # inflates past max_size
        (frame(b"\xff\xfe\xfd", rsv=0b100), 1002),  # not deflate data: websockets says 1002
    ],
    ids=["inflates-too-far", "not-deflate"],  # the frames' random masks vary by collection
)
async def test_a_compressed_message_websockets_refuses_is_refused_with_its_code(
    data: bytes, code: int
) -> None:
    async with connected() as (transport, reader, writer):
        _, messages = listened(transport, DEFLATE, max_size=1000)
        writer.write(data)
        assert await close_code(reader) == code
        assert messages.received == []


@pytest.mark.parametrize(
    ("sent", "kept"), [(b"", False), (b"GET /v1/ws?feed=hs HTTP/1.1\r\n", True)]
)
async def test_a_first_request_unread_because_the_loop_is_behind_is_not_expired(
    sent: bytes, kept: bool
) -> None:
    # An overloaded loop (a connect storm of 100,000) may reach a connection's bytes
    # after its deadline: bytes waiting unread show the client was not the late one.
    # Reading is paused here so that what the peer sends stays in the kernel's queue.
    async with connected() as (transport, _, writer):
        loop = asyncio.get_running_loop()
        first = FirstRequest(Config(app=cast(Any, None)), ServerState(), {}, loop)
        first.transport = transport
        transport.pause_reading()
        writer.write(sent)
        await writer.drain()
        await asyncio.sleep(0.1)  # in the server side's receive queue by now
        deadlines = _FirstRequests.of(loop, FirstRequest.seconds)
        deadlines.waiting[first] = loop.time() - 1  # its deadline has passed
        deadlines.expire()
        assert transport.is_closing() is not kept
        assert (first in deadlines.waiting) is kept  # given another SECONDS
        if deadlines.timer is not None:
            deadlines.timer.cancel()
        deadlines.waiting.clear()
        deadlines.emptied()


class Clock:
    """The pacer's clock in these tests: it moves only when an upgrade spends time (a
    busy wait on the real clock failed when the machine was busy: the wait took longer)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def paced(loop: asyncio.AbstractEventLoop, clock: Clock) -> _Handshakes:
    handshakes = _Handshakes.of(loop)
    handshakes.clock = clock
    return handshakes


class Upgrade:
    """An upgrade that takes half the turn's budget to answer and says in which turn."""

    def __init__(self, turns: list[int], turn: list[int], clock: Clock) -> None:
        self.turns, self.turn, self.clock = turns, turn, clock

    def take_over(self) -> None:
        self.clock.now += _Handshakes.BUDGET / 2
        self.turns.append(self.turn[0])


async def test_upgrades_past_a_turns_budget_are_answered_in_later_turns_in_order() -> None:
    # A storm's turn read a thousand request heads and answered them all (tens of
    # milliseconds): upgrades past BUDGET wait for the next turns, after a poll each.
    loop = asyncio.get_running_loop()
    turn = [0]

    def count_turns() -> None:  # one step per turn of the loop, while the test runs
        turn[0] += 1
        handle[0] = loop.call_soon(count_turns)

    handle = [loop.call_soon(count_turns)]
    answered: list[int] = []
    clock = Clock()
    upgrades = [Upgrade(answered, turn, clock) for _ in range(12)]
    handshakes = paced(loop, clock)
    for upgrade in upgrades:
        handshakes.submit(upgrade)
    assert answered == [0, 0]  # half the budget each: the third would go past it
    assert len(handshakes.waiting) == 10
    for _ in range(50):
        if len(answered) == 12:
            break
        await asyncio.sleep(0)
    handle[0].cancel()
    assert len(answered) == 12  # every one, in arrival order
    per_turn = Counter(answered)
    assert max(per_turn.values()) <= 3  # the budget, and the one that crossed it
    assert len(per_turn) >= 5
    assert loop not in _Handshakes._loops  # nothing waits: gone with its last turn


class Failing(Upgrade):
    def take_over(self) -> None:
        super().take_over()
        raise RuntimeError("a bug in one upgrade")


async def test_an_upgrade_that_raises_leaves_the_others_their_turns() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        turn: list[int] = [0]
        answered: list[int] = []
        clock = Clock()
        handshakes = paced(loop, clock)
        upgrades = [Upgrade(answered, turn, clock) for _ in range(6)]
        upgrades[3] = Failing(answered, turn, clock)  # waits, then raises in a later turn
        for upgrade in upgrades:
            handshakes.submit(upgrade)
        for _ in range(20):
            if len(answered) == 6:
                break
            await asyncio.sleep(0)
        assert len(answered) == 6  # the ones after it were answered too
        assert [str(error.get("exception")) for error in errors] == ["a bug in one upgrade"]
        assert loop not in _Handshakes._loops
    finally:
        loop.set_exception_handler(None)


async def test_an_upgrade_whose_connection_closed_while_it_waited_is_not_answered() -> None:
    async with connected() as (transport, reader, _):
        first = FirstRequest(Config(app=cast(Any, None)), ServerState(), {}, None)
        first.transport = transport
        first.connections.add(first)
        transport.close()
        first.take_over()  # its turn came after the close: nothing is written
        assert first not in first.connections
        assert await reader.read() == b""


class Pinged:
    """A socket that only counts its keepalive turns."""

    def __init__(self, turns: list[Pinged]) -> None:
        self.turns = turns

    def keepalive(self) -> None:
        self.turns.append(self)


async def test_sockets_that_connected_together_are_pinged_over_several_ticks() -> None:
    # 1,000 readers connected in one instant are all due at the same tick; each tick
    # pings at most twice its even share (2 * 1,000 / TICKS = 20), so the pings and
    # their pongs never land on the loop at once.
    loop = asyncio.get_running_loop()
    turns: list[Pinged] = []
    per_tick: list[int] = []

    class Counting(Keepalive):
        def tick(self) -> None:
            before = len(turns)
            super().tick()
            per_tick.append(len(turns) - before)

    sweep = Keepalive._sweeps[(loop, 0.5)] = Counting(loop, 0.5)
    sockets = [Pinged(turns) for _ in range(1000)]
    try:
        for socket_ in sockets:
            sweep.add(cast(Socket, socket_))
        for _ in range(400):  # bounded: about 2 s
            await asyncio.sleep(0.005)
            if len(set(map(id, turns))) == len(sockets):
                break
        assert len(set(map(id, turns))) == len(sockets)  # every one had its turn
        assert max(per_tick) <= 2 * len(sockets) // Keepalive.TICKS
    finally:
        for socket_ in sockets:
            sweep.discard(cast(Socket, socket_))
        if sweep.timer is not None:
            sweep.timer.cancel()
        Keepalive._sweeps.pop((loop, 0.5), None)


class Opened:
    """The app's side of the handshake in-process: what each opened socket was told."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def allowed(self, origin: str | None) -> bool:
        return True

    def open(self, socket: FastSocket, query: str, greeting: bytes) -> None:
        self.queries.append(query)
        socket.write(greeting)


async def test_a_head_known_but_for_its_request_line_and_key_is_answered_without_a_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The readers of a storm send one head but for their `since` and their key: the
    # first one's answer is remembered, and the others are told by a dict lookup.
    opened = Opened()
    fast = FastPath(opened, "shared")
    monkeypatch.setattr(LivepushHttpProtocol, "fast_path", fast)
    offer = "permessage-deflate; client_max_window_bits"
    targets = ["/v1/ws?feed=a", "/v1/ws?feed=b&since=3", "/v1/ws"]
    parsed = []
    for target in targets:
        request, expected = upgrade_request(target, Sec_WebSocket_Extensions=offer)
        async with connected() as (transport, reader, _):
            first = FirstRequest(Config(app=cast(Any, None)), ServerState(), {}, None)
            first.transport = transport
            assert first.feed(request) is FirstRequest.FAST
            first.take_over()
            parsed.append(bool(first.headers))
            status, headers = await read_head(reader)
            assert (status, headers["sec-websocket-accept"]) == (101, expected.decode())
            assert "client_no_context_takeover" in headers["sec-websocket-extensions"]
            opened_socket = transport.get_protocol()
            assert isinstance(opened_socket, FastSocket)
            assert opened_socket.deflate is not None
    assert parsed == [True, False, False]  # only the first head's fields were read
    assert opened.queries == ["feed=a", "feed=b&since=3", ""]
    assert len(fast.heads) == 1


def test_the_latest_known_head_is_told_by_its_two_parts_and_nothing_else_passes_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The storm's common case skips even the dict (`FastPath.latest`): the bytes
    # around the key compared in place. Everything that differs from that head but
    # for the request line and key goes the long way, and is judged as before.
    fast = FastPath(Opened(), "shared")
    monkeypatch.setattr(LivepushHttpProtocol, "fast_path", fast)
    config, state = Config(app=cast(Any, None)), ServerState()

    def verdict(request: bytes) -> tuple[object, FirstRequest]:
        first = FirstRequest(config, state, {}, None)
        return first.feed(request), first

    known, _ = upgrade_request("/v1/ws?feed=a")
    assert verdict(known)[0] is FirstRequest.FAST
    key_at = known.index(first_key(known))
    fast.knows(known[known.index(b"\r\n") + 2 : key_at], known[key_at + 24 :], _NEGOTIATED)
    fast.heads.clear()  # from now on only `latest` knows the head

    request, _ = upgrade_request("/v1/ws?feed=b&since=7")
    told, first = verdict(request)
    assert told is FirstRequest.FAST
    assert (first.url, first.known, first.headers) == (b"/v1/ws?feed=b&since=7", _NEGOTIATED, [])
    assert first.key == first_key(request)
    assert first.end == len(request)

    # Not the latest head: each is parsed (headers read) or handed to uvicorn.
    for other, expected in (
        (upgrade_request("/v1/ws?feed=b", Origin="https://x.example")[0], FirstRequest.FAST),
        (request + b"\x81\x80", FirstRequest.FAST),  # a frame behind the head
        (request.replace(b"GET /v1/ws", b"GET /v1/wz"), FirstRequest.UVICORN),
        (request.replace(b"HTTP/1.1", b"HTTP/1.0"), FirstRequest.UVICORN),
        (request.replace(b"feed=b", b"feed=\x7f"), FirstRequest.UVICORN),
    ):
        told, first = verdict(other)
        assert (told, first.known) == (expected, None)
        assert told is FirstRequest.UVICORN or first.headers
    for key in (b"!" * 24, b"A" * 23 + b"="):  # the length of a key, but no key
        told, first = verdict(request.replace(first_key(request), key))
        assert first.known is None  # websockets' full handshake answers it (a 400)


async def test_connections_take_the_apps_loop_from_the_fast_path_while_the_app_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # asyncio.get_running_loop() costs a getpid() per call on Python 3.11: a connection
    # takes the loop the app started on, and a later app on another loop is not given
    # a loop that has ended.
    # What create_app sets, put back after.
    monkeypatch.setattr(LivepushHttpProtocol, "fast_path", LivepushHttpProtocol.fast_path)
    monkeypatch.setattr(FirstRequest, "seconds", FirstRequest.seconds)
    app = create_app(Settings(demo=False))
    fast = LivepushHttpProtocol.fast_path
    assert fast is not None

    def app_loop() -> asyncio.AbstractEventLoop | None:
        return fast.loop

    assert app_loop() is None
    async with app.router.lifespan_context(app):
        loop = asyncio.get_running_loop()
        assert app_loop() is loop
        async with connected() as (transport, reader, _):
            first = FirstRequest(Config(app=cast(Any, None)), ServerState(), {}, None)
            first.connection_made(transport)
            assert first.loop is loop
            first.data_received(upgrade_request("/v1/ws")[0])
            assert (await read_head(reader))[0] == 101
            opened = transport.get_protocol()
            assert isinstance(opened, FastSocket)
            assert opened.loop is loop
    assert app_loop() is None


def first_key(request: bytes) -> bytes:
    at = request.index(b"Sec-WebSocket-Key: ") + len(b"Sec-WebSocket-Key: ")
    return request[at : at + 24]


_NEGOTIATED = Negotiated(b"Sec-WebSocket-Extensions: permessage-deflate\r\n", None)


def test_the_known_heads_stay_bounded() -> None:
    fast = FastPath(Opened(), "shared")
    negotiated = Negotiated(b"", None)
    for i in range(FastPath.HEADS * 2 + 5):  # a cookie each, say: every head its own
        fast.knows(b"Sec-WebSocket-Key: ", f"\r\nCookie: {i}\r\n\r\n".encode(), negotiated)
        assert len(fast.heads) <= FastPath.HEADS
    assert b"Sec-WebSocket-Key: \r\nCookie: %d\r\n\r\n" % (FastPath.HEADS * 2 + 4) in fast.heads
