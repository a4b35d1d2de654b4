"""WebSocket messages: bad ones are answered with `error` and the socket keeps working."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import websockets

from tests.support import Client, Server, apost


def new_feed() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def feed() -> str:
    return new_feed()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
async def client(live: Server) -> AsyncIterator[Client]:
    client = await Client.connect(live.ws_url)
    yield client
    await client.close()


async def publish(http: httpx.AsyncClient, live: Server, feed: str, body: str) -> dict[str, Any]:
    response = await apost(http, live, feed, {"body": body})
    assert response.status_code == 201, response.text
    entry: dict[str, Any] = response.json()
    return entry


async def feed_info(http: httpx.AsyncClient, live: Server, feed: str) -> dict[str, Any]:
    info: dict[str, Any] = (await http.get(f"{live.base_url}/v1/feeds/{feed}")).json()
    return info


async def assert_pong(client: Client) -> None:
    await client.send({"type": "ping"})
    assert await client.recv() == {"type": "pong"}


BAD_MESSAGES = [
    pytest.param("hello", "bad_json", id="not-json"),
    pytest.param("[1, 2, 3]", "bad_message", id="json-array"),
    pytest.param('{"type": "shout"}', "unknown_type", id="unknown-type"),
    pytest.param('{"type": "subscribe", "feed": "Not A Feed"}', "bad_feed", id="bad-feed"),
    pytest.param('{"type": "subscribe", "feed": "ok", "since": -1}', "bad_since", id="since-neg"),
    pytest.param(
        orjson.dumps({"type": "ping", "pad": "x" * 5000}).decode(), "too_big", id="5-kb-message"
    ),
]


@pytest.mark.parametrize(("message", "code"), BAD_MESSAGES)
async def test_bad_message_gets_an_error_and_the_socket_keeps_working(
    client: Client, message: str, code: str
) -> None:
    await client.ws.send(message)
    error = await client.recv()
    assert error["type"] == "error"
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    await assert_pong(client)


async def test_subscribe_after_bad_messages_works(
    live: Server, client: Client, http: httpx.AsyncClient, feed: str
) -> None:
    for param in BAD_MESSAGES:
        message, code = param.values
        await client.ws.send(str(message))
        assert (await client.recv())["code"] == code
        await assert_pong(client)
    assert (await client.subscribe(feed))["type"] == "subscribed"
    await publish(http, live, feed, "after the errors")
    event = await client.recv()
    assert (event["type"], event["feed"], event["seq"]) == ("entry.created", feed, 1)


async def test_ping_gets_pong(client: Client) -> None:
    await assert_pong(client)


async def test_subscribed_carries_the_feed_epoch_and_head(
    live: Server, client: Client, http: httpx.AsyncClient, feed: str
) -> None:
    await publish(http, live, feed, "one")
    await publish(http, live, feed, "two")
    info = await feed_info(http, live, feed)
    assert await client.subscribe(feed) == {
        "type": "subscribed",
        "feed": feed,
        "epoch": info["epoch"],
        "head_seq": 2,
    }


async def test_unsubscribe_stops_delivery(
    live: Server, client: Client, http: httpx.AsyncClient
) -> None:
    left, kept = new_feed(), new_feed()
    assert (await client.subscribe(left))["type"] == "subscribed"
    assert (await client.subscribe(kept))["type"] == "subscribed"
    await publish(http, live, left, "before")
    assert (await client.recv())["feed"] == left
    await client.send({"type": "unsubscribe", "feed": left})
    await assert_pong(client)  # messages are handled in order: the unsubscribe is done
    await publish(http, live, left, "after")
    await publish(http, live, kept, "the other feed")
    event = await client.recv()
    assert (event["feed"], event["seq"]) == (kept, 1)
    assert client.seqs(left) == [1]


async def test_one_socket_holds_many_feeds(
    live: Server, client: Client, http: httpx.AsyncClient
) -> None:
    feeds = [new_feed() for _ in range(5)]
    for feed in feeds:
        assert (await client.subscribe(feed))["type"] == "subscribed"
    for feed in feeds:
        await publish(http, live, feed, f"for {feed}")
    events = [await client.recv() for _ in feeds]
    assert sorted((e["feed"], e["seq"], e["entry"]["body"]) for e in events) == sorted(
        (feed, 1, f"for {feed}") for feed in feeds
    )


async def test_query_shortcut_subscribes_at_once_from_since(
    live: Server, http: httpx.AsyncClient, feed: str
) -> None:
    for i in range(3):
        await publish(http, live, feed, str(i))
    client = await Client.connect(f"{live.ws_url}?feed={feed}&since=1")
    try:
        subscribed = await client.recv()
        assert (subscribed["type"], subscribed["feed"], subscribed["head_seq"]) == (
            "subscribed",
            feed,
            3,
        )
        assert await client.collect_until(feed, 3) == [2, 3]
        await publish(http, live, feed, "live")
        assert await client.collect_until(feed, 4) == [2, 3, 4]
    finally:
        await client.close()


async def test_query_shortcut_without_since_is_from_now(
    live: Server, http: httpx.AsyncClient, feed: str
) -> None:
    await publish(http, live, feed, "old")
    client = await Client.connect(f"{live.ws_url}?feed={feed}")
    try:
        assert (await client.recv())["type"] == "subscribed"
        await publish(http, live, feed, "new")
        event = await client.recv()
        assert (event["seq"], event["entry"]["body"]) == (2, "new")
    finally:
        await client.close()


async def test_subscribe_with_another_epoch_gets_reset_with_the_current_position(
    live: Server, client: Client, http: httpx.AsyncClient, feed: str
) -> None:
    for i in range(3):
        await publish(http, live, feed, str(i))
    info = await feed_info(http, live, feed)
    reset = await client.subscribe(feed, since=1, epoch="another-life")
    assert reset == {"type": "reset", "feed": feed, "epoch": info["epoch"], "head_seq": 3}
    again = await client.subscribe(feed, since=reset["head_seq"], epoch=reset["epoch"])
    assert again["type"] == "subscribed"


async def test_subscribe_with_since_beyond_the_head_gets_reset(
    live: Server, client: Client, http: httpx.AsyncClient, feed: str
) -> None:
    await publish(http, live, feed, "one")
    await publish(http, live, feed, "two")
    info = await feed_info(http, live, feed)
    reset = await client.subscribe(feed, since=5)
    assert reset == {"type": "reset", "feed": feed, "epoch": info["epoch"], "head_seq": 2}


async def test_reset_subscription_gets_no_events(
    live: Server, client: Client, http: httpx.AsyncClient, feed: str
) -> None:
    await publish(http, live, feed, "one")
    other = new_feed()
    assert (await client.subscribe(feed, since=7))["type"] == "reset"
    assert (await client.subscribe(other))["type"] == "subscribed"
    await publish(http, live, feed, "not for the reset client")
    await publish(http, live, other, "for it")
    event = await client.recv()
    assert (event["feed"], event["seq"]) == (other, 1)


async def test_message_over_64_kib_closes_the_socket_with_1009(client: Client) -> None:
    await client.ws.send(orjson.dumps({"type": "ping", "pad": "x" * (64 * 1024)}).decode())
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await client.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
