"""uvicorn's HTTP protocol with livepush's ways around ASGI, chosen by import string in cli.py.

The hub writes one pre-built frame to many sockets without awaiting; ASGI's `send` is
a coroutine per message per subscriber. So `/v1/ws` never reaches ASGI: the first
request of each connection is read by `FirstRequest`, and a `/v1/ws` upgrade becomes a
`fastws.FastSocket` (see there). Every other request is uvicorn's and Starlette's; an
event stream writes its own response, hosted by `LivepushHttpProtocol` (see sse.py).

The uvicorn internals this relies on, all of them. pyproject.toml bounds uvicorn
(`<0.55`, checked by tests/test_dependencies.py): a release past the bound may change
any of these without notice, so raise it only with a `./dev upgrade` that passes.

- `Config(http=...)` takes a protocol class, which `Server.startup` builds once per
  connection as `cls(config=, server_state=, app_state=, _loop=)`: `FirstRequest` has that
  signature. Changed, every connection fails with a TypeError.
- `ServerState.connections`: the set uvicorn calls `shutdown()` on at SIGTERM and waits
  to empty. `FirstRequest` and `FastSocket` join and leave it themselves. Changed,
  drain no longer closes WebSockets with 1012 nor half-sent requests.
- `HttpToolsProtocol(config, server_state, app_state, _loop)`, `connection_made()` and
  `data_received()`: `FirstRequest` makes uvicorn's protocol late and replays the bytes
  it read. Changed, every request but a first `/v1/ws` upgrade fails.
- `handle_websocket_upgrade()`, which uvicorn calls for an upgrade when a WebSocket
  protocol is configured (cli.py names uvicorn's own), and the request state it reads
  there: `url`, `scope["method"]`, `scope["http_version"]`, `headers` (names lower-cased),
  `transport`, `connections`, `config.ws_max_size`, `config.ws_ping_interval`; `parser`,
  `scope` and `headers` are deleted after (a reference cycle freed at once). Changed, a
  `/v1/ws` upgrade after another request on a connection reaches the ASGI route: 501.
- `on_message_begin()`, where uvicorn makes each request's scope: the host is added as
  the `livepush.transport` extension. Changed, event streams answer 404.
- For an event stream, the current `cycle` and its `response_started`,
  `response_complete` and `keep_alive`, and `on_response_complete()`: what uvicorn's own
  `send` does for a response, done for a response livepush wrote; `connection_lost()`
  marking the cycle disconnected and `shutdown()` clearing `keep_alive` while a response
  is under way, which keep uvicorn quiet and closing when a stream ends. Changed, an
  ended stream gets a 500 or an error logged behind it, or breaks keep-alive
  (tests/test_sse.py: SIGTERM, the outage's keep-alive).
- For `--workers N` (listeners.py): `Config.bind_socket()`, `Multiprocess(config,
  sockets=)` handing its sockets to each worker it spawns through multiprocessing's
  pickling, and the worker's `Server.startup` listening on the socket it got. Changed,
  the workers share one socket again, or do not start (tests/test_cluster.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import re
import sys
import termios
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any, ClassVar, Protocol, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from livepush.deadlines import Deadlines
from livepush.transports.fastws import (
    FastPath,
    FastSocket,
    Negotiated,
    UpgradeRequest,
    Upgrades,
    valid_key,
)
from livepush.transports.sse import TRANSPORT_EXTENSION, SseSocket, StreamHost

WS_PATH = b"/v1/ws"

# The one request head FirstRequest answers itself, in full: `GET /v1/ws[?query]
# HTTP/1.1` and header fields whose names are tokens and whose values hold only visible
# characters, spaces and tabs (RFC 9112: no folded lines, no control characters). Any
# other head (a longer one, another method or version, anything httptools might read
# differently) is uvicorn's, parsed and answered by httptools as any request.
TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
UPGRADE_HEAD = re.compile(
    rb"GET ("
    + re.escape(WS_PATH)
    + rb"(?:\?[!-~]*)?) HTTP/1\.1\r\n((?:"
    + TOKEN
    + rb":[\t -~\x80-\xff]*\r\n)*)\r\n"
)
FIELD = re.compile(rb"(" + TOKEN + rb"):[\t ]*([\t -~\x80-\xff]*)\r\n")  # no backtracking
# The request line alone, and a key field as clients write it: what a known head
# (`FastPath.heads`) is told by.
REQUEST_LINE = re.compile(rb"GET (" + re.escape(WS_PATH) + rb"(?:\?[!-~]*)?) HTTP/1\.1\r\n")
KEY_FIELD = b"\r\nSec-WebSocket-Key: "
KEY_LENGTH = 24  # base64 of 16 bytes


class FirstRequest(asyncio.Protocol):
    """A new connection until its first request head is read; what uvicorn builds per connection.

    A connection whose first request is a `/v1/ws` upgrade never becomes uvicorn's:
    until its first request shows otherwise, it is only this object, a transport and a
    match of one regular expression (`UPGRADE_HEAD`). In a reconnect storm that skips,
    per connection, uvicorn's set-up (loggers, parser, flow control, address lookups)
    and its ASGI scope. A head that differs from one answered before only in its
    request line and its key's value (the clients of one kind, the readers of a storm)
    is not parsed again: the process remembers what it was answered with
    (`FastPath.heads`, a dict lookup by the rest of the head), and only the request
    line and the key are checked. Any
    other first request (or anything this does not understand) gets uvicorn's protocol,
    made then, with the bytes already read replayed to it. A connection that sends no
    whole first request head within `seconds` (10 by default) is closed (`_FirstRequests`).
    """

    MORE, UVICORN, FAST = object(), object(), object()
    PREFIX = b"GET " + WS_PATH
    # Settings.first_request_timeout, set by create_app (uvicorn builds the protocol).
    seconds: ClassVar[float] = 10.0
    MAX_HEAD = 16384  # a longer upgrade request goes to uvicorn, which has its limits

    __slots__ = (
        "app_state",
        "config",
        "connections",
        "deadlines",
        "end",
        "head",
        "headers",
        "key",
        "known",
        "loop",
        "queued",
        "seen",
        "server_state",
        "transport",
        "url",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config, self.server_state, self.app_state = config, server_state, app_state
        self.loop = _loop
        # uvicorn types this set as its own protocols; it only calls shutdown() on them.
        self.connections: set[Any] = server_state.connections
        self.seen = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.end = 0
        self.key = b""
        # The head but for its request line and key: before the key, after it.
        self.head: tuple[bytes, bytes] | None = None
        self.known: Negotiated | None = None  # what `head` was answered with before
        self.deadlines: _FirstRequests | None = None
        self.queued = False  # its upgrade waits for its turn (`_Handshakes`)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they behave as one.
        self.transport = cast(asyncio.Transport, transport)
        fast = LivepushHttpProtocol.fast_path
        if fast is None:
            self._to_uvicorn()  # no app of create_app's: nothing to tell apart
            return
        self.connections.add(self)
        # The app's loop, known since its start: asyncio.get_running_loop() costs a
        # getpid() system call per connection on Python 3.11.
        loop = self.loop = self.loop or fast.loop or asyncio.get_running_loop()
        self.deadlines = _FirstRequests.of(loop, self.seconds)
        self.deadlines.add(self)

    def data_received(self, data: bytes) -> None:
        if self.queued:  # bytes sent behind the upgrade request: the socket's, later
            self.seen += data
            return
        verdict = self.feed(data)
        if verdict is self.MORE:
            return
        self.let_go()
        if verdict is self.UVICORN:
            self.connections.discard(self)
            self._to_uvicorn()
            return
        # Still among uvicorn's connections while it waits: a shutdown closes it.
        self.queued = True
        _Handshakes.of(self.loop or asyncio.get_running_loop()).submit(self)

    def take_over(self) -> None:
        """Its turn has come: answer the upgrade (unless the connection went meanwhile)."""
        self.connections.discard(self)
        if self.transport.is_closing():
            return
        fast = LivepushHttpProtocol.fast_path
        assert fast is not None
        config = self.config
        known = self.known
        if known is not None:
            FastSocket.open(
                self.transport,
                Upgrades.respond(self.key, known),
                known.deflate,
                None,
                self.url,
                self.seen[self.end :],
                fast=fast,
                connections=self.connections,
                max_size=config.ws_max_size,
                ping_interval=config.ws_ping_interval,
                loop=self.loop,
            )
            return
        negotiated = FastSocket.take_over(
            self.transport,
            UpgradeRequest("GET", "1.1", self.url, self.headers, self.seen[self.end :]),
            fast,
            self.connections,
            config.ws_max_size,
            config.ws_ping_interval,
            self.loop,
        )
        if negotiated is not None and self.head:
            fast.knows(*self.head, negotiated)

    def _to_uvicorn(self) -> None:
        """uvicorn's protocol takes the connection, and every byte read so far."""
        http = LivepushHttpProtocol(self.config, self.server_state, self.app_state, self.loop)
        self.transport.set_protocol(http)
        http.connection_made(self.transport)
        if self.seen:
            http.data_received(self.seen)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.let_go()

    def shutdown(self) -> None:
        """uvicorn is stopping: no request yet, so nothing to finish."""
        self.transport.close()

    def let_go(self) -> None:
        """The connection has moved on (or is gone): no deadline any more."""
        if self.deadlines is not None:
            self.deadlines.discard(self)
            self.deadlines = None

    def feed(self, data: bytes) -> object:
        """MORE (the request head is incomplete), UVICORN (anything but a well-formed
        upgrade to /v1/ws: uvicorn takes the connection) or FAST."""
        seen = self.seen = self.seen + data
        if seen.endswith(b"\r\n\r\n") and self._latest(seen):
            return self.FAST
        if not seen.startswith(self.PREFIX[: len(seen)]):
            return self.UVICORN
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            return self.MORE if len(seen) < self.MAX_HEAD else self.UVICORN
        self.end = end + 4
        line = REQUEST_LINE.match(seen, 0, self.end)
        if line is None:
            return self.UVICORN
        self.url = line[1]
        key_at = seen.find(KEY_FIELD, line.end() - 2, end) + len(KEY_FIELD)
        after = key_at + KEY_LENGTH
        if key_at >= len(KEY_FIELD) and seen[after : after + 2] == b"\r\n":
            self.key = seen[key_at:after]
            self.head = (seen[line.end() : key_at], seen[after : self.end])
            fast = LivepushHttpProtocol.fast_path
            known = None if fast is None else fast.heads.get(b"".join(self.head))
            if known is not None and valid_key(self.key):
                assert fast is not None
                fast.latest = (*self.head, known)
                self.known = known
                return self.FAST
        head = UPGRADE_HEAD.fullmatch(seen, 0, self.end)
        if head is None:
            return self.UVICORN
        fields = FIELD.findall(head[2])
        self.headers = [(name.lower(), value.rstrip(b"\t ")) for name, value in fields]
        return self.FAST if _upgrades_to_websocket(self.headers) else self.UVICORN

    def _latest(self, seen: bytes) -> bool:
        """Whether `seen` is exactly one request head, the latest known one's
        (`FastPath.latest`) but for its request line and key: the common case of a
        storm, told without a parse, a slice of the head or a hash of it."""
        fast = LivepushHttpProtocol.fast_path
        latest = None if fast is None else fast.latest
        if latest is None:
            return False
        before, after, known = latest
        line_end = seen.find(b"\r\n") + 2
        key_at = line_end + len(before)
        key_end = key_at + KEY_LENGTH
        if not (
            len(seen) == key_end + len(after)
            and seen.startswith(before, line_end)
            and seen.endswith(after)
        ):
            return False
        line = REQUEST_LINE.match(seen, 0, line_end)
        key = seen[key_at:key_end]
        if line is None or not valid_key(key):
            return False
        self.url, self.key, self.known, self.end = line[1], key, known, len(seen)
        return True


class LivepushHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, which lets an event stream write its own response.

    Each request's scope carries it as the `livepush.transport` extension, an
    `sse.StreamHost`: the stream takes the response (uvicorn then writes none of its
    own over it), hears of SIGTERM and of the connection's loss, and ends the response
    as uvicorn's own `send` would, keep-alive included. A `/v1/ws` upgrade after
    another request on the connection takes the fast path too.
    """

    # Set once per process by create_app: with it, /v1/ws upgrades skip ASGI entirely.
    fast_path: ClassVar[FastPath | None] = None
    _stream: SseSocket | None = None

    def handle_websocket_upgrade(self) -> None:
        # A /v1/ws upgrade that was not the connection's first request.
        fast = self.fast_path
        if fast is None or self.url.partition(b"?")[0] != WS_PATH:
            super().handle_websocket_upgrade()
            return
        self.connections.discard(self)
        config = self.config
        scope: Any = self.scope
        request = UpgradeRequest(scope["method"], scope["http_version"], self.url, self.headers)
        FastSocket.take_over(
            self.transport,
            request,
            fast,
            self.connections,
            config.ws_max_size,
            config.ws_ping_interval,
            self.loop,
        )
        # This object is done: break its cycle with the parser so that reference
        # counting frees it now rather than a garbage collection later.
        del self.parser, self.scope, self.headers

    def on_message_begin(self) -> None:
        super().on_message_begin()
        host: StreamHost = self  # mypy checks this protocol against the stream's needs
        scope: Any = self.scope  # uvicorn's scope type knows no livepush extension
        scope["extensions"] = {TRANSPORT_EXTENSION: host}

    def take_response(self, stream: SseSocket) -> asyncio.Transport:
        # "Started": if the app fails now, uvicorn closes the connection rather than
        # write a 500 into the middle of the stream.
        self.cycle.response_started = True
        self._stream = stream
        return self.transport

    def end_response(self) -> bool:
        # What uvicorn's `send` does after a response's last byte.
        cycle = self.cycle
        cycle.response_complete = True
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()  # the next pipelined request, or the keep-alive timer
        closing = self.transport.is_closing()
        if not closing:
            self._stream = None  # the connection goes on without it
        return closing

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # marks the request disconnected: uvicorn stays quiet
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.connection_lost(exc)

    def shutdown(self) -> None:
        # uvicorn only stops keep-alive when a response is under way, which would
        # leave a stream open until the graceful timeout: end it now, after that (so
        # the connection closes behind its last chunk).
        super().shutdown()
        if self._stream is not None:
            self._stream.shutdown()


class _Handshakes:
    """Answers `/v1/ws` upgrades for at most BUDGET seconds per turn of the loop.

    In a connect storm one turn of the loop reads the request heads of every connection
    accepted in the turn before: a thousand and more, each answered with its handshake,
    its join and its catch-up. Answered all at once, they held the loop for tens of
    milliseconds, and everything else the loop does (an entry's POST, its pub/sub
    message, the fan-out to readers already there) waited for the whole turn, several
    times over on an entry's way in and out (`livepush_loop_lag_seconds` shows such
    turns). Here the upgrades past the turn's BUDGET wait in arrival order, and each
    later turn answers the next BUDGET's worth, after the loop has polled its sockets.
    When the loop has time, the first upgrades of a turn are answered at once, as
    before. An upgrade that raises is the loop's to log; the others keep their turns.

    BUDGET is short because an entry crosses the loop several times on its way (its
    POST, the Lua reply, the pub/sub message, the fan-out), each time behind the turn
    under way: at 4 ms, the slowest calm entries of a storm waited behind six or
    seven such turns in a row (`scripts/storm_turns.py`). A turn costs the loop a
    poll of its sockets, tens of microseconds: a 1 ms budget answers upgrades as fast.
    """

    BUDGET = 0.001
    _loops: ClassVar[dict[asyncio.AbstractEventLoop, _Handshakes]] = {}

    class Waiting(Protocol):
        def take_over(self) -> None: ...

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: deque[_Handshakes.Waiting] = deque()
        self.spent = 0.0  # seconds of upgrades answered in this turn
        self.next_turn_scheduled = False
        self.clock: Callable[[], float] = perf_counter  # the tests' own clock, in the tests

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Handshakes:
        found = cls._loops.get(loop)
        if found is None:
            found = cls._loops[loop] = cls(loop)
        return found

    def submit(self, first: _Handshakes.Waiting) -> None:
        if not self.next_turn_scheduled:
            self.next_turn_scheduled = True
            self.loop.call_soon(self.next_turn)
        if self.waiting or self.spent >= self.BUDGET:
            self.waiting.append(first)
            return
        clock = self.clock
        started = clock()
        try:
            first.take_over()
        finally:
            self.spent += clock() - started

    def next_turn(self) -> None:
        """A new turn: answer the waiting upgrades for up to BUDGET."""
        self.next_turn_scheduled = False
        waiting, clock = self.waiting, self.clock
        started = clock()
        try:
            while waiting and clock() - started < self.BUDGET:
                waiting.popleft().take_over()
        finally:
            self.spent = clock() - started
            if waiting:
                self.next_turn_scheduled = True
                self.loop.call_soon(self.next_turn)  # after the loop has polled again
            else:
                self._loops.pop(self.loop, None)  # made again at the next upgrade


class _FirstRequests(Deadlines["FirstRequest"]):
    """Closes connections that sent no whole first request head within
    `FirstRequest.seconds` (LIVEPUSH_FIRST_REQUEST_TIMEOUT).

    uvicorn leaves a connection that never sends a request open for ever: a few
    thousand of them hold file descriptors and memory for nothing. One timer per
    loop (`Deadlines`), so only the slow connections cost anything. A connection
    whose bytes wait unread is not closed: the loop, not the client, is late.
    """

    def expired(self, first: FirstRequest) -> bool:
        if _unread(first.transport):
            # The client did send; this loop has not read it yet (it is behind, as
            # in a connect storm of 100,000): its lateness is not the client's.
            return True
        first.transport.close()  # still no whole request head
        return False


def _unread(transport: asyncio.Transport) -> bool:
    """Whether bytes wait in the connection's receive queue, unread (FIONREAD)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        queued = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return False
    return bool(int.from_bytes(queued, sys.byteorder))


def _upgrades_to_websocket(headers: list[tuple[bytes, bytes]]) -> bool:
    """uvicorn's test: `Connection` names upgrade and `Upgrade` is websocket."""
    connection: list[bytes] = []
    upgrade = None
    for name, value in headers:
        if name == b"connection":
            connection = [token.lower().strip() for token in value.split(b",")]
        elif name == b"upgrade":
            upgrade = value.lower()
    return upgrade == b"websocket" and b"upgrade" in connection
