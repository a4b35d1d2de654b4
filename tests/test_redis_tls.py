"""rediss://: livepush reaches a TLS-only Redis with a client certificate; a wrong CA
is refused clearly (one log line naming the cause, /readyz 503)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.redis_topologies import TlsRedis, assert_a_dropped_connection_is_lost
from tests.support import Client, Server, apost, wait_until

FEED = "tls"


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    server = TlsRedis()
    try:
        yield server.start()
    finally:
        server.close()


def connect_errors(node: Server) -> int:
    text = httpx.get(node.base_url + "/metrics").text
    found = re.search(r"^livepush_broker_connect_errors_total (\S+)$", text, re.M)
    return int(float(found.group(1))) if found else 0


async def test_a_trusted_certificate_connects_and_delivers(
    tls_redis: TlsRedis, start_server: Callable[..., Server]
) -> None:
    node = start_server(tls_redis.url())
    client = await Client.connect(node.ws_url)
    assert (await client.subscribe(FEED))["type"] == "subscribed"
    async with httpx.AsyncClient() as http:
        assert (await http.get(node.base_url + "/readyz")).status_code == 200
        response = await apost(http, node, FEED, {"body": "over TLS"})
    assert response.status_code == 201
    event = await client.recv_type("entry.created")
    assert event["entry"]["body"] == "over TLS"
    await client.close()


async def test_a_wrong_ca_is_refused_with_one_log_line_and_readyz_503(
    tls_redis: TlsRedis, start_server: Callable[..., Server]
) -> None:
    node = start_server(tls_redis.url(ca="wrong-ca"))
    # Several attempts, one line: a reconnect loop must not fill the log.
    await asyncio.to_thread(wait_until, lambda: connect_errors(node) >= 3, 30, "3 attempts")
    lines = [line for line in node.log.read_text().splitlines() if "certificate" in line]
    assert len(lines) == 1, lines
    assert "not trusted" in lines[0]
    assert "ssl_ca_certs" in lines[0]
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(node.base_url + "/readyz")).status_code == 503
        response = await apost(http, node, FEED, {"body": "refused"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "broker_unavailable"


def test_a_command_on_a_tls_connection_redis_already_dropped_is_a_lost_connection(
    tls_redis: TlsRedis,
) -> None:
    """As on a plain connection (test_redis_faults.py): a ConnectionError, and the
    next command connects again. (uvloop's TLS transport never raised RuntimeError
    there; the plain one did.)"""
    assert_a_dropped_connection_is_lost(tls_redis.url())
