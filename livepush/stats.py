"""`livepush stats`: one node's figures from its /metrics, or every node's through Redis."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from livepush.errors import BrokerUnavailable, ConfigError


@dataclass(slots=True)
class Figures:
    """One node's samples by name (labels folded into the name), and its histograms."""

    node: str
    samples: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    reported_at: float | None = None

    def get(self, name: str) -> float:
        return self.samples.get(name, 0.0)

    def quantile(self, name: str, q: float) -> float | None:
        """The upper bound of the bucket that holds the q-quantile (None: no data)."""
        buckets = self.histograms.get(name, [])
        total = buckets[-1][1] if buckets else 0.0
        if not total:
            return None
        return next(bound for bound, count in buckets if count >= q * total)


def parse(node: str, text: str) -> Figures:
    """Figures from Prometheus text (a node's /metrics)."""
    figures = Figures(node)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                figures.histograms.setdefault(family.name, []).append((le, sample.value))
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            figures.samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return figures


def _count(value: float) -> str:
    return f"{int(value):,}"


def _latency(figures: Figures, name: str) -> str:
    p50, p99 = figures.quantile(name, 0.5), figures.quantile(name, 0.99)
    if p50 is None or p99 is None:
        return "-"
    return f"{_ms(p50)} / {_ms(p99)} ms"


def _ms(seconds: float) -> str:
    return "inf" if math.isinf(seconds) else f"{seconds * 1000:g}"


def render(nodes: list[Figures], now: float | None = None) -> str:
    """The figures as text, one block per node (latencies: the bucket bounds holding the
    median and the 99th percentile), then the totals over the nodes."""
    now = time.time() if now is None else now
    lines = []
    for f in nodes:
        age = "" if f.reported_at is None else f", reported {now - f.reported_at:.1f} s ago"
        lines.append(f"node {f.node}{age}")
        ws, sse = (f.get(f'livepush_connections{{transport="{t}"}}') for t in ("ws", "sse"))
        lines.append(
            f"  connections     {_count(ws)} ws, {_count(sse)} sse; "
            f"subscriptions {_count(f.get('livepush_subscriptions'))} "
            f"on {_count(f.get('livepush_feeds_watched'))} feeds"
        )
        lines.append(
            f"  events          accepted {_count(f.get('livepush_events_accepted_total'))}, "
            f"received {_count(f.get('livepush_events_received_total'))}, "
            f"deliveries {_count(f.get('livepush_deliveries_total'))}; "
            f"slow closed {_count(f.get('livepush_slow_subscribers_closed_total'))}, "
            f"resets {_count(f.get('livepush_resets_total'))}"
        )
        lines.append(
            f"  broker          reconnects {_count(f.get('livepush_broker_reconnects_total'))}, "
            f"resyncs {_count(f.get('livepush_broker_resyncs_total'))}, "
            f"holes {_count(f.get('livepush_broker_holes_total'))}, "
            f"epoch renewals {_count(f.get('livepush_epoch_renewals_total'))}, "
            f"connect errors {_count(f.get('livepush_broker_connect_errors_total'))}, "
            f"publish errors {_count(f.get('livepush_publish_errors_total'))}"
        )
        lines.append(
            f"  p50 / p99       publish {_latency(f, 'livepush_publish_seconds')}, "
            f"fan-out {_latency(f, 'livepush_fanout_seconds')}, "
            f"accept to write {_latency(f, 'livepush_accept_to_write_seconds')}, "
            f"loop lag {_latency(f, 'livepush_loop_lag_seconds')}"
        )
        shards = [
            (name[len('livepush_broker_shard_connected{shard="') : -2], value)
            for name, value in f.samples.items()
            if name.startswith("livepush_broker_shard_connected{")
        ]
        for shard, connected in sorted(shards):
            feeds = f.get(f'livepush_broker_shard_feeds{{shard="{shard}"}}')
            state = "connected" if connected else "DOWN"
            lines.append(f"  redis pub/sub   {shard} {state}, {_count(feeds)} feeds")
    if len(nodes) > 1:
        total = {
            name: sum(f.get(name) for f in nodes)
            for name in (
                "livepush_subscriptions",
                "livepush_events_accepted_total",
                "livepush_deliveries_total",
                "livepush_publish_errors_total",
                "livepush_epoch_renewals_total",
            )
        }
        lines.append(
            f"all {len(nodes)} nodes: subscriptions {_count(total['livepush_subscriptions'])}, "
            f"accepted {_count(total['livepush_events_accepted_total'])}, "
            f"deliveries {_count(total['livepush_deliveries_total'])}, "
            f"publish errors {_count(total['livepush_publish_errors_total'])}, "
            f"epoch renewals {_count(total['livepush_epoch_renewals_total'])}"
        )
    return "\n".join(lines)


def from_node(url: str) -> list[Figures]:
    """One node's figures, read from its /metrics."""
    response = httpx.get(url.rstrip("/") + "/metrics", timeout=10)
    response.raise_for_status()
    return [parse(url, response.text)]


async def from_redis(redis_url: str) -> list[Figures]:
    """Every live node's figures, as each last left them in Redis (every 5 s)."""
    from livepush.brokers.redis import RedisBroker

    broker = RedisBroker(redis_url)
    try:
        reports: list[dict[str, Any]] = await broker.node_reports()
    finally:
        await broker.aclose()
    nodes = []
    for report in sorted(reports, key=lambda r: (r["address"], r["pid"])):
        name = f"{report['address']} (pid {report['pid']}, {report['node']})"
        figures = parse(name, report["metrics"])
        figures.reported_at = report["at"]
        nodes.append(figures)
    return nodes


def stats(url: str, redis_url: str | None, *, as_json: bool) -> int:
    """`livepush stats`: print the figures; 1 when they cannot be read."""
    try:
        nodes = asyncio.run(from_redis(redis_url)) if redis_url else from_node(url)
    except (httpx.HTTPError, BrokerUnavailable, ConfigError) as error:
        print(f"livepush stats: {error}")
        return 1
    if as_json:
        out = [{"node": f.node, "reported_at": f.reported_at, "samples": f.samples} for f in nodes]
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    elif not nodes:
        print("no node has reported in the last 15 s")
    else:
        print(render(nodes))
    return 0
