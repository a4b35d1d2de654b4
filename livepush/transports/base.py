"""The one contract of a subscriber socket, as its hub connection and its keepalive drive it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from livepush.model import CloseCode

# A peer that does not read our close (a WebSocket close frame, an event stream's last
# chunk) within this time is aborted: its unread data would otherwise hold the socket,
# and its buffer, open until the kernel gives up on it.
ABORT_AFTER = 2.0


class Drain:
    """When each socket of a draining node is closed (1012): at a random moment of a
    window inside --drain-seconds, so its readers reconnect to the other nodes over
    that window instead of all in the same instant (a reconnect storm the node's own
    restart would cause). Readers keep receiving until their moment comes.

    Its cost: a node takes up to `window` seconds, plus ABORT_AFTER, to stop.
    """

    # The share of --drain-seconds the closes are spread over; the rest is left for
    # the last closes to be answered before uvicorn gives up waiting.
    SHARE = 0.6
    window = 0.0  # set from the settings by app.create_app

    @classmethod
    def configure(cls, drain_seconds: float) -> None:
        cls.window = max(0.0, drain_seconds * cls.SHARE - ABORT_AFTER)

    @classmethod
    def schedule(cls, loop: asyncio.AbstractEventLoop, close: Callable[[], None]) -> None:
        """Run `close` at a random moment of the window (at once when there is none)."""
        if cls.window <= 0:
            close()
        else:
            loop.call_later(random.uniform(0, cls.window), close)


@runtime_checkable
class Socket(Protocol):
    """An open subscriber socket: `fastws.FastSocket` (WebSocket) or `sse.SseSocket` (SSE).

    A socket changes its own state; nothing outside it sets its attributes. Frames
    and chunks arrive already built (the hub encodes each event once), so `write`
    and `buffered` are the asyncio transport's own methods, not a layer around them.
    Reading is the socket's own business too: a WebSocket never pauses it (messages
    go to their session as they are parsed), an event stream reads only to see the
    reader leave, so nothing outside pauses or resumes it.
    """

    def write(self, data: bytes) -> None:
        """Queue bytes, framed for this socket; never blocks."""

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""

    @property
    def closing(self) -> bool:
        """A close was sent or the connection is going: nothing more is written."""

    def close(self, code: CloseCode) -> None:
        """Send a close with `code`; abort if the peer has not read it within ABORT_AFTER.

        Safe to call again: a socket already closing does nothing.
        """

    def keepalive(self) -> None:
        """The keepalive's turn: prove the peer is there, or give up on it."""
