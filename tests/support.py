"""Real processes for tests: redis-server and livepush servers on free loopback ports."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets

HOST = "127.0.0.1"
TOKEN = "test-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


class RedisServer:
    """A real redis-server on a free port; `persist` keeps an append-only file."""

    def __init__(self, persist: bool = False) -> None:
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.persist = persist
        self.dir = tempfile.mkdtemp(prefix="livepush-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (./dev test installs it)"
        args = [binary, "--port", str(self.port), "--bind", HOST, "--dir", self.dir, "--save", ""]
        args += (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persist
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, what="redis-server to answer")
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    """`livepush serve` as a real process on a free port."""

    def __init__(self, redis_url: str | None = None, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.redis_url = redis_url
        self.base_url = f"http://{HOST}:{self.port}"
        self.ws_url = f"ws://{HOST}:{self.port}/v1/ws"
        self.token = TOKEN
        # Publishing has no rate limit by default. A drain of 2 s leaves no window to
        # spread closes over (transports/base.Drain): a test's SIGTERM closes every
        # socket at once and the node is back sooner; tests of the drain set their own.
        self.env = {"LIVEPUSH_DEMO": "0", "LIVEPUSH_DRAIN_SECONDS": "2", **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="livepush-server-", suffix=".log")[1])

    def start(self, extra: list[str] | None = None, prefix: list[str] | None = None) -> Server:
        """Start the process; `prefix` runs it under another command (a limits wrapper)."""
        args = [*(prefix or []), sys.executable, "-m", "livepush.cli", "serve", "--host", HOST]
        args += ["--port", str(self.port), "--publish-token", self.token, "--log-level", "warning"]
        if self.redis_url:
            args += ["--redis-url", self.redis_url]
        env = {**os.environ, **self.env}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args + (extra or []), env=env, stdout=log, stderr=log)
        wait_until(
            self.healthy, 20, what=f"livepush on {self.port}: {self.log.read_text()[-2000:]}"
        )
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"livepush exited: {self.log.read_text()[-3000:]}")
        try:
            return httpx.get(self.base_url + "/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self.proc = None
        return code

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, feed: str, entry: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return httpx.post(
            f"{self.base_url}/v1/feeds/{feed}/entries", json=entry, headers=self.headers(), **kwargs
        )


async def apost(
    client: httpx.AsyncClient, server: Server, feed: str, entry: dict[str, Any]
) -> httpx.Response:
    return await client.post(
        f"{server.base_url}/v1/feeds/{feed}/entries", json=entry, headers=server.headers()
    )


class Client:
    """A real WebSocket client that keeps every message it received, in order."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> Client:
        return cls(await websockets.connect(url, max_size=None, **kwargs))

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        message: dict[str, Any] = orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.messages.append(message)
        return message

    async def recv_type(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            message = await self.recv(timeout)
            if message["type"] == kind:
                return message

    async def subscribe(self, feed: str, **fields: Any) -> dict[str, Any]:
        await self.send({"type": "subscribe", "feed": feed, **fields})
        return await self.recv()

    def seqs(self, feed: str) -> list[int]:
        return [m["seq"] for m in self.messages if m.get("feed") == feed and "seq" in m]

    async def collect_until(self, feed: str, seq: int, timeout: float = 20.0) -> list[int]:
        """Receive until the feed's event `seq` arrived; return the feed's seqs."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.seqs(feed) or self.seqs(feed)[-1] < seq:
            await self.recv(max(0.01, deadline - asyncio.get_running_loop().time()))
        return self.seqs(feed)

    async def close(self) -> None:
        await self.ws.close()
