"""LIVEPUSH_REDIS_MIN_REPLICAS: a write too few replicas hold in time is a 503 (outcome
unknown); its retry with the same Idempotency-Key gets the first result, delivered once."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.redis_topologies import RedisNode, replicas_online
from tests.support import HOST, Client, Server, wait_until

FEED = "replicated"


async def test_a_write_no_replica_holds_is_a_503_and_its_retry_is_delivered_once(
    start_server: Callable[..., Server],
) -> None:
    root = Path(tempfile.mkdtemp(prefix="livepush-replicas-"))
    primary = RedisNode(root).start()
    replica = RedisNode(root, "--replicaof", HOST, str(primary.port))
    try:
        node = start_server(f"redis://{primary.address}/0", LIVEPUSH_REDIS_MIN_REPLICAS="1")
        client = await Client.connect(node.ws_url)
        assert (await client.subscribe(FEED))["type"] == "subscribed"
        first = {"body": "first"}
        keyed = {**node.headers(), "Idempotency-Key": "k1"}
        url = f"{node.base_url}/v1/feeds/{FEED}/entries"
        async with httpx.AsyncClient(timeout=15) as http:
            refused = await http.post(url, json=first, headers=keyed)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "broker_unavailable"
            assert "same Idempotency-Key" in refused.json()["error"]["message"]

            replica.start()
            wait_until(lambda: replicas_online(primary) == 1, 20, "the replica to catch up")
            retried = await http.post(url, json=first, headers=keyed)
            assert retried.status_code == 201
            assert retried.headers["Idempotency-Replayed"] == "true"
            assert retried.json()["seq"] == 1
            second = await http.post(url, json={"body": "second"}, headers=node.headers())
            assert second.json()["seq"] == 2
            history = (await http.get(url)).json()
        assert [event["seq"] for event in history["events"]] == [1, 2]
        # The first write went out once: when its retry found the replica holding it.
        assert await client.collect_until(FEED, 2) == [1, 2]
        assert client.messages[1]["entry"] == retried.json()
        await client.close()
    finally:
        replica.kill()
        primary.kill()
        shutil.rmtree(root, ignore_errors=True)
