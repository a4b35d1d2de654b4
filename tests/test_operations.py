"""Operating a node: health, readiness, metrics, drain, pings, origins, many joiners."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import websockets

from tests.support import HOST, Client, Server, apost

FEED = "ops"
ROOT = Path(__file__).resolve().parent.parent


def test_healthz_and_readyz_answer_200_on_the_embedded_broker(server: Server) -> None:
    assert httpx.get(server.base_url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.base_url + "/readyz").status_code == 200


async def test_metrics_count_connections_subscriptions_and_events(server: Server) -> None:
    client = await Client.connect(server.ws_url)
    await client.subscribe(FEED)
    async with httpx.AsyncClient() as http:
        await apost(http, server, FEED, {"body": "one"})
        await client.collect_until(FEED, 1)
        text = (await http.get(server.base_url + "/metrics")).text
    assert 'livepush_connections{transport="ws"} 1.0' in text
    assert "livepush_subscriptions 1.0" in text
    assert "livepush_events_accepted_total 1.0" in text
    assert "livepush_deliveries_total 1.0" in text
    lag_ticks = re.search(r"^livepush_loop_lag_seconds_count (\S+)$", text, re.M)
    assert lag_ticks is not None
    assert float(lag_ticks[1]) > 0  # the loop-lag timer has ticked since start-up
    await client.close()


async def test_sigterm_closes_websockets_with_1012_and_exits(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(LIVEPUSH_DRAIN_SECONDS="5")
    client = await Client.connect(server.ws_url)
    await client.subscribe(FEED)
    started = time.monotonic()
    code = await asyncio.to_thread(server.stop)
    with pytest.raises(websockets.ConnectionClosed):
        await client.recv(5)
    assert client.ws.close_code == 1012
    # uvicorn re-raises the signal once its graceful shutdown is done.
    assert code in (0, -signal.SIGTERM)
    assert "Traceback" not in server.log.read_text()
    assert time.monotonic() - started < 15  # bounded by the drain period, not measured


def test_a_socket_that_does_not_answer_pings_is_closed(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(LIVEPUSH_PING_INTERVAL="0.3")
    sock = socket.create_connection((HOST, server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /v1/ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    sock.settimeout(10)
    received = b""
    while True:  # read, never answer: the server pings, then gives up on us
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    sock.close()
    frames = received.partition(b"\r\n\r\n")[2]
    assert frames[0] == 0x89  # a ping came first
    assert b"\x88" in frames  # then a close frame (1011: keepalive ping timeout)


async def test_one_thousand_simultaneous_first_subscribers_all_receive(server: Server) -> None:
    # The broadcaster race: concurrent first subscribers to a feed must all register.
    clients = await asyncio.gather(*(Client.connect(server.ws_url) for _ in range(1000)))
    answers = await asyncio.gather(*(client.subscribe("crowd") for client in clients))
    assert {answer["type"] for answer in answers} == {"subscribed"}
    async with httpx.AsyncClient() as http:
        assert (await apost(http, server, "crowd", {"body": "to all"})).status_code == 201
    events = await asyncio.gather(*(client.recv() for client in clients))
    assert [event["seq"] for event in events] == [1] * 1000
    await asyncio.gather(*(client.close() for client in clients))


async def test_subscriptions_from_an_origin_not_allowed_are_refused(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(LIVEPUSH_ALLOWED_ORIGINS="https://news.example")
    allowed = await Client.connect(server.ws_url, origin="https://news.example")
    assert (await allowed.subscribe(FEED))["type"] == "subscribed"
    await allowed.close()
    with pytest.raises(websockets.InvalidStatus) as refused:
        await Client.connect(server.ws_url, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    async with httpx.AsyncClient() as http:
        sse = await http.get(
            f"{server.base_url}/v1/feeds/{FEED}/events", headers={"Origin": "https://evil.example"}
        )
    assert sse.status_code == 403
    assert sse.json()["error"]["code"] == "forbidden"


def test_serve_refuses_a_non_loopback_address_without_a_publisher_token() -> None:
    result = subprocess.run(
        [str(ROOT / ".venv/bin/livepush"), "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "LIVEPUSH_PUBLISH_TOKENS"},
    )
    assert result.returncode == 2
    assert "publisher token" in result.stderr


def test_serve_refuses_workers_on_the_in_process_broker() -> None:
    result = subprocess.run(
        [str(ROOT / ".venv/bin/livepush"), "serve", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--workers needs Redis" in result.stderr


def test_docker_compose_file_is_valid() -> None:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed (./dev test installs it)"
    result = subprocess.run(
        [binary, "config"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "livepush-a" in result.stdout
    assert "livepush-b" in result.stdout


def _indented(block: str) -> str:
    lines = []
    for line in block.splitlines():
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line)
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("profile", "url", "services"),
    [
        (
            "sentinel",
            "redis+sentinel://sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/livepush",
            ["redis-primary", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"],
        ),
        (
            "cluster",
            "redis+cluster://redis-node-1:6379,redis-node-2:6379,redis-node-3:6379",
            [f"redis-node-{i}" for i in range(1, 7)] + ["redis-cluster-init"],
        ),
    ],
)
def test_docker_compose_profiles_run_livepush_on_sentinel_and_on_a_cluster(
    profile: str, url: str, services: list[str]
) -> None:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed (./dev test installs it)"
    env = {**os.environ, "LIVEPUSH_REDIS_URL": url, "LIVEPUSH_REDIS_MIN_REPLICAS": "1"}
    result = subprocess.run(
        [binary, "--profile", profile, "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    for service in services:
        assert f"- {profile}" in _indented(result.stdout.split(f"\n  {service}:\n", 1)[1])
    for node in ("livepush-a", "livepush-b"):
        block = _indented(result.stdout.split(f"\n  {node}:\n", 1)[1])
        assert f"LIVEPUSH_REDIS_URL: {url}" in block
        assert "LIVEPUSH_REDIS_MIN_REPLICAS: '1'" in block
