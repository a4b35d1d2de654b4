"""The socket contract (transports/base.Socket), on both socket classes over real sockets."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from livepush.model import CloseCode
from livepush.transports.base import ABORT_AFTER, Socket
from livepush.transports.fastws import FastSocket
from livepush.transports.sse import LAST_CHUNK, SseSocket, StreamHost

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
async def connected() -> AsyncIterator[tuple[asyncio.Transport, asyncio.StreamReader]]:
    """A server-side transport and the peer's reader, over a real socket pair."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    try:
        yield transport, reader
    finally:
        transport.abort()
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


def fast_socket(transport: asyncio.Transport) -> FastSocket:
    fast = FastSocket(transport, None, [], set(), 65536, None)
    transport.set_protocol(fast)
    return fast


async def gone(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the peer receives until the connection ends (closed or reset)."""
    received = b""
    with suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            received += chunk
    return received


async def test_each_socket_class_is_a_socket() -> None:
    async with connected() as (ws_transport, _), connected() as (sse_transport, _):
        # Annotated: mypy checks each class against the protocol, member by member.
        websocket: Socket = fast_socket(ws_transport)
        host: StreamHost = Host(sse_transport, keep_alive=True)
        stream: Socket = SseSocket(host, HEAD, lambda: None)
        assert isinstance(websocket, Socket)
        assert isinstance(stream, Socket)


async def test_a_websocket_close_sends_its_code_then_aborts_a_peer_that_does_not_answer() -> None:
    async with connected() as (transport, reader):
        websocket = fast_socket(transport)
        websocket.close(CloseCode.TRY_AGAIN_LATER)
        assert websocket.closing
        header, length = await asyncio.wait_for(reader.readexactly(2), 5)
        assert (header, length) == (0x88, 2)  # one close frame, unmasked
        assert struct.unpack("!H", await reader.readexactly(2)) == (1013,)
        assert await gone(reader, ABORT_AFTER + 5) == b""  # no answer: aborted


async def test_a_websocket_ping_unanswered_at_its_next_turn_closes_with_1011() -> None:
    async with connected() as (transport, reader):
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
    async with connected() as (transport, reader):
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
    async with connected() as (transport, reader):
        host = Host(transport, keep_alive=True)
        stream = SseSocket(host, HEAD, lambda: None)
        await asyncio.wait_for(reader.readexactly(len(HEAD)), 5)
        stream.close(CloseCode.TRY_AGAIN_LATER)
        assert host.ended  # uvicorn is told the response is over
        assert await gone(reader, 5) == b""


async def test_an_event_stream_whose_reader_left_ends_at_once() -> None:
    async with connected() as (transport, _):
        ends: list[None] = []
        stream = SseSocket(Host(transport, keep_alive=True), HEAD, lambda: ends.append(None))
        stream.connection_lost(None)  # what the host calls when the connection is gone
        assert ends == [None]  # before any other callback: no fan-out writes to it
        assert stream.closing
