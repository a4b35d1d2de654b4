"""Benchmark: fan-out of one feed to thousands of WebSocket subscribers, livepush beside the floor.

One run starts a private redis-server, then for each server under test (the Python
floor, scripts/floor_server.py, then livepush) measures:

- memory: server RSS growth over --memory-conns idle subscribed connections, per
  connection (a fresh server; the connections come from several loadgen processes,
  since one process may hold at most 20,000 open files);
- connect: seconds for --subscribers clients to connect and be subscribed;
- delivery: --rate entries/s of about --entry-size bytes for --duration s. Server CPU
  time (psutil, summed over its worker processes) over the window divided by the
  events delivered is the CPU per delivery; latency is publisher timestamp to the
  moment the loadgen read the bytes; lost = expected - received;
- with --max-rate: the rate raised step by step until loss, a p99 over
  --max-rate-p99-factor times the server's own p99 at --rate, a saturated core, or a
  publisher that cannot keep the pace.

Placement: the server is pinned to core 0 (taskset); this script, its publisher,
redis-server and the loadgens share core 1.

How entries reach each server:
- livepush: POST /v1/feeds/bench/entries with "Authorization: Bearer bench", over a few
  keep-alive HTTP/1.1 connections; the server assigns seqs.
- floor: the publisher builds the event JSON livepush would send (same fields, same
  size, seq assigned here) and PUBLISHes it straight to Redis channel
  floor:feed:bench. The floor's latency therefore has no HTTP ingest in it.
Either way the publisher's send time (Unix ns) travels as entry "meta": {"t": ...}.

The floor declines permessage-deflate, so --compression adds a livepush row with
clients offering it, compared with the plain floor.

Run: .venv/bin/python scripts/bench.py [--servers floor,livepush] [--subscribers 5000]
     [--rate 10] [--duration 10] [--entry-size 1024] [--workers 2] [--compression]
     [--memory-conns 10000] [--max-rate] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil  # type: ignore[import-untyped]
import redis.asyncio as redis
import uvloop

ROOT = Path(__file__).resolve().parent.parent
LOADGEN_SRC = ROOT / "scripts" / "loadgen" / "loadgen.c"
LOADGEN_BIN = ROOT / "scripts" / "loadgen" / "bin" / "loadgen"
FLOOR = ROOT / "scripts" / "floor_server.py"
VENV_BIN = ROOT / ".venv" / "bin"
LOGS = ROOT / "test-artifacts" / "bench"
FEED = "bench"
TOKEN = "bench"
SERVER_CORE = 0
LOAD_CORE = 1
CONNS_PER_LOADGEN = 5000  # well under the 20,000 open files one process may hold


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
    """Per-core CPU times of the machine and CPU seconds of this run's own processes."""

    cores: list[Any]
    ours: float

    @staticmethod
    def take() -> MachineSample:
        return MachineSample(psutil.cpu_times(percpu=True), sum(tree_cpu_seconds(os.getpid())))


@dataclass(frozen=True)
class MachineShares:
    """How busy the machine was between two samples, and on whose behalf (% of one core)."""

    core_busy: list[float]  # per core, share of its time: server core 0, load core 1
    softirq_pct: float  # charged to no process; on loopback, mostly TCP receive work
    foreign_pct: float  # busy time of processes that are not this run's: contamination

    @staticmethod
    def between(before: MachineSample, after: MachineSample) -> MachineShares:
        busy = []
        busy_total = softirq = 0.0
        for b, a in zip(before.cores, after.cores, strict=True):
            total = sum(a) - sum(b)
            idle = (a.idle + a.iowait) - (b.idle + b.iowait)
            busy.append((total - idle) / total if total > 0 else 0.0)
            busy_total += total - idle
            softirq += (a.softirq + a.irq) - (b.softirq + b.irq)
        wall = (sum(after.cores[0]) - sum(before.cores[0])) or 1.0
        foreign = busy_total - softirq - (after.ours - before.ours)
        return MachineShares(busy, softirq / wall * 100, max(0.0, foreign) / wall * 100)


def tree_rss(pid: int) -> int:
    total = 0
    for proc in process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


# ------------------------------------------------------------------- HTTP


class HttpConnection:
    """A minimal keep-alive HTTP/1.1 client: cheap enough to stay off the measurement."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
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

    def __init__(self, port: int, connections: int) -> None:
        self.pool: asyncio.Queue[HttpConnection] = asyncio.Queue()
        for _ in range(connections):
            self.pool.put_nowait(HttpConnection(port))
        self.headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    async def publish(self, fields: dict[str, Any]) -> int:
        connection = await self.pool.get()
        try:
            fields["meta"]["t"] = time.time_ns()
            status, body = await asyncio.wait_for(
                connection.request(
                    "POST", f"/v1/feeds/{FEED}/entries", orjson.dumps(fields), self.headers
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
        return len(self.seqs) == self.last - self.first + 1 == len(set(self.seqs))


async def publish_paced(
    publisher: Publisher, rate: float, count: int, body: str, concurrency: int
) -> PublishResult:
    """Publish `count` entries on a fixed schedule (entry i at start + i/rate).

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
        while next_index < count:
            index = next_index
            next_index += 1
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            last_send = max(last_send, time.monotonic())
            try:
                seqs.append(await publisher.publish(entry_fields(index, body)))
            except (OSError, RuntimeError, TimeoutError, asyncio.IncompleteReadError) as error:
                errors += 1
                if errors <= 3:
                    print(f"  publish failed: {error}", file=sys.stderr)

    budget = count / rate + 60
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), budget)
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


@contextlib.asynccontextmanager
async def loadgens(
    port: int, total: int, label: str, deflate: bool, subscribe: str, deadline: float
) -> AsyncIterator[list[Loadgen]]:
    """Enough loadgen processes for `total` connections, all stopped on the way out."""
    sizes = split_evenly(total, max(1, -(-total // CONNS_PER_LOADGEN)))
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for i, size in enumerate(sizes):
            argv = [
                str(LOADGEN_BIN),
                "--port",
                str(port),
                "--feed",
                FEED,
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
            child = await stack.enter_async_context(
                spawned(
                    f"loadgen {label}-{i}",
                    argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=64 << 20,
                )
            )
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


# ---------------------------------------------------------------- servers


@dataclass(frozen=True)
class Variant:
    label: str
    server: str  # "floor" or "livepush"
    workers: int = 1
    deflate: bool = False


@dataclass
class Window:
    rate: float
    entries: int
    publish_errors: int
    publish_seconds: float
    deliveries: int
    expected: int
    lost: int
    dups: int
    gaps: int
    closed: int
    cpu_seconds: float
    system_share: float  # of cpu_seconds spent in the kernel (on loopback: both TCP ends)
    wall_seconds: float
    machine: MachineShares
    p50_ms: float
    p99_ms: float
    max_ms: float
    loadgen_cpu_pct: float

    @property
    def deliveries_per_s(self) -> float:
        return self.deliveries / self.publish_seconds if self.publish_seconds else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.deliveries * 1e6 if self.deliveries else float("nan")

    @property
    def loadgen_us(self) -> float:
        """Loadgen CPU per delivery: what the harness itself pays for one event."""
        seconds = self.loadgen_cpu_pct / 100 * self.wall_seconds
        return seconds / self.deliveries * 1e6 if self.deliveries else float("nan")

    @property
    def server_cpu_pct(self) -> float:
        return self.cpu_seconds / self.wall_seconds * 100 if self.wall_seconds else 0.0


@dataclass
class Result:
    variant: Variant
    kib_per_conn: float | None = None
    memory_conns: int = 0
    connect_seconds: float | None = None
    connect_failed: int = 0
    deflate_accepted: int = 0
    window: Window | None = None
    steps: list[Window] = field(default_factory=list)
    max_rate: Window | None = None
    max_rate_stop: str = ""
    error: str = ""


@functools.cache
def livepush_flags() -> str:
    """`livepush serve --help`, to pass only the flags this version knows."""
    help_text = subprocess.run(
        [str(VENV_BIN / "livepush"), "serve", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    return help_text


@contextlib.asynccontextmanager
async def server_process(
    variant: Variant, redis_port: int, name: str
) -> AsyncIterator[tuple[Child, int]]:
    """Start one server pinned to the server core; yield it once it accepts connections."""
    port = free_port()
    env = dict(os.environ)
    if variant.server == "floor":
        argv = [
            str(VENV_BIN / "python"),
            str(FLOOR),
            "--port",
            str(port),
            "--redis-url",
            f"redis://127.0.0.1:{redis_port}/0",
            "--feed",
            FEED,
        ]
    else:
        argv = [
            str(VENV_BIN / "livepush"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--redis-url",
            f"redis://127.0.0.1:{redis_port}/0",
        ]
        flags = livepush_flags()
        env["LIVEPUSH_PUBLISH_TOKENS"] = TOKEN
        env["LIVEPUSH_PUBLISH_RATE"] = "0"  # the harness paces itself
        env["LIVEPUSH_LOG_LEVEL"] = "warning"
        if "--publish-token" in flags:
            argv += ["--publish-token", TOKEN]
        if "--no-demo" in flags:
            argv.append("--no-demo")
        if variant.workers > 1:
            argv += ["--workers", str(variant.workers)]
    if shutil.which("taskset") and os.cpu_count() and os.cpu_count() >= 2:  # type: ignore[operator]
        argv = ["taskset", "-c", str(SERVER_CORE), *argv]
    with log_file(name) as log:
        async with spawned(name, argv, stdout=log, stderr=log, env=env) as child:
            await wait_for_port(port, child, 60)
            if variant.server == "livepush":
                await wait_ready(port, child)
            yield child, port


async def wait_ready(port: int, child: Child) -> None:
    """Until /readyz answers 200 (the broker is reachable), at most 60 s."""
    connection = HttpConnection(port)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if child.proc.returncode is not None:
                raise RuntimeError(f"{child.name} exited with {child.proc.returncode}")
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
                status, _ = await asyncio.wait_for(connection.request("GET", "/readyz"), 5)
                if status == 200:
                    return
            connection.close()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{child.name}: /readyz not 200 within 60 s")
    finally:
        connection.close()


# ---------------------------------------------------------------- phases


async def measure_memory(
    variant: Variant, redis_port: int, args: argparse.Namespace
) -> tuple[float, int]:
    """KiB of server RSS per idle subscribed connection, over args.memory_conns of them."""
    name = f"{variant.label.replace(' ', '-')}-memory"
    async with contextlib.AsyncExitStack() as stack:
        server, port = await stack.enter_async_context(server_process(variant, redis_port, name))
        # A few warm connections first, so lazily built state is in the baseline.
        warm = await stack.enter_async_context(
            loadgens(port, 50, "warm", variant.deflate, args.subscribe, args.deadline)
        )
        await connect_all(warm, 30)
        await asyncio.sleep(1)  # settle: the allocator and the GC after the connect burst
        before = tree_rss(server.pid)
        group = await stack.enter_async_context(
            loadgens(port, args.memory_conns, "mem", variant.deflate, args.subscribe, args.deadline)
        )
        connected = await connect_all(group, 120)
        await asyncio.sleep(2)
        after = tree_rss(server.pid)
    subscribed = connected["subscribed"]
    return ((after - before) / 1024 / subscribed if subscribed else float("nan")), subscribed


async def measure_window(
    server: Child,
    group: list[Loadgen],
    publisher: Publisher,
    rate: float,
    duration: float,
    body: str,
    args: argparse.Namespace,
) -> Window:
    """Publish at `rate` for `duration` s; server CPU and what the loadgens saw."""
    count = max(1, round(rate * duration))
    for lg in group:
        await lg.send("reset")
    user_before, system_before = tree_cpu_seconds(server.pid)
    exact_before = tree_cpu_exact(server.pid)
    machine_before = MachineSample.take()
    started = time.monotonic()
    published = await publish_paced(publisher, rate, count, body, args.publishers)
    drain_ms = int(args.drain * 1000)
    for lg in group:
        await lg.send(f"report {published.first} {published.last} {drain_ms}")
    reports = await asyncio.gather(*(lg.expect("report", args.drain + 30) for lg in group))
    user_after, system_after = tree_cpu_seconds(server.pid)
    exact_after = tree_cpu_exact(server.pid)
    machine = MachineShares.between(machine_before, MachineSample.take())
    user, system = user_after - user_before, system_after - system_before
    exact = (
        exact_after - exact_before
        if exact_before is not None and exact_after is not None
        else user + system
    )
    wall = time.monotonic() - started
    if not published.contiguous():
        print(
            f"  note: published seqs are not contiguous ({len(published.seqs)} answers, "
            f"{published.first}..{published.last})",
            file=sys.stderr,
        )
    hist: dict[int, int] = {}
    for report in reports:
        for index, count_ in report["hist"]:
            hist[index] = hist.get(index, 0) + count_
    return Window(
        rate=rate,
        entries=len(published.seqs),
        publish_errors=published.errors,
        publish_seconds=published.seconds,
        deliveries=sum(r["unique"] for r in reports),
        expected=sum(r["expected"] for r in reports),
        lost=sum(r["lost"] for r in reports),
        dups=sum(r["dups"] for r in reports),
        gaps=sum(r["gaps"] for r in reports),
        closed=sum(r["closed"] for r in reports),
        cpu_seconds=exact,
        system_share=system / (user + system) if user + system else 0.0,
        wall_seconds=wall,
        machine=machine,
        p50_ms=percentile_ms(hist, 0.50),
        p99_ms=percentile_ms(hist, 0.99),
        max_ms=max((r["latency_ms"]["max"] for r in reports), default=0.0),
        loadgen_cpu_pct=sum(r["cpu_seconds"] for r in reports) / wall * 100,
    )


def max_rate_stop_reason(step: Window, base: Window, args: argparse.Namespace) -> str:
    """Why a step is not sustained, or "" when it is."""
    if step.machine.foreign_pct > args.max_foreign:
        return f"other processes took {step.machine.foreign_pct:.0f} % CPU at {step.rate:g}/s"
    if step.lost or step.publish_errors or step.closed:
        return f"loss at {step.rate:g}/s (lost {step.lost}, closed {step.closed})"
    if step.p99_ms > args.max_rate_p99_factor * base.p99_ms:
        limit = f"{args.max_rate_p99_factor:g}x {base.p99_ms:.1f} ms"
        return f"p99 {step.p99_ms:.1f} ms > {limit} at {step.rate:g}/s"
    if step.entries / step.publish_seconds < 0.95 * step.rate:
        return f"publisher fell behind at {step.rate:g}/s"
    if step.server_cpu_pct > 95:
        return f"server core saturated ({step.server_cpu_pct:.0f} %) at {step.rate:g}/s"
    if step.loadgen_cpu_pct > 90:
        return f"loadgen core saturated ({step.loadgen_cpu_pct:.0f} %) at {step.rate:g}/s"
    return ""


async def wait_for_quiet(args: argparse.Namespace) -> None:
    """Wait, at most --quiet-wait s, until other processes use under --max-foreign % CPU.

    Other work on a two-core machine shifts every number of a run (a test suite, a
    browser): waiting is cheaper than a wrong table. Two quiet seconds in a row count.
    """
    deadline = time.monotonic() + args.quiet_wait
    quiet_in_a_row = 0
    while time.monotonic() < deadline and quiet_in_a_row < 2:
        before = MachineSample.take()
        await asyncio.sleep(1)
        foreign = MachineShares.between(before, MachineSample.take()).foreign_pct
        quiet_in_a_row = quiet_in_a_row + 1 if foreign <= args.max_foreign else 0
    if quiet_in_a_row < 2 and args.quiet_wait:
        print("  the machine did not go quiet: numbers may be contaminated", file=sys.stderr)


async def clean_window(
    server: Child,
    group: list[Loadgen],
    publisher: Publisher,
    rate: float,
    duration: float,
    body: str,
    args: argparse.Namespace,
) -> Window:
    """measure_window, again (at most 3 tries) while other work shared the machine."""
    for attempt in range(3):
        await wait_for_quiet(args)
        window = await measure_window(server, group, publisher, rate, duration, body, args)
        if window.machine.foreign_pct <= args.max_foreign:
            return window
        print(
            f"  try {attempt + 1}: other processes used {window.machine.foreign_pct:.0f} % CPU"
            " during the window",
            file=sys.stderr,
            flush=True,
        )
    return window


async def run_variant(variant: Variant, redis_port: int, args: argparse.Namespace) -> Result:
    result = Result(variant)
    print(f"== {variant.label}", file=sys.stderr, flush=True)
    await wait_for_quiet(args)
    if args.memory_conns:
        result.kib_per_conn, result.memory_conns = await measure_memory(variant, redis_port, args)
        print(
            f"  memory: {result.kib_per_conn:.2f} KiB/conn over {result.memory_conns} conns",
            file=sys.stderr,
            flush=True,
        )
    name = variant.label.replace(" ", "-")
    body = body_for_size(args.entry_size)
    async with (
        server_process(variant, redis_port, name) as (server, port),
        loadgens(
            port, args.subscribers, "sub", variant.deflate, args.subscribe, args.deadline
        ) as group,
    ):
        rss_before = tree_rss(server.pid)
        connected = await connect_all(group, 120)
        result.connect_seconds = connected["seconds"]
        result.connect_failed = connected["failed"]
        result.deflate_accepted = connected["deflate_accepted"]
        print(f"  connect: {connected}", file=sys.stderr, flush=True)
        if not args.memory_conns and connected["subscribed"]:
            await asyncio.sleep(1)
            result.kib_per_conn = (
                (tree_rss(server.pid) - rss_before) / 1024 / connected["subscribed"]
            )
            result.memory_conns = connected["subscribed"]
        publisher: Publisher = (
            FloorPublisher(redis_port)
            if variant.server == "floor"
            else LivepushPublisher(port, args.publishers)
        )
        try:
            # Warm-up: the first events pay for lazy imports and first-time allocations.
            await measure_window(server, group, publisher, args.rate, 1.0, body, args)
            result.window = await clean_window(
                server, group, publisher, args.rate, args.duration, body, args
            )
            print(f"  window: {describe(result.window)}", file=sys.stderr, flush=True)
            if args.max_rate:
                await find_max_rate(result, server, group, publisher, body, args)
        finally:
            await publisher.aclose()
    return result


async def find_max_rate(
    result: Result,
    server: Child,
    group: list[Loadgen],
    publisher: Publisher,
    body: str,
    args: argparse.Namespace,
) -> None:
    """Raise the rate by --max-rate-step until a step is not sustained (at most 20 steps)."""
    assert result.window is not None
    rate = args.rate
    for _ in range(20):
        step = await clean_window(server, group, publisher, rate, args.step_duration, body, args)
        result.steps.append(step)
        print(f"  step: {describe(step)}", file=sys.stderr, flush=True)
        reason = max_rate_stop_reason(step, result.window, args)
        if reason:
            result.max_rate_stop = reason
            return
        result.max_rate = step
        rate = round(rate * args.max_rate_step, 2)
    result.max_rate_stop = "step limit reached"


def describe(w: Window) -> str:
    return (
        f"rate {w.rate:g}/s entries {w.entries} deliveries {w.deliveries}/{w.expected} "
        f"({w.deliveries_per_s:,.0f}/s) cpu {w.cpu_us:.2f} µs/delivery "
        f"(server {w.server_cpu_pct:.0f} %, {w.system_share:.0%} in kernel) "
        f"p50 {w.p50_ms:.1f} p99 {w.p99_ms:.1f} "
        f"max {w.max_ms:.1f} ms lost {w.lost} dups {w.dups} gaps {w.gaps} "
        f"loadgen {w.loadgen_cpu_pct:.0f} % cores busy "
        + " ".join(f"{share:.0%}" for share in w.machine.core_busy)
        + f", softirq {w.machine.softirq_pct:.0f} %, foreign {w.machine.foreign_pct:.0f} %"
    )


# ---------------------------------------------------------------- report


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    floor = next((r for r in results if r.variant.server == "floor" and r.window), None)
    print(
        f"\n{args.subscribers} subscribers, {args.rate:g} entries/s of ~{args.entry_size} B "
        f"for {args.duration:g} s; memory over {args.memory_conns or args.subscribers} conns\n"
    )
    print(
        "| server | deliveries/s | CPU/delivery µs | ratio to floor | p50 ms | p99 ms | max ms "
        f"| KiB/conn | connect {args.subscribers / 1000:g}k s | lost | loadgen CPU % "
        "| softirq CPU % | foreign CPU % |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        w = r.window
        if w is None:
            print(f"| {r.variant.label} | failed: {r.error} |")
            continue
        ratio = w.cpu_us / floor.window.cpu_us if floor and floor.window else None
        print(
            f"| {r.variant.label} | {w.deliveries_per_s:,.0f} | {w.cpu_us:.2f} | "
            f"{fmt(ratio, '.2f')}x | {w.p50_ms:.1f} | {w.p99_ms:.1f} | {w.max_ms:.1f} | "
            f"{fmt(r.kib_per_conn, '.2f')} | {fmt(r.connect_seconds, '.3f')} | {w.lost} | "
            f"{w.loadgen_cpu_pct:.0f} | {w.machine.softirq_pct:.0f} | "
            f"{w.machine.foreign_pct:.0f} |"
        )
    if args.max_rate:
        print(
            "\nHighest sustained rate (all steps: no loss, p99 within "
            f"{args.max_rate_p99_factor:g}x the server's own p99 at {args.rate:g}/s, "
            "neither core saturated):"
        )
        for r in results:
            if r.max_rate is not None:
                print(
                    f"- {r.variant.label}: {r.max_rate.rate:g} entries/s = "
                    f"{r.max_rate.deliveries_per_s:,.0f} deliveries/s "
                    f"(server CPU {r.max_rate.server_cpu_pct:.0f} %, "
                    f"p99 {r.max_rate.p99_ms:.1f} ms); "
                    f"stopped: {r.max_rate_stop}"
                )
            else:
                print(f"- {r.variant.label}: not even {args.rate:g}/s; stopped: {r.max_rate_stop}")
    windows = [r.window for r in results if r.window and r.window.deliveries]
    if windows:
        loadgen_us = max(w.loadgen_us for w in windows)
        floor_max = floor.max_rate if floor else None
        print(
            f"\nHarness: the loadgens used up to {loadgen_us:.2f} µs CPU per delivery, so their "
            f"core takes about {1e6 / loadgen_us:,.0f} deliveries/s before it saturates"
            + (
                f" (floor's highest sustained: {floor_max.deliveries_per_s:,.0f}/s)"
                if floor_max
                else ""
            )
            + "."
        )
    print("\nTargets:")
    for line in target_lines(results, floor, args):
        print(f"- {line}")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def target_lines(
    results: list[Result], floor: Result | None, args: argparse.Namespace
) -> Iterable[str]:
    single = next(
        (
            r
            for r in results
            if r.variant.server == "livepush"
            and r.variant.workers == 1
            and not r.variant.deflate
            and r.window
        ),
        None,
    )
    for r in results:
        if r.variant.server != "livepush" or r.window is None:
            continue
        w, name = r.window, r.variant.label
        if floor and floor.window:
            f = floor.window
            yield (
                f"{name}: CPU/delivery <= 1.15x floor: {verdict(w.cpu_us <= 1.15 * f.cpu_us)} "
                f"({w.cpu_us:.2f} vs {f.cpu_us:.2f} µs, {w.cpu_us / f.cpu_us:.2f}x)"
            )
            yield (
                f"{name}: p99 <= 1.2x floor p99: {verdict(w.p99_ms <= 1.2 * f.p99_ms)} "
                f"({w.p99_ms:.1f} vs {f.p99_ms:.1f} ms, {w.p99_ms / f.p99_ms:.2f}x)"
            )
        per_core = 1e6 / w.cpu_us
        yield (
            f"{name}: >= 150,000 deliveries/s per core: {verdict(per_core >= 150_000)} "
            f"({per_core:,.0f}/s by CPU per delivery)"
        )
        if r.kib_per_conn is not None:
            yield (
                f"{name}: idle memory <= 10 KiB/conn: {verdict(r.kib_per_conn <= 10)} "
                f"({r.kib_per_conn:.2f} KiB over {r.memory_conns} conns)"
            )
        if r.connect_seconds is not None:
            ok = r.connect_seconds < 1 and r.connect_failed == 0
            yield (
                f"{name}: {args.subscribers} connects+subscribes < 1 s: {verdict(ok)} "
                f"({r.connect_seconds:.3f} s, {r.connect_failed} failed)"
            )
        yield (
            f"{name}: zero loss: {verdict(w.lost == 0 and w.dups == 0 and w.gaps == 0)} "
            f"(lost {w.lost}, dups {w.dups}, gaps {w.gaps}, of {w.expected})"
        )
        if r.variant.deflate:
            yield (
                f"{name}: server accepted permessage-deflate on {r.deflate_accepted} of "
                f"{args.subscribers} connections"
            )
        if r.variant.workers > 1 and single and single.window:
            ratio = w.cpu_us / single.window.cpu_us
            yield (
                f"{name}: summed CPU within 10% of one worker's: {verdict(ratio <= 1.10)} "
                f"({w.cpu_us:.2f} vs {single.window.cpu_us:.2f} µs/delivery, {ratio:.2f}x)"
            )


# ------------------------------------------------------------------- main


def variants(args: argparse.Namespace) -> list[Variant]:
    chosen = []
    for server in args.servers.split(","):
        if server == "floor":
            chosen.append(Variant("floor", "floor"))
        elif server == "livepush":
            chosen.append(Variant("livepush", "livepush"))
            if args.compression:
                chosen.append(Variant("livepush deflate-offered", "livepush", deflate=True))
            if args.workers > 1:
                chosen.append(
                    Variant(f"livepush {args.workers} workers", "livepush", workers=args.workers)
                )
        else:
            raise SystemExit(f"unknown server {server!r}: floor or livepush")
    return chosen


async def start_redis() -> tuple[contextlib.AsyncExitStack, int]:
    port = free_port()
    stack = contextlib.AsyncExitStack()
    log = stack.enter_context(log_file("redis"))
    child = await stack.enter_async_context(
        spawned(
            "redis-server",
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=log,
            stderr=log,
        )
    )
    try:
        await wait_for_port(port, child, 20)
    except BaseException:
        await stack.aclose()
        raise
    return stack, port


async def run(args: argparse.Namespace) -> list[Result]:
    build_loadgen()
    redis_stack, redis_port = await start_redis()
    results = []
    async with redis_stack:
        for variant in variants(args):
            try:
                results.append(await run_variant(variant, redis_port, args))
            except (RuntimeError, TimeoutError, OSError) as error:
                # One server failing must not hide the others' numbers.
                name = variant.label.replace(" ", "-")
                print(f"  {variant.label} failed: {error}\n{log_tail(name)}", file=sys.stderr)
                results.append(Result(variant, error=str(error)))
    return results


def pin_to_load_core() -> None:
    """This process and its children (publisher, redis, loadgens) stay off the server's core."""
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {LOAD_CORE})
    else:
        print(
            "warning: one core: server and load share it, numbers are not comparable",
            file=sys.stderr,
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", default="floor,livepush", help="comma-separated: floor, livepush")
    p.add_argument("--subscribers", type=int, default=5000)
    p.add_argument("--rate", type=float, default=10, help="entries per second")
    p.add_argument("--entry-size", type=int, default=1024, help="bytes of event JSON, about")
    p.add_argument("--duration", type=float, default=10, help="seconds of publishing")
    p.add_argument("--workers", type=int, default=1, help="also run livepush with N workers")
    p.add_argument(
        "--compression",
        action="store_true",
        help="also run livepush with clients offering permessage-deflate",
    )
    p.add_argument(
        "--memory-conns",
        type=int,
        default=10000,
        help="idle conns for KiB/conn; 0: use the subscribers",
    )
    p.add_argument(
        "--subscribe",
        choices=["path", "message"],
        default="path",
        help="subscribe with /v1/ws?feed= or with a subscribe message",
    )
    p.add_argument(
        "--publishers", type=int, default=4, help="concurrent ingest connections (livepush)"
    )
    p.add_argument("--drain", type=float, default=10, help="seconds to wait for the last event")
    p.add_argument("--max-rate", action="store_true", help="then raise the rate until it breaks")
    p.add_argument("--max-rate-step", type=float, default=1.25, help="rate factor between steps")
    p.add_argument("--max-rate-p99-factor", type=float, default=2.0)
    p.add_argument("--step-duration", type=float, default=5)
    p.add_argument("--deadline", type=float, default=1800, help="hard limit on the whole run, s")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=120,
        help="seconds to wait, before each server, for other work on the machine to stop",
    )
    p.add_argument(
        "--max-foreign",
        type=float,
        default=5,
        help="%% of a core other processes may use during a window before it is retried",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.subscribers < 1 or args.rate <= 0 or args.duration <= 0 or args.max_rate_step <= 1:
        p.error("subscribers, rate and duration must be positive; --max-rate-step above 1")
    return args


def main() -> int:
    args = parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers
    pin_to_load_core()
    print(f"load average before the run: {os.getloadavg()}", file=sys.stderr)
    results = uvloop.run(asyncio.wait_for(run(args), args.deadline))
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2, default=str))
    return 0 if all(r.window for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
