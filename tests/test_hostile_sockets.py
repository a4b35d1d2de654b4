"""Malformed data on raw sockets, and hostile reader tokens: each is refused (RFC 6455's
close codes; 401), while a healthy subscriber on the same server keeps receiving and the
server's memory stays put."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import psutil
import pytest

from tests.jwts import SECRET, KeyPair, hmac_with_public_key, mint, tampered, unsigned
from tests.support import HOST, Client, Server
from tests.test_handshake import upgrade_request

FEED = "healthy"
ROUNDS = 20  # of every attack, after one round of warm-up
MEMORY_RATIO = 1.5  # generous: this catches growth per attack, not allocator noise


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return KeyPair.rsa()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, rsa_key: KeyPair) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("hostile")
    server = Server(
        LIVEPUSH_PRIVATE_FEEDS="vip",
        LIVEPUSH_JWT_SECRET=SECRET,
        LIVEPUSH_JWT_PUBLIC_KEY=str(rsa_key.write_public(directory)),
    )
    try:
        yield server.start()
    finally:
        server.stop()


def frame(
    payload: bytes,
    opcode: int = 0x1,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """One client frame, as a well-behaved client would never send some of them."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload) if length is None else length
    if size < 126:
        head = struct.pack("!BB", first, (0x80 if masked else 0) | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, (0x80 if masked else 0) | 126, size)
    else:
        head = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, size)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


PING = frame(b"", 0x9)

# What each attack sends after a valid handshake, and the close codes that answer it.
ATTACKS: dict[str, tuple[bytes, set[int]]] = {
    "garbage-bytes": (bytes(range(256)) * 4, {1002}),
    "unmasked-frame": (frame(b'{"type":"ping"}', masked=False), {1002}),
    "reserved-bits": (frame(b'{"type":"ping"}', rsv=0b111), {1002}),
    "rsv1-without-deflate": (frame(b'{"type":"ping"}', rsv=0b100), {1002}),
    "fragmented-ping": (frame(b"x", 0x9, fin=False), {1002}),
    "fragmented-close": (frame(b"\x03\xe8", 0x8, fin=False), {1002}),
    "oversize-control": (frame(b"x" * 126, 0x9), {1002}),
    "oversize-length": (frame(b"", length=2**63 - 1)[:14], {1009}),
    "over-max-size": (frame(b"", length=65 * 1024)[:10], {1009}),
    "invalid-utf8-text": (frame(b'{"type":"\xff\xfe"}'), {1007}),
    "truncated-utf8-text": (frame(b"\xe2\x82"), {1007}),
    "continuation-first": (frame(b"x", 0x0), {1002}),
    "unknown-opcode": (frame(b"x", 0x3), {1002}),
    "close-bad-code": (frame(struct.pack("!H", 999), 0x8), {1002}),
    "close-one-byte": (frame(b"\x03", 0x8), {1002}),
    "close-reason-not-utf8": (frame(struct.pack("!H", 1000) + b"\xff", 0x8), {1007}),
    "binary-frame": (frame(b'{"type":"ping"}', 0x2), {1003}),
}


async def close_code(reader: asyncio.StreamReader) -> int | None:
    """Read server frames until its close frame; its code (None: no close frame)."""
    while True:
        try:
            head = await asyncio.wait_for(reader.readexactly(2), 10)
        except asyncio.IncompleteReadError:
            return None
        length = head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        payload = await reader.readexactly(length)
        if head[0] & 0x0F == 0x8:
            return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005


Pipe = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def raw_socket(
    server: Server,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def attack(server: Server, name: str) -> int | None:
    payload, _ = ATTACKS[name]
    request, _accept = upgrade_request("/v1/ws")
    async with raw_socket(server) as (reader, writer):
        writer.write(request)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(payload)
        return await close_code(reader)


async def garbage_request(server: Server) -> bytes:
    """Bytes that are no HTTP request at all: the answer is a 400, or nothing."""
    async with raw_socket(server) as (reader, writer):
        writer.write(os.urandom(512) + b"\r\n\r\n")
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            return await asyncio.wait_for(reader.read(1024), 10)
    return b""


def hostile_tokens(rsa_key: KeyPair) -> list[str]:
    return [
        unsigned(["vip"]),
        hmac_with_public_key(["vip"], rsa_key.public_pem()),
        mint(["vip"], -5),
        mint(["vip"], nbf=int(time.time()) + 120),
        tampered(mint(["other"]), feeds=["vip"]),
        "x" * 9000,
    ]


async def hostile_reads(server: Server, tokens: list[str]) -> None:
    """Each token on a WebSocket (message and URL) and over HTTP: refused every time."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for token in tokens:
            reply = await http.get("/v1/feeds/vip/snapshot", params={"token": token})
            assert reply.status_code == 401
    client = await Client.connect(server.ws_url)
    try:
        for token in tokens:
            refused = await client.subscribe("vip", token=token)
            assert refused["type"] == "error"
            # The 9000-character one is over a client message's 4 KiB.
            assert refused["code"] == ("too_big" if len(token) > 4000 else "unauthorized")
    finally:
        await client.close()
    url = f"{server.ws_url}?feed=vip&token={tokens[0]}"
    client = await Client.connect(url)
    try:
        assert (await client.recv())["code"] == "unauthorized"
    finally:
        await client.close()


async def healthy_receives(server: Server, client: Client, count: int) -> None:
    """Publish one entry and see the healthy subscriber get it, in order."""
    response = server.post(FEED, {"body": f"after {count} attacks"})
    assert response.status_code == 201
    seq = response.json()["seq"]
    assert (await client.collect_until(FEED, seq))[-1] == seq


@pytest.mark.parametrize("name", sorted(ATTACKS))
async def test_a_malformed_frame_is_refused_with_its_close_code(target: Server, name: str) -> None:
    assert await attack(target, name) in ATTACKS[name][1]


async def test_garbage_instead_of_a_request_is_refused(target: Server) -> None:
    answer = await garbage_request(target)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")


async def test_a_healthy_subscriber_keeps_receiving_and_memory_returns_to_its_baseline(
    target: Server, rsa_key: KeyPair
) -> None:
    assert target.proc is not None
    process = psutil.Process(target.proc.pid)
    client = await Client.connect(f"{target.ws_url}?feed={FEED}")
    try:
        await client.recv_type("subscribed")
        tokens = hostile_tokens(rsa_key)
        for name in ATTACKS:  # warm-up: every code path allocated once
            await attack(target, name)
        await garbage_request(target)
        await hostile_reads(target, tokens)
        baseline = process.memory_info().rss
        for round_ in range(ROUNDS):
            for name in ATTACKS:
                assert await attack(target, name) in ATTACKS[name][1], name
            await garbage_request(target)
            await hostile_reads(target, tokens)
            await healthy_receives(target, client, round_)
        grown = process.memory_info().rss
        assert grown < baseline * MEMORY_RATIO, (baseline, grown)
        seqs = client.seqs(FEED)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no hole, no duplicate
    finally:
        await client.close()
