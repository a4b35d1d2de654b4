"""Stories across nodes on one Redis: a scheduled entry released once however many nodes
run, and across a node's restart; a purge that reaches every node's memory."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from tests.support import Client, RedisServer, Server, wait_until
from tests.test_sse import sse_blocks


def schedule(node: Server, feed: str, at: datetime, body: str) -> dict[str, Any]:
    response = node.post(feed, {"body": body, "publish_at": at.isoformat()})
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


def published(node: Server, feed: str, body: str) -> dict[str, Any]:
    response = node.post(feed, {"body": body})
    assert response.status_code == 201, response.text
    entry: dict[str, Any] = response.json()
    return entry


def events_of(client: Client, feed: str) -> list[dict[str, Any]]:
    return [m for m in client.messages if m.get("feed") == feed and "seq" in m]


async def test_entries_due_together_are_released_once_by_two_nodes(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    nodes = [start_server(redis_server.url), start_server(redis_server.url)]
    feed = "release-once"
    published(nodes[0], feed, "before")
    clients = [await Client.connect(f"{node.ws_url}?feed={feed}&since=1") for node in nodes]
    try:
        for client in clients:
            await client.recv_type("subscribed")
        # Ten entries due at the same moment, scheduled through either node: both nodes'
        # timers fire for each, and each must be published once, with the next seqs.
        # (Far enough ahead for ten POSTs on a loaded machine: a past one is a 422.)
        due = datetime.now(UTC) + timedelta(seconds=6)
        ids = [schedule(nodes[i % 2], feed, due, f"due {i}")["id"] for i in range(10)]
        for client in clients:
            await client.collect_until(feed, 11)
        after = published(nodes[1], feed, "after")
        assert after["seq"] == 12  # nothing was published twice before it
        for client in clients:
            seqs = await client.collect_until(feed, 12)
            assert seqs == list(range(2, 13))
            created = [event["entry"]["id"] for event in events_of(client, feed)]
            assert sorted(created[:10]) == sorted(ids)
            assert created[10] == after["id"]
    finally:
        for client in clients:
            await client.close()
    async with httpx.AsyncClient(base_url=nodes[0].base_url, headers=nodes[0].headers()) as http:
        history = (await http.get(f"/v1/feeds/{feed}/entries?since=0")).json()
        listed = (await http.get(f"/v1/feeds/{feed}/scheduled")).json()
    assert [event["seq"] for event in history["events"]] == list(range(1, 13))
    assert listed["scheduled"] == []


async def test_a_scheduled_entry_is_released_once_with_the_next_seq_by_two_nodes(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    nodes = [start_server(redis_server.url), start_server(redis_server.url)]
    feed = "release-one"
    published(nodes[0], feed, "before")
    clients = [await Client.connect(f"{node.ws_url}?feed={feed}&since=1") for node in nodes]
    try:
        accepted = schedule(nodes[1], feed, datetime.now(UTC) + timedelta(seconds=2), "due")
        for client in clients:
            event = await client.recv_type("entry.created", timeout=20)
            assert (event["seq"], event["entry"]["id"]) == (2, accepted["id"])
        after = published(nodes[0], feed, "after")
        assert after["seq"] == 3
        for client in clients:
            assert await client.collect_until(feed, 3) == [2, 3]
    finally:
        for client in clients:
            await client.close()


async def test_a_scheduled_entry_due_while_its_node_was_down_is_released_after_restart(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    node = start_server(redis_server.url)
    feed = "restart-schedule"
    due = datetime.now(UTC) + timedelta(seconds=2)
    accepted = schedule(node, feed, due, "held in Redis")
    node.stop()
    wait_until(lambda: datetime.now(UTC) > due, what="the entry to fall due")
    node.start()
    client = await Client.connect(f"{node.ws_url}?feed={feed}&since=0")
    try:
        event = await client.recv_type("entry.created", timeout=20)
    finally:
        await client.close()
    assert event["seq"] == 1
    assert event["entry"]["id"] == accepted["id"]
    assert event["entry"]["published_at"] == accepted["publish_at"]


async def sse_replay(node: Server, feed: str, count: int) -> list[bytes]:
    """The first `count` events of an event stream from seq 0, as their raw data."""
    data: list[bytes] = []
    url = f"{node.base_url}/v1/feeds/{feed}/events?since=0"
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("GET", url) as response,
        contextlib.aclosing(sse_blocks(response)) as blocks,
    ):
        async for block in blocks:
            if "id" in block:
                data.append(block["data"].encode())
            if len(data) == count:
                break
    return data


async def test_a_purge_reaches_every_nodes_memory(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    writer, other = start_server(redis_server.url), start_server(redis_server.url)
    feed = "purge-nodes"
    watcher = await Client.connect(f"{other.ws_url}?feed={feed}&since=0")  # `other` watches
    try:
        await watcher.recv_type("subscribed")
        secret = published(writer, feed, "SECRET-TEXT")
        published(writer, feed, "kept")
        await watcher.collect_until(feed, 2)
        # Resumes from `other`'s memory before the purge: the text, and frames cached.
        early = await Client.connect(f"{other.ws_url}?feed={feed}&since=0")
        await early.collect_until(feed, 2)
        await early.close()
        assert b"SECRET-TEXT" in orjson.dumps(early.messages)
        assert any(b"SECRET-TEXT" in data for data in await sse_replay(other, feed, 2))

        async with httpx.AsyncClient(base_url=writer.base_url, headers=writer.headers()) as http:
            path = f"/v1/feeds/{feed}/entries/{secret['id']}/purge"
            purge = await http.post(path, json={"reason": "injunction"})
        assert purge.status_code == 200, purge.text
        await watcher.collect_until(feed, 3)
        assert events_of(watcher, feed)[-1]["purged"] is True
    finally:
        await watcher.close()

    # With Redis gone, a resume can only be served from the node's own memory.
    redis_server.stop()
    late = await Client.connect(f"{other.ws_url}?feed={feed}&since=0")
    try:
        await late.collect_until(feed, 3)
    finally:
        await late.close()
    assert [event["type"] for event in events_of(late, feed)] == [
        "entry.purged",
        "entry.created",
        "entry.deleted",
    ]
    assert b"SECRET-TEXT" not in orjson.dumps(late.messages)
    replay = await sse_replay(other, feed, 3)
    assert [orjson.loads(data)["type"] for data in replay] == [
        "entry.purged",
        "entry.created",
        "entry.deleted",
    ]
    assert not any(b"SECRET-TEXT" in data for data in replay)
