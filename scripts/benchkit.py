"""Pieces of the fan-out benchmark: child processes, CPU accounting, ingest, loadgens.

scripts/bench.py puts them together; nothing here decides what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psutil
import redis.asyncio as redis

ROOT = Path(__file__).resolve().parent.parent
LOADGEN_SRC = ROOT / "scripts" / "loadgen" / "loadgen.c"
LOADGEN_BIN = ROOT / "scripts" / "loadgen" / "bin" / "loadgen"
LOGS = ROOT / "test-artifacts" / "bench"
FEED = "bench"
TOKEN = "bench"
T = TypeVar("T")
CONNS_PER_LOADGEN = 5000  # well under the 20,000 open files one process may hold
OPEN_FILES_CAP = 20_000  # what one process may hold on this machine (ulimit -Hn)


# ---------------------------------------------------------------- children


class Child:
    """A child process that is always stopped: SIGTERM, a bounded wait, then SIGKILL."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stop(self, grace: float = 10.0) -> None:
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def spawned(name: str, argv: list[str], **kwargs: Any) -> AsyncIterator[Child]:
    proc = await asyncio.create_subprocess_exec(*argv, **kwargs)
    child = Child(name, proc)
    try:
        yield child
    finally:
        await child.stop()


@contextlib.asynccontextmanager
async def redis_server(name: str) -> AsyncIterator[int]:
    """A private redis-server on a free loopback port, without persistence; yields the port."""
    port = free_port()
    with log_file(name) as log:
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
        argv += ["--appendonly", "no"]
        async with spawned(name, argv, stdout=log, stderr=log) as child:
            await wait_for_port(port, child, 20)
            yield port


@contextlib.asynccontextmanager
async def redis_cluster(name: str, primaries: int = 3) -> AsyncIterator[str]:
    """A private Redis Cluster of `primaries` primaries (no replicas, no persistence),
    joined by `redis-cli --cluster create`; yields its redis+cluster:// URL."""
    ports = [free_port() for _ in range(primaries)]
    async with contextlib.AsyncExitStack() as stack:
        for i, port in enumerate(ports):
            log = stack.enter_context(log_file(f"{name}-{i}"))
            argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
            argv += ["--appendonly", "no", "--cluster-enabled", "yes"]
            argv += ["--cluster-port", str(free_port()), "--dir", str(LOGS)]
            argv += ["--cluster-config-file", f"{name}-{i}-nodes.conf"]
            (LOGS / f"{name}-{i}-nodes.conf").unlink(missing_ok=True)
            child = await stack.enter_async_context(
                spawned(f"{name}-{i}", argv, stdout=log, stderr=log)
            )
            await wait_for_port(port, child, 20)
        create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports)]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        done = await asyncio.create_subprocess_exec(
            *create, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        if await asyncio.wait_for(done.wait(), 60):
            raise RuntimeError(f"{name}: redis-cli --cluster create failed")
        client = redis.Redis(port=ports[0])
        try:
            deadline = time.monotonic() + 30
            # redis-py leaves execute_command unannotated.
            while b"cluster_state:ok" not in await client.execute_command("CLUSTER", "INFO"):  # type: ignore[no-untyped-call]
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: the cluster did not come up")
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def log_file(name: str) -> Any:
    LOGS.mkdir(parents=True, exist_ok=True)
    return open(LOGS / f"{name}.log", "wb")  # closed by the caller


def log_tail(name: str, lines: int = 15) -> str:
    path = LOGS / f"{name}.log"
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def wait_for_port(port: int, child: Child, within: float) -> None:
    """Until the port accepts a connection; fail early if the child died."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if child.proc.returncode is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise RuntimeError(f"{child.name} did not listen on {port} within {within} s")


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process and all its descendants."""
    user = system = 0.0
    for proc in process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            user += t.user
            system += t.system
    return user, system


def tree_cpu_exact(pid: int) -> float | None:
    """On-CPU seconds of a process tree from /proc/*/task/*/schedstat (nanoseconds).

    psutil's cpu_times tick at 10 ms, too coarse for a short window; schedstat counts
    every thread's run time exactly but does not split user from system.
    """
    total_ns = 0
    for proc in process_tree(pid):
        try:
            for task in Path(f"/proc/{proc.pid}/task").iterdir():
                total_ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
    return total_ns / 1e9


@dataclass(frozen=True)
class MachineSample:
    """Per-core CPU times of the machine and the CPU seconds of this run's processes."""

    cores: list[Any]
    ours: float

    @staticmethod
    def take() -> MachineSample:
        return MachineSample(psutil.cpu_times(percpu=True), sum(tree_cpu_seconds(os.getpid())))


@dataclass(frozen=True)
class MachineUse:
    """CPU seconds the machine spent between two samples, and on whose behalf.

    foreign = busy - this run's processes. Softirq is not subtracted: this kernel
    charges it to the process it interrupted (the loopback TCP work of a send lands
    in the sender's system time) and also shows it as softirq. Counting the other
    processes one by one does worse: a reaped child brings its whole life's CPU.
    """

    wall_seconds: float
    core_busy_seconds: tuple[float, ...]  # server core 0, load core 1
    softirq_seconds: float  # mostly loopback TCP work, already inside the processes' times
    foreign_seconds: float  # busy time that is not this run's: contamination

    @staticmethod
    def between(before: MachineSample, after: MachineSample) -> MachineUse:
        busy = []
        softirq = 0.0
        for b, a in zip(before.cores, after.cores, strict=True):
            busy.append((sum(a) - a.idle - a.iowait) - (sum(b) - b.idle - b.iowait))
            softirq += (a.softirq + a.irq) - (b.softirq + b.irq)
        wall = (sum(after.cores[0]) - sum(before.cores[0])) or 1.0
        foreign = max(0.0, sum(busy) - (after.ours - before.ours))
        return MachineUse(wall, tuple(busy), softirq, foreign)

    def __add__(self, other: MachineUse) -> MachineUse:
        return MachineUse(
            self.wall_seconds + other.wall_seconds,
            tuple(
                a + b for a, b in zip(self.core_busy_seconds, other.core_busy_seconds, strict=True)
            ),
            self.softirq_seconds + other.softirq_seconds,
            self.foreign_seconds + other.foreign_seconds,
        )

    @property
    def foreign_pct(self) -> float:
        return self.foreign_seconds / self.wall_seconds * 100

    @property
    def softirq_pct(self) -> float:
        return self.softirq_seconds / self.wall_seconds * 100

    @property
    def core_busy(self) -> list[float]:
        return [busy / self.wall_seconds for busy in self.core_busy_seconds]


async def wait_for_quiet(within: float, max_foreign: float) -> None:
    """Wait, at most `within` s, until other processes use under max_foreign % CPU.

    Other work on a two-core machine shifts every number of a run (a test suite, a
    browser): waiting is cheaper than a wrong table. Two quiet seconds in a row count.
    """
    deadline = time.monotonic() + within
    quiet_in_a_row = 0
    while time.monotonic() < deadline and quiet_in_a_row < 2:
        before = MachineSample.take()
        await asyncio.sleep(1)
        foreign = MachineUse.between(before, MachineSample.take()).foreign_pct
        quiet_in_a_row = quiet_in_a_row + 1 if foreign <= max_foreign else 0
    if quiet_in_a_row < 2 and within:
        print("  the machine did not go quiet: numbers may be contaminated", file=sys.stderr)


def tree_rss(pid: int) -> int:
    total = 0
    for proc in process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


# ------------------------------------------------------------------- HTTP


# Servers close idle keep-alive connections (uvicorn after 5 s). A request on one the
# server is closing fails, and a POST must not be retried blindly (it could publish
# twice), so a connection idle this long is replaced before it is used.
IDLE_RECONNECT = 2.0


class HttpConnection:
    """A minimal keep-alive HTTP/1.1 client: cheap enough to stay off the measurement."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    async def ready(self) -> None:
        """Connected, on a connection the server will not close under the next request."""
        if self.writer is not None and time.monotonic() - self.last_used > IDLE_RECONNECT:
            self.close()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.last_used = time.monotonic()

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        await self.ready()
        self.last_used = time.monotonic()
        assert self.reader is not None
        assert self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        status_and_headers = await self.reader.readuntil(b"\r\n\r\n")
        lines = status_and_headers.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        response_headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            response_headers[name.strip().lower()] = value.strip()
        if "content-length" in response_headers:
            payload = await self.reader.readexactly(int(response_headers["content-length"]))
        elif response_headers.get("transfer-encoding") == "chunked":
            payload = b""
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                payload += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
            await self.reader.readuntil(b"\r\n")
        else:
            payload = b""
        if response_headers.get("connection") == "close":
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# ---------------------------------------------------------------- entries

PARAGRAPHS = [
    "The jury returned to the courtroom at 14:32 after a little under four hours of "
    "deliberation. The defendant stood, hands folded, as the foreperson passed the verdict "
    "sheet to the clerk.",
    "Prosecutors had argued that the transfers made through the shell company in March "
    "were the payment for the rifles recovered at the warehouse, pointing to the invoices "
    "and to the messages read out on the second day of the trial.",
    "The defence maintained throughout that the money was a loan between relatives and that "
    "its client never saw the crates. Counsel told reporters outside that an appeal was "
    '"all but certain" and asked for privacy for the family.',
    "Sentencing is expected next month. The judge thanked the jurors, reminded them not to "
    "discuss their deliberations with anyone, and excused them from further service for "
    "five years.",
]
TITLES = ["WEAPONS PURCHASE", "CONVICTION", "VERDICT", "SENTENCING DATE", "STATEMENT"]


def entry_fields(index: int, body: str) -> dict[str, Any]:
    return {
        "title": TITLES[index % len(TITLES)],
        "body": body,
        "author": "Court reporter",
        "tags": ["trial", "live"],
        "meta": {"t": time.time_ns()},
    }


def body_for_size(entry_size: int) -> str:
    """Paragraphs cut so that the whole entry.created event is about entry_size bytes."""
    overhead = len(floor_event(1, entry_fields(0, ""), "x" * 16))
    want = max(1, entry_size - overhead)
    text = "<p>" + "</p><p>".join(PARAGRAPHS) + "</p>"
    while len(text) < want:
        text += text
    return text[:want]


def floor_event(seq: int, fields: dict[str, Any], entry_id: str) -> bytes:
    """The entry.created JSON livepush would send for these fields (ingest.entry_fields)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    entry = {
        "id": entry_id,
        "seq": seq,
        "published_at": now,
        "updated_at": now,
        "title": fields["title"],
        "body": fields["body"],
        "author": fields["author"],
        "tags": fields["tags"],
        "pinned": False,
        "meta": fields["meta"],
    }
    return orjson.dumps({"type": "entry.created", "feed": FEED, "seq": seq, "entry": entry})


class FloorPublisher:
    """PUBLISHes finished events to Redis in seq order (one at a time, so order holds)."""

    def __init__(self, redis_port: int) -> None:
        self.client = redis.Redis(host="127.0.0.1", port=redis_port)
        self.seq = 0
        self.lock = asyncio.Lock()

    async def warm(self) -> None:
        """Nothing to do: redis-py keeps its connection open."""

    async def publish(self, fields: dict[str, Any]) -> int:
        async with self.lock:
            self.seq += 1
            seq = self.seq
            fields["meta"]["t"] = time.time_ns()
            await self.client.publish(f"floor:feed:{FEED}", floor_event(seq, fields, f"{seq:016d}"))
        return seq

    async def aclose(self) -> None:
        await self.client.aclose()


class LivepushPublisher:
    """POSTs entries over a small pool of keep-alive connections; the server assigns seqs."""

    def __init__(self, port: int, connections: int, feeds: int = 0, feed: str = FEED) -> None:
        self.pool: asyncio.Queue[HttpConnection] = asyncio.Queue()
        self.connections = [HttpConnection(port) for _ in range(connections)]
        for connection in self.connections:
            self.pool.put_nowait(connection)
        self.headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        # feeds > 0: entries go round-robin to FEED-0 .. FEED-(feeds - 1), as the
        # loadgens' --feeds subscribes them.
        self.feeds = feeds
        self.feed = feed
        self.published = 0

    async def warm(self) -> None:
        """Every connection open and fresh before a window: the first entries of a window
        must not wait for a TCP connect (in a reconnect storm, behind thousands of others
        in the server's accept queue). Connections idle over IDLE_RECONNECT are replaced."""
        await asyncio.gather(*(connection.ready() for connection in self.connections))

    async def publish(self, fields: dict[str, Any]) -> int:
        feed = f"{self.feed}-{self.published % self.feeds}" if self.feeds else self.feed
        self.published += 1
        connection = await self.pool.get()
        try:
            fields["meta"]["t"] = time.time_ns()
            status, body = await asyncio.wait_for(
                connection.request(
                    "POST", f"/v1/feeds/{feed}/entries", orjson.dumps(fields), self.headers
                ),
                10,
            )
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            connection.close()
            raise
        finally:
            self.pool.put_nowait(connection)
        if status != 201:
            raise RuntimeError(f"POST answered {status}: {body[:200]!r}")
        seq: int = orjson.loads(body)["seq"]
        return seq

    async def aclose(self) -> None:
        while not self.pool.empty():
            self.pool.get_nowait().close()


Publisher = FloorPublisher | LivepushPublisher


@dataclass
class PublishResult:
    seqs: list[int]
    errors: int
    seconds: float  # first send to last send, plus one interval: count/rate when on time

    @property
    def first(self) -> int:
        return min(self.seqs) if self.seqs else 0

    @property
    def last(self) -> int:
        return max(self.seqs) if self.seqs else 0

    def contiguous(self) -> bool:
        """Every seq of first..last answered, each as often (once per feed)."""
        counts = Counter(self.seqs)
        return (
            set(counts) == set(range(self.first, self.last + 1)) and len(set(counts.values())) <= 1
        )


async def publish_paced(
    publisher: Publisher,
    rate: float,
    count: int,
    body: str,
    concurrency: int,
    stop: asyncio.Event | None = None,
) -> PublishResult:
    """Publish `count` entries on a fixed schedule (entry i at start + i/rate), or
    fewer: none is started once `stop` is set.

    A late send goes out at once, never skipped: if the server is slow the achieved
    rate falls, and the caller sees it in `seconds`.
    """
    seqs: list[int] = []
    errors = 0
    next_index = 0
    start = time.monotonic() + 0.05
    last_send = start

    async def worker() -> None:
        nonlocal next_index, errors, last_send
        while next_index < count and not (stop and stop.is_set()):
            index = next_index
            next_index += 1
            delay = start + index / rate - time.monotonic()
            if delay > 0 and stop is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    next_index = count  # the other workers stop too
                    break
            elif delay > 0:
                await asyncio.sleep(delay)
            last_send = max(last_send, time.monotonic())
            try:
                seqs.append(await publisher.publish(entry_fields(index, body)))
            except (OSError, RuntimeError, TimeoutError, asyncio.IncompleteReadError) as error:
                errors += 1
                if errors <= 3:
                    print(f"  publish failed: {error}", file=sys.stderr)

    budget = count / rate + 60
    async with asyncio.timeout(budget), asyncio.TaskGroup() as workers:
        for _ in range(concurrency):
            workers.create_task(worker())
    return PublishResult(seqs, errors, last_send - start + 1 / rate)


# ---------------------------------------------------------------- loadgen


def build_loadgen() -> None:
    """Compile the load generator when the binary is missing or older than its source."""
    if LOADGEN_BIN.exists() and LOADGEN_BIN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return
    LOADGEN_BIN.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(LOADGEN_BIN), str(LOADGEN_SRC), "-lz"],
        check=True,
        timeout=120,
    )


class Loadgen:
    """One loadgen process under --control: commands on stdin, JSON lines on stdout."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.child.proc.stdout is not None
        while line := await self.child.proc.stdout.readline():
            self.lines.put_nowait(json.loads(line))

    async def send(self, command: str) -> None:
        assert self.child.proc.stdin is not None
        self.child.proc.stdin.write(command.encode() + b"\n")
        await self.child.proc.stdin.drain()

    async def expect(self, event: str, within: float) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.child.name}: no {event!r} within {within} s")
            line = await asyncio.wait_for(self.lines.get(), remaining)
            if line["event"] == event:
                return line


_sources = 0


def next_source() -> str:
    """A loopback source address for the next loadgen process: 127.0.0.2, .3, ... .254.

    Each source address has its own ~28,000 ephemeral ports to one server port, so
    100,000 connections fit, and a connect burst never waits on the TIME_WAIT ports
    of the previous one.
    """
    global _sources
    _sources += 1
    return f"127.0.0.{2 + _sources % 253}"


@dataclass(frozen=True)
class Resume:
    """Connections that resume after seq `since` (of `epoch`); `until`: the seq whose
    arrival on each connection is timed (the catch-up's end)."""

    since: int
    epoch: str | None = None
    until: int = 0


@contextlib.asynccontextmanager
async def loadgens(
    port: int,
    total: int,
    label: str,
    deflate: bool,
    subscribe: str,
    deadline: float,
    feeds: int = 0,
    *,
    feed: str = FEED,
    resume: Resume | None = None,
    processes: int = 1,
    per_process: int = CONNS_PER_LOADGEN,
    cores: set[int] | None = None,
) -> AsyncIterator[list[Loadgen]]:
    """Loadgen processes for `total` connections, at least `processes` of them and at
    most `per_process` connections each, all stopped on the way out. `cores`: where
    they may run (default: where this process runs)."""
    sizes = split_evenly(total, max(processes, -(-total // per_process), 1))
    if max(sizes) > OPEN_FILES_CAP - 64:
        raise ValueError(f"{max(sizes)} connections in one loadgen: over the open-files cap")
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for i, size in enumerate(sizes):
            argv = [
                str(LOADGEN_BIN),
                "--port",
                str(port),
                "--source",
                next_source(),
                "--feed",
                feed,
                "--conns",
                str(size),
                "--subscribe",
                subscribe,
                "--deadline",
                str(int(deadline)),
                "--control",
                "--name",
                f"{label}-{i}",
            ]
            if deflate:
                argv.append("--deflate")
            if feeds:
                argv += ["--feeds", str(feeds)]
            if resume is not None:
                argv += ["--since", str(resume.since)]
                argv += ["--epoch", resume.epoch] if resume.epoch else []
                argv += ["--until", str(resume.until)] if resume.until else []
            child = await stack.enter_async_context(
                spawned(
                    f"loadgen {label}-{i}",
                    argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=64 << 20,
                )
            )
            if cores is not None:
                os.sched_setaffinity(child.pid, cores)
            started.append(Loadgen(child))
        try:
            yield started
        finally:
            for lg in started:
                with contextlib.suppress(OSError, RuntimeError):
                    await lg.send("quit")
                lg.reader.cancel()


def split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def connect_all(group: list[Loadgen], within: float) -> dict[str, Any]:
    """Start every loadgen connecting at once; the wall time until all are subscribed."""
    for lg in group:
        await lg.send("connect")
    lines = await asyncio.gather(*(lg.expect("subscribed", within) for lg in group))
    return {
        "seconds": max(x["all_subscribed_at"] for x in lines)
        - min(x["connect_start"] for x in lines),
        "subscribed": sum(x["subscribed"] for x in lines),
        "failed": sum(x["failed"] for x in lines),
        "deflate_accepted": sum(x["deflate_accepted"] for x in lines),
    }


# Same index -> value formula as loadgen.c hist_value (midpoint of the bucket, µs).
def bucket_value(index: int) -> float:
    if index < 128:
        return float(index)
    exponent = index // 128 + 6
    mantissa = index % 128 + 128
    return (mantissa << (exponent - 7)) + (1 << (exponent - 7)) / 2


def percentile_ms(hist: dict[int, int], fraction: float) -> float:
    total = sum(hist.values())
    if not total:
        return 0.0
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= total * fraction:
            return bucket_value(index) / 1000
    return bucket_value(max(hist)) / 1000


def merged_hist(reports: list[dict[str, Any]]) -> dict[int, int]:
    """The latency buckets of several loadgen reports, as one histogram."""
    hist: dict[int, int] = {}
    for report in reports:
        for index, n in report["hist"]:
            hist[index] = hist.get(index, 0) + n
    return hist


async def reports_for(
    group: list[Loadgen], first: int, last: int, drain: float
) -> list[dict[str, Any]]:
    """Every loadgen's report on seqs first..last, once each has them all (or after
    `drain` s)."""
    for lg in group:
        await lg.send(f"report {first} {last} {int(drain * 1000)}")
    return list(await asyncio.gather(*(lg.expect("report", drain + 30) for lg in group)))


async def publishing_during(
    subscribers: list[Loadgen],
    publisher: Publisher,
    rate: float,
    body: str,
    concurrency: int,
    during: Awaitable[T],
    *,
    at_least: float,
    at_most: float,
    drain: float,
) -> tuple[T, PublishResult, list[dict[str, Any]]]:
    """Publish at `rate` while `during` runs (and for `at_least` s in all, at most
    `at_most` s); then the subscribers' reports on what was published meanwhile."""
    for lg in subscribers:
        await lg.send("reset")
    await publisher.warm()
    stop = asyncio.Event()
    count = max(1, round(rate * at_most))
    publishing = asyncio.create_task(publish_paced(publisher, rate, count, body, concurrency, stop))
    started = time.monotonic()
    try:
        value = await during
        await asyncio.sleep(max(0.0, at_least - (time.monotonic() - started)))
    finally:
        stop.set()
        published = await publishing
    reports = await reports_for(subscribers, published.first, published.last, drain)
    return value, published, reports


# ------------------------------------------------------------------ Redis


async def redis_calls(port: int) -> Counter[str]:
    """Calls of each command a redis-server has run, from `INFO commandstats`.

    Commands a Lua script runs count under their own names (measured on Redis 7.0:
    an EVAL of HSETNX and XRANGE adds one call to each), which is how the scripts'
    share of the work is told apart.
    """
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return Counter(
        {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    )


HISTORY_SCRIPT = ROOT / "livepush" / "brokers" / "history.lua"
MONITOR_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class HistoryRead:
    """One run of livepush's history.lua: EVALSHA sha 2 meta log epoch since limit touch."""

    feed: str
    since: int
    limit: int  # 0: the feed's position only, no events


class RedisMonitor:
    """The history.lua runs a redis-server sees while this watches it (MONITOR).

    MONITOR copies every command the server runs to this client, which costs the
    server a little per command: nothing measurable at the few hundred commands of a
    reconnect storm, so it is used only around one. The script is recognised by its
    SHA1 (livepush's broker sends EVALSHA with the file's SHA1), so a change elsewhere
    in livepush's Lua (publish.lua reading the log too) does not blur the count.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sha = hashlib.sha1(HISTORY_SCRIPT.read_bytes()).hexdigest()
        self.reads: list[HistoryRead] = []
        self.commands = 0
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RedisMonitor:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer.write(b"MONITOR\r\n")
        if (await asyncio.wait_for(reader.readline(), 10)).strip() != b"+OK":
            raise RuntimeError("redis-server refused MONITOR")
        self._task = asyncio.create_task(self._read(reader))
        return self

    async def __aexit__(self, *_: object) -> None:
        await asyncio.sleep(0.2)  # the last commands' lines are on their way
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        # +1701490000.123456 [0 127.0.0.1:54321] "EVALSHA" "<sha>" "2" "lp:{f}:meta" ...
        while line := await reader.readline():
            text = line.decode("utf-8", "replace")
            if " lua] " in text:
                continue  # a command a script ran: its EVALSHA is counted instead
            self.commands += 1
            args = MONITOR_ARG.findall(text)
            if len(args) >= 8 and args[0].upper() == "EVALSHA" and args[1] == self.sha:
                feed = args[3].partition("{")[2].partition("}")[0]
                self.reads.append(HistoryRead(feed, int(args[6]), int(args[7])))


# ---------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One target of the issue, as measured: `target NAME: VALUE (BAR) MET; DETAIL`.

    met None: not shown by this run (the detail says why, and what shows it).
    """

    name: str
    value: str
    bar: str
    met: bool | None
    detail: str = ""

    def line(self) -> str:
        verdict = {True: "MET", False: "NOT MET", None: "NOT SHOWN"}[self.met]
        text = f"target {self.name}: {self.value} ({self.bar}) {verdict}"
        return f"{text}; {self.detail}" if self.detail else text
