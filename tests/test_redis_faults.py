"""Redis goes away and comes back: no accepted entry is lost, and no gap goes untold."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from redis.asyncio import Redis

from livepush.brokers.redis_nodes import SLOTS, Cluster, OneServer, Scripts
from livepush.brokers.redis_nodes import Server as RedisNodesServer
from livepush.brokers.redis_url import parse_redis_url
from livepush.errors import BrokerUnavailable
from tests.redis_topologies import assert_a_dropped_connection_is_lost
from tests.support import Client, RedisServer, Server, apost, wait_until

FEED = "outage"


async def test_a_publish_while_redis_is_down_gets_503_quickly_and_readyz_says_not_ready(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    server = start_server(redis_server.url)
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(server.base_url + "/readyz")).status_code == 200
        redis_server.stop()
        started = time.monotonic()
        response = await apost(http, server, FEED, {"body": "lost?"})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "broker_unavailable"
        assert time.monotonic() - started < 10  # "within seconds": a bound, not a benchmark
        readyz = await http.get(server.base_url + "/readyz")
        assert readyz.status_code == 503


async def test_redis_restart_with_persistence_loses_no_accepted_entry(
    persistent_redis: RedisServer, start_server: Callable[..., Server]
) -> None:
    nodes = [start_server(persistent_redis.url), start_server(persistent_redis.url)]
    clients = [await Client.connect(nodes[i % 2].ws_url) for i in range(4)]
    epochs = {(await client.subscribe(FEED))["epoch"] for client in clients}
    assert len(epochs) == 1
    accepted: list[int] = []

    async def publish(count: int) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            for i in range(count):
                # A publisher retries with its Idempotency-Key until it gets a 2xx.
                for _attempt in range(200):
                    try:
                        response = await http.post(
                            f"{nodes[i % 2].base_url}/v1/feeds/{FEED}/entries",
                            json={"body": f"entry {i}"},
                            headers={**nodes[0].headers(), "Idempotency-Key": f"k{i}"},
                        )
                    except httpx.HTTPError:
                        response = None
                    if response is not None and response.status_code == 201:
                        accepted.append(response.json()["seq"])
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.005)

    publishing = asyncio.create_task(publish(120))
    await asyncio.to_thread(wait_until, lambda: len(accepted) >= 30, 30, "30 accepted")
    persistent_redis.stop()
    await asyncio.sleep(0.5)
    persistent_redis.start()
    await publishing
    assert sorted(accepted) == list(range(1, 121))
    for client in clients:
        assert await client.collect_until(FEED, 120, timeout=30) == list(range(1, 121))
        assert not [m for m in client.messages if m["type"] == "reset"]
        await client.close()


async def test_redis_restart_without_persistence_sends_reset_with_a_new_epoch(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    server = start_server(redis_server.url)
    client = await Client.connect(server.ws_url)
    subscribed = await client.subscribe(FEED)
    async with httpx.AsyncClient(timeout=10) as http:
        for i in range(3):
            assert (await apost(http, server, FEED, {"body": f"before {i}"})).status_code == 201
    await client.collect_until(FEED, 3)
    redis_server.stop()
    redis_server.start()
    reset = await client.recv_type("reset", timeout=30)
    assert reset["epoch"] != subscribed["epoch"]
    assert reset["feed"] == FEED
    # The client starts over from the new life's snapshot position and continues.
    again = await client.subscribe(FEED, since=reset["head_seq"], epoch=reset["epoch"])
    assert again["type"] == "subscribed"
    async with httpx.AsyncClient(timeout=10) as http:
        response = await apost(http, server, FEED, {"body": "after"})
    seq = response.json()["seq"]
    event = await client.recv_type("entry.created")
    assert event["seq"] == seq
    await client.close()


async def test_resuming_with_the_old_epoch_after_history_was_lost_gets_reset(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    server = start_server(redis_server.url)
    async with httpx.AsyncClient(timeout=10) as http:
        for i in range(3):
            await apost(http, server, FEED, {"body": f"before {i}"})
        old = (await http.get(f"{server.base_url}/v1/feeds/{FEED}")).json()
        redis_server.stop()
        redis_server.start()
        # Another life of the feed reaches seq 3 again: it must never pass for the old one.
        for i in range(3):
            for _ in range(100):
                response = await apost(http, server, FEED, {"body": f"after {i}"})
                if response.status_code == 201:
                    break
                await asyncio.sleep(0.05)
    client = await Client.connect(server.ws_url)
    reset = await client.subscribe(FEED, since=old["head_seq"], epoch=old["epoch"])
    assert reset["type"] == "reset"
    assert reset["epoch"] != old["epoch"]
    await client.close()


async def test_history_that_lost_writes_under_its_epoch_gets_a_new_epoch(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    """A failover that dropped the last writes: seq 4 and 5 are gone from Redis."""
    node_a, node_b = start_server(redis_server.url), start_server(redis_server.url)
    watcher = await Client.connect(node_a.ws_url)
    subscribed = await watcher.subscribe(FEED)
    async with httpx.AsyncClient(timeout=10) as http:
        for i in range(5):
            await apost(http, node_a, FEED, {"body": f"before {i}"})
    await watcher.collect_until(FEED, 5)
    redis = Redis.from_url(redis_server.url)
    await redis.hset(f"lp:{{{FEED}}}:meta", "head", 3)
    await redis.xdel(f"lp:{{{FEED}}}:log", "4-1", "5-1")
    # redis-py has no XSETID method, and leaves execute_command unannotated.
    await redis.execute_command("XSETID", f"lp:{{{FEED}}}:log", "3-1")  # type: ignore[no-untyped-call]
    await redis.aclose()
    # A client that saw seq 5 proves the loss to a node that never saw it.
    client = await Client.connect(node_b.ws_url)
    reset = await client.subscribe(FEED, since=5, epoch=subscribed["epoch"])
    assert reset["type"] == "reset"
    assert reset["epoch"] != subscribed["epoch"]
    # The subscriber that was live all along on node A is told too: never a silent gap,
    # and never another life's entry under a seq it has already seen.
    async with httpx.AsyncClient(timeout=10) as http:
        await apost(http, node_a, FEED, {"body": "after the failover"})
    told = await watcher.recv_type("reset", timeout=10)
    assert told["epoch"] == reset["epoch"]
    assert watcher.seqs(FEED) == [1, 2, 3, 4, 5]
    await client.close()
    await watcher.close()


async def test_a_head_behind_its_history_starts_a_new_epoch_instead_of_failing(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    """The feed's head went back but its stream did not: publishing heals the feed."""
    server = start_server(redis_server.url)
    watcher = await Client.connect(server.ws_url)
    subscribed = await watcher.subscribe(FEED)
    async with httpx.AsyncClient(timeout=10) as http:
        for i in range(5):
            await apost(http, server, FEED, {"body": f"before {i}"})
        await watcher.collect_until(FEED, 5)
        redis = Redis.from_url(redis_server.url)
        await redis.hset(f"lp:{{{FEED}}}:meta", "head", 3)
        await redis.aclose()
        response = await apost(http, server, FEED, {"body": "after"})
        assert response.status_code == 201
        assert response.json()["seq"] == 4
    told = await watcher.recv_type("reset", timeout=10)
    assert told["epoch"] != subscribed["epoch"]
    assert told["head_seq"] == 4
    await watcher.close()


@pytest.mark.parametrize("nodes", ["one server", "cluster"])
async def test_a_connection_lost_while_loading_a_script_is_broker_unavailable(
    redis_server: RedisServer, nodes: str
) -> None:
    """A restarted Redis has no scripts: NOSCRIPT, then SCRIPT LOAD. When the connection
    fails during that load, the caller gets BrokerUnavailable (a 503, a join told to
    retry), not redis-py's ConnectionError: on a cluster the load was outside the
    conversion, and a chaos soak's node logged the ConnectionError's traceback.

    Redis closes a connection whose request holds a bulk string over
    proto-max-bulk-len: a script longer than that fails its load so, every time.
    """
    admin = Redis.from_url(redis_server.url)
    await admin.config_set("proto-max-bulk-len", 1 << 20)  # its minimum
    await admin.aclose()
    scripts = Scripts()
    sha = scripts.register("return 1 --" + "x" * (2 << 20))
    target = parse_redis_url(redis_server.url)
    name = f"127.0.0.1:{redis_server.port}"
    broker: Cluster | OneServer
    if nodes == "cluster":
        broker = Cluster([("127.0.0.1", redis_server.port)], target, scripts)
        broker._owners = [name] * SLOTS  # as CLUSTER SLOTS would say: one primary
    else:
        client = Redis.from_url(redis_server.url)
        broker = OneServer(name, RedisNodesServer(name, client), client, scripts)
    try:
        with pytest.raises(BrokerUnavailable):
            await broker.execute("{live}", [("EVALSHA", sha, 0)])
    finally:
        await broker.aclose()


def test_a_command_on_a_connection_redis_already_dropped_is_a_lost_connection(
    redis_server: RedisServer,
) -> None:
    """When Redis drops a connection before its first command is written (a primary
    killed as a node reconnects to it), uvloop raises RuntimeError for the write. A
    cluster test's node turned it into a 500 for a publisher (its log: "the handler is
    closed" under `create_entry`); it is redis-py's ConnectionError now, a 503 that the
    publisher retries, like any connection Redis dropped."""
    assert_a_dropped_connection_is_lost(redis_server.url)
