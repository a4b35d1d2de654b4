"""The WebSocket transport: one client session per socket, frames written straight out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket

from livepush.deadlines import Deadlines
from livepush.errors import (
    BadSince,
    BrokerUnavailable,
    ClientMessageError,
    Forbidden,
    Unauthorized,
)
from livepush.hub import Format, Hub, Subscription, control
from livepush.model import CloseCode, is_feed_name
from livepush.ratelimit import TokenBucket
from livepush.runtime import Runtime
from livepush.transports.base import Socket
from livepush.transports.fastws import FastSocket
from livepush.wire import (
    Ping,
    Subscribe,
    Unsubscribe,
    parse_client_message,
    parse_since,
)

log = logging.getLogger("livepush.ws")

NEEDS_LIVEPUSH_SERVE = (
    "WebSocket subscriptions need `livepush serve`, whose server hands livepush each socket"
)

# Client messages per second, with a burst of twice as many; beyond that the client
# is told, and a client that keeps going past STRIKES errors is abusive (1008).
MESSAGE_RATE = 20.0
STRIKES = 50


class Session:
    """One client's subscriptions on one socket, driven by its messages; never awaits.

    A subscribe that this node can serve from memory completes at once; one that
    needs the broker runs as a short task owned by the hub, and later messages about
    the same feed (unsubscribe, subscribe again) cancel it, so order is kept.

    The session is also the socket as the hub sees it (`feed.Connection`): its
    writes go straight to the socket's transport. One object per connection rather
    than two: a reconnect storm makes tens of thousands of them.
    """

    __slots__ = (
        "_bucket",
        "_expiry",
        "_held",
        "_idle",
        "_socket",
        "_strikes",
        "address",
        "buffered",
        "format",
        "hub",
        "is_closed",
        "max_feeds",
        "pending",
        "runtime",
        "subs",
        "write",
    )

    def __init__(self, socket: Socket, deflate: bool, runtime: Runtime) -> None:
        self._socket = socket
        # A socket that negotiated permessage-deflate gets the event's shared
        # compressed frame (livepush only accepts it without context takeover).
        self.format = Format.WS_DEFLATE if deflate else Format.WS
        self.write: Callable[[bytes], None] = socket.write
        self.buffered = socket.buffered
        self._held: list[bytes] | None = None
        self.runtime = runtime
        self.hub: Hub = runtime.hub
        self.max_feeds: int = runtime.settings.max_feeds_per_connection
        self.subs: dict[str, Subscription] = {}
        self.pending: dict[str, asyncio.Task[None]] = {}
        self.is_closed = False
        self._bucket: TokenBucket | None = None  # made at the first message
        self._strikes = 0
        # One loop timer per subscription whose reader token expires (none for public
        # feeds: most sockets never hold the dict).
        self._expiry: dict[str, asyncio.TimerHandle] | None = None
        self._idle: _Unsubscribed | None = None  # where it waits while never subscribed
        self.address: str | None = None  # counted in the per-address limit, if any
        runtime.ws_connections += 1
        runtime.gc.opened()

    # The socket as the hub sees it (feed.Connection)

    def hold(self, first: bytes) -> None:
        """Collect writes after `first` until release(), then write them all at once."""
        held = self._held = [first]
        self.write = held.append

    def release(self) -> None:
        held, self._held = self._held, None
        self.write = self._socket.write
        if held:
            self.write(b"".join(held))

    def send(self, kind: str, message: dict[str, Any]) -> None:
        if not self._socket.closing:
            self.write(control(message))

    def close(self, code: CloseCode) -> None:
        if self._held is not None:
            self.release()  # the 101 and what was held leave before the close frame
        self._socket.close(code)

    # The client's messages

    def error(self, code: str, message: str, feed: str | None = None) -> None:
        error: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if feed is not None:
            error["feed"] = feed
        self.send("error", error)
        self._strikes += 1
        if self._strikes > STRIKES:
            self.close(CloseCode.POLICY)

    def _within_rate(self) -> bool:
        # A bucket and its floats are about 0.1 KiB, and a reader subscribed in the URL
        # may never send a message: its socket holds none until it does (a bucket
        # made now starts full, as one made at the open would be by now).
        now = time.monotonic()
        if self._bucket is None:
            self._bucket = TokenBucket(MESSAGE_RATE, 2 * MESSAGE_RATE, now)
        return self._bucket.take(now)

    def receive(self, data: bytes) -> None:
        if not self._within_rate():
            self.error("rate_limited", f"at most {MESSAGE_RATE:g} messages per second")
            return
        try:
            message = parse_client_message(data)
        except ClientMessageError as error:
            self.error(error.code, error.message)
            return
        if isinstance(message, Ping):
            self.send("pong", {"type": "pong"})
        elif isinstance(message, Unsubscribe):
            if not self._leave(message.feed):
                self.error("not_subscribed", f"not subscribed to {message.feed}")
        else:
            self.subscribe(message)

    def _leave(self, feed: str) -> bool:
        if self._expiry is not None and (timer := self._expiry.pop(feed, None)) is not None:
            timer.cancel()
        task = self.pending.pop(feed, None)
        if task is not None:
            task.cancel()
        sub = self.subs.pop(feed, None)
        if sub is not None:
            self.hub.unsubscribe(sub)
        return task is not None or sub is not None

    def subscribe(self, message: Subscribe) -> None:
        if self.subs or self.pending or self._expiry:  # not the first subscription
            self._leave(message.feed)
            for ended in [feed for feed, sub in self.subs.items() if not sub.live]:
                del self.subs[ended]
        # A join that just finished is in both until its task's done callback runs:
        # count feeds, not entries, or it takes two places for that moment.
        feeds = len(self.subs.keys() | self.pending.keys()) if self.subs or self.pending else 0
        if feeds >= self.max_feeds:
            self.error("too_many_feeds", f"at most {self.max_feeds} feeds per connection")
            return
        access = self.runtime.access
        try:
            grant = access.read(message.feed, message.token)
        except (Unauthorized, Forbidden) as refused:
            # No event of this feed; the socket stays open for its others (SPEC).
            self.error(refused.code, refused.message, message.feed)
            return
        if message.receipts and not access.sees_receipts(message.feed, message.token):
            # Subscriber counts are the newsroom's business: editors of this feed only.
            # No `feed` in the error: the subscription goes on, without receipts.
            self.error("forbidden", "receipts need a publisher token covering the feed")
            message = Subscribe(message.feed, message.since, message.epoch, token=message.token)
        if self._idle is not None:
            self._idle.discard(self)
            self._idle = None
        feed, since, epoch = message.feed, message.since, message.epoch
        if grant.expires is not None:
            self._expire_at(feed, grant.expires)
        sub = self.hub.try_join(self, feed, since, epoch, receipts=message.receipts)
        if sub is not None:
            self.subs[sub.feed] = sub  # the hub's string: not one per socket
            return
        task = self.hub.spawn(self._subscribe(message))
        self.pending[feed] = task
        task.add_done_callback(lambda _: self._settled(feed, task))

    def _expire_at(self, feed: str, expires: float) -> None:
        """End the feed's subscription when its reader token expires (a loop timer)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, expires - time.time())
        if self._expiry is None:
            self._expiry = {}
        self._expiry[feed] = loop.call_at(deadline, self._expired, feed)

    def _expired(self, feed: str) -> None:
        if self._expiry is not None:
            self._expiry.pop(feed, None)
        if self._leave(feed):
            message = {"type": "unsubscribed", "feed": feed, "reason": "token_expired"}
            self.send("unsubscribed", message)

    def wait_for_subscription(self, seconds: float, loop: asyncio.AbstractEventLoop) -> None:
        """Close the socket (1008) unless it subscribes within `seconds` (on `loop`, the
        socket's): a socket that never subscribes only holds a file descriptor and memory."""
        self._idle = _Unsubscribed.of(loop, seconds)
        self._idle.add(self)

    def never_subscribed(self) -> None:
        self._idle = None
        if not self.is_closed:
            self.close(CloseCode.POLICY)

    def _settled(self, feed: str, task: asyncio.Task[None]) -> None:
        if self.pending.get(feed) is task:
            del self.pending[feed]

    async def _subscribe(self, message: Subscribe) -> None:
        try:
            sub = await self.hub.subscribe(
                self, message.feed, message.since, message.epoch, receipts=message.receipts
            )
        except BrokerUnavailable:
            self.error("broker_unavailable", "the broker is unavailable; retry shortly")
            return
        if sub is None:
            return  # reset
        if self.is_closed:
            self.hub.unsubscribe(sub)
        else:
            self.subs[sub.feed] = sub

    def closed(self) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        self.runtime.ws_connections -= 1
        if self.address is not None:
            self.runtime.addresses.release(self.address)
        if self._idle is not None:
            self._idle.discard(self)
            self._idle = None
        for timer in (self._expiry or {}).values():
            timer.cancel()
        for task in list(self.pending.values()):
            task.cancel()
        for sub in self.subs.values():
            self.hub.unsubscribe(sub)
        self.subs.clear()


class _Unsubscribed(Deadlines[Session]):
    """The sockets of a loop waiting for their first subscription, each closed at its
    deadline unless it subscribed or closed first (one timer for all: `Deadlines`)."""

    def expired(self, session: Session) -> bool:
        session.never_subscribed()
        return False


async def websocket_endpoint(websocket: WebSocket) -> None:
    """`/v1/ws` reached through ASGI: only under a server other than `livepush serve`.

    `livepush serve` answers every `/v1/ws` upgrade before ASGI (transports/fastws.py).
    The hub writes pre-built frames straight to each socket, which an ASGI server does
    not hand out, so any other server gets a clear refusal rather than a socket that
    would never receive an event.
    """
    log.error("/v1/ws through ASGI: %s", NEEDS_LIVEPUSH_SERVE)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        denial = PlainTextResponse(NEEDS_LIVEPUSH_SERVE + "\n", status_code=501)
        await websocket.send_denial_response(denial)
    else:
        await websocket.close(CloseCode.INTERNAL_ERROR, NEEDS_LIVEPUSH_SERVE)  # a 403


def open_session(socket: FastSocket, runtime: Runtime, query: str, greeting: bytes) -> None:
    """Start a handshaken socket's session and its `?feed=` subscription.

    `greeting` (the 101 response, when not yet written) leaves in one write with the
    session's first messages (`subscribed`, a catch-up): one send instead of two per
    connection in a reconnect storm.
    """
    session = Session(socket, socket.deflate is not None, runtime)
    socket.detach(session)
    session.hold(greeting)
    if runtime.addresses.limited:
        address = socket.peer()
        if not runtime.addresses.admit(address):
            session.close(CloseCode.POLICY)  # the 101, then the close: too many from there
            return
        session.address = address
    try:
        params = query_params(query)
        feed = params.get("feed")
        if feed is not None:
            _subscribe_from_query(
                session, feed, params.get("since"), params.get("epoch"), params.get("token")
            )
    finally:
        session.release()
        for sub in session.subs.values():
            sub.write = session.write  # they took the holding write when they joined
    if not session.subs and not session.pending:
        session.wait_for_subscription(runtime.settings.subscribe_timeout, socket.loop)


def query_params(query: str) -> dict[str, str]:
    """`dict(parse_qsl(query))`: blank values left out, the last of a name wins; the
    plain queries clients send (`feed=live&since=41`) without parse_qsl's set-up."""
    if "%" in query or "+" in query:
        return dict(parse_qsl(query))
    params = {}
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if value:
            params[name] = value
    return params


class FastHandshake:
    """The app's side of the WebSocket handshake that skips ASGI (transports/fastws.py)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def allowed(self, origin: str | None) -> bool:
        return bool(self.runtime.origin_allowed(origin))

    def open(self, socket: FastSocket, query: str, greeting: bytes) -> None:
        open_session(socket, self.runtime, query, greeting)


def _subscribe_from_query(
    session: Session, feed: str, since: str | None, epoch: str | None, token: str | None
) -> None:
    if not is_feed_name(feed):
        session.error("bad_feed", "feed must match ^[a-z0-9][a-z0-9._-]{0,127}$")
        return
    position = None
    if since is not None:
        try:
            position = parse_since(since)
        except BadSince as error:
            session.error("bad_since", str(error))
            return
    session.subscribe(Subscribe(feed, position, epoch, False, token))
