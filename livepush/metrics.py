"""Prometheus metrics, read from the components' own counters at scrape time."""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from livepush.hub import Hub


class Counters(Protocol):
    """What the collector reads from the node (`runtime.Runtime`): plain counters."""

    @property
    def hub(self) -> Hub: ...
    @property
    def ws_connections(self) -> int: ...
    @property
    def sse_streams(self) -> Sized: ...
    @property
    def published(self) -> int: ...


class RuntimeCollector(Collector):
    """Reads the hub's and transports' plain counters: nothing is added to the hot loop."""

    def __init__(self, runtime: Counters) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime, hub = self.runtime, self.runtime.hub
        connections = GaugeMetricFamily(
            "livepush_connections", "Open subscriber connections", labels=["transport"]
        )
        connections.add_metric(["ws"], runtime.ws_connections)
        connections.add_metric(["sse"], len(runtime.sse_streams))
        yield connections
        yield GaugeMetricFamily(
            "livepush_subscriptions", "Live feed subscriptions on this node", hub.subscriptions()
        )
        yield GaugeMetricFamily(
            "livepush_feeds_watched", "Feeds this node receives", len(hub.feeds)
        )
        yield CounterMetricFamily(
            "livepush_events_accepted",
            "Events accepted by this node's ingest API",
            runtime.published,
        )
        yield CounterMetricFamily(
            "livepush_events_received",
            "Events this node received from the broker",
            hub.events_received,
        )
        yield CounterMetricFamily(
            "livepush_deliveries", "Events written to subscribers", hub.deliveries
        )
        yield CounterMetricFamily(
            "livepush_slow_subscribers_closed",
            "Subscribers cut off as too slow (1013)",
            hub.slow_closed,
        )
        yield CounterMetricFamily("livepush_resets", "reset messages sent", hub.resets)


def registry_for(runtime: Counters) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    return registry
