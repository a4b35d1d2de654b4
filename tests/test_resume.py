"""Resuming with `since`: history first, then live, no hole and no duplicate at the seam."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import httpx

from tests.support import Client, RedisServer, Server, apost

FEED = "resume"


async def _publish(server: Server, count: int, pause: float = 0.0) -> None:
    async with httpx.AsyncClient() as http:
        for i in range(count):
            response = await apost(http, server, FEED, {"body": f"entry {i}"})
            assert response.status_code == 201
            if pause:
                await asyncio.sleep(pause)


async def test_subscribers_joining_with_random_since_during_publishing_see_contiguous_runs(
    any_server: Server,
) -> None:
    await _publish(any_server, 50)
    rng = random.Random(7)
    publishing = asyncio.create_task(_publish(any_server, 150, pause=0.002))
    clients: list[tuple[Client, int]] = []
    while not publishing.done():
        since = rng.randint(0, 50 + len(clients))
        client = await Client.connect(any_server.ws_url)
        subscribed = await client.subscribe(FEED, since=since)
        assert subscribed["type"] == "subscribed"
        clients.append((client, since))
        await asyncio.sleep(rng.random() * 0.02)
    await publishing
    for client, since in clients:
        assert await client.collect_until(FEED, 200) == list(range(since + 1, 201))
        await client.close()
    assert len(clients) > 5


async def test_since_older_than_history_gets_reset(start_server: Callable[..., Server]) -> None:
    server = start_server(LIVEPUSH_HISTORY_SIZE="10")
    await _publish(server, 30)
    client = await Client.connect(server.ws_url)
    reset = await client.subscribe(FEED, since=5)
    assert reset["type"] == "reset"
    assert reset["head_seq"] == 30
    # The reset's position continues exactly where the snapshot ends.
    again = await client.subscribe(FEED, since=reset["head_seq"], epoch=reset["epoch"])
    assert again["type"] == "subscribed"
    await client.close()


async def test_since_at_the_oldest_event_history_holds_is_replayed(
    start_server: Callable[..., Server], redis_server: RedisServer
) -> None:
    server = start_server(redis_server.url, LIVEPUSH_HISTORY_SIZE="10")
    await _publish(server, 30)
    client = await Client.connect(server.ws_url)
    assert (await client.subscribe(FEED, since=20))["type"] == "subscribed"
    assert await client.collect_until(FEED, 30) == list(range(21, 31))
    await client.close()


async def test_snapshot_head_seq_continues_exactly_where_the_snapshot_ends(
    any_server: Server,
) -> None:
    await _publish(any_server, 5)
    async with httpx.AsyncClient() as http:
        snapshot = (await http.get(f"{any_server.base_url}/v1/feeds/{FEED}/snapshot")).json()
        assert [e["seq"] for e in snapshot["entries"]] == [5, 4, 3, 2, 1]
        client = await Client.connect(any_server.ws_url)
        subscribed = await client.subscribe(
            FEED, since=snapshot["head_seq"], epoch=snapshot["epoch"]
        )
        assert subscribed["type"] == "subscribed"
        await apost(http, any_server, FEED, {"body": "after the snapshot"})
    assert await client.collect_until(FEED, 6) == [6]
    await client.close()


async def test_resume_on_another_node_has_no_hole_and_no_duplicate(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    node_a, node_b = start_server(redis_server.url), start_server(redis_server.url)
    client = await Client.connect(node_a.ws_url)
    subscribed = await client.subscribe(FEED)
    await _publish(node_a, 10)
    seen = await client.collect_until(FEED, 10)
    await client.close()
    await _publish(node_b, 10)  # published while the client was away
    client = await Client.connect(node_b.ws_url)
    resumed = await client.subscribe(FEED, since=seen[-1], epoch=subscribed["epoch"])
    assert resumed["type"] == "subscribed"
    await _publish(node_a, 5)
    assert await client.collect_until(FEED, 25) == list(range(11, 26))
    await client.close()
