"""The chaos soak's processes: one redis-server or a cluster's primaries, livepush nodes.

scripts/chaos.py puts them together and decides when each fault strikes; the traffic
is scripts/chaos_traffic.py's, the judging scripts/chaos_record.py's. Every process
here is a child in its own session (so a Ctrl-C reaches only the soak, which stops
them) that the kernel kills if the soak dies (PR_SET_PDEATHSIG), and every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import ConnectionPool, Redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from livepush.brokers.redis_nodes import _ClosedIsLost

HOST = "127.0.0.1"
TOKEN = "chaos-token"
ROOT = Path(__file__).resolve().parent.parent
BACKOFF_BASE = 0.5  # seconds, as livepush.js and livepush.client
SSE_KEEPALIVE = 5  # seconds between the nodes' SSE comments (LIVEPUSH_SSE_KEEPALIVE)
DRAIN_SECONDS = 3  # the nodes' --drain-seconds: a SIGTERM'd node is gone within it
# What an HTTP request may raise when its node dies under it. AttributeError: anyio on
# uvloop asks a transport that a reset has just closed for its socket, gets None, and
# calls getpeername() on it; the request failed like any other lost connection.
HTTP_ERRORS = (httpx.HTTPError, OSError, AttributeError)

# prctl(PR_SET_PDEATHSIG, SIGKILL) in each child, between fork and exec: if the soak is
# killed (a test's timeout), its redis-servers and nodes do not outlive it. libc is
# loaded here, before any fork. Children are started from the main thread only: the
# signal fires when the forking *thread* exits.
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def backoff(attempt: int, cap: float, rng: random.Random) -> float:
    """livepush.js's full jitter: a random delay in [0, min(cap, 0.5 s x 2**attempt)]."""
    return rng.uniform(0.0, min(cap, BACKOFF_BASE * 2.0 ** min(attempt, 32)))


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, unless `stop` is set first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))


async def until(condition: Callable[[], bool], within: float, poll: float = 0.1) -> bool:
    """Poll `condition` for at most `within` s (and that many polls); its last answer."""
    deadline = time.monotonic() + within
    for _ in range(int(within / poll) + 1):
        if condition() or time.monotonic() > deadline:
            break
        await asyncio.sleep(poll)
    return condition()


# ---------------------------------------------------------------- processes


class Proc:
    """One child process: started again with the same arguments after a kill."""

    def __init__(self, name: str, argv: list[str], log: Path, env: Mapping[str, str]) -> None:
        self.name, self.argv, self.log, self.env = name, argv, log, dict(env)
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches the soak, which stops us
                preexec_fn=_die_with_parent,  # from the main thread only: see _die_with_parent
            )
        self.starts += 1

    def signal(self, sig: int) -> None:
        if self.running and self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    async def exited(self, within: float) -> bool:
        """Wait for the process to exit; False if it is still running after `within` s."""
        deadline = time.monotonic() + within
        while self.running:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def kill(self) -> None:
        """SIGKILL (a stopped process too) and reap it."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self.popen = None

    def complaints(self, lines: int = 10) -> list[str]:
        """The last lines of its log that say something went wrong."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        words = ("Traceback", "ERROR", "Error", "CRITICAL", "Exception")
        return [line for line in text.splitlines() if any(w in line for w in words)][-lines:]

    def tracebacks(self) -> list[str]:
        """Each traceback in its log, whole: the two log lines before it (what was logged:
        "Task exception was never retrieved", "Exception in ASGI application", ...),
        its frames, and the exception line that ends it (the last line)."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        found: list[str] = []
        block: list[str] | None = None
        for number, line in enumerate(lines):
            if line.startswith("Traceback"):
                if block is None:
                    block = lines[max(0, number - 2) : number]
                block.append(line)
            elif block is not None:
                block.append(line)
                if line and not line.startswith((" ", "During handling", "The above")):
                    found.append("\n".join(block))
                    block = None
        return found

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class RedisProc(Proc):
    """A redis-server with an append-only file fsync'd on every write (nothing it
    acknowledged is lost by `kill -9`), or with no persistence at all (it comes back
    empty: livepush must start a new epoch and say so with `reset`)."""

    def __init__(self, root: Path, name: str, *extra: str, persistent: bool = True) -> None:
        self.port = free_port()
        self.dir = root / name
        self.dir.mkdir()
        binary = shutil.which("redis-server") or "redis-server"
        argv = [binary, "--port", str(self.port), "--bind", HOST, "--dir", str(self.dir)]
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else []
        argv += ["--save", "", "--appendonly", "no", *aof, *extra]
        super().__init__(name, argv, self.dir / "log", {})

    def client(self) -> Redis:
        # livepush's own connection class: on uvloop, a command written to a connection
        # Redis had just closed (a restart) raises RuntimeError where redis-py expects
        # an OSError; this class makes it redis-py's ConnectionError, which the faults
        # handle. Found when it ended a soak.
        pool = ConnectionPool(
            connection_class=_ClosedIsLost,
            host=HOST,
            port=self.port,
            socket_timeout=2,
            socket_connect_timeout=2,
        )
        return Redis.from_pool(pool)  # the client closes its pool

    async def call(self, *args: Any) -> Any:
        client = self.client()
        try:
            # redis-py leaves execute_command unannotated.
            return await client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()

    async def answers(self) -> bool:
        """PING gets PONG (not LOADING: the append-only file is read)."""
        try:
            return bool(await self.call("PING"))
        except (RedisError, OSError):
            return False


class Redis1:
    """One redis-server, with AOF as docker-compose runs it (or without persistence)."""

    kind = "redis"

    def __init__(self, root: Path, persistent: bool = True) -> None:
        self.servers = [RedisProc(root, "redis", persistent=persistent)]

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.servers[0].port}/0"

    async def feeds(self, count: int) -> list[str]:
        return [f"chaos-{i}" for i in range(count)] if count > 1 else ["chaos"]

    async def start(self, within: float) -> None:
        for server in self.servers:
            server.start()
        if not await self.answering(within):
            raise RuntimeError(f"redis-server did not answer:\n{self.servers[0].tail()}")

    async def healthy(self, within: float) -> bool:
        """Ready for livepush: every server answers."""
        return await self.answering(within)

    async def answering(self, within: float) -> bool:
        deadline = time.monotonic() + within
        for server in self.servers:
            while not await server.answers():
                if time.monotonic() > deadline or not server.running:
                    return False
                await asyncio.sleep(0.05)
        return True


class RedisCluster(Redis1):
    """Three primaries of a Redis Cluster (7 or later), each with AOF and no replica: a
    primary killed and started again comes back with its data and its slots (nodes.conf
    in its directory). `--cluster-node-timeout` is longer than any SIGSTOP here, so a
    stopped primary is slow, not failed."""

    kind = "cluster"

    def __init__(self, root: Path, persistent: bool = True, primaries: int = 3) -> None:
        self.servers = []
        for i in range(primaries):
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            extra += ["--cluster-node-timeout", "15000", "--cluster-port", str(free_port())]
            self.servers.append(RedisProc(root, f"redis-{i}", *extra, persistent=persistent))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{s.port}" for s in self.servers)

    async def feeds(self, count: int) -> list[str]:
        """`count` feeds (at least one per primary), spread evenly over the primaries."""
        count = max(count, len(self.servers))
        ranges = await self.servers[0].call("CLUSTER", "SLOTS")
        owner = {(int(r[0]), int(r[1])): int(r[2][1]) for r in ranges}
        ports = sorted({port for port in owner.values()})
        wanted = {port: count // len(ports) for port in ports}
        for port in ports[: count % len(ports)]:
            wanted[port] += 1
        feeds, number = [], 0
        while any(wanted.values()) and number < 100_000:
            name = f"chaos-{number}"
            number += 1
            slot = key_slot(name.encode())
            port = next(p for (first, last), p in owner.items() if first <= slot <= last)
            if wanted[port]:
                wanted[port] -= 1
                feeds.append(name)
        return feeds

    async def start(self, within: float) -> None:
        await super().start(within)
        create = [shutil.which("redis-cli") or "redis-cli", "--cluster", "create"]
        create += [f"{HOST}:{server.port}" for server in self.servers]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        done = await asyncio.create_subprocess_exec(
            *create, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(done.communicate(), within)
        if done.returncode:
            raise RuntimeError(f"redis-cli --cluster create: {output.decode()[-500:]}")
        if not await self.healthy(within):
            raise RuntimeError("the cluster did not come up")

    async def healthy(self, within: float) -> bool:
        """Every primary answers and says cluster_state:ok."""
        if not await self.answering(within):
            return False
        deadline = time.monotonic() + within
        for server in self.servers:
            while True:
                try:
                    if b"cluster_state:ok" in await server.call("CLUSTER", "INFO"):
                        break
                except (RedisError, OSError):
                    pass
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.1)
        return True


def cluster_unavailable() -> str | None:
    """Why a cluster cannot be run here, or None."""
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed"
    version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    major = version.split("v=")[1].split(".")[0] if "v=" in version else "0"
    if not major.isdigit() or int(major) < 7:
        return f"Redis Cluster with sharded pub/sub needs redis-server 7 or later: {version}"
    return None


class Node(Proc):
    """`livepush serve` on a fixed loopback port: started again on the same one."""

    def __init__(self, root: Path, index: int, redis_url: str, history_size: int) -> None:
        self.port = free_port()
        self.index = index
        argv = [sys.executable, "-m", "livepush.cli", "serve", "--host", HOST]
        argv += ["--port", str(self.port), "--redis-url", redis_url, "--publish-token", TOKEN]
        argv += ["--no-demo", "--log-level", "warning", "--drain-seconds", str(DRAIN_SECONDS)]
        argv += ["--history-size", str(history_size), "--ping-interval", "10"]
        env = {"LIVEPUSH_SSE_KEEPALIVE": str(SSE_KEEPALIVE)}
        super().__init__(f"node-{index}", argv, root / f"node-{index}.log", env)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def ready(self, http: httpx.AsyncClient, within: float) -> bool:
        """/readyz answers 200 (Redis reached) within `within` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.running:
                return False
            with contextlib.suppress(*HTTP_ERRORS):
                if (await http.get(self.url + "/readyz", timeout=1.0)).status_code == 200:
                    return True
            await asyncio.sleep(0.1)
        return False
