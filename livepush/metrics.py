"""Prometheus metrics, read from the components' own counters at scrape time."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sized
from typing import Protocol

import orjson
from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from livepush.brokers.base import Broker
from livepush.config import Settings
from livepush.errors import BrokerUnavailable
from livepush.hub import Hub
from livepush.timing import Histogram, LoopLag

# How often each node leaves its figures in the broker for `livepush stats`.
REPORT_SECONDS = 5.0


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
    @property
    def broker(self) -> Broker: ...
    @property
    def loop_lag(self) -> LoopLag: ...


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
        yield from _broker_metrics(runtime.broker)
        timings = hub.timings
        yield _histogram(
            "livepush_fanout_seconds",
            "How long one fan-out takes to write its events to every subscriber",
            timings.duration,
        )
        yield _histogram(
            "livepush_accept_to_write_seconds",
            "From an event's publish on its ingest node to its last socket write here",
            timings.age,
        )
        yield _histogram(
            "livepush_loop_lag_seconds",
            "How late the event loop ran a timer due every 10 ms (its longest turns)",
            runtime.loop_lag.histogram,
        )


def _broker_metrics(broker: Broker) -> Iterator[Metric]:
    stats = broker.stats()
    yield CounterMetricFamily(
        "livepush_broker_reconnects",
        "Live stream connections re-established after a loss (each followed by a resync)",
        stats.reconnects,
    )
    yield CounterMetricFamily(
        "livepush_broker_resyncs",
        "Times every watched feed caught up from history after an interruption",
        stats.resyncs,
    )
    yield CounterMetricFamily(
        "livepush_broker_holes",
        "Gaps in a feed's live stream (events pub/sub dropped), filled from history",
        stats.holes,
    )
    yield CounterMetricFamily(
        "livepush_epoch_renewals",
        "New epochs started because history lost acknowledged writes (a failover)",
        stats.renewals,
    )
    yield CounterMetricFamily(
        "livepush_broker_connect_errors",
        "Failed attempts to connect to the broker",
        stats.connect_errors,
    )
    yield CounterMetricFamily(
        "livepush_publish_errors",
        "Publishes answered 503 (broker unavailable, or too few replicas in time)",
        stats.publish_errors,
    )
    if stats.publish_seconds is not None:
        yield _histogram(
            "livepush_publish_seconds",
            "How long the broker took to record an accepted publish",
            stats.publish_seconds,
        )
    connected = GaugeMetricFamily(
        "livepush_broker_shard_connected",
        "1 when the pub/sub connection to this Redis server has every channel subscribed",
        labels=["shard"],
    )
    feeds = GaugeMetricFamily(
        "livepush_broker_shard_feeds",
        "Watched feeds whose live events come over this Redis server's pub/sub",
        labels=["shard"],
    )
    for shard in stats.shards:
        connected.add_metric([shard.name], 1 if shard.connected else 0)
        feeds.add_metric([shard.name], shard.feeds)
    yield connected
    yield feeds


def _histogram(name: str, documentation: str, histogram: Histogram) -> Metric:
    buckets = list(histogram.cumulative())
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=histogram.sum)


def registry_for(runtime: Counters) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    return registry


class Reporting(Protocol):
    """What a node's report names it by (`runtime.Runtime`)."""

    @property
    def node(self) -> str: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def broker(self) -> Broker: ...
    @property
    def registry(self) -> CollectorRegistry: ...
    @property
    def hub(self) -> Hub: ...


def start_report(runtime: Reporting) -> None:
    """Start one report, as a task the hub owns (app.py's timer calls this)."""
    runtime.hub.spawn(report(runtime))


def node_report(runtime: Reporting) -> bytes:
    """This node's /metrics text, with what names it, as JSON for `livepush stats`."""
    settings = runtime.settings
    return orjson.dumps(
        {
            "node": runtime.node,
            "address": f"{settings.host}:{settings.port}",
            "pid": os.getpid(),
            "at": time.time(),
            "metrics": generate_latest(runtime.registry).decode(),
        }
    )


async def report(runtime: Reporting) -> None:
    """Leave this node's figures in the broker, where `livepush stats` reads every node's."""
    try:
        await runtime.broker.report_node(runtime.node, node_report(runtime))
    except BrokerUnavailable:
        return  # figures only: the next report, once the broker is back, replaces them
