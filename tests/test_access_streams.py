"""Access on the subscriptions: WebSocket and SSE of private feeds, token expiry
mid-subscription, receipts' scope, and the limits on sockets (SPEC "Access")."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import websockets

from livepush.config import Settings
from tests.jwts import SECRET, KeyPair, hmac_with_public_key, mint, tampered, unsigned
from tests.support import TOKEN, Client, Server
from tests.test_sse import sse_blocks

SPORTS = "sports-desk-token-value"
MEMBERS = "members-desk-token-value"
# Long enough to subscribe and see events, short enough to run out during a test.
SHORT = 3


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return KeyPair.rsa()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, rsa_key: KeyPair) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("streams")
    tokens = [
        {"name": "sports-desk", "token": SPORTS, "feeds": ["sports-*"]},
        {"name": "members-desk", "token": MEMBERS, "feeds": ["members-*"]},
    ]
    (directory / "tokens.json").write_bytes(orjson.dumps({"tokens": tokens}))
    server = Server(
        LIVEPUSH_TOKENS_FILE=str(directory / "tokens.json"),
        LIVEPUSH_PRIVATE_FEEDS="members-*,vip",
        LIVEPUSH_JWT_SECRET=SECRET,
        LIVEPUSH_JWT_PUBLIC_KEY=str(rsa_key.write_public(directory)),
    )
    try:
        yield server.start()
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[Client]:
    client = await Client.connect(url)
    try:
        yield client
    finally:
        await client.close()


async def still_open(client: Client) -> None:
    await client.send({"type": "ping"})
    await client.recv_type("pong")


# WebSocket


async def test_a_private_feed_refuses_an_anonymous_websocket_subscription(
    guarded: Server,
) -> None:
    async with connected(guarded.ws_url) as client:
        refused = await client.subscribe("members-news")
        assert refused["type"] == "error"
        assert refused["code"] == "unauthorized"
        assert refused["feed"] == "members-news"
        guarded.post("members-news", {"body": "for members"})
        await still_open(client)  # the socket stays, and no event of the feed came
        assert [m["type"] for m in client.messages] == ["error", "pong"]
        assert (await client.subscribe("public-news"))["type"] == "subscribed"
        allowed = await client.subscribe("members-news", token=mint(["members-*"]))
        assert allowed["type"] == "subscribed"


async def test_the_url_shortcut_takes_the_token_too(guarded: Server) -> None:
    async with connected(f"{guarded.ws_url}?feed=vip") as client:
        refused = await client.recv()
        assert (refused["type"], refused["code"], refused["feed"]) == (
            "error",
            "unauthorized",
            "vip",
        )
    async with connected(f"{guarded.ws_url}?feed=vip&token={mint(['vip'])}") as client:
        assert (await client.recv())["type"] == "subscribed"


async def test_a_reader_token_for_feed_a_cannot_subscribe_to_feed_b(guarded: Server) -> None:
    token = mint(["vip"])
    async with connected(guarded.ws_url) as client:
        refused = await client.subscribe("members-news", token=token)
        assert (refused["code"], refused["feed"]) == ("forbidden", "members-news")
        assert (await client.subscribe("vip", token=token))["type"] == "subscribed"


async def test_a_publisher_token_covering_a_private_feed_may_subscribe(guarded: Server) -> None:
    async with connected(guarded.ws_url) as client:
        assert (await client.subscribe("members-x", token=MEMBERS))["type"] == "subscribed"
        assert (await client.subscribe("vip", token=TOKEN))["type"] == "subscribed"
        refused = await client.subscribe("vip", token=SPORTS)
        assert (refused["code"], refused["feed"]) == ("forbidden", "vip")


@pytest.mark.parametrize(
    "attack", ["alg-none", "hs256-with-rsa-public-key", "expired", "not-yet-valid", "tampered"]
)
async def test_a_hostile_token_is_refused_on_the_websocket(
    guarded: Server, rsa_key: KeyPair, attack: str
) -> None:
    token = {
        "alg-none": lambda: unsigned(["vip"]),
        "hs256-with-rsa-public-key": lambda: hmac_with_public_key(["vip"], rsa_key.public_pem()),
        "expired": lambda: mint(["vip"], -5),
        "not-yet-valid": lambda: mint(["vip"], nbf=int(time.time()) + 120),
        "tampered": lambda: tampered(mint(["members-x"]), feeds=["vip"]),
    }[attack]()
    async with connected(guarded.ws_url) as client:
        refused = await client.subscribe("vip", token=token)
        assert (refused["type"], refused["code"]) == ("error", "unauthorized")
        await still_open(client)


async def test_a_token_that_expires_mid_subscription_is_unsubscribed_and_a_fresh_one_continues(
    guarded: Server,
) -> None:
    feed = "members-expiry"
    async with connected(guarded.ws_url) as client:
        subscribed = await client.subscribe(feed, token=mint([feed], SHORT))
        first = guarded.post(feed, {"body": "one"}).json()["seq"]
        await client.collect_until(feed, first)
        ended = await client.recv_type("unsubscribed", timeout=SHORT + 10)
        assert ended == {"type": "unsubscribed", "feed": feed, "reason": "token_expired"}
        # Published while the client had no subscription: the fresh token's subscription
        # replays it from `since`, with no hole and no duplicate.
        missed = guarded.post(feed, {"body": "two"}).json()["seq"]
        again = await client.subscribe(
            feed, token=mint([feed]), since=first, epoch=subscribed["epoch"]
        )
        assert again["type"] == "subscribed"
        live = guarded.post(feed, {"body": "three"}).json()["seq"]
        assert await client.collect_until(feed, live) == [first, missed, live]
        await still_open(client)


async def test_receipts_need_a_token_whose_scope_covers_the_feed(guarded: Server) -> None:
    async with connected(guarded.ws_url) as client:
        refused = await client.subscribe("politics-live", receipts=True, token=SPORTS)
        assert (refused["type"], refused["code"]) == ("error", "forbidden")
        assert (await client.recv())["type"] == "subscribed"  # without receipts
        await client.subscribe("sports-live", receipts=True, token=SPORTS)
        seq = guarded.post("sports-live", {"body": "goal"}).json()["seq"]
        receipt = await client.recv_type("receipt")
        assert (receipt["feed"], receipt["seq"]) == ("sports-live", seq)
        guarded.post("politics-live", {"body": "vote"})
        await client.collect_until("politics-live", 1)
        assert not any(
            m["type"] == "receipt" and m["feed"] == "politics-live" for m in client.messages
        )


# SSE


async def events(
    server: Server, feed: str, count: int, **params: Any
) -> tuple[int, list[dict[str, str]]]:
    """The first `count` blocks of the feed's stream (fewer if it ends), and its status."""
    blocks: list[dict[str, str]] = []
    async with (
        httpx.AsyncClient(timeout=SHORT + 10) as http,
        http.stream("GET", f"{server.base_url}/v1/feeds/{feed}/events", params=params) as reply,
    ):
        if reply.status_code != 200:
            await reply.aread()
            return reply.status_code, [{"data": reply.text}]
        async with contextlib.aclosing(sse_blocks(reply)) as stream:
            async for block in stream:
                if "comment" not in block:
                    blocks.append(block)
                if len(blocks) >= count:
                    break
    return 200, blocks


async def test_a_private_feed_refuses_anonymous_sse_and_serves_its_readers(
    guarded: Server,
) -> None:
    status, body = await events(guarded, "vip", 1)
    assert status == 401
    assert orjson.loads(body[0]["data"])["error"]["code"] == "unauthorized"
    status, body = await events(guarded, "vip", 1, token=mint(["members-*"]))
    assert status == 403
    status, blocks = await events(guarded, "vip", 1, token=mint(["vip"]))
    assert status == 200
    assert blocks[0]["event"] == "subscribed"


async def test_an_expiring_sse_token_ends_the_stream_with_unsubscribed(guarded: Server) -> None:
    feed = "members-sse-expiry"
    seq = guarded.post(feed, {"body": "one"}).json()["seq"]
    status, blocks = await events(guarded, feed, 10, since=0, token=mint([feed], SHORT))
    assert status == 200
    assert [b.get("event") for b in blocks] == ["subscribed", "entry.created", "unsubscribed"]
    assert blocks[1]["id"].endswith(f":{seq}")
    ended = orjson.loads(blocks[2]["data"])
    assert ended == {"type": "unsubscribed", "feed": feed, "reason": "token_expired"}


# Limits on sockets


@pytest.fixture
def strict(start_server: Callable[..., Server]) -> Server:
    return start_server(LIVEPUSH_SUBSCRIBE_TIMEOUT="1", LIVEPUSH_MAX_CONNECTIONS_PER_ADDRESS="3")


async def test_a_socket_that_never_subscribes_is_closed(strict: Server) -> None:
    async with websockets.connect(strict.ws_url) as idle, connected(strict.ws_url) as busy:
        await busy.subscribe("anything")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(idle.recv(), 10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008
        await still_open(busy)


async def test_connections_past_the_per_address_limit_are_refused(strict: Server) -> None:
    clients = [await Client.connect(f"{strict.ws_url}?feed=crowd") for _ in range(3)]
    try:
        for client in clients:
            assert (await client.recv())["type"] == "subscribed"
        with pytest.raises(websockets.ConnectionClosed) as refused:
            async with connected(f"{strict.ws_url}?feed=crowd") as fourth:
                await fourth.recv()
        assert refused.value.rcvd is not None
        assert refused.value.rcvd.code == 1008
        status, _body = await events(strict, "crowd", 1)
        assert status == 429
        await clients.pop().close()
        async with connected(f"{strict.ws_url}?feed=crowd") as again:
            assert (await again.recv())["type"] == "subscribed"
    finally:
        for client in clients:
            await client.close()


def test_the_limit_is_off_by_default() -> None:
    assert Settings().max_connections_per_address == 0
