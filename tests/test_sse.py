"""Server-Sent Events: the same events, ids of `<epoch>:<seq>`, resume by Last-Event-ID."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import httpx
import orjson
import pytest

from tests.support import HOST, RedisServer, Server, apost, wait_until
from tests.test_slow_subscriber import BODY, metric

FEED = "sse"


async def sse_blocks(response: httpx.Response) -> AsyncGenerator[dict[str, str], None]:
    """Parse an event stream into blocks of fields (comments as a `comment` field)."""
    block: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if block:
                yield block
            block = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            block[name] = value.removeprefix(" ")


async def read_events(
    server: Server, count: int, *, headers: dict[str, str] | None = None, query: str = ""
) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    url = f"{server.base_url}/v1/feeds/{FEED}/events{query}"
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("GET", url, headers=headers or {}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        # aclosing: a generator left suspended would keep the stream's connection
        # open past the test (an unclosed-transport warning when it is collected).
        async with contextlib.aclosing(sse_blocks(response)) as stream:
            async for block in stream:
                if "comment" not in block:
                    blocks.append(block)
                if len(blocks) >= count:
                    break
    return blocks


async def _publish(server: Server, count: int) -> list[dict[str, object]]:
    async with httpx.AsyncClient() as http:
        return [(await apost(http, server, FEED, {"body": f"e{i}"})).json() for i in range(count)]


async def test_events_carry_epoch_seq_ids_and_the_websocket_json(any_server: Server) -> None:
    entries = await _publish(any_server, 3)
    blocks = await read_events(any_server, 3, query="?since=1")
    assert blocks[0]["event"] == "subscribed"
    subscribed = orjson.loads(blocks[0]["data"])
    assert subscribed["head_seq"] == 3
    assert [b["id"] for b in blocks[1:]] == [f"{subscribed['epoch']}:2", f"{subscribed['epoch']}:3"]
    assert [b["event"] for b in blocks[1:]] == ["entry.created", "entry.created"]
    assert orjson.loads(blocks[2]["data"])["entry"] == entries[2]


async def test_last_event_id_resumes_after_that_event(any_server: Server) -> None:
    await _publish(any_server, 3)
    async with httpx.AsyncClient() as http:
        epoch = (await http.get(f"{any_server.base_url}/v1/feeds/{FEED}")).json()["epoch"]
    blocks = await read_events(any_server, 3, headers={"Last-Event-ID": f"{epoch}:1"})
    assert blocks[0]["event"] == "subscribed"
    assert [b["id"] for b in blocks[1:]] == [f"{epoch}:2", f"{epoch}:3"]


async def test_a_bare_seq_in_last_event_id_is_trusted(any_server: Server) -> None:
    await _publish(any_server, 4)
    blocks = await read_events(any_server, 3, headers={"Last-Event-ID": "2"})
    assert [orjson.loads(b["data"])["seq"] for b in blocks[1:]] == [3, 4]


async def test_another_epoch_gets_event_reset_and_the_stream_continues(any_server: Server) -> None:
    await _publish(any_server, 2)
    url = f"{any_server.base_url}/v1/feeds/{FEED}/events?since=1&epoch=not-this-one"
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("GET", url) as response,
        contextlib.AsyncExitStack() as stack,
    ):
        stream = await stack.enter_async_context(contextlib.aclosing(sse_blocks(response)))
        blocks = (block async for block in stream if "comment" not in block)
        reset = await anext(blocks)
        assert reset["event"] == "reset"
        assert orjson.loads(reset["data"])["head_seq"] == 2
        await _publish(any_server, 1)
        while True:
            block = await anext(blocks)
            if block.get("event") == "entry.created":
                break
        assert orjson.loads(block["data"])["seq"] == 3


async def test_idle_streams_get_keep_alive_comments(start_server: Callable[..., Server]) -> None:
    server = start_server(LIVEPUSH_SSE_KEEPALIVE="0.2")
    url = f"{server.base_url}/v1/feeds/{FEED}/events"
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("GET", url) as response,
        contextlib.aclosing(sse_blocks(response)) as stream,
    ):
        comments = [b async for b in _take(stream, 4) if "comment" in b]
    assert "keep-alive" in [c["comment"] for c in comments]


async def _take(blocks: AsyncIterator[dict[str, str]], count: int) -> AsyncIterator[dict[str, str]]:
    for _ in range(count):
        yield await anext(blocks)


def test_a_bad_since_is_a_400_with_a_json_error(server: Server) -> None:
    response = httpx.get(f"{server.base_url}/v1/feeds/{FEED}/events?since=-3")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_since"


async def test_an_sse_reader_that_stops_reading_is_cut_off(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    server = start_server(redis_server.url, LIVEPUSH_MAX_BUFFER="65536")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, server.port))
    sock.sendall(f"GET /v1/feeds/{FEED}/events HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    await asyncio.to_thread(
        wait_until, lambda: metric(server, "livepush_subscriptions") == 1, 10, "subscribed"
    )
    async with httpx.AsyncClient(timeout=10) as http:
        for i in range(400):  # bounded: loopback buffers hold several MB
            await apost(http, server, FEED, {"title": str(i), "body": BODY})
            if metric(server, "livepush_slow_subscribers_closed_total") == 1:
                break
    assert metric(server, "livepush_slow_subscribers_closed_total") == 1
    assert metric(server, "livepush_subscriptions") == 0
    sock.close()


def chunks_of(body: bytes) -> tuple[list[bytes], bytes]:
    """A chunked body's chunks up to its terminating chunk, and any bytes after it."""
    chunks: list[bytes] = []
    while True:
        size_line, crlf, body = body.partition(b"\r\n")
        assert crlf, f"no whole chunk-size line in {body[:40]!r}"
        size = int(size_line, 16)
        data, end, body = body[:size], body[size : size + 2], body[size + 2 :]
        assert end == b"\r\n", f"chunk of {size} bytes not followed by CRLF"
        if size == 0:
            return chunks, body
        chunks.append(data)


async def open_stream(
    server: Server, feed: str = FEED
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection whose event stream's head has been read and checked."""
    reader, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(f"GET /v1/feeds/{feed}/events HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\ntransfer-encoding: chunked\r\n" in head
    return reader, writer


async def test_on_sigterm_a_stream_is_one_chunked_response_that_ends_with_its_last_chunk(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    reader, writer = await open_stream(server)
    received = await asyncio.wait_for(reader.readuntil(b"event: subscribed"), 10)
    code = await asyncio.to_thread(server.stop)
    received += await asyncio.wait_for(reader.read(), 10)  # until the server closes
    chunks, after = chunks_of(received)
    assert after == b""  # the last chunk, then the connection closed: nothing else
    assert [chunk.split(b"\n")[0] for chunk in chunks] == [b": livepush", b"event: subscribed"]
    assert code in (0, -signal.SIGTERM)
    assert "Traceback" not in server.log.read_text()
    writer.close()


@pytest.mark.parametrize("allowed", [None, "https://news.example"])
def test_a_stream_head_carries_what_the_middleware_adds_to_every_response(
    start_server: Callable[..., Server], allowed: str | None
) -> None:
    # The stream's head is written by livepush, past app.py's middleware: whatever the
    # middleware adds to other responses (CORS, nosniff) must be there too.
    server = start_server(**({"LIVEPUSH_ALLOWED_ORIGINS": allowed} if allowed else {}))
    origin = {"Origin": "https://news.example"}
    snapshot = httpx.get(f"{server.base_url}/v1/feeds/{FEED}/snapshot", headers=origin)
    with httpx.stream("GET", f"{server.base_url}/v1/feeds/{FEED}/events", headers=origin) as sse:
        stream_headers = sse.headers
    own = {"content-length", "content-type", "cache-control", "date"}
    expected = {name: value for name, value in snapshot.headers.items() if name not in own}
    assert "access-control-allow-origin" in expected  # the comparison compares something
    assert {name: stream_headers.get(name) for name in expected} == expected
    assert "date" in stream_headers


async def test_a_stream_ended_by_a_broker_outage_leaves_its_connection_to_the_next_request(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    server = start_server(redis_server.url)
    redis_server.stop()
    reader, writer = await open_stream(server, "outage-sse")
    body = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 30)
    chunks, _ = chunks_of(body)
    assert b"broker unavailable" in chunks[-1]
    # uvicorn was told the response is complete: keep-alive goes on.
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    writer.close()


def test_a_head_request_gets_the_stream_headers_without_a_stream(server: Server) -> None:
    response = httpx.head(f"{server.base_url}/v1/feeds/{FEED}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
