"""A subscriber that stops reading is cut off; nobody else waits, memory stays bounded."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
from collections.abc import Callable

import httpx
import psutil

from livepush.hub import RECENT_EVENTS
from tests.support import HOST, Client, RedisServer, Server, apost, wait_until

FEED = "firehose"
BODY = "x" * 60_000  # near the 64 KiB entry limit: the unread backlog grows fast


def stalled_subscriber(server: Server) -> socket.socket:
    """A WebSocket client that subscribes, then never reads again (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /v1/ws?feed={FEED} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101")
    return sock


def metric(server: Server, name: str) -> float:
    text = httpx.get(server.base_url + "/metrics").text
    match = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
    assert match, name
    return float(match.group(1))


async def _publish_big(server: Server, healthy: Client, first: int, count: int) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for i in range(first, first + count):
            response = await apost(http, server, FEED, {"title": str(i), "body": BODY})
            assert response.status_code == 201
            await healthy.collect_until(FEED, i)


async def test_a_subscriber_that_stops_reading_is_cut_off_while_others_receive_everything(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    # On Redis the node keeps only a bounded ring of recent events: once it is full,
    # the node's memory must not grow with anything a subscriber leaves unread.
    server = start_server(redis_server.url, LIVEPUSH_MAX_BUFFER="65536")
    healthy = await Client.connect(server.ws_url)
    await healthy.subscribe(FEED)
    warm_up = RECENT_EVENTS + 50
    await _publish_big(server, healthy, 1, warm_up)
    stalled = stalled_subscriber(server)
    await asyncio.to_thread(
        wait_until, lambda: metric(server, "livepush_subscriptions") == 2, 10, "2 subscriptions"
    )
    process = psutil.Process(server.proc.pid if server.proc else 0)
    rss_before = process.memory_info().rss
    count = 200  # 12 MB the stalled subscriber never reads
    await _publish_big(server, healthy, warm_up + 1, count)
    assert healthy.seqs(FEED) == list(range(1, warm_up + count + 1))
    assert metric(server, "livepush_slow_subscribers_closed_total") == 1
    assert metric(server, "livepush_subscriptions") == 1
    growth = process.memory_info().rss - rss_before
    assert growth < count * len(BODY) / 2, f"RSS grew {growth} bytes"
    # The stalled socket was closed by the server (aborted: it never read the close).
    stalled.settimeout(10)
    data = b"x"
    try:
        while data:
            data = stalled.recv(1 << 20)
    except ConnectionResetError:
        pass
    stalled.close()
    await healthy.close()


async def test_a_client_too_slow_to_keep_up_gets_close_code_1013(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(LIVEPUSH_MAX_BUFFER="65536")
    # websockets stops reading from the socket while its queue is full (max_queue=1).
    # Uncompressed: the 60 KB bodies of x would deflate to almost nothing.
    slow = await Client.connect(server.ws_url, max_queue=1, compression=None)
    await slow.subscribe(FEED)
    async with httpx.AsyncClient(timeout=10) as http:
        for i in range(400):  # bounded: kernel buffers on loopback hold several MB
            await apost(http, server, FEED, {"title": str(i), "body": BODY})
            if metric(server, "livepush_slow_subscribers_closed_total") == 1:
                break
    assert metric(server, "livepush_slow_subscribers_closed_total") == 1
    received = []
    try:
        while True:
            received.append((await slow.recv(5))["seq"])
    except Exception:  # the close ends the stream
        pass
    assert received == list(range(1, len(received) + 1))  # what it got was in order
    assert slow.ws.close_code == 1013
