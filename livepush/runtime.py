"""Runtime: the node's shared state, which every request handler reaches through runtime_of().

Where its neighbours live: the GC policy it holds is `gc_policy.GcPolicy`; the loop
timers that tick it, keep SSE streams alive and report presence (`_Repeat`) stay in
`app.py`, whose lifespan owns and cancels them. The Prometheus collector reads the
runtime through `metrics.Counters`, so this module imports metrics and never the
other way round; SSE streams are held as `SseStream`, so transports import this
module and never the other way round.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from starlette.requests import HTTPConnection

from livepush.auth import Access, origin_allowed
from livepush.brokers.base import Broker
from livepush.config import Settings
from livepush.errors import BrokerUnavailable
from livepush.gc_policy import GcPolicy
from livepush.hub import Hub
from livepush.metrics import registry_for
from livepush.timing import LoopLag


class SseStream(Protocol):
    """An open Server-Sent Events stream, as the runtime's keep-alive timer sees it."""

    def keepalive(self) -> None: ...


class Runtime:
    """Everything a request handler reaches through `runtime_of(request)`."""

    def __init__(self, settings: Settings, broker: Broker) -> None:
        self.settings = settings
        self.broker = broker
        self.hub = Hub(broker, max_buffer=settings.max_buffer)
        self.access = Access.from_settings(settings)
        self.publishers = self.access.publishers
        self.addresses = PerAddress(settings.max_connections_per_address)
        self.sse_streams: set[SseStream] = set()
        self.ws_connections = 0
        self.gc = GcPolicy()
        self.loop_lag = LoopLag()  # started and stopped by the app's lifespan
        self.published = 0
        self.draining = False
        self.registry = registry_for(self)
        self.node = secrets.token_hex(6)  # names this process in the feeds' presence
        self._reported: set[str] = set()

    def origin_allowed(self, origin: str | None) -> bool:
        return origin_allowed(origin, self.settings.allowed_origins)

    def subscribers(self, feed: str) -> int:
        return self.hub.subscribers(feed)

    async def total_subscribers(self, feed: str) -> int:
        """This node's subscribers of `feed` now, plus every other node's last report."""
        return self.subscribers(feed) + await self.broker.subscribers(feed, self.node)

    def report_presence(self) -> None:
        """Tell the broker this node's subscriber counts (off the delivery path)."""
        counts = {feed: self.subscribers(feed) for feed in self.hub.feeds}
        counts.update({feed: 0 for feed in self._reported - counts.keys()})
        self._reported = {feed for feed, count in counts.items() if count}
        if counts:
            self.hub.spawn(self._publish_presence(counts))

    async def _publish_presence(self, counts: dict[str, int]) -> None:
        try:
            await self.broker.publish_presence(self.node, counts)
        except BrokerUnavailable:
            return  # counts only: the next report, once Redis is back, corrects them

    def keepalive(self) -> None:
        for stream in list(self.sse_streams):
            stream.keepalive()


class PerAddress:
    """Long-lived connections (WebSockets, event streams) per client address, and a limit.

    Off by default (limit 0: nothing is counted, no address is looked up): a mobile
    carrier's NAT puts thousands of phones behind one address, and behind a proxy every
    client has the proxy's. Costs a dict entry per address in use.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.limited = limit > 0  # read per connection: an attribute, not a property
        self.counts: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        """Count one more connection from `address`, unless it already holds the limit."""
        count = self.counts.get(address, 0)
        if count >= self.limit:
            return False
        self.counts[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self.counts.get(address, 0) - 1
        if count > 0:
            self.counts[address] = count
        else:
            self.counts.pop(address, None)


def runtime_of(connection: HTTPConnection) -> Runtime:
    """The runtime of the app serving `connection` (an HTTP request or a WebSocket)."""
    runtime = connection.app.state.runtime
    assert isinstance(runtime, Runtime), "the app was not made by livepush.app.create_app"
    return runtime
