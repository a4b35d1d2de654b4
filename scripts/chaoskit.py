"""The chaos soak's moving parts: Redis and livepush processes, followers, publishers.

scripts/chaos.py puts them together and decides when each fault strikes; the judging
is scripts/chaos_record.py's. Every process here is a child in its own session (so a
Ctrl-C reaches only the soak, which stops them) that the kernel kills if the soak
dies (PR_SET_PDEATHSIG), and every wait is bounded.
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
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
from chaos_record import Accepted, Record
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import RedisError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from livepush.cursor import Action, Event, Refused, Step

HOST = "127.0.0.1"
TOKEN = "chaos-token"
ROOT = Path(__file__).resolve().parent.parent
BACKOFF_BASE = 0.5  # seconds, as livepush.js and livepush.client
HTTP_TIMEOUT = 5.0  # seconds for a publish, a snapshot or a feed read
OPEN_TIMEOUT = 10.0  # seconds for a WebSocket handshake or an event stream's head
SSE_KEEPALIVE = 5  # seconds between the nodes' SSE comments (LIVEPUSH_SSE_KEEPALIVE)
SSE_SILENCE = 3 * SSE_KEEPALIVE  # a stream silent this long is dead: reconnect
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
        """The exception line that ends each traceback in its log."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        found, inside = [], False
        for line in lines:
            if line.startswith("Traceback"):
                inside = True
            elif inside and line and not line.startswith((" ", "During handling")):
                found.append(line)
                inside = False
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
        return Redis(host=HOST, port=self.port, socket_timeout=2, socket_connect_timeout=2)

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


# ---------------------------------------------------------------- followers


class SseEnded(Exception):
    """The event stream ended or could not start."""


def sse_blocks(buffer: bytearray) -> Iterator[tuple[str, bytes, str | None]]:
    """Take every complete SSE block out of `buffer`: (event, data, id); comments skipped."""
    while (end := buffer.find(b"\n\n")) >= 0:
        block = bytes(buffer[:end])
        del buffer[: end + 2]
        event, data, last_id = "message", [], None
        for line in block.split(b"\n"):
            if not line or line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if name == b"event":
                event = value.decode()
            elif name == b"data":
                data.append(value)
            elif name == b"id":
                last_id = value.decode()
        if data:
            yield event, b"\n".join(data), last_id


class Follower:
    """One reader, following one feed the way livepush.js does, on a random node each time.

    It keeps its last seq and epoch (the Record's cursor), reconnects after any end
    with full-jitter backoff (capped at `backoff_cap`), answers a reset by reloading
    the snapshot and subscribing from its head, and a hole by resubscribing from its
    last seq. `cut()` aborts its socket, as a lost network would.
    """

    def __init__(
        self,
        record: Record,
        nodes: list[Node],
        http: httpx.AsyncClient,
        rng: random.Random,
        clock: Callable[[], float],
        backoff_cap: float,
        from_snapshot: bool,
    ) -> None:
        self.record, self.nodes, self.http, self.rng = record, nodes, http, rng
        self.clock, self.backoff_cap = clock, backoff_cap
        self.from_snapshot = from_snapshot
        self.attempt = 0
        self.reloads = 0
        self.abort: Callable[[], None] | None = None
        self.ends: Counter[str] = Counter()  # why connections ended, by kind
        # Where it stands, for the report of a reader that never caught up.
        self.state, self.state_at, self.node = "starting", 0.0, -1
        self.messages = 0  # on the current connection
        self.heard_at = 0.0  # anything from the current connection, comments included

    @property
    def transport(self) -> str:
        return self.record.transport

    def cut(self) -> bool:
        """Abort the current connection (no close frame, no FIN): True if there was one."""
        abort, self.abort = self.abort, None
        if abort is None:
            return False
        abort()
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until `stop`; every wait is bounded and ends with it."""
        cursor = self.record.cursor
        cursor.needs_snapshot = self.from_snapshot
        first = True
        while not stop.is_set():
            try:
                if cursor.needs_snapshot:
                    self._now("snapshot")
                    self.record.reloaded(await self._snapshot(), "snapshot" if first else "reset")
                    first = False
                node = self.rng.choice(self.nodes)
                self.record.connecting(node.port, self.clock())
                self.node, self.messages = node.index, 0
                self._now("connecting")
                if self.transport == "ws":
                    why = await self._websocket(node)
                else:
                    why = await self._event_stream(node)
            except (ConnectionClosed, OSError, TimeoutError, EOFError) as error:
                why = f"lost: {type(error).__name__}"
            except InvalidHandshake as error:
                why = f"handshake: {type(error).__name__}"
            except (SseEnded, *HTTP_ERRORS, orjson.JSONDecodeError, ValueError) as error:
                why = f"failed: {type(error).__name__}"
            except Refused as error:
                self.record.counts["refused"] += 1
                why = f"refused: {error.code}"
            self.abort = None
            first = False
            self.ends[why.split(":")[0]] += 1
            if stop.is_set():
                return
            # livepush.js: a reset reloads at once; a second one before a subscription,
            # and every other end, waits a full-jitter backoff.
            if cursor.needs_snapshot:
                self.reloads += 1
            if cursor.needs_snapshot and self.reloads == 1:
                delay = 0.0
            else:
                delay = backoff(self.attempt, self.backoff_cap, self.rng)
                self.attempt += 1
            self._now(f"backoff after {why}")
            await sleep_unless(stop, delay)

    def _now(self, state: str) -> None:
        self.state, self.state_at = state, self.clock()

    def where(self) -> str:
        """Its state now, for a report."""
        now, cursor = self.clock(), self.record.cursor
        return (
            f"{self.state} for {now - self.state_at:.1f} s on node-{self.node}, "
            f"{self.messages} messages on this connection, last heard "
            f"{now - self.heard_at:.1f} s ago, at {cursor.epoch}:{cursor.seq}"
        )

    def _heard(self, message: Mapping[str, Any]) -> None:
        self.messages += 1
        self.heard_at = self.clock()
        if message.get("type") == "subscribed":
            self._now("subscribed")

    def _act(self, step: Event | Step | Refused | None) -> str | None:
        """What a message does to the connection: None goes on, else why it ends."""
        if step is None or isinstance(step, Event):
            return None
        if isinstance(step, Refused):
            raise step
        if step.action is Action.LIVE:
            self.attempt = self.reloads = 0
            return None
        return "reset: reload" if step.action is Action.RELOAD else f"resume: {step.reason}"

    async def _snapshot(self) -> Mapping[str, Any]:
        node = self.rng.choice(self.nodes)
        response = await self.http.get(
            f"{node.url}/v1/feeds/{self.record.feed}/snapshot", params={"limit": 50}
        )
        response.raise_for_status()
        body: Mapping[str, Any] = orjson.loads(response.content)
        return body

    async def _websocket(self, node: Node) -> str:
        url = f"ws://{HOST}:{node.port}/v1/ws?" + urlencode(self.record.cursor.position())
        async with connect(
            url,
            open_timeout=OPEN_TIMEOUT,
            ping_interval=10,
            ping_timeout=10,
            close_timeout=2,
            max_size=2**20,
        ) as ws:
            self.abort = ws.transport.abort
            self._now("open")
            async for data in ws:
                message = orjson.loads(data)
                self._heard(message)
                why = self._act(self.record.receive(message, self.clock()))
                if why is not None:
                    return why
            return f"closed: {ws.close_code}"

    async def _event_stream(self, node: Node) -> str:
        position = self.record.cursor.position()
        query = urlencode({name: value for name, value in position.items() if name != "feed"})
        path = f"/v1/feeds/{self.record.feed}/events" + (f"?{query}" if query else "")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, node.port), OPEN_TIMEOUT
        )
        self.abort = writer.transport.abort
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{node.port}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            status = await asyncio.wait_for(reader.readline(), OPEN_TIMEOUT)
            if not status.startswith(b"HTTP/1.1 200"):
                raise SseEnded(status.decode(errors="replace").strip() or "no answer")
            while (await asyncio.wait_for(reader.readline(), OPEN_TIMEOUT)).strip():
                pass  # the headers: chunked, as sse.py writes them
            self._now("open")
            buffer = bytearray()
            while True:
                size_line = await asyncio.wait_for(reader.readline(), SSE_SILENCE)
                self.heard_at = self.clock()
                if not size_line:
                    return "lost: the stream's connection closed"
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    return "closed: the stream ended"
                chunk = await asyncio.wait_for(reader.readexactly(size + 2), SSE_SILENCE)
                buffer += chunk[:-2]
                for _event, data, last_id in sse_blocks(buffer):
                    message = orjson.loads(data)
                    self._heard(message)
                    step = self.record.receive(message, self.clock(), last_id)
                    why = self._act(step)
                    if why is not None:
                        return why
        finally:
            writer.transport.abort()  # the stream never ends by itself: nothing to flush


# ---------------------------------------------------------------- publishers


@dataclass
class PublisherTally:
    attempts: int = 0
    retries: int = 0
    replayed: int = 0  # 2xx answers marked Idempotency-Replayed (a retry of a write that was done)
    replays_checked: int = 0  # accepted keys sent again on purpose: the same answer
    refused: int = 0  # 4xx other than 429: a bug in the soak or the server
    abandoned: int = 0  # keys never answered 2xx before the soak's end


class Publisher:
    """Publishes to its feeds all the time, each entry with its own Idempotency-Key,
    retried with the SAME key on any node after an error or a timeout until a 2xx."""

    def __init__(
        self,
        index: int,
        run: str,
        feeds: list[str],
        nodes: list[Node],
        rng: random.Random,
        accepted: list[Accepted],
        failures: list[str],
    ) -> None:
        self.index, self.run_id, self.feeds, self.nodes, self.rng = index, run, feeds, nodes, rng
        self.accepted, self.failures = accepted, failures
        self.tally = PublisherTally()
        self.http = httpx.AsyncClient(
            timeout=HTTP_TIMEOUT,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )

    async def run(self, interval: float, creating: asyncio.Event, give_up: float) -> None:
        """A new entry every `interval` s while `creating` is set; each one retried
        until accepted, or until the monotonic time `give_up` (then it is abandoned,
        which fails the soak)."""
        number = 0
        due = time.monotonic()
        while creating.is_set() and time.monotonic() < give_up:
            feed = self.feeds[(number + self.index) % len(self.feeds)]
            await self.publish(feed, number, give_up)
            number += 1
            due = max(due + interval, time.monotonic() - interval)  # no burst to catch up
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def publish(self, feed: str, number: int, give_up: float) -> None:
        key = f"{self.run_id}-p{self.index}-{number}"
        body = orjson.dumps(
            {
                "title": f"P{self.index}",
                "body": f"entry {number} of publisher {self.index}",
                "meta": {"key": key},
            }
        )
        attempt = 0
        while time.monotonic() < give_up:
            answer = await self._post(feed, key, body)
            if answer is not None and answer.status_code == 201:
                entry = orjson.loads(answer.content)
                done = Accepted(feed, key, entry["id"], entry["seq"])
                self.accepted.append(done)
                if answer.headers.get("idempotency-replayed") == "true":
                    self.tally.replayed += 1
                if self.rng.random() < 0.05:
                    await self._check_replay(done, body)
                return
            if answer is not None and answer.status_code not in (429, 502, 503, 504):
                self.tally.refused += 1
                self.failures.append(
                    f"publisher {self.index}: {key} refused {answer.status_code}: "
                    f"{answer.text[:200]}"
                )
                return
            self.tally.retries += 1
            await asyncio.sleep(self.rng.uniform(0.0, min(2.0, 0.1 * 2.0 ** min(attempt, 8))))
            attempt += 1
        self.tally.abandoned += 1
        self.failures.append(
            f"publisher {self.index}: {key} got no 2xx in {attempt} attempts before the end"
        )

    async def _post(self, feed: str, key: str, body: bytes) -> httpx.Response | None:
        node = self.rng.choice(self.nodes)
        self.tally.attempts += 1
        try:
            return await self.http.post(
                f"{node.url}/v1/feeds/{feed}/entries",
                content=body,
                headers={"Idempotency-Key": key},
            )
        except HTTP_ERRORS:
            return None

    async def _check_replay(self, done: Accepted, body: bytes) -> None:
        """The same key again, on any node: the first answer, marked replayed."""
        answer = await self._post(done.feed, done.key, body)
        if answer is None or answer.status_code != 201:
            return  # a fault: this check is best effort, the retry loop above is not
        self.tally.replays_checked += 1
        entry = orjson.loads(answer.content)
        if (entry["id"], entry["seq"]) != (done.id, done.seq) or answer.headers.get(
            "idempotency-replayed"
        ) != "true":
            self.failures.append(
                f"publisher {self.index}: {done.key} was answered {done.id}/{done.seq}, "
                f"then {entry['id']}/{entry['seq']} "
                f"(replayed: {answer.headers.get('idempotency-replayed')})"
            )

    async def aclose(self) -> None:
        await self.http.aclose()
