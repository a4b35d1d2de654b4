"""livepush on Redis Cluster (three primaries, a replica each): every feed on its slot,
sharded pub/sub per primary, failover and resharding with no acknowledged entry lost."""

from __future__ import annotations

import asyncio
import re
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
from tests.redis_topologies import Cluster, feed_in_slot
from tests.support import Client, Server, wait_until


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster(primaries=3, replicas=1)
    try:
        yield cluster.start()
    finally:
        cluster.close()


@pytest.fixture(autouse=True)
def healthy(cluster: Cluster) -> None:
    """Each test starts on a whole cluster (an earlier one may have killed a primary)."""
    cluster.wait_healthy()


def subscribers(node: Server, feed: str) -> int:
    count: int = httpx.get(f"{node.base_url}/v1/feeds/{feed}").json()["subscribers"]
    return count


def shards_connected(node: Server) -> dict[str, int]:
    text = httpx.get(node.base_url + "/metrics").text
    found = re.findall(r'^livepush_broker_shard_connected\{shard="([^"]+)"\} (\S+)$', text, re.M)
    return {shard: int(float(value)) for shard, value in found}


async def test_fifty_feeds_over_every_shard_reach_every_subscriber_in_order(
    cluster: Cluster, start_server: Callable[..., Server]
) -> None:
    feeds = [f"shards-{i}" for i in range(50)]
    assert {cluster.primary_of(feed).port for feed in feeds} == cluster.primary_ports()
    # One node is given the cluster's URL; the other a plain URL of one cluster node,
    # which it recognises as a cluster.
    nodes = [start_server(cluster.url), start_server(f"redis://{cluster.nodes[1].address}/0")]
    clients = [await Client.connect(nodes[i % 2].ws_url) for i in range(4)]
    await asyncio.gather(*(subscribe_all(client, feeds) for client in clients))
    accepted = Accepted()
    await asyncio.gather(
        *(publisher(f"p{i}", nodes[i % 2], feeds, 2 * len(feeds), accepted) for i in range(4))
    )
    assert all(accepted.count(feed) == 8 for feed in feeds)
    for client in clients:
        await collect(client, dict.fromkeys(feeds, 8))
        assert_every_entry_once_in_order(client, accepted)
    # Presence and receipts work across shards: per feed, on the feed's own slot.
    one_per_shard = {cluster.primary_of(feed).port: feed for feed in feeds}.values()
    for feed in one_per_shard:

        def counted(feed: str = feed) -> bool:  # every node reports every 2 s
            return subscribers(nodes[0], feed) == 4

        await asyncio.to_thread(wait_until, counted, 20, "the subscribers of both nodes")
        editor = await Client.connect(nodes[0].ws_url)
        await editor.subscribe(feed, receipts=True, token=nodes[0].token)
        async with httpx.AsyncClient() as http:
            entry = await publish_until_accepted(http, nodes[1], feed, "receipt", f"r-{feed}")
        for _ in range(20):  # each node adds its figures: wait for both
            receipt = await editor.recv_type("receipt")
            if receipt["seq"] == entry["seq"] and receipt["nodes"] == 2:
                break
        assert (receipt["seq"], receipt["nodes"]) == (entry["seq"], 2)
        assert receipt["delivered"] == 5  # the four clients and the editor
        await editor.close()
    for client in clients:
        await client.close()
    # One sharded pub/sub connection per primary, each connected.
    for node in nodes:
        shards = shards_connected(node)
        assert sorted(shards) == sorted(f"127.0.0.1:{port}" for port in cluster.primary_ports())
        assert set(shards.values()) == {1}


async def test_a_primary_killed_mid_stream_loses_no_entry_with_min_replicas(
    cluster: Cluster, start_server: Callable[..., Server]
) -> None:
    feeds = list(cluster.feeds_per_primary("kill-", 1))
    victim = cluster.primary_of(feeds[0])
    nodes = [start_server(cluster.url, LIVEPUSH_REDIS_MIN_REPLICAS="1") for _ in range(2)]
    clients = [await Client.connect(node.ws_url) for node in nodes]
    for client in clients:
        await subscribe_all(client, feeds)
    accepted = Accepted()
    publishing = asyncio.gather(
        *(publisher(f"p{i}", nodes[i % 2], feeds, 45, accepted) for i in range(4))
    )
    await asyncio.to_thread(
        wait_until, lambda: accepted.count(feeds[0]) >= 10, 30, "entries before the kill"
    )
    victim.kill()
    cluster.wait_failover(feeds[0], victim)
    # The promoted replica has no replica of its own until the old primary comes back
    # as one: until then WAIT fails and the shard's writes are 503 (retried).
    victim.start()
    await asyncio.to_thread(cluster.wait_healthy)
    await publishing
    for client in clients:
        await collect(client, {feed: accepted.count(feed) for feed in feeds})
        assert_every_entry_once_in_order(client, accepted)
        await client.close()
    for node in nodes:  # each re-subscribed on the new primary, then caught up
        assert metric(node, "livepush_broker_reconnects_total") >= 1
        assert metric(node, "livepush_broker_resyncs_total") >= 1


async def test_a_lost_write_is_announced_with_reset_without_min_replicas(
    cluster: Cluster, start_server: Callable[..., Server]
) -> None:
    feed = next(cluster.feeds_per_primary("lost-", 1))
    primary = cluster.primary_of(feed)
    replica = cluster.node(primary.client().info("replication")["slave0"]["port"])
    node = start_server(cluster.url)
    client = await Client.connect(node.ws_url)
    subscribed = await client.subscribe(feed)
    async with httpx.AsyncClient(timeout=15) as http:
        for i in range(3):
            await publish_until_accepted(http, node, feed, f"kept {i}", f"kept-{i}")
        # The replica stops reading its primary's stream: the next writes, answered
        # 201 by the primary, never reach it; then the primary dies.
        replica.call("CLIENT", "PAUSE", 3000, "ALL")
        for i in range(2):
            await publish_until_accepted(http, node, feed, f"lost {i}", f"lost-{i}")
    await client.collect_until(feed, 5)
    primary.kill()
    reset = await client.recv_type("reset", timeout=60)
    assert reset["epoch"] != subscribed["epoch"]
    assert client.seqs(feed) == [1, 2, 3, 4, 5]
    # The client starts again from the new life, which goes on.
    again = await client.subscribe(feed, since=reset["head_seq"], epoch=reset["epoch"])
    assert again["type"] == "subscribed"
    async with httpx.AsyncClient(timeout=15) as http:
        entry = await publish_until_accepted(http, node, feed, "after", "after")
    event = await client.recv_type("entry.created", timeout=30)
    assert event["seq"] == entry["seq"]
    await client.close()
    assert metric(node, "livepush_epoch_renewals_total") == 1
    primary.start()


async def test_resharding_a_watched_feed_mid_stream_loses_nothing(
    cluster: Cluster, start_server: Callable[..., Server]
) -> None:
    source, target = (cluster.node(port) for port in sorted(cluster.primary_ports())[:2])
    feed = feed_in_slot(cluster.first_slot(source))
    nodes = [start_server(cluster.url), start_server(cluster.url)]
    clients = [await Client.connect(node.ws_url) for node in nodes]
    for client in clients:
        await subscribe_all(client, [feed])
    accepted = Accepted()
    publishing = asyncio.gather(
        *(publisher(f"p{i}", nodes[i % 2], [feed], 30, accepted) for i in range(2))
    )
    await asyncio.to_thread(
        wait_until, lambda: accepted.count(feed) >= 10, 30, "entries before the reshard"
    )
    await asyncio.to_thread(cluster.reshard_first_slot, source, target)
    assert cluster.primary_of(feed) is target
    await publishing
    for client in clients:
        await collect(client, {feed: 60})
        assert_every_entry_once_in_order(client, accepted)
        await client.close()
    for node in nodes:  # each followed the slot to its new primary, then caught up
        assert shards_connected(node) == {target.address: 1}
        assert metric(node, "livepush_broker_resyncs_total") >= 1
