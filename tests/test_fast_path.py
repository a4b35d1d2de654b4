"""The fast path: every subscriber gets exactly the bytes of every event, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import orjson
import websockets
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)

from tests.support import Server, apost

FEED = "bytes"
BODY = "Halvorsen arrived at 9:40, dark suit, no comment. " * 20  # ~1 KiB, compresses well


async def _receive_raw(ws: websockets.ClientConnection, count: int) -> list[bytes]:
    frames: list[bytes] = []
    while len(frames) < count:
        message = await asyncio.wait_for(ws.recv(decode=False), 10)
        if orjson.loads(message)["type"].startswith("entry."):
            frames.append(message)
    return frames


async def _publish_and_history(server: Server, count: int) -> list[bytes]:
    async with httpx.AsyncClient() as http:
        for i in range(count):
            response = await apost(http, server, FEED, {"title": f"T{i}", "body": BODY})
            assert response.status_code == 201
        history = await http.get(f"{server.base_url}/v1/feeds/{FEED}/entries?since=0")
    # Re-encode each event alone: history's bytes are the events' bytes, joined by commas.
    return [orjson.dumps(event) for event in history.json()["events"]]


def _deflate(ws: websockets.ClientConnection) -> PerMessageDeflate | None:
    found = [e for e in ws.protocol.extensions if isinstance(e, PerMessageDeflate)]
    return found[0] if found else None


async def test_subscribers_with_and_without_compression_get_the_same_bytes_in_order(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(LIVEPUSH_WS_COMPRESSION="shared")
    url = f"{server.ws_url}?feed={FEED}"
    offering = [await websockets.connect(url) for _ in range(3)]  # offers deflate
    plain = [await websockets.connect(url, compression=None) for _ in range(3)]
    small_window = await websockets.connect(
        url, compression=None, extensions=[ClientPerMessageDeflateFactory(server_max_window_bits=9)]
    )
    for ws in offering:
        deflate = _deflate(ws)
        assert deflate is not None
        assert deflate.remote_no_context_takeover  # the server keeps no context per socket
    assert all(_deflate(ws) is None for ws in plain)
    assert _deflate(small_window) is None  # a window livepush cannot honour: uncompressed
    everyone = [*offering, *plain, small_window]
    for ws in everyone:
        assert orjson.loads(await ws.recv())["type"] == "subscribed"

    expected = await _publish_and_history(server, 20)
    for ws in everyone:
        received = await _receive_raw(ws, 20)
        assert [orjson.loads(frame) for frame in received] == [orjson.loads(e) for e in expected]
        assert [orjson.loads(frame)["seq"] for frame in received] == list(range(1, 21))
        await ws.close()


async def test_compression_off_declines_it_even_when_offered(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(LIVEPUSH_WS_COMPRESSION="off")
    ws = await websockets.connect(f"{server.ws_url}?feed={FEED}")
    assert _deflate(ws) is None
    assert orjson.loads(await ws.recv())["type"] == "subscribed"
    expected = await _publish_and_history(server, 3)
    received = await _receive_raw(ws, 3)
    assert [orjson.loads(frame) for frame in received] == [orjson.loads(e) for e in expected]
    await ws.close()


async def test_compressed_client_messages_are_understood(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(LIVEPUSH_WS_COMPRESSION="shared")
    ws = await websockets.connect(server.ws_url)
    assert _deflate(ws) is not None
    await ws.send(orjson.dumps({"type": "ping", "pad": "x" * 2000}).decode())  # compressed
    assert orjson.loads(await ws.recv()) == {"type": "pong"}
    await ws.close()
