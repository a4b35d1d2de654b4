"""uvicorn protocol classes that hand livepush the socket behind each ASGI connection.

The hub writes one pre-built frame to many sockets without awaiting. ASGI's `send`
is a coroutine per message per subscriber, so these subclasses add an extension to
the scope (`livepush.socket` for WebSockets, `livepush.transport` for HTTP) through
which a transport writes straight to the asyncio transport. Starlette still does
routing and the handshake; websockets' sans-I/O protocol still parses every
incoming frame. Selected by import string in `livepush.cli`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections import deque
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, ClassVar, Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers
from websockets.exceptions import NegotiationError
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import ExtensionParameter

from livepush.wire import DEFLATE_WINDOW_BITS

SOCKET_EXTENSION = "livepush.socket"
TRANSPORT_EXTENSION = "livepush.transport"


WS_PATH = b"/v1/ws"


class Handshaker(Protocol):
    """What the fast WebSocket handshake asks of the app (implemented in ws.py)."""

    def allowed(self, origin: str | None) -> bool:
        """Whether a subscription from this Origin may open."""

    def open(self, socket: LivepushWebSocketProtocol, query: str) -> None:
        """The 101 is written: start the socket's session (and `?feed=` subscription)."""


class MessageHandler(Protocol):
    """What a detached socket feeds its client messages to."""

    def receive(self, data: bytes) -> None:
        """One complete client message (text or binary), in order; never awaits."""

    def closed(self) -> None:
        """The connection is gone."""


class _Discard:
    """Stands in for a detached socket's ASGI queue: nobody reads it any more."""

    def put_nowait(self, item: object) -> None:
        pass

    def empty(self) -> bool:
        return True


class _Always:
    """Stands in for a detached socket's flow-control event: nobody waits on it."""

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


_DISCARD, _ALWAYS = _Discard(), _Always()


class _Keepalive:
    """Pings every open WebSocket of a loop from ONE timer, each once per interval.

    uvicorn arms a timer per socket (about 600 bytes each); here a socket costs a set
    entry and a deque slot. The deque is in order of each socket's last ping; the
    timer ticks TICKS times per interval and pings the sockets that are due, so
    sockets that connected together are pinged together but 10,000 pings never pile
    onto one tick (they would delay every delivery behind them). A ping still
    unanswered when the socket is due again closes it: the timeout is the interval.
    """

    TICKS = 100
    _sweeps: ClassVar[dict[tuple[asyncio.AbstractEventLoop, float], _Keepalive]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop, self.interval = loop, interval
        self.sockets: set[LivepushWebSocketProtocol] = set()
        self.turns: deque[LivepushWebSocketProtocol] = deque()
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, interval: float) -> _Keepalive:
        sweep = cls._sweeps.get((loop, interval))
        if sweep is None:
            sweep = cls._sweeps[(loop, interval)] = cls(loop, interval)
        return sweep

    def add(self, socket: LivepushWebSocketProtocol) -> None:
        socket.ping_sent_at = self.loop.time()  # first ping one interval from now
        self.sockets.add(socket)
        self.turns.append(socket)
        if self.timer is None:
            self.timer = self.loop.call_later(self.interval / self.TICKS, self.tick)

    def discard(self, socket: LivepushWebSocketProtocol) -> None:
        self.sockets.discard(socket)  # its deque slot goes when its turn comes

    def tick(self) -> None:
        self.timer = None
        turns, sockets = self.turns, self.sockets
        due = self.loop.time() - self.interval
        while turns and (turns[0] not in sockets or turns[0].ping_sent_at <= due):
            socket = turns.popleft()
            if socket in sockets:
                socket.sweep_ping()
                turns.append(socket)
        if turns:
            self.timer = self.loop.call_later(self.interval / self.TICKS, self.tick)
        else:
            del self._sweeps[(self.loop, self.interval)]


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


class LivepushWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, exposed to the app as `livepush.socket`.

    After the handshake the app may `detach()`: the ASGI task then ends without
    closing the socket, and client messages go straight from `data_received` to a
    handler. An idle subscriber then costs no task, no coroutine frames and no ASGI
    scope: the difference between ~25 KiB and a few KiB per connection.
    """

    handler: MessageHandler | None = None
    # Set once per process by create_app: with it, /v1/ws upgrades skip ASGI entirely.
    fast_path: ClassVar[Handshaker | None] = None
    # Set once per process by create_app from LIVEPUSH_WS_COMPRESSION ("off", "shared").
    compression: ClassVar[str] = "shared"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.compression == "shared":
            self.conn = ServerProtocol(
                extensions=[SharedDeflateFactory()],
                max_size=self.config.ws_max_size,
                logger=logging.getLogger("uvicorn.error"),
            )

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][SOCKET_EXTENSION] = self

    def fast_connect(self, request: Request, query: str) -> None:
        """The handshake without ASGI, for the one WebSocket route livepush serves.

        websockets still validates the request and builds the answer (accept());
        what is skipped is a second HTTP parse, the ASGI task, Starlette's routing and
        middleware: most of a connection's set-up cost in a reconnect storm.
        """
        handshaker = self.fast_path
        assert handshaker is not None
        self.request = request
        self.handshake_initiated = True
        response = self.conn.accept(request)
        if response.status_code == 101 and not handshaker.allowed(request.headers.get("Origin")):
            response = self.conn.reject(HTTPStatus.FORBIDDEN, "This Origin may not subscribe.\n")
        self.conn.send_response(response)
        self.transport.write(b"".join(self.conn.data_to_send()))
        if response.status_code != 101:
            self.handshake_complete = self.close_sent = True
            self.transport.close()
            return
        # websockets' parser still waits for the request httptools already parsed:
        # from now on it parses frames (the state is OPEN, so parse() goes to frames).
        self.conn.parser = self.conn.parse()
        next(self.conn.parser)
        self.handshake_complete = True
        self.start_keepalive()
        handshaker.open(self, query)

    def detach(self, handler: MessageHandler) -> None:
        """Hand the open socket to `handler`; the ASGI app must return right after."""
        self.handler = handler
        # Messages that arrived during the handshake were queued for the app.
        while not self.queue.empty():
            message: Any = self.queue.get_nowait()
            if message["type"] == "websocket.receive":
                text = message.get("text")
                handler.receive(text.encode() if text is not None else message.get("bytes", b""))
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        # What only the ASGI conversation needed: the request, the response, the queue
        # of ASGI events and the flow-control event (a few KiB per idle socket). The
        # request's headers are emptied in place: websockets' parser generator keeps
        # the request alive in its frame for the life of the connection.
        if self.request is not None:
            self.request.headers.clear()
        self.request = self.response = None  # type: ignore[assignment]
        self.queue = _DISCARD  # type: ignore[assignment]
        self.writable = _ALWAYS  # type: ignore[assignment]

    def start_keepalive(self) -> None:
        if self.ping_interval:
            _Keepalive.of(self.loop, self.ping_interval).add(self)

    def stop_keepalive(self) -> None:
        super().stop_keepalive()
        if self.ping_interval:
            _Keepalive.of(self.loop, self.ping_interval).discard(self)

    def sweep_ping(self) -> None:
        """Called once per ping interval: give up on an unanswered ping, or send one."""
        self.ping_sent_at = self.loop.time()  # its next turn, whatever happens now
        if self.close_sent or self.transport.is_closing():
            return
        if self.pending_ping_payload is not None:
            self.keepalive_timeout()  # closes with 1011: the peer did not answer in time
            return
        self.pending_ping_payload = struct.pack("!I", random.getrandbits(32))
        self.conn.send_ping(self.pending_ping_payload)
        self.transport.write(b"".join(self.conn.data_to_send()))

    def send_receive_event_to_app(self) -> None:
        handler = self.handler
        if handler is None:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if not self.close_sent:
            handler.receive(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.closed()

    async def run_asgi(self) -> None:
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned %r.", result)
        if self.handler is not None:
            self.scope = None  # type: ignore[assignment]
            return  # detached: the handler owns the socket now
        if self.close_timer is None:
            self.transport.close()


class LivepushHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, exposed to the app as `livepush.transport`.

    A response that streams forever (SSE) sets `on_shutdown`: on SIGTERM uvicorn
    only stops keep-alive, which would leave the stream open until the graceful
    timeout; the callback ends it at once so the reader reconnects elsewhere.
    """

    on_shutdown: Callable[[], None] | None = None

    def handle_websocket_upgrade(self) -> None:
        path, _, query = self.url.partition(b"?")
        ws_class: Any = self.ws_protocol_class
        fast = (
            path == WS_PATH
            and isinstance(ws_class, type)
            and issubclass(ws_class, LivepushWebSocketProtocol)
            and ws_class.fast_path is not None
        )
        if not fast:
            super().handle_websocket_upgrade()
            return
        self.connections.discard(self)
        scope: Any = self.scope
        headers = Headers(
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]
        )
        protocol = ws_class(
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        protocol.connection_made(self.transport)
        self.transport.set_protocol(protocol)
        protocol.fast_connect(Request(self.url.decode("latin-1"), headers), query.decode("latin-1"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        scope: Any = self.scope
        scope["extensions"] = {TRANSPORT_EXTENSION: self}

    def shutdown(self) -> None:
        if self.on_shutdown is not None:
            self.on_shutdown()
        super().shutdown()
