"""The Python floor: the least work a Python asyncio server can do to fan out an event.

It is the yardstick of the benchmark (scripts/bench.py), not a server to run: every
Redis message on the feed's channel becomes ONE pre-built unmasked WebSocket text
frame, written to every open transport in a plain loop.

What it leaves out, and what that costs (all on purpose, so livepush is compared with
the cheapest possible Python fan-out):
- No ingest API: the harness PUBLISHes the finished event JSON (with its seq and the
  publisher's timestamp in ``entry.meta.t``) straight to the Redis channel
  ``floor:feed:<feed>``. No schema check, no seq assignment, no history.
- No backpressure: a client that stops reading grows its transport buffer without
  bound (uvloop buffers whatever ``write()`` is given).
- No extensions: permessage-deflate is always declined (the response simply does not
  name it), so a client that offers it gets plain frames.
- One feed per process, chosen on the command line; every upgraded socket is
  subscribed to it, whatever it asks. It answers ``{"type":"subscribed",...}`` at once
  when the path carries ``?feed=``, else on the client's first text frame that
  mentions "subscribe".
- No heartbeat of its own: it answers pings and close frames, nothing more.

Run: python scripts/floor_server.py --port 9001 --redis-url redis://127.0.0.1:6379/0
It starts listening only once the Redis subscription is confirmed, so a harness can
take "the port accepts" for "ready".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import resource
import signal
import struct
from typing import cast

import orjson
import redis.asyncio as redis
import uvloop

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_REQUEST_BYTES = 16384


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented server-to-client text frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def control_frame(opcode: int, payload: bytes) -> bytes:
    return struct.pack("!BB", 0x80 | opcode, len(payload)) + payload


def accept_value(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


class FloorServer:
    """The set of open subscriber transports of one feed."""

    def __init__(self, feed: str) -> None:
        self.feed = feed
        self.transports: set[asyncio.Transport] = set()
        self.subscribed_frame = text_frame(
            orjson.dumps({"type": "subscribed", "feed": feed, "epoch": "floor", "head_seq": 0})
        )

    def deliver(self, event_json: bytes) -> None:
        """Write one event, framed once, to every transport. Never awaits.

        There's no backpressure: a slow reader's buffer grows without bound.
        """
        frame = text_frame(event_json)
        for transport in self.transports:
            transport.write(frame)


class SubscriberProtocol(asyncio.Protocol):
    """One client socket: the HTTP upgrade, then just enough of RFC 6455 to stay polite."""

    def __init__(self, server: FloorServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.subscribed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they do behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            self.upgrade()
        if self.upgraded:
            self.read_frames()

    def upgrade(self) -> None:
        assert self.transport is not None
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_REQUEST_BYTES:
                self.transport.abort()
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        request_line, *header_lines = head.split("\r\n")
        parts = request_line.split(" ")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get("sec-websocket-key")
        if len(parts) != 3 or not parts[1].startswith("/v1/ws") or not key:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()
            return
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_value(key.encode())
            + b"\r\n\r\n"
        )
        self.upgraded = True
        self.server.transports.add(self.transport)
        if "feed=" in parts[1]:
            self.subscribe()

    def subscribe(self) -> None:
        assert self.transport is not None
        if not self.subscribed:
            self.subscribed = True
            self.transport.write(self.server.subscribed_frame)

    def read_frames(self) -> None:
        assert self.transport is not None
        buf = self.buffer
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            masked = buf[1] & 0x80
            length = buf[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buf) < 4:
                    return
                (length,) = struct.unpack_from("!H", buf, 2)
                offset = 4
            elif length == 127:
                if len(buf) < 10:
                    return
                (length,) = struct.unpack_from("!Q", buf, 2)
                offset = 10
            if length > MAX_REQUEST_BYTES:
                self.transport.abort()  # not a benchmark client
                return
            mask = b""
            if masked:
                mask = bytes(buf[offset : offset + 4])
                offset += 4
            if len(buf) < offset + length:
                return
            payload = bytes(buf[offset : offset + length])
            del buf[: offset + length]
            if mask:
                payload = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
            if opcode == 0x1 and b"subscribe" in payload:
                self.subscribe()
            elif opcode == 0x9:
                self.transport.write(control_frame(0xA, payload))
            elif opcode == 0x8:
                self.transport.write(control_frame(0x8, payload[:2]))
                self.transport.close()
                return


async def listen_to_redis(server: FloorServer, pubsub: redis.client.PubSub) -> None:
    """Hand every message of the feed's channel to deliver(); nothing else."""
    async for message in pubsub.listen():
        if message["type"] == "message":
            server.deliver(message["data"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--feed", default="bench")
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args()

    # Every subscriber is a descriptor: take the hard limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    stop = asyncio.Event()
    server = FloorServer(args.feed)
    client = redis.Redis.from_url(args.redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"floor:feed:{args.feed}")
    listener = asyncio.create_task(listen_to_redis(server, pubsub))
    # A floor that lost Redis measures nothing: stop, and let the harness see it exit.
    listener.add_done_callback(lambda _: stop.set())

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tcp = await loop.create_server(
        lambda: SubscriberProtocol(server), args.host, args.port, backlog=args.backlog
    )
    print(f"floor: listening on {args.host}:{args.port}, feed {args.feed}", flush=True)
    try:
        await stop.wait()
    finally:
        tcp.close()
        for transport in list(server.transports):
            transport.abort()
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


if __name__ == "__main__":
    uvloop.run(main())
