"""Every remaining limit crossed once: a clear error, and nothing lost or published."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
import websockets

from livepush.transports.ws import MESSAGE_RATE, STRIKES
from tests.support import Client, Server


async def test_a_connection_may_hold_at_most_the_configured_number_of_feeds(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(LIVEPUSH_MAX_FEEDS_PER_CONNECTION="3")
    client = await Client.connect(server.ws_url)
    for name in ("a", "b", "c"):
        assert (await client.subscribe(name))["type"] == "subscribed"
    refused = await client.subscribe("d")
    assert refused == {
        "type": "error",
        "code": "too_many_feeds",
        "message": "at most 3 feeds per connection",
    }
    # Leaving one makes room again; the socket kept working throughout.
    await client.send({"type": "unsubscribe", "feed": "a"})
    assert (await client.subscribe("d"))["type"] == "subscribed"
    await client.close()


async def test_a_client_past_the_message_rate_is_told_then_closed_with_1008(server: Server) -> None:
    client = await Client.connect(server.ws_url)
    burst = int(2 * MESSAGE_RATE) + STRIKES + 10
    for _ in range(burst):  # faster than the rate allows: all sent at once
        await client.send({"type": "ping"})
    codes = await _error_codes_until_closed(client)
    assert set(codes) == {"rate_limited"}
    assert len(codes) > STRIKES
    assert client.ws.close_code == 1008


async def _error_codes_until_closed(client: Client) -> list[str]:
    codes: list[str] = []
    try:
        while True:
            message = await client.recv(5)
            if message["type"] == "error":
                codes.append(message["code"])
    except websockets.ConnectionClosed:
        return codes


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/feeds/lim/snapshot?limit=501", "limit"),
        ("/v1/feeds/lim/snapshot?limit=0", "limit"),
        ("/v1/feeds/lim/snapshot?before=0", "before"),
        ("/v1/feeds/lim/snapshot?before=x", "before"),
        ("/v1/feeds/lim/entries?limit=1001", "limit"),
        ("/v1/feeds/lim/entries?since=-1", "since"),
        # More digits than int() takes (4,300): still a 422, never a 500.
        ("/v1/feeds/lim/snapshot?limit=" + "9" * 5000, "limit"),
        ("/v1/feeds/lim/snapshot?before=" + "1" * 5000, "before"),
    ],
)
def test_read_parameters_out_of_range_are_422_naming_the_parameter(
    server: Server, path: str, field: str
) -> None:
    response = httpx.get(server.base_url + path)
    assert response.status_code == 422
    assert field in response.json()["error"]["fields"]


def test_an_idempotency_key_over_200_characters_is_422_and_publishes_nothing(
    server: Server,
) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/feeds/lim/entries",
        json={"body": "x"},
        headers={**server.headers(), "Idempotency-Key": "k" * 201},
    )
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["error"]["fields"]
    assert httpx.get(f"{server.base_url}/v1/feeds/lim").json()["head_seq"] == 0


def test_read_parameters_at_their_limits_are_accepted(server: Server) -> None:
    assert httpx.get(f"{server.base_url}/v1/feeds/lim/snapshot?limit=500").status_code == 200
    assert httpx.get(f"{server.base_url}/v1/feeds/lim/entries?limit=1000").status_code == 200
