"""The `/v1/ws` handshake on raw sockets: the template answer, websockets' answer to
anything else, and a connection that is HTTP first and an upgrade later."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest
import websockets

from livepush.transports.fastws import Upgrades
from tests.support import HOST, Server, free_port, wait_until

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(scope="module")
def node() -> Iterator[Server]:
    server = Server().start()
    yield server
    server.stop()


def upgrade_request(
    target: str = "/v1/ws?feed=hs", key: bytes | None = None, **headers: str
) -> tuple[bytes, bytes]:
    key = key if key is not None else base64.b64encode(os.urandom(16))
    fields = {
        "Host": "localhost",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key.decode(),
        "Sec-WebSocket-Version": "13",
        **{name.replace("_", "-"): value for name, value in headers.items()},
    }
    head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return (head + "\r\n").encode(), base64.b64encode(hashlib.sha1(key + GUID).digest())


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (payloads under 126 bytes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


async def read_message(reader: asyncio.StreamReader) -> dict[str, object]:
    first, second = await asyncio.wait_for(reader.readexactly(2), 5)
    assert first == 0x81  # one unfragmented text frame, unmasked
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    message: dict[str, object] = orjson.loads(await reader.readexactly(length))
    return message


async def shut(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):  # the server may already have closed it
        await writer.wait_closed()


async def open_raw(node: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, node.port)


async def test_a_well_formed_upgrade_is_answered_with_the_right_accept_key(node: Server) -> None:
    reader, writer = await open_raw(node)
    request, expected = upgrade_request()
    writer.write(request)
    status, headers = await read_head(reader)
    assert status == 101
    assert headers["upgrade"].lower() == "websocket"
    assert headers["sec-websocket-accept"] == expected.decode()
    assert "sec-websocket-extensions" not in headers  # none offered
    assert (await read_message(reader))["type"] == "subscribed"
    await shut(writer)


async def test_a_request_split_over_many_segments_is_still_understood(node: Server) -> None:
    reader, writer = await open_raw(node)
    request, expected = upgrade_request()
    for i in range(0, len(request), 7):
        writer.write(request[i : i + 7])
        await writer.drain()
        await asyncio.sleep(0.002)
    status, headers = await read_head(reader)
    assert (status, headers["sec-websocket-accept"]) == (101, expected.decode())
    await shut(writer)


async def test_frames_sent_with_the_request_are_not_lost(node: Server) -> None:
    reader, writer = await open_raw(node)
    request, _ = upgrade_request(target="/v1/ws")
    writer.write(request + client_frame(b'{"type":"ping"}'))  # one segment
    status, _ = await read_head(reader)
    assert status == 101
    assert await read_message(reader) == {"type": "pong"}
    await shut(writer)


async def test_deflate_offers_are_negotiated_and_remembered_per_offer(node: Server) -> None:
    offer = "permessage-deflate; client_max_window_bits"
    for _ in range(3):  # the second and third answers come from the cache
        reader, writer = await open_raw(node)
        request, _ = upgrade_request(Sec_WebSocket_Extensions=offer)
        writer.write(request)
        status, headers = await read_head(reader)
        assert status == 101
        answer = headers["sec-websocket-extensions"]
        assert answer.startswith("permessage-deflate")
        assert "server_no_context_takeover" in answer
        assert "client_no_context_takeover" in answer
        await shut(writer)


@pytest.mark.parametrize(
    ("key", "version", "status"),
    [
        (b"not-base64!", "13", 400),
        (base64.b64encode(b"short"), "13", 400),
        (base64.b64encode(os.urandom(16)), "12", 400),
    ],
    ids=["key-not-base64", "key-too-short", "version-12"],  # one key is random
)
async def test_a_malformed_upgrade_gets_websockets_own_error(
    node: Server, key: bytes, version: str, status: int
) -> None:
    reader, writer = await open_raw(node)
    request, _ = upgrade_request(key=key, Sec_WebSocket_Version=version)
    writer.write(request)
    got, _ = await read_head(reader)
    assert got == status
    await shut(writer)


async def test_a_known_head_whose_key_has_the_length_but_is_not_base64_gets_websockets_error(
    node: Server,
) -> None:
    known, _ = upgrade_request()
    reader, writer = await open_raw(node)
    writer.write(known)  # the node now knows this head (but for its key)
    assert (await read_head(reader))[0] == 101
    await shut(writer)
    for key in (b"!" * 24, b"A" * 23 + b"="):  # 24 bytes: not base64; 17 bytes once decoded
        reader, writer = await open_raw(node)
        request, _ = upgrade_request(key=key)
        assert request.replace(key, known.split(b"Key: ")[1][:24]) == known
        writer.write(request)
        assert (await read_head(reader))[0] == 400
        await shut(writer)


@pytest.mark.parametrize("first_line", ["POST /v1/ws HTTP/1.1", "GET /v1/ws HTTP/1.0"])
async def test_an_upgrade_with_another_method_or_version_is_refused(
    node: Server, first_line: str
) -> None:
    reader, writer = await open_raw(node)
    request, _ = upgrade_request()
    writer.write(request)  # the same head but for its request line is known
    assert (await read_head(reader))[0] == 101
    await shut(writer)
    reader, writer = await open_raw(node)
    writer.write(first_line.encode() + request[request.index(b"\r\n") :])
    status, _ = await read_head(reader)
    assert status >= 400  # never 101
    await shut(writer)


async def test_a_malformed_deflate_offer_gets_websockets_own_error(node: Server) -> None:
    reader, writer = await open_raw(node)
    request, _ = upgrade_request(Sec_WebSocket_Extensions="permessage-deflate; =x")
    writer.write(request)
    status, _ = await read_head(reader)
    assert status == 400
    await shut(writer)


async def test_an_http_request_first_then_an_upgrade_on_the_same_connection(node: Server) -> None:
    reader, writer = await open_raw(node)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, headers = await read_head(reader)
    assert status == 200
    await reader.readexactly(int(headers["content-length"]))
    request, expected = upgrade_request()
    writer.write(request)  # the same keep-alive connection, now uvicorn's
    status, headers = await read_head(reader)
    assert (status, headers["sec-websocket-accept"]) == (101, expected.decode())
    assert (await read_message(reader))["type"] == "subscribed"
    await shut(writer)


async def test_a_plain_get_of_the_websocket_path_is_an_http_request(node: Server) -> None:
    reader, writer = await open_raw(node)
    writer.write(b"GET /v1/ws HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, _ = await read_head(reader)
    assert 400 <= status < 500  # Starlette: no WebSocket route for plain HTTP
    await shut(writer)


async def test_an_oversized_request_head_is_left_to_uvicorn(node: Server) -> None:
    reader, writer = await open_raw(node)
    request, _ = upgrade_request(X_Padding="x" * 20000)
    writer.write(request)
    status, _ = await read_head(reader)
    # uvicorn's path: still a working upgrade (httptools' own limits are larger).
    assert status == 101
    assert (await read_message(reader))["type"] == "subscribed"
    await shut(writer)


async def test_pings_and_close_work_on_a_socket_that_never_sent_a_frame(node: Server) -> None:
    async with websockets.connect(f"{node.ws_url}?feed=hs", compression=None) as ws:
        assert orjson.loads(await ws.recv())["type"] == "subscribed"
        pong = await ws.ping()
        await asyncio.wait_for(pong, 5)
    assert ws.close_code == 1000


async def test_sigterm_closes_a_connection_that_has_not_finished_its_request(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    reader, writer = await open_raw(server)
    writer.write(b"GET /v1/ws HTTP/1.1\r\nHost: local")  # and nothing more
    await writer.drain()
    await asyncio.sleep(0.2)
    code = await asyncio.to_thread(server.stop)
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, not left hanging
    assert "Traceback" not in server.log.read_text()
    await shut(writer)


async def test_the_answer_then_subscribed_then_the_catch_up_in_order(node: Server) -> None:
    # A watcher keeps the feed in the node's memory, so the next join completes
    # during the handshake: its messages are written together with the 101.
    async with websockets.connect(f"{node.ws_url}?feed=order") as watcher:
        assert orjson.loads(await watcher.recv())["type"] == "subscribed"
        for i in range(3):
            assert node.post("order", {"title": f"T{i}", "body": "b"}).status_code == 201
        for _ in range(3):
            await watcher.recv()
        reader, writer = await open_raw(node)
        request, expected = upgrade_request(target="/v1/ws?feed=order&since=0")
        writer.write(request)
        status, headers = await read_head(reader)
        assert (status, headers["sec-websocket-accept"]) == (101, expected.decode())
        subscribed = await read_message(reader)
        assert (subscribed["type"], subscribed["head_seq"]) == ("subscribed", 3)
        assert [(await read_message(reader))["seq"] for _ in range(3)] == [1, 2, 3]
        await shut(writer)


async def test_a_connection_without_a_whole_first_request_is_closed(
    start_server: Callable[..., Server],
) -> None:
    # uvicorn would keep both open for ever; livepush gives a first request head
    # LIVEPUSH_FIRST_REQUEST_TIMEOUT seconds (10 by default) to arrive.
    node = start_server(LIVEPUSH_FIRST_REQUEST_TIMEOUT="1")
    silent_reader, silent = await open_raw(node)
    partial_reader, partial = await open_raw(node)
    partial.write(b"GET /v1/ws?feed=hs HTTP/1.1\r\nHost: loc")
    await partial.drain()
    for reader in (silent_reader, partial_reader):
        # Closed by the server, after the 1 s set and well before the default's 10 s.
        assert await asyncio.wait_for(reader.read(), 8) == b""
    async with websockets.connect(f"{node.ws_url}?feed=hs") as ws:  # others unaffected
        assert orjson.loads(await ws.recv())["type"] == "subscribed"
    await shut(silent)
    await shut(partial)


def test_the_negotiation_cache_stays_bounded_and_answers_alike_past_its_bound() -> None:
    upgrades = Upgrades("shared")
    key = base64.b64encode(os.urandom(16))
    answers = set()
    for i in range(Upgrades.CACHE * 2 + 5):  # distinct offers: each one a new entry
        offer = f"x-unknown-{i}, permessage-deflate; client_max_window_bits".encode()
        headers = [(b"sec-websocket-key", key), (b"sec-websocket-version", b"13")]
        answer = upgrades.answer("GET", "1.1", [*headers, (b"sec-websocket-extensions", offer)])
        assert answer is not None
        response, deflate = answer
        answers.add(response)
        assert deflate is not None  # deflate negotiated every time
        assert len(upgrades._negotiated) <= Upgrades.CACHE
    assert len(answers) == 1  # the same 101 whether cached or not


@pytest.fixture
def plain_uvicorn() -> Iterator[str]:
    """livepush's app under uvicorn's own protocols (not `livepush serve`): its base URL."""
    port = free_port()
    env = {**os.environ, "LIVEPUSH_PUBLISH_TOKENS": "t", "LIVEPUSH_DEMO": "0"}
    command = [sys.executable, "-m", "uvicorn", "--factory", "livepush.app:app_from_environment"]
    command += ["--host", HOST, "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    base_url = f"http://{HOST}:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, "uvicorn exited"
        try:
            return httpx.get(base_url + "/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 20, "plain uvicorn to answer")
        yield base_url
    finally:
        proc.terminate()
        proc.wait(15)


async def test_under_another_server_the_websocket_route_refuses_with_a_clear_501(
    plain_uvicorn: str,
) -> None:
    url = plain_uvicorn.replace("http://", "ws://") + "/v1/ws?feed=hs"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url)
    assert refused.value.response.status_code == 501
    assert b"livepush serve" in refused.value.response.body


@pytest.mark.parametrize(
    ("field", "status"),
    [
        (b"Upgrade:\twebsocket  ", 101),  # tabs and trailing spaces: still the fast path's
        (b"X-Note: caf\xc3\xa9", 101),  # obs-text is allowed in a value
        (b"X-Note: a\x01b", 400),  # a control character: uvicorn's httptools refuses it
        (b"X-Note : a", 400),  # a space before the colon: refused as well
        (b"X-Note: a\r\n folded", 400),  # an obsolete folded line
    ],
)
async def test_a_head_the_fast_path_does_not_read_itself_is_uvicorns(
    node: Server, field: bytes, status: int
) -> None:
    request, expected = upgrade_request()
    head, _, _ = request.rpartition(b"\r\n\r\n")
    reader, writer = await open_raw(node)
    writer.write(head + b"\r\n" + field + b"\r\n\r\n")
    got, headers = await read_head(reader)
    assert got == status
    if status == 101:
        assert headers["sec-websocket-accept"] == expected.decode()
        assert (await read_message(reader))["type"] == "subscribed"
    await shut(writer)
