"""The Server-Sent Events transport: a chunked response the hub writes straight into."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from livepush.errors import BadPosition, BadSince, BrokerUnavailable, NotFound
from livepush.hub import Format, Hub, sse_comment, sse_control
from livepush.model import CloseCode
from livepush.runtime import SseStream
from livepush.transports.uvicorn import TRANSPORT_EXTENSION
from livepush.wire import parse_since

log = logging.getLogger("livepush.sse")

KEEPALIVE = b"keep-alive"


class SseConnection:
    """An SSE response as the hub sees it: pre-built chunks go straight to the transport.

    Its cost: the response must be HTTP/1.1 chunked (EventSource always is), since
    the chunk framing is built once per event and shared by every reader.
    """

    format = Format.SSE

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.write = transport.write
        self.buffered = transport.get_write_buffer_size
        self.closed = asyncio.get_running_loop().create_future()

    def send(self, kind: str, message: dict[str, Any]) -> None:
        if not self._transport.is_closing():
            self.write(sse_control(kind, message))

    def keepalive(self) -> None:
        if not self._transport.is_closing():
            self.write(sse_comment(KEEPALIVE))

    def close(self, code: CloseCode) -> None:
        """End the stream; a reader cut off as too slow is aborted, not flushed.

        SSE has no close codes: 1013 (too slow) aborts the connection at once, so
        nothing waits behind unread data; other codes end the response cleanly and
        EventSource reconnects with Last-Event-ID.
        """
        if code is CloseCode.TRY_AGAIN_LATER:
            self._transport.abort()
        if not self.closed.done():
            self.closed.set_result(None)


def parse_position(request: Request) -> tuple[int | None, str | None]:
    """The resume position: `?since=N&epoch=E`, else Last-Event-ID `<epoch>:<seq>`.

    A bare seq without an epoch is trusted as it is (SPEC).
    """
    query = request.query_params
    last_id = request.headers.get("last-event-id")
    if "since" in query:
        raw, epoch = query["since"], query.get("epoch")
    elif last_id:
        epoch_part, _, seq_part = last_id.rpartition(":")
        raw, epoch = seq_part, epoch_part or None
    else:
        return None, query.get("epoch")
    try:
        return parse_since(raw), epoch
    except BadSince:
        raise BadPosition(
            "since (or Last-Event-ID) must be [<epoch>:]<non-negative integer>"
        ) from None


class EventStream:
    """`GET /v1/feeds/{feed}/events` as an ASGI response that never ends by itself."""

    def __init__(
        self, hub: Hub, streams: set[SseStream], feed: str, since: int | None, epoch: str | None
    ) -> None:
        self.hub = hub
        self.streams = streams
        self.feed = feed
        self.since = since
        self.epoch = epoch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = scope.get("extensions", {}).get(TRANSPORT_EXTENSION)
        if protocol is None or scope.get("http_version") != "1.1":
            raise NotFound("event streams need HTTP/1.1 under `livepush serve`")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache, no-transform"),
                    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
                ],
            }
        )
        await send({"type": "http.response.body", "body": b": livepush\n\n", "more_body": True})
        transport = protocol.transport
        conn = SseConnection(transport)
        protocol.on_shutdown = lambda: conn.close(CloseCode.SERVICE_RESTART)
        self.streams.add(conn)
        sub = None
        try:
            try:
                sub = await self.hub.subscribe(conn, self.feed, self.since, self.epoch)
            except BrokerUnavailable:
                # No `event: error`: EventSource's own error event has that name.
                conn.write(sse_comment(b"broker unavailable; reconnect shortly"))
                conn.close(CloseCode.SERVICE_RESTART)
            disconnected = asyncio.ensure_future(_disconnect(receive))
            await asyncio.wait([disconnected, conn.closed], return_when=asyncio.FIRST_COMPLETED)
            disconnected.cancel()
        finally:
            protocol.on_shutdown = None
            self.streams.discard(conn)
            if sub is not None:
                self.hub.unsubscribe(sub)
            if not transport.is_closing():
                # Ends the chunked response cleanly; EventSource reconnects by itself.
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
