"""The WebSocket transport: one client session per socket, frames written straight out."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from livepush.errors import BrokerUnavailable
from livepush.hub import Format, Hub, Subscription, control
from livepush.model import CloseCode, is_feed_name
from livepush.transports.uvicorn import SOCKET_EXTENSION
from livepush.wire import (
    ClientMessageError,
    Ping,
    Subscribe,
    Unsubscribe,
    parse_client_message,
    parse_since,
)

log = logging.getLogger("livepush.ws")

# A peer that does not read our close frame within this time is aborted: its unread
# data would otherwise hold the socket (and its buffer) open for the close timeout.
ABORT_AFTER = 2.0
# Client messages per second, with a burst of twice as many; beyond that the client
# is told, and a client that keeps going past STRIKES errors is abusive (1008).
MESSAGE_RATE = 20.0
STRIKES = 50


class WsConnection:
    """A WebSocket as the hub sees it: writes go straight to the asyncio transport."""

    format = Format.WS

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol
        transport = protocol.transport
        self._transport = transport
        self.write = transport.write
        self.buffered = transport.get_write_buffer_size

    def send(self, kind: str, message: dict[str, Any]) -> None:
        if not self._protocol.close_sent:
            self.write(control(message))

    def close(self, code: CloseCode) -> None:
        protocol = self._protocol
        if protocol.close_sent or self._transport.is_closing():
            return
        protocol.queue.put_nowait({"type": "websocket.disconnect", "code": int(code)})
        protocol.conn.send_close(int(code))
        self._transport.write(b"".join(protocol.conn.data_to_send()))
        protocol.close_sent = True
        if protocol.read_paused:
            protocol.read_paused = False
            self._transport.resume_reading()  # to see the peer's answering close
        if protocol.close_timer is not None:
            protocol.close_timer.cancel()
        protocol.close_timer = protocol.loop.call_later(ABORT_AFTER, self._transport.abort)


class Session:
    """One client's subscriptions on one socket, driven by its messages."""

    def __init__(self, conn: WsConnection, hub: Hub, max_feeds: int) -> None:
        self.conn = conn
        self.hub = hub
        self.max_feeds = max_feeds
        self.subs: dict[str, Subscription] = {}
        self.closed = False
        self._allowance = 2 * MESSAGE_RATE
        self._checked = time.monotonic()
        self._strikes = 0

    def error(self, code: str, message: str) -> None:
        self.conn.send("error", {"type": "error", "code": code, "message": message})
        self._strikes += 1
        if self._strikes > STRIKES:
            self.conn.close(CloseCode.POLICY)

    def _within_rate(self) -> bool:
        now = time.monotonic()
        self._allowance = min(
            2 * MESSAGE_RATE, self._allowance + (now - self._checked) * MESSAGE_RATE
        )
        self._checked = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True

    async def receive(self, data: str | bytes) -> None:
        if not self._within_rate():
            self.error("rate_limited", f"at most {MESSAGE_RATE:g} messages per second")
            return
        try:
            message = parse_client_message(data)
        except ClientMessageError as error:
            self.error(error.code, error.message)
            return
        if isinstance(message, Ping):
            self.conn.send("pong", {"type": "pong"})
        elif isinstance(message, Unsubscribe):
            sub = self.subs.pop(message.feed, None)
            if sub is None:
                self.error("not_subscribed", f"not subscribed to {message.feed}")
            else:
                self.hub.unsubscribe(sub)
        else:
            await self.subscribe(message)

    async def subscribe(self, message: Subscribe) -> None:
        old = self.subs.pop(message.feed, None)
        if old is not None:
            self.hub.unsubscribe(old)
        self.subs = {feed: sub for feed, sub in self.subs.items() if sub.live}
        if len(self.subs) >= self.max_feeds:
            self.error("too_many_feeds", f"at most {self.max_feeds} feeds per connection")
            return
        try:
            sub = await self.hub.subscribe(
                self.conn, message.feed, message.since, message.epoch, receipts=message.receipts
            )
        except BrokerUnavailable:
            self.error("broker_unavailable", "the broker is unavailable; retry shortly")
            return
        if sub is None:
            return
        if self.closed:
            self.hub.unsubscribe(sub)
        else:
            self.subs[message.feed] = sub

    def close(self) -> None:
        self.closed = True
        for sub in self.subs.values():
            self.hub.unsubscribe(sub)
        self.subs.clear()


async def websocket_endpoint(websocket: WebSocket) -> None:
    """`GET /v1/ws`: the SPEC's WebSocket endpoint (with the `?feed=&since=` shortcut)."""
    runtime = websocket.app.state.runtime
    if not runtime.origin_allowed(websocket.headers.get("origin")):
        await websocket.close(code=CloseCode.POLICY)  # before accept: answered with 403
        return
    protocol = websocket.scope.get("extensions", {}).get(SOCKET_EXTENSION)
    if protocol is None:
        log.error("no %s extension: run livepush with `livepush serve`", SOCKET_EXTENSION)
        await websocket.close(code=CloseCode.INTERNAL_ERROR)
        return
    await websocket.accept()
    session = Session(
        WsConnection(protocol), runtime.hub, runtime.settings.max_feeds_per_connection
    )
    runtime.ws_connections += 1
    try:
        feed = websocket.query_params.get("feed")
        if feed is not None:
            await _subscribe_from_query(session, websocket, feed)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("text")
            await session.receive(data if data is not None else message.get("bytes") or b"")
    except WebSocketDisconnect:
        pass
    finally:
        session.close()
        runtime.ws_connections -= 1


async def _subscribe_from_query(session: Session, websocket: WebSocket, feed: str) -> None:
    query = websocket.query_params
    if not is_feed_name(feed):
        session.error("bad_feed", "feed must match ^[a-z0-9][a-z0-9._-]{0,127}$")
        return
    try:
        since = parse_since(int(query["since"])) if "since" in query else None
    except (ValueError, ClientMessageError):
        session.error("bad_since", "since must be a non-negative integer")
        return
    await session.subscribe(Subscribe(feed, since, query.get("epoch")))
