"""livepush on a Sentinel-managed primary (three sentinels, a primary, a replica): a
failover finds the new primary, and no acknowledged entry is lost or passed over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.failover import (
    Accepted,
    assert_every_entry_once_in_order,
    collect,
    metric,
    publish_until_accepted,
    publisher,
    subscribe_all,
)
from tests.redis_topologies import SentinelGroup, assert_a_dropped_connection_is_lost
from tests.support import HOST, Client, Server, free_port, wait_until


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelGroup]:
    group = SentinelGroup()
    try:
        yield group.start()
    finally:
        group.close()


@pytest.fixture(autouse=True)
def healthy(sentinels: SentinelGroup) -> None:
    sentinels.repair()


async def test_a_primary_killed_mid_stream_loses_no_entry_with_min_replicas(
    sentinels: SentinelGroup, start_server: Callable[..., Server]
) -> None:
    feeds = ["sentinel-a", "sentinel-b"]
    nodes = [start_server(sentinels.url, LIVEPUSH_REDIS_MIN_REPLICAS="1") for _ in range(2)]
    clients = [await Client.connect(node.ws_url) for node in nodes]
    for client in clients:
        await subscribe_all(client, feeds)
    accepted = Accepted()
    publishing = asyncio.gather(
        *(publisher(f"p{i}", nodes[i % 2], feeds, 30, accepted) for i in range(4))
    )
    await asyncio.to_thread(
        wait_until, lambda: accepted.count(feeds[0]) >= 10, 30, "entries before the kill"
    )
    old = sentinels.primary()
    old.kill()
    await asyncio.to_thread(sentinels.wait_failover, old)
    # The new primary has no replica until the old one comes back as one: until then
    # WAIT fails and writes are 503 (retried with their Idempotency-Key).
    await asyncio.to_thread(sentinels.restart_as_replica, old)
    await publishing
    for client in clients:
        await collect(client, {feed: accepted.count(feed) for feed in feeds})
        assert_every_entry_once_in_order(client, accepted)
        await client.close()
    for node in nodes:  # each found the new primary, then caught up from history
        assert metric(node, "livepush_broker_reconnects_total") >= 1
        assert metric(node, "livepush_broker_resyncs_total") >= 1


async def test_a_lost_write_is_announced_with_reset_without_min_replicas(
    sentinels: SentinelGroup, start_server: Callable[..., Server]
) -> None:
    feed = "sentinel-lost"
    node = start_server(sentinels.url)
    client = await Client.connect(node.ws_url)
    subscribed = await client.subscribe(feed)
    primary, replica = sentinels.primary(), sentinels.replica()
    async with httpx.AsyncClient(timeout=15) as http:
        for i in range(3):
            await publish_until_accepted(http, node, feed, f"kept {i}", f"kept-{i}")
        # The replica is pointed at a server that does not exist: it keeps its data
        # and stays eligible, but the next writes, answered 201 by the primary, never
        # reach it; then the primary dies (long before the sentinels would point the
        # replica back, failover-timeout later).
        replica.call("REPLICAOF", HOST, str(free_port()))
        for i in range(2):
            await publish_until_accepted(http, node, feed, f"lost {i}", f"lost-{i}")
    await client.collect_until(feed, 5)
    primary.kill()
    reset = await client.recv_type("reset", timeout=60)
    assert reset["epoch"] != subscribed["epoch"]
    assert client.seqs(feed) == [1, 2, 3, 4, 5]
    # The node may have heard of the failover from another sentinel before the first
    # one knows of it: wait for the one `primary()` asks.
    assert await asyncio.to_thread(sentinels.wait_failover, primary) is replica
    again = await client.subscribe(feed, since=reset["head_seq"], epoch=reset["epoch"])
    assert again["type"] == "subscribed"
    async with httpx.AsyncClient(timeout=15) as http:
        entry = await publish_until_accepted(http, node, feed, "after", "after")
    event = await client.recv_type("entry.created", timeout=30)
    assert event["seq"] == entry["seq"]
    await client.close()
    assert metric(node, "livepush_epoch_renewals_total") == 1
    await asyncio.to_thread(sentinels.restart_as_replica, primary)


def test_a_command_on_a_connection_the_primary_already_dropped_is_a_lost_connection(
    sentinels: SentinelGroup,
) -> None:
    """As on one Redis (test_redis_faults.py), through the connections a Sentinel's
    primary is reached by: a ConnectionError, not uvloop's RuntimeError."""
    assert_a_dropped_connection_is_lost(sentinels.url)
