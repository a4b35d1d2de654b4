"""Server-Sent Events: a chunked response livepush writes itself, from its head to its last chunk.

The hub writes each event's chunk, built once, straight to every stream's transport;
ASGI's `send` would be a coroutine per event per reader. So the whole response goes
one way: Starlette routes the request and answers its errors, then this module writes
the status line, the headers, every chunk and the terminating chunk, and the HTTP
protocol (`StreamHost`, in transports/uvicorn.py) tells uvicorn where the response
stands. Its cost: HTTP/1.1 only (EventSource always is), and what app.py's middleware
adds to every response (CORS: `cors_origin`; nosniff) is written here again, since the
head never passes through it (tests/test_sse.py compares the heads).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from livepush.api.ingest import feed_of
from livepush.errors import (
    BadPosition,
    BadSince,
    BrokerUnavailable,
    Forbidden,
    NotFound,
    RateLimited,
)
from livepush.hub import Format, Hub, Subscription, sse_comment, sse_control
from livepush.model import CloseCode
from livepush.runtime import SseStream, runtime_of
from livepush.transports.base import ABORT_AFTER, Drain, Socket
from livepush.wire import parse_since

# The scope extension through which uvicorn's HTTP protocol hosts an event stream.
TRANSPORT_EXTENSION = "livepush.transport"

HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache, no-transform",
    "x-accel-buffering": "no",  # nginx: do not buffer the stream
    "x-content-type-options": "nosniff",  # app.py's NoSniff adds it to every other response
}
FIRST_CHUNK = sse_comment(b"livepush")  # leaves with the head: the stream is open
KEEPALIVE_CHUNK = sse_comment(b"keep-alive")
LAST_CHUNK = b"0\r\n\r\n"


class StreamHost(Protocol):
    """What an event stream needs from the HTTP connection it answers."""

    def take_response(self, stream: SseSocket) -> asyncio.Transport:
        """livepush writes this request's response itself; `stream` hears of the
        server's shutdown (`shutdown()`) and of the connection's loss."""

    def end_response(self) -> bool:
        """The response's last byte is written; True if the connection now closes
        (no keep-alive: the server is stopping, or the client asked for close)."""


class SseSocket:
    """An event stream on its HTTP connection; implements `base.Socket`.

    Reads nothing: the host tells it when the reader is gone (`connection_lost`).
    `on_end` runs the moment the stream ends, closed or lost, so its subscription
    goes then: a fan-out in the same loop turn would otherwise write past the last
    chunk, or to a transport already closed (uvloop raises).
    """

    __slots__ = ("_abort", "_host", "_on_end", "buffered", "ended", "transport", "write")

    def __init__(self, host: StreamHost, head: bytes, on_end: Callable[[], None]) -> None:
        transport = self.transport = host.take_response(self)
        self._host = host
        self._on_end = on_end
        self.write = transport.write
        self.buffered = transport.get_write_buffer_size
        # Done when the stream ends: closed by livepush, or the reader left.
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._abort: asyncio.TimerHandle | None = None
        transport.write(head)

    def _end(self) -> bool:
        """Mark the stream ended, once; False if it already was."""
        if self.ended.done():
            return False
        self.ended.set_result(None)
        self._on_end()
        return True

    @property
    def closing(self) -> bool:
        return self.ended.done() or self.transport.is_closing()

    def keepalive(self) -> None:
        """A comment chunk: proxies and EventSource see the idle stream is alive."""
        if not self.closing:
            self.write(KEEPALIVE_CHUNK)

    def close(self, code: CloseCode) -> None:
        """End the stream: its last chunk, then keep-alive as after any response.

        SSE has no close codes: EventSource reconnects with Last-Event-ID. 1013 (too
        slow) aborts at once, so nothing waits behind unread data; a connection that
        closes after the last chunk (drain) is aborted if the reader has not taken it
        within ABORT_AFTER.
        """
        if not self._end():
            return
        transport = self.transport
        if code is CloseCode.TRY_AGAIN_LATER:
            transport.abort()
        elif not transport.is_closing():
            transport.write(LAST_CHUNK)
        if self._host.end_response() and transport.get_write_buffer_size():
            self._abort = asyncio.get_running_loop().call_later(ABORT_AFTER, transport.abort)

    def shutdown(self) -> None:
        """The server is stopping: end at this stream's moment of the drain window
        (base.Drain), so the reader reconnects elsewhere."""
        Drain.schedule(asyncio.get_running_loop(), lambda: self.close(CloseCode.SERVICE_RESTART))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None
        self._end()


class SseConnection:
    """An event stream as the hub sees it: pre-built chunks go straight to the transport."""

    format = Format.SSE

    __slots__ = ("_socket", "buffered", "write")

    def __init__(self, socket: Socket) -> None:
        self._socket = socket
        self.write = socket.write
        self.buffered = socket.buffered

    def send(self, kind: str, message: dict[str, Any]) -> None:
        if not self._socket.closing:
            self.write(sse_control(kind, message))

    def close(self, code: CloseCode) -> None:
        self._socket.close(code)


def parse_position(request: Request) -> tuple[int | None, str | None]:
    """The resume position: `?since=N&epoch=E`, else Last-Event-ID `<epoch>:<seq>`.

    A bare seq without an epoch is trusted as it is (SPEC). A malformed Last-Event-ID
    is refused even when `?since=` overrides it: a client sending one is broken, and
    it is better told than silently resumed from elsewhere.
    """
    query = request.query_params
    last_id = request.headers.get("last-event-id")
    try:
        from_header = _last_event_id(last_id) if last_id else None
        if "since" in query:
            return parse_since(query["since"]), query.get("epoch")
    except BadSince:
        raise BadPosition(
            "since (or Last-Event-ID) must be [<epoch>:]<non-negative integer>"
        ) from None
    if from_header is not None:
        return from_header
    return None, query.get("epoch")


def _last_event_id(value: str) -> tuple[int, str | None]:
    epoch, _, seq = value.rpartition(":")
    return parse_since(seq), epoch or None


def cors_origin(origin: str | None, allowed: tuple[str, ...]) -> str | None:
    """The Access-Control-Allow-Origin app.py's CORSMiddleware gives a simple GET:
    `*` without an allow-list, the Origin itself when listed, else none."""
    if origin is None:
        return None
    if not allowed or "*" in allowed:
        return "*"
    return origin if origin in allowed else None


def stream_head(origin: str | None) -> bytes:
    """The status line and headers, as uvicorn and the CORS middleware would write them."""
    lines = [f"date: {formatdate(usegmt=True)}"]
    lines += [f"{name}: {value}" for name, value in HEADERS.items()]
    if origin is not None:
        lines.append(f"access-control-allow-origin: {origin}")
    lines += ["vary: Origin", "transfer-encoding: chunked"]
    return b"HTTP/1.1 200 OK\r\n" + "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"


async def feed_events(request: Request) -> Response | EventStream:
    """`GET /v1/feeds/{feed}/events`: the feed as Server-Sent Events."""
    runtime = runtime_of(request)
    feed = feed_of(request)
    origin = request.headers.get("origin")
    if not runtime.origin_allowed(origin):
        raise Forbidden("this origin may not subscribe")
    grant = runtime.access.read_request(request, feed)  # 401, 403 for a private feed
    since, epoch = parse_position(request)
    host: StreamHost | None = request.scope.get("extensions", {}).get(TRANSPORT_EXTENSION)
    if host is None or request.scope["http_version"] != "1.1":
        raise NotFound("event streams need HTTP/1.1 under `livepush serve`")
    if request.method == "HEAD":
        return Response(headers=HEADERS)  # the stream's headers, without the stream
    address = None
    if runtime.addresses.limited:
        client = request.client
        address = client.host if client is not None else ""
        if not runtime.addresses.admit(address):
            raise RateLimited("too many connections from this address", retry_after=10)
    runtime.gc.opened()
    head = stream_head(cors_origin(origin, runtime.settings.allowed_origins))
    stream = EventStream(runtime.hub, runtime.sse_streams, host, head, feed, since, epoch)
    stream.expires = grant.expires
    if address is not None:
        stream.on_end = lambda: runtime.addresses.release(address)
    return stream


class EventStream:
    """The ASGI app of one event stream; it returns when the stream has ended.

    Its cost: the ASGI task (and Starlette's frames) live as long as the stream.
    """

    def __init__(
        self,
        hub: Hub,
        streams: set[SseStream],
        host: StreamHost,
        head: bytes,
        feed: str,
        since: int | None,
        epoch: str | None,
    ) -> None:
        self.hub, self.streams, self.host, self.head = hub, streams, host, head
        self.feed, self.since, self.epoch = feed, since, epoch
        self.expires: float | None = None  # the reader token's `exp` (Unix time)
        self.on_end: Callable[[], None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub: Subscription | None = None
        expiry: asyncio.TimerHandle | None = None

        def ended() -> None:
            self.streams.discard(socket)
            if expiry is not None:
                expiry.cancel()
            if self.on_end is not None:
                self.on_end()
            if sub is not None:
                self.hub.unsubscribe(sub)

        def expired() -> None:
            # The reader token ran out: say so, then end the stream (SPEC "Access").
            # EventSource would reconnect with the same URL and its dead token; the
            # client renews its token first (livepush.js does).
            message = {"type": "unsubscribed", "feed": self.feed, "reason": "token_expired"}
            if not socket.closing:
                socket.write(sse_control("unsubscribed", message))
            socket.close(CloseCode.SERVICE_RESTART)

        socket = SseSocket(self.host, self.head + FIRST_CHUNK, ended)
        self.streams.add(socket)
        if self.expires is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(0.0, self.expires - time.time())
            expiry = loop.call_at(deadline, expired)
        try:
            try:
                sub = await self.hub.subscribe(
                    SseConnection(socket), self.feed, self.since, self.epoch
                )
            except BrokerUnavailable:
                # No `event: error`: EventSource's own error event has that name. The
                # reader may have gone while the join waited (uvloop's write raises then).
                if not socket.closing:
                    socket.write(sse_comment(b"broker unavailable; reconnect shortly"))
                socket.close(CloseCode.SERVICE_RESTART)
            await socket.ended
        finally:
            socket.close(CloseCode.SERVICE_RESTART)  # cancelled: end it; else nothing
            if sub is not None:
                self.hub.unsubscribe(sub)  # joined after the stream ended: safe twice
