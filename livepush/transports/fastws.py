"""`/v1/ws` without ASGI: the WebSocket handshake and the open socket, lean per connection.

In a reconnect storm every subscriber connects at once, so what one connection costs
to set up decides how long the storm lasts. uvicorn's WebSocket protocol object is
made for the ASGI conversation (a queue, an event, a task) and websockets' `accept()`
builds a full `Headers` and `Response` per connection. Here (reached from
`transports/uvicorn.py`, whose HTTP protocol sniffs each connection's first request):

- a well-formed upgrade (GET, HTTP/1.1, one valid Sec-WebSocket-Key, version 13;
  its head read by `uvicorn.FirstRequest`, or by httptools on a connection that was
  HTTP first; Connection and Upgrade checked) is answered from a
  template, its permessage-deflate offer negotiated once per distinct header value by
  websockets' own header parser and extension factory (`Upgrades`);
- anything else (a missing key, a malformed offer, another version or method) goes
  to websockets' complete handshake, which answers it as websockets does;
- the open socket is a `FastSocket`: a few slots that read the frames every client
  sends themselves (whole masked text frames, compressed or not, pings, pongs, a valid
  close: `simple_frame`), and hand the connection to websockets' sans-I/O
  `ServerProtocol` from the first frame that is anything else (fragments, binary
  messages, anything malformed), which then reads the rest and answers errors with its
  close codes. That object (built at a socket's first message or ping before) was
  most of what an idle socket held: most sockets never need it;
- the 101 is handed to the app's `Handshaker.open` to leave in one write with the
  session's first messages.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging
import random
import struct
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, ClassVar, NamedTuple, Protocol, TypeGuard

from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake, NegotiationError, ProtocolError
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Close, Frame, Opcode
from websockets.headers import build_extension, parse_extension
from websockets.http11 import Request
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.speedups import apply_mask
from websockets.typing import ExtensionName, ExtensionParameter

from livepush.model import CloseCode
from livepush.transports.base import ABORT_AFTER, Drain, Socket
from livepush.wire import DEFLATE_WINDOW_BITS

log = logging.getLogger("uvicorn.error")

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
FORBIDDEN = b"This Origin may not subscribe.\n"


class Handshaker(Protocol):
    """What the fast WebSocket handshake asks of the app (implemented in ws.py)."""

    def allowed(self, origin: str | None) -> bool:
        """Whether a subscription from this Origin may open."""

    def open(self, socket: FastSocket, query: str, greeting: bytes) -> None:
        """Start the socket's session (and `?feed=` subscription); `greeting` (the 101)
        must be the first bytes written."""


class MessageHandler(Protocol):
    """What an open socket feeds its client messages to."""

    def receive(self, data: bytes) -> None:
        """One complete client message (text or binary), in order; never awaits."""

    def closed(self) -> None:
        """The connection is gone."""


class SharedDeflateFactory(ServerPerMessageDeflateFactory):
    """permessage-deflate that livepush can serve from one compressed frame per event.

    No context takeover either way (no zlib state kept per socket), and the server's
    window fixed at DEFLATE_WINDOW_BITS: a client that asks for a smaller one is
    answered without compression rather than with a frame it cannot inflate.
    """

    def __init__(self) -> None:
        super().__init__(
            server_no_context_takeover=True,
            client_no_context_takeover=True,
            server_max_window_bits=DEFLATE_WINDOW_BITS,
            client_max_window_bits=DEFLATE_WINDOW_BITS,
        )

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        for name, value in params:
            if name == "server_max_window_bits" and value and int(value) < DEFLATE_WINDOW_BITS:
                raise NegotiationError("livepush compresses with a 4 KiB window")
        return super().process_request_params(params, accepted_extensions)


class Keepalive:
    """Pings every open WebSocket of a loop from ONE timer, each about once per interval.

    uvicorn arms a timer per socket (about 600 bytes each); here a socket costs a dict
    entry and a deque slot. The deque is in order of each socket's last turn; the
    timer ticks TICKS times per interval and gives a turn to the sockets that are due,
    at most twice the even share of a tick (2 * sockets / TICKS): the 5,000 readers
    who connected in the same second are not all pinged in one tick (their pings and
    pongs a stall that every delivery behind it would wait for) but over the next
    ticks, their interval stretched by up to half of it once. A socket's turn is its
    own `keepalive()`: a ping still unanswered at the next turn closes it, so the
    timeout is the interval or more.
    """

    TICKS = 100
    _sweeps: ClassVar[dict[tuple[asyncio.AbstractEventLoop, float], Keepalive]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop, self.interval = loop, interval
        self.turns: deque[Socket] = deque()
        # Each socket's last turn (at first: when it was added). Sockets that took
        # their turn in one tick share one float object.
        self.last_turn: dict[Socket, float] = {}
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, interval: float) -> Keepalive:
        sweep = cls._sweeps.get((loop, interval))
        if sweep is None:
            sweep = cls._sweeps[(loop, interval)] = cls(loop, interval)
        return sweep

    def add(self, socket: Socket) -> None:
        """Give `socket` a turn every interval, the first one interval from now."""
        self.last_turn[socket] = self.loop.time()
        self.turns.append(socket)
        if self.timer is None:
            self.timer = self.loop.call_later(self.interval / self.TICKS, self.tick)

    def discard(self, socket: Socket) -> None:
        self.last_turn.pop(socket, None)  # its deque slot goes when its turn comes

    def tick(self) -> None:
        self.timer = None
        turns, last_turn = self.turns, self.last_turn
        now = self.loop.time()
        due = now - self.interval
        share = max(1, 2 * len(last_turn) // self.TICKS)
        while share and turns and last_turn.get(turns[0], due) <= due:
            socket = turns.popleft()
            if socket in last_turn:
                last_turn[socket] = now
                socket.keepalive()
                turns.append(socket)
                share -= 1
        if turns:
            self.timer = self.loop.call_later(self.interval / self.TICKS, self.tick)
        else:
            del self._sweeps[(self.loop, self.interval)]


# What a socket's permessage-deflate was negotiated with: PerMessageDeflate(*deflate).
# Sockets that negotiated alike share one tuple; the extension object itself is made
# only if websockets ever reads the socket (a compressed client message, say).
Deflate = tuple[bool, bool, int, int, dict[str, Any]]


def deflate_of(extension: Extension) -> Deflate | None:
    if not isinstance(extension, PerMessageDeflate):
        return None
    return (
        extension.remote_no_context_takeover,
        extension.local_no_context_takeover,
        extension.remote_max_window_bits,
        extension.local_max_window_bits,
        extension.compress_settings,
    )


class Negotiated(NamedTuple):
    header: bytes  # the response's Sec-WebSocket-Extensions line, or b""
    deflate: Deflate | None


_NOTHING = Negotiated(b"", None)


class Upgrades:
    """Answers well-formed upgrade requests from a template.

    `answer()` returns None for anything it does not answer itself; that request
    then goes through websockets' complete handshake (and its error responses).
    Negotiations are cached per distinct Sec-WebSocket-Extensions value: browsers
    of one kind all send the same one.
    """

    CACHE = 256

    def __init__(self, compression: str) -> None:
        self.factories = [SharedDeflateFactory()] if compression == "shared" else []
        self._negotiated: dict[tuple[bytes, ...], Negotiated | None] = {}

    def answer(
        self, method: str, http_version: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[bytes, Deflate | None] | None:
        accepted = self.accepts(method, http_version, headers)
        if accepted is None:
            return None
        key, negotiated = accepted
        return self.respond(key, negotiated), negotiated.deflate

    def accepts(
        self, method: str, http_version: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[bytes, Negotiated] | None:
        """The request's key and what its offer negotiated, if a template answers it."""
        if method != "GET" or http_version != "1.1":
            return None
        key = version = None
        keys = versions = 0
        offers: list[bytes] = []
        for name, value in headers:  # names arrive lower-cased from uvicorn
            if name == b"sec-websocket-key":
                key, keys = value, keys + 1
            elif name == b"sec-websocket-version":
                version, versions = value, versions + 1
            elif name == b"sec-websocket-extensions":
                offers.append(value)
        if keys != 1 or versions != 1 or version != b"13" or not valid_key(key):
            return None
        negotiated = self._negotiate(tuple(offers)) if offers and self.factories else _NOTHING
        if negotiated is None:
            return None
        return key, negotiated

    @staticmethod
    def respond(key: bytes, negotiated: Negotiated) -> bytes:
        """The 101 for `key` (a valid one) with what was negotiated."""
        return b"".join(
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: ",
                binascii.b2a_base64(hashlib.sha1(key + GUID).digest(), newline=False),
                b"\r\n",
                negotiated.header,
                b"\r\n",
            )
        )

    def _negotiate(self, offers: tuple[bytes, ...]) -> Negotiated | None:
        if offers in self._negotiated:
            return self._negotiated[offers]
        negotiated: Negotiated | None = _NOTHING
        try:
            items = [item for offer in offers for item in parse_extension(offer.decode("latin-1"))]
        except InvalidHandshake:
            negotiated = None  # malformed: websockets answers it
        else:
            negotiated = self._first_accepted(items)
        if len(self._negotiated) >= self.CACHE:
            self._negotiated.clear()
        self._negotiated[offers] = negotiated
        return negotiated

    def _first_accepted(
        self, items: list[tuple[ExtensionName, Sequence[ExtensionParameter]]]
    ) -> Negotiated:
        # As websockets' process_extensions with livepush's one factory: the first
        # offer it accepts wins.
        for name, params in items:
            for factory in self.factories:
                if factory.name != name:
                    continue
                try:
                    answer, extension = factory.process_request_params(params, [])
                except NegotiationError:
                    continue
                header = build_extension([(factory.name, answer)]).encode("latin-1")
                return Negotiated(
                    b"Sec-WebSocket-Extensions: " + header + b"\r\n", deflate_of(extension)
                )
        return _NOTHING


def valid_key(key: bytes | None) -> TypeGuard[bytes]:
    if key is None or len(key) != 24:
        return False
    try:
        return len(binascii.a2b_base64(key, strict_mode=True)) == 16
    except binascii.Error:
        return False


# What `simple_frame` says of the bytes at a position, besides a frame.
INCOMPLETE = "incomplete"  # a frame has begun: wait for more bytes
UNUSUAL = "unusual"  # websockets reads from here on (or fails the connection)

# The opcodes as ints: an enum member's `.value` is a property call, twice per frame.
TEXT, PING, PONG, CLOSE = (op.value for op in (Opcode.TEXT, Opcode.PING, Opcode.PONG, Opcode.CLOSE))
SIMPLE = frozenset((TEXT, PING, PONG, CLOSE))


def simple_frame(
    buffer: bytes, at: int, max_size: int, inflate: int = 0
) -> tuple[int, bytes, int] | str:
    """The whole, masked, unfragmented frame at `at` of the client's bytes as (opcode,
    payload, where the next frame starts), when it is a text frame of at most `max_size`
    bytes, a ping, a pong or a close; else INCOMPLETE (wait for more) or UNUSUAL
    (anything else: websockets reads it, and everything after).

    `inflate`: the client's window bits when it compresses each message on its own
    (permessage-deflate, client_no_context_takeover, as browsers do once negotiated):
    a compressed text frame is then inflated here too; 0: none is.
    """
    if len(buffer) - at < 2:
        return INCOMPLETE
    first, second = buffer[at], buffer[at + 1]
    # FIN set and no RSV bit but RSV1 (compressed) on a text frame, a known opcode,
    # masked (RFC 6455 5.2, 5.3; RFC 7692 6).
    compressed = first & 0xF0 == 0xC0 and inflate and first & 0x0F == TEXT
    if not (first & 0xF0 == 0x80 or compressed) or (first & 0x0F) not in SIMPLE:
        return UNUSUAL
    if not second & 0x80:
        return UNUSUAL
    opcode, length, start = first & 0x0F, second & 0x7F, at + 2
    if length == 126:
        if len(buffer) - at < 4:
            return INCOMPLETE
        length, start = (buffer[at + 2] << 8) | buffer[at + 3], at + 4
    if length == 127 or length > max_size or (opcode != TEXT and length > 125):
        return UNUSUAL  # too big for this socket, or a control frame over 125 bytes
    end = start + 4 + length
    if len(buffer) < end:
        return INCOMPLETE
    payload = apply_mask(buffer[start + 4 : end], buffer[start : start + 4])
    if compressed:
        inflater = zlib.decompressobj(-inflate)
        try:
            payload = inflater.decompress(payload + b"\x00\x00\xff\xff", max_size)
        except zlib.error:
            return UNUSUAL  # websockets fails it (1007)
        if inflater.unconsumed_tail:
            return UNUSUAL  # inflates past max_size: websockets fails it (1009)
    return opcode, payload, end


class UpgradeRequest(NamedTuple):
    """A parsed upgrade request: header names lower-cased, as httptools gives them."""

    method: str
    http_version: str
    target: bytes  # path?query
    headers: Sequence[tuple[bytes, bytes]]
    rest: bytes = b""  # what the client sent after it (its first frames)


class FastPath:
    """What the `/v1/ws` connections of one process share; set up by create_app."""

    HEADS = 256  # distinct request heads remembered (`heads`)

    def __init__(self, handshaker: Handshaker, compression: str) -> None:
        self.handshaker = handshaker
        self.upgrades = Upgrades(compression)
        # What an upgrade whose head is known was answered with, by its head without
        # the request line and the Sec-WebSocket-Key's value (see uvicorn.FirstRequest):
        # the clients of one kind send the same head but for those two.
        self.heads: dict[bytes, Negotiated] = {}
        # The latest of them told apart (split where its key goes), with its answer:
        # a storm's next request head is most likely the same again.
        self.latest: tuple[bytes, bytes, Negotiated] | None = None
        # The loop the app runs on, from its start to its end (create_app's lifespan).
        self.loop: asyncio.AbstractEventLoop | None = None

    def knows(self, before: bytes, after: bytes, negotiated: Negotiated) -> None:
        """Requests whose head is `before`, a key, then `after` (`heads`) are answered
        with `negotiated`."""
        if len(self.heads) >= self.HEADS:
            self.heads.clear()  # cookies, say, make every head its own: start over
        self.heads[before + after] = negotiated
        self.latest = (before, after, negotiated)


class FastSocket(asyncio.Protocol):
    """An open `/v1/ws` socket: frames in through websockets, messages to a handler.

    Sessions write events straight to the transport (`write` is its own method); this
    object reads. It never pauses reading (messages go to the handler as they are
    parsed; the handler rate limits them), pings through the process's one
    `Keepalive`, answers pings and closes through websockets, and takes part in
    uvicorn's graceful shutdown (`shutdown()`: close 1012, "service restart").
    Implements `base.Socket`.
    """

    __slots__ = (
        "_close_sent",
        "_close_timer",
        "_conn",
        "_frames",
        "_handler",
        "_inflate",
        "_pending_ping",
        "_unread",
        "buffered",
        "connections",
        "deflate",
        "loop",
        "max_size",
        "ping_interval",
        "transport",
        "write",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        conn: ServerProtocol | None,
        deflate: Deflate | None,
        connections: set[Any],
        max_size: int,
        ping_interval: float | None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.transport, self.connections = transport, connections
        self.write: Callable[[bytes], None] = transport.write
        self.buffered: Callable[[], int] = transport.get_write_buffer_size
        self.deflate = deflate  # negotiated permessage-deflate (its parameters), if any
        # The client's window bits if it compresses each message on its own, else 0.
        self._inflate = (deflate[2] or 15) if deflate is not None and deflate[0] else 0
        self.max_size = max_size
        self.loop = loop or asyncio.get_running_loop()
        self.ping_interval = ping_interval
        self._handler: MessageHandler | None = None
        self._close_sent = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._pending_ping: bytes | None = None
        self._conn: ServerProtocol | None = None
        if conn is not None:
            self._adopt(conn)
        self._unread = b""  # the start of a frame still incomplete
        connections.add(self)
        if ping_interval:
            Keepalive.of(self.loop, ping_interval).add(self)

    @property
    def conn(self) -> ServerProtocol:
        """websockets' protocol for this socket, made at the client's first frame that
        `simple_frame` does not read (most sockets never send one)."""
        conn = self._conn
        if conn is None:
            conn = ServerProtocol(state=OPEN, max_size=self.max_size, logger=log)
            conn.extensions = [] if self.deflate is None else [PerMessageDeflate(*self.deflate)]
            self._adopt(conn)
        return conn

    def _adopt(self, conn: ServerProtocol) -> None:
        """websockets' protocol reads this socket from now on."""
        self._conn = conn
        self._frames: list[bytes] = []  # a fragmented message's frames so far

    @property
    def websockets_reads(self) -> bool:
        """Whether websockets' protocol reads this socket (see `conn`)."""
        return self._conn is not None

    @classmethod
    def take_over(
        cls,
        transport: asyncio.Transport,
        request: UpgradeRequest,
        fast: FastPath,
        connections: set[Any],
        max_size: int,
        ping_interval: float | None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Negotiated | None:
        """Answer an upgrade request to `/v1/ws`; on success the socket is open.

        Returns what a template answered it with (the origin allowed, the request
        well-formed), None if it was refused or websockets answered it: a request
        whose head differs from this one only in its key is answered alike
        (`FastPath.heads`)."""
        headers = request.headers
        origin = next((value for name, value in headers if name == b"origin"), None)
        if not fast.handshaker.allowed(None if origin is None else origin.decode("latin-1")):
            transport.write(_plain_response(HTTPStatus.FORBIDDEN, FORBIDDEN))
            transport.close()
            return None
        accepted = fast.upgrades.accepts(request.method, request.http_version, headers)
        conn: ServerProtocol | None = None
        negotiated: Negotiated | None = None
        if accepted is not None:
            key, negotiated = accepted
            response, deflate = Upgrades.respond(key, negotiated), negotiated.deflate
        else:
            conn = ServerProtocol(extensions=fast.upgrades.factories, max_size=max_size, logger=log)
            reply = conn.accept(
                Request(
                    request.target.decode("latin-1"),
                    Headers([(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]),
                    method=request.method,
                    protocol=f"HTTP/{request.http_version}",
                )
            )
            conn.send_response(reply)
            response = b"".join(conn.data_to_send())
            if reply.status_code != 101:
                transport.write(response)
                transport.close()
                return None
            # websockets' parser still waits for the request httptools parsed; the
            # state is OPEN, so a fresh parser reads frames.
            conn.parser = conn.parse()
            next(conn.parser)
            deflate = next(filter(None, map(deflate_of, conn.extensions)), None)
        cls.open(
            transport,
            response,
            deflate,
            conn,
            request.target,
            request.rest,
            fast=fast,
            connections=connections,
            max_size=max_size,
            ping_interval=ping_interval,
            loop=loop,
        )
        return negotiated

    @classmethod
    def open(
        cls,
        transport: asyncio.Transport,
        response: bytes,
        deflate: Deflate | None,
        conn: ServerProtocol | None,
        target: bytes,
        rest: bytes,
        *,
        fast: FastPath,
        connections: set[Any],
        max_size: int,
        ping_interval: float | None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """The handshake is answered by `response` (a 101): the socket opens, its
        session starts, and `rest` (what the client sent after its request) is read."""
        opened = cls(transport, conn, deflate, connections, max_size, ping_interval, loop)
        transport.set_protocol(opened)
        fast.handshaker.open(opened, target.partition(b"?")[2].decode("latin-1"), response)
        if rest:
            opened.data_received(rest)

    def peer(self) -> str:
        """The client's address (the TCP peer: a proxy's, behind one)."""
        peername = self.transport.get_extra_info("peername")
        return str(peername[0]) if isinstance(peername, tuple) else str(peername or "")

    def detach(self, handler: MessageHandler) -> None:
        """Feed this socket's client messages to `handler` from now on."""
        self._handler = handler

    @property
    def closing(self) -> bool:
        return self._close_sent or self.transport.is_closing()

    def data_received(self, data: bytes) -> None:
        if self._conn is not None:
            self._websockets_received(data)  # websockets reads this socket now
            return
        if self._unread:
            data, self._unread = self._unread + data, b""
        at = 0
        while at < len(data):
            frame = simple_frame(data, at, self.max_size, self._inflate)
            if frame == INCOMPLETE:
                self._unread = data[at:]  # at most max_size and a header
                return
            if frame == UNUSUAL:
                self._hand_over(data[at:])
                return
            assert not isinstance(frame, str)
            opcode, payload, end = frame
            if opcode == TEXT:
                self._message(payload)
            elif opcode == PONG:
                if payload == self._pending_ping:
                    self._pending_ping = None
            elif opcode == PING:
                if not self.closing:
                    self.transport.write(Frame(Opcode.PONG, payload).serialize(mask=False))
            elif not _valid_close(payload):
                self._hand_over(data[at:])  # websockets fails it with its close code
                return
            else:
                # The peer closes, or answers our close: done. RFC 6455 5.5.1: a close
                # not yet answered is answered, echoing its code (as websockets does).
                if not self.closing:
                    self.transport.write(Frame(Opcode.CLOSE, payload).serialize(mask=False))
                self._close_sent = True
                self.transport.close()
                return
            at = end

    def _hand_over(self, data: bytes) -> None:
        """websockets reads `data` (which begins with a frame) and all that follows."""
        if self._close_sent:
            self.transport.close()  # we are closing anyway: nothing more to read
            return
        self._websockets_received(data)

    def _websockets_received(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        events: list[Any] = conn.events_received()  # frames: the handshake is done
        closing = False
        for frame in events:
            opcode = frame.opcode
            if opcode is Opcode.TEXT:
                if frame.fin:
                    self._message(frame.data)
                else:
                    self._frames = [frame.data]
            elif opcode is Opcode.CONT:
                self._frames.append(frame.data)
                if frame.fin:
                    message, self._frames = b"".join(self._frames), []
                    self._message(message)
            elif opcode is Opcode.BINARY:
                # The contract is text frames of JSON (SPEC); a client sending binary
                # is not one of ours: RFC 6455's own example of 1003, unsupported data.
                self._fail(CloseCode.UNSUPPORTED_DATA, "binary frames are not accepted")
                break
            elif opcode is Opcode.PONG and frame.data == self._pending_ping:
                self._pending_ping = None
            elif opcode is Opcode.CLOSE:
                closing = True
        # Pongs, the answer to the peer's close, the close after a protocol error.
        output = conn.data_to_send()
        if output:
            self.transport.write(b"".join(output))
        if closing or conn.parser_exc is not None:
            # The peer closed (or answered our close), or broke the protocol: done.
            # After only OUR close, reading goes on until the peer answers it (or the
            # close timer aborts): closing with its data unread would reset the
            # connection and lose our close frame on the way.
            self._close_sent = True
            self.transport.close()

    def _message(self, data: bytes) -> None:
        handler = self._handler
        if handler is None or self._close_sent:
            return
        try:
            data.decode()  # a few KiB at most; websockets' sans-I/O layer leaves it to us
        except UnicodeDecodeError:
            # RFC 6455 8.1: a text message that is not UTF-8 fails the connection.
            self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text frame")
            return
        handler.receive(data)

    def _fail(self, code: CloseCode, reason: str) -> None:
        """Close with `code`: a broken client. Its later messages are not read (`_message`
        stops at the close) and its session ends with the connection."""
        if not self.closing:
            self._send_close(int(code), reason)
            self._close_timer = self.loop.call_later(ABORT_AFTER, self.transport.abort)

    def close(self, code: CloseCode) -> None:
        """Send a close frame; abort if the peer has not answered it within ABORT_AFTER."""
        if self.closing:
            return
        self._send_close(int(code))
        self._close_timer = self.loop.call_later(ABORT_AFTER, self.transport.abort)

    def _send_close(self, code: int, reason: str = "") -> None:
        if self._conn is not None:
            self._conn.send_close(code, reason)  # websockets then expects the answer
            self.transport.write(b"".join(self._conn.data_to_send()))
        else:
            close = Close(code, reason).serialize()
            self.transport.write(Frame(Opcode.CLOSE, close).serialize(mask=False))
        self._close_sent = True

    def keepalive(self) -> None:
        """Give up on a ping still unanswered since the last turn (1011), or ping."""
        if self.closing:
            return
        if self._pending_ping is not None:
            # The peer did not answer in time: its close answer is not waited for.
            self._send_close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            self.transport.close()
            return
        # Written by hand even after websockets took over: it needs no state for a ping,
        # and reports the pong as any other frame.
        self._pending_ping = struct.pack("!I", random.getrandbits(32))
        self.transport.write(Frame(Opcode.PING, self._pending_ping).serialize(mask=False))

    def shutdown(self) -> None:
        """uvicorn is stopping: tell the client to reconnect elsewhere (1012), at this
        socket's moment of the drain window (base.Drain)."""
        Drain.schedule(self.loop, self._restart)

    def _restart(self) -> None:
        if not self.closing:
            self._send_close(CloseCode.SERVICE_RESTART)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self.ping_interval:
            Keepalive.of(self.loop, self.ping_interval).discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        handler, self._handler = self._handler, None
        if handler is not None:
            handler.closed()
        # websockets' parser generator holds its protocol: a cycle, freed by reference
        # counting once broken here rather than by a garbage collection.
        if self._conn is not None:
            del self._conn.parser


def _valid_close(payload: bytes) -> bool:
    """Whether a close frame's payload is one RFC 6455 allows (websockets' check)."""
    try:
        Close.parse(payload)
    except (ProtocolError, UnicodeDecodeError):
        return False
    return True


def _plain_response(status: HTTPStatus, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1") + body
