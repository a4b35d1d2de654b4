"""`livepush stats`: one node's figures from its /metrics, every node's through Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable

import httpx

from livepush.stats import parse, render
from tests.support import Client, RedisServer, Server, apost, wait_until

FEED = "stats"


def run_stats(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "livepush.cli", "stats", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_latencies_are_the_bucket_bounds_of_the_median_and_the_99th_percentile() -> None:
    text = (
        "# TYPE livepush_publish_seconds histogram\n"
        'livepush_publish_seconds_bucket{le="0.001"} 50.0\n'
        'livepush_publish_seconds_bucket{le="0.005"} 98.0\n'
        'livepush_publish_seconds_bucket{le="0.01"} 100.0\n'
        'livepush_publish_seconds_bucket{le="+Inf"} 100.0\n'
        "livepush_publish_seconds_count 100.0\n"
        "livepush_publish_seconds_sum 0.2\n"
    )
    figures = parse("n", text)
    assert figures.quantile("livepush_publish_seconds", 0.5) == 0.001
    assert figures.quantile("livepush_publish_seconds", 0.99) == 0.01
    assert "publish 1 / 10 ms" in render([figures])


async def test_stats_of_one_node_and_of_every_node_through_redis(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    nodes = [start_server(redis_server.url), start_server(redis_server.url)]
    client = await Client.connect(nodes[1].ws_url)
    await client.subscribe(FEED)
    async with httpx.AsyncClient() as http:
        for i in range(3):
            assert (await apost(http, nodes[0], FEED, {"body": f"{i}"})).status_code == 201
    await client.collect_until(FEED, 3)

    one = await asyncio.to_thread(run_stats, "--url", nodes[0].base_url)
    assert one.returncode == 0, one.stderr
    assert f"node {nodes[0].base_url}" in one.stdout
    assert "accepted 3," in one.stdout
    assert "redis pub/sub" in one.stdout

    def both_reported() -> bool:
        return run_stats("--redis-url", redis_server.url).stdout.count("\nnode ") == 1

    # Each node leaves its figures in Redis every few seconds.
    await asyncio.to_thread(wait_until, both_reported, 30, "both nodes' reports")
    every = await asyncio.to_thread(run_stats, "--redis-url", redis_server.url)
    for node in nodes:
        assert f"127.0.0.1:{node.port} (pid" in every.stdout
    assert "all 2 nodes: subscriptions 1, accepted 3, deliveries 3" in every.stdout
    await client.close()


def test_stats_says_why_it_cannot_read_a_node() -> None:
    result = run_stats("--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert result.stdout.startswith("livepush stats: ")
