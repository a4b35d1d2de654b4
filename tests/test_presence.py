"""Subscriber counts per node in Redis: summed over the other nodes, forgotten when stale."""

from __future__ import annotations

import asyncio

import pytest

from livepush.brokers import redis as redis_broker
from livepush.brokers.redis import RedisBroker
from tests.support import RedisServer


async def test_other_nodes_counts_are_summed_and_a_silent_node_drops_out(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_broker, "PRESENCE_TTL", 0.5)
    broker = RedisBroker(redis_server.url)
    try:
        await broker.publish_presence("node-a", {"trial": 3, "other": 1})
        await broker.publish_presence("node-b", {"trial": 4})
        assert await broker.subscribers("trial", "node-a") == 4  # node a counts itself live
        assert await broker.subscribers("trial", "node-c") == 7
        await broker.publish_presence("node-b", {"trial": 0})  # its last subscriber left
        assert await broker.subscribers("trial", "node-c") == 3
        for _ in range(50):  # node a stops reporting, as a crashed node would
            if await broker.subscribers("trial", "node-c") == 0:
                break
            await asyncio.sleep(0.05)
        assert await broker.subscribers("trial", "node-c") == 0
    finally:
        await broker.aclose()
