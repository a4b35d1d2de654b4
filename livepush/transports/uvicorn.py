"""uvicorn protocol classes that hand livepush the socket behind each ASGI connection.

The hub writes one pre-built frame to many sockets without awaiting. ASGI's `send`
is a coroutine per message per subscriber, so these subclasses add an extension to
the scope (`livepush.socket` for WebSockets, `livepush.transport` for HTTP) through
which a transport writes straight to the asyncio transport. Starlette still does
routing and the handshake; websockets' sans-I/O protocol still parses every
incoming frame. Selected by import string in `livepush.cli`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

SOCKET_EXTENSION = "livepush.socket"
TRANSPORT_EXTENSION = "livepush.transport"


class LivepushWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, exposed to the app as `livepush.socket`."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][SOCKET_EXTENSION] = self


class LivepushHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, exposed to the app as `livepush.transport`.

    A response that streams forever (SSE) sets `on_shutdown`: on SIGTERM uvicorn
    only stops keep-alive, which would leave the stream open until the graceful
    timeout; the callback ends it at once so the reader reconnects elsewhere.
    """

    on_shutdown: Callable[[], None] | None = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        scope: Any = self.scope
        scope["extensions"] = {TRANSPORT_EXTENSION: self}

    def shutdown(self) -> None:
        if self.on_shutdown is not None:
            self.on_shutdown()
        super().shutdown()
