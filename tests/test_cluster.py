"""Several livepush processes on one Redis behave as one server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import httpx
import psutil

from tests.support import Client, RedisServer, Server, apost, wait_until

FEED = "trial"


async def test_a_subscriber_on_node_b_receives_what_was_posted_to_node_a(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    node_a, node_b = start_server(redis_server.url), start_server(redis_server.url)
    client = await Client.connect(node_b.ws_url)
    assert (await client.subscribe(FEED))["type"] == "subscribed"
    async with httpx.AsyncClient() as http:
        response = await apost(http, node_a, FEED, {"title": "CONVICTION", "body": "Guilty."})
    assert response.status_code == 201
    event = await client.recv()
    assert event["type"] == "entry.created"
    assert event["entry"] == response.json()
    await client.close()


async def test_four_publishers_on_two_nodes_give_seqs_1_to_400_seen_by_all_in_order(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    nodes = [start_server(redis_server.url), start_server(redis_server.url)]
    clients = [await Client.connect(nodes[i % 2].ws_url) for i in range(8)]
    for client in clients:
        assert (await client.subscribe(FEED))["type"] == "subscribed"

    async def publisher(node: Server, number: int) -> list[int]:
        async with httpx.AsyncClient() as http:
            seqs = []
            for i in range(100):
                entry = {"title": f"P{number}", "body": f"entry {i} of publisher {number}"}
                response = await apost(http, node, FEED, entry)
                assert response.status_code == 201
                seqs.append(response.json()["seq"])
            return seqs

    results = await asyncio.gather(*(publisher(nodes[i % 2], i) for i in range(4)))
    assert sorted(seq for seqs in results for seq in seqs) == list(range(1, 401))
    for client in clients:
        assert await client.collect_until(FEED, 400) == list(range(1, 401))
    for client in clients:
        await client.close()


async def test_workers_share_the_port_and_every_subscriber_gets_every_event(
    redis_server: RedisServer,
) -> None:
    server = Server(redis_server.url).start(["--workers", "2"])
    try:
        assert server.proc is not None
        assert len(psutil.Process(server.proc.pid).children()) >= 2
        clients = [await Client.connect(server.ws_url) for _ in range(20)]
        for client in clients:
            assert (await client.subscribe(FEED))["type"] == "subscribed"
        async with httpx.AsyncClient() as http:
            for i in range(20):
                assert (await apost(http, server, FEED, {"body": f"{i}"})).status_code == 201
        for client in clients:
            assert await client.collect_until(FEED, 20) == list(range(1, 21))
            await client.close()
    finally:
        server.stop()


def _sockets(worker: psutil.Process, port: int, status: str) -> set[str]:
    """The kernel sockets (`socket:[inode]`) a process holds on `port` in `status`."""
    return {
        os.readlink(f"/proc/{worker.pid}/fd/{connection.fd}")
        for connection in worker.net_connections(kind="tcp")
        if connection.laddr.port == port and connection.status == status
    }


async def test_each_worker_listens_on_its_own_socket_and_takes_a_share_of_the_readers(
    redis_server: RedisServer,
) -> None:
    # One shared socket let one worker of six take 20,000 readers while the others held
    # 14,500 (README "Open files"); with a socket each, the kernel hashes them evenly.
    server = Server(redis_server.url).start(["--workers", "2"])
    try:
        assert server.proc is not None
        supervisor = psutil.Process(server.proc.pid)
        # (multiprocessing's resource tracker is a child too)
        workers = [p for p in supervisor.children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2
        assert not _sockets(supervisor, server.port, psutil.CONN_LISTEN)

        def listening() -> list[set[str]]:
            return [_sockets(worker, server.port, psutil.CONN_LISTEN) for worker in workers]

        wait_until(lambda: all(listening()), 20, what=f"both workers listening: {listening()}")
        first, second = listening()
        assert len(first) == len(second) == 1
        assert first != second
        clients = [await Client.connect(server.ws_url) for _ in range(40)]
        for client in clients:
            assert (await client.subscribe(FEED))["type"] == "subscribed"
        held = [len(_sockets(worker, server.port, psutil.CONN_ESTABLISHED)) for worker in workers]
        # Hashed over two sockets, all 40 on one worker would happen once in 2**39.
        assert sum(held) == 40
        assert min(held) > 0
        for client in clients:
            await client.close()
    finally:
        server.stop()


async def test_feed_info_counts_the_subscribers_on_every_node(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    node_a, node_b = start_server(redis_server.url), start_server(redis_server.url)
    on_a = [await Client.connect(node_a.ws_url) for _ in range(2)]
    on_b = [await Client.connect(node_b.ws_url) for _ in range(3)]
    for client in on_a + on_b:
        await client.subscribe(FEED)

    async def subscribers(node: Server) -> int:
        async with httpx.AsyncClient() as http:
            count: int = (await http.get(f"{node.base_url}/v1/feeds/{FEED}")).json()["subscribers"]
            return count

    async def eventually(node: Server, expected: int) -> None:
        # Other nodes report every 2 s: wait on the condition, bounded.
        for _ in range(100):
            if await subscribers(node) == expected:
                return
            await asyncio.sleep(0.1)
        assert await subscribers(node) == expected

    await eventually(node_a, 5)
    await eventually(node_b, 5)
    for client in on_b:
        await client.close()
    await eventually(node_a, 2)
    for client in on_a:
        await client.close()
