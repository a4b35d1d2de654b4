#!/usr/bin/env python3
"""Print the Python side of a WebSocket connect: livepush's path beside the floor's.

    .venv/bin/python scripts/connect_python_cost.py [--conns 4000] [--rounds 25]

No sockets, no kernel: each connection is a stub transport that keeps nothing of
what is written to it. livepush's path runs in-process as `livepush serve` builds it
(its first-request sniffing, the handshake from a template, the `FastSocket`, the
session and its join, on the embedded broker); the floor's is scripts/floor_server.py's
`SubscriberProtocol`. Both read the load generator's upgrade request, permessage-deflate
offered. The figure per path is the fastest round's µs per connection (nothing in it
waits: its time is CPU time); on a shared machine the slower rounds measure the
neighbours.

What it tells: how much of the CPU that `scripts/connect_cost.py` and bench.py's connect
scenario count per connection is livepush's own Python, and how much is the work a
server cannot avoid (accept, reads, writes, the loop), which both servers share.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

HERE = Path(__file__).resolve().parent

REQUEST = (
    b"GET /v1/ws?feed=cost HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)
SUBSCRIBE = b'{"type":"subscribe","feed":"cost"}'
BATCH = 50  # connections read per turn of the loop


def masked_text(payload: bytes, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """A client's text frame."""
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


class StubTransport:
    """What a protocol asks of its transport; writes are counted, not kept."""

    def __init__(self) -> None:
        self.protocol: Any = None
        self.written = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default


async def livepush_rounds(by_message: bool, conns: int, rounds: int) -> float:
    """The fastest round's µs per connection through livepush's path."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from livepush.app import create_app
    from livepush.config import Settings
    from livepush.transports import uvicorn as transports

    app = create_app(Settings(demo=False))
    config, state = Config(app), ServerState()
    loop = asyncio.get_running_loop()
    request = REQUEST.replace(b"?feed=cost", b"") if by_message else REQUEST
    message = masked_text(SUBSCRIBE) if by_message else b""
    best = float("inf")
    async with app.router.lifespan_context(app):
        for _ in range(rounds):
            opened: list[StubTransport] = []
            started = time.perf_counter()
            for _ in range(conns // BATCH):
                batch = [StubTransport() for _ in range(BATCH)]
                for transport in batch:
                    protocol = transports.FirstRequest(config, state, {}, loop)
                    protocol.connection_made(transport)  # type: ignore[arg-type]
                    protocol.data_received(request)
                for _ in range(1000):  # upgrades past the pacer's budget: in later turns
                    if all(transport.protocol is not None for transport in batch):
                        break
                    await asyncio.sleep(0)
                for transport in batch if message else ():
                    transport.protocol.data_received(message)
                opened += batch
            spent = time.perf_counter() - started
            for transport in opened:
                transport.closed = True
                transport.protocol.connection_lost(None)
            if all(t.written for t in opened):
                best = min(best, spent / len(opened) * 1e6)
            await asyncio.sleep(0.05)
    return best


def floor_rounds(by_message: bool, conns: int, rounds: int) -> float:
    """The fastest round's µs per connection through the floor's path."""
    sys.path.insert(0, str(HERE))
    import floor_server  # a script beside this one

    server = floor_server.FloorServer("cost")
    request = REQUEST.replace(b"?feed=cost", b"") if by_message else REQUEST
    message = masked_text(SUBSCRIBE) if by_message else b""
    best = float("inf")
    for _ in range(rounds):
        protocols = []
        started = time.perf_counter()
        for _ in range(conns):
            protocol = floor_server.SubscriberProtocol(server)
            protocol.connection_made(StubTransport())  # type: ignore[arg-type]
            protocol.data_received(request)
            if message:
                protocol.data_received(message)
            protocols.append(protocol)
        best = min(best, (time.perf_counter() - started) / conns * 1e6)
        for protocol in protocols:
            protocol.connection_lost(None)
    return best


def measure(server: str, by_message: bool, args: argparse.Namespace) -> float:
    """One server's figure, measured in a process of its own: each server's heap (and
    so its garbage collections) is its own, as when it runs."""
    command = [sys.executable, __file__, "--only", server, "--conns", str(args.conns)]
    command += ["--rounds", str(args.rounds)] + (["--by-message"] if by_message else [])
    output = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    return float(output.stdout.split()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--only", choices=["livepush", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--by-message", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only == "livepush":
        print(uvloop.run(livepush_rounds(args.by_message, args.conns, args.rounds)))
        return 0
    if args.only == "floor":
        print(floor_rounds(args.by_message, args.conns, args.rounds))
        return 0
    for by_message in (False, True):
        how = "by message" if by_message else "in the URL"
        livepush, floor = (measure(name, by_message, args) for name in ("livepush", "floor"))
        print(
            f"connect + subscribe {how}: livepush {livepush:.1f} µs of Python per "
            f"connection, floor {floor:.1f} µs ({livepush / floor:.2f}x); fastest of "
            f"{args.rounds} rounds of {args.conns:,}, stub transports"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
