"""The servers under test: how the benchmark starts one, and asks it where a feed stands.

scripts/bench.py and its scenarios (bench_connect, bench_storm, bench_crowd) start every
server through server_process(): the Python floor (scripts/floor_server.py) or
`livepush serve`, on a free loopback port, pinned to the server core unless told
otherwise, stopped in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from benchkit import (
    FEED,
    ROOT,
    TOKEN,
    Child,
    HttpConnection,
    free_port,
    log_file,
    process_tree,
    spawned,
    tree_cpu_exact,
    wait_for_port,
)

FLOOR = ROOT / "scripts" / "floor_server.py"
VENV_BIN = ROOT / ".venv" / "bin"
SERVER_CORE = 0
LOAD_CORE = 1


@dataclass(frozen=True)
class Variant:
    label: str
    server: str  # "floor" or "livepush"
    workers: int = 1
    deflate: bool = False  # the clients offer permessage-deflate
    server_flags: tuple[str, ...] = ()
    feeds: int = 0  # 0: one feed; N: subscribers and entries spread over N feeds
    cluster: bool = False  # on a three-primary Redis Cluster instead of one redis-server

    @property
    def slug(self) -> str:
        return self.label.replace(" ", "-")


FLOOR_VARIANT = Variant("floor", "floor")
LIVEPUSH_VARIANT = Variant("livepush", "livepush")


@functools.cache
def livepush_flags() -> str:
    """`livepush serve --help`, to pass only the flags this version knows."""
    argv = [str(VENV_BIN / "livepush"), "serve", "--help"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout


@contextlib.asynccontextmanager
async def server_process(
    variant: Variant,
    redis_url: str,
    name: str,
    ping_interval: float | None = None,
    cores: str | None = str(SERVER_CORE),
) -> AsyncIterator[tuple[Child, int]]:
    """Start one server, pinned to `cores` (None: wherever the kernel puts it); yield it
    once it accepts connections (livepush: once /readyz answers 200)."""
    port = free_port()
    env = dict(os.environ)
    if ping_interval is not None:
        env["LIVEPUSH_PING_INTERVAL"] = str(ping_interval)
    if variant.server == "floor":
        argv = [str(VENV_BIN / "python"), str(FLOOR), "--port", str(port)]
        argv += ["--redis-url", redis_url, "--feed", FEED]
    else:
        argv = [str(VENV_BIN / "livepush"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--redis-url", redis_url]
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
        argv += variant.server_flags
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        # The harness itself is pinned to the load core and its children inherit that:
        # a server meant to run anywhere is given every core back.
        every = f"0-{(os.cpu_count() or 1) - 1}"
        argv = ["taskset", "-c", cores or every, *argv]
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


async def get(port: int, path: str) -> bytes:
    """The body of a GET to livepush on `port` that must answer 200, within 10 s."""
    connection = HttpConnection(port)
    try:
        status, body = await asyncio.wait_for(connection.request("GET", path), 10)
    finally:
        connection.close()
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {body[:200]!r}")
    return body


async def feed_position(port: int, feed: str) -> tuple[str, int]:
    """A livepush feed's epoch and head seq (`GET /v1/feeds/{feed}`: one history read)."""
    info = orjson.loads(await get(port, f"/v1/feeds/{feed}"))
    return str(info["epoch"]), int(info["head_seq"])


HISTOGRAM_BUCKET = re.compile(rb'^(livepush_[a-z_]+)_bucket\{le="([^"]+)"\} (\S+)$', re.M)
LOOP_LAG, ACCEPT_TO_WRITE = "livepush_loop_lag_seconds", "livepush_accept_to_write_seconds"


async def histograms(port: int) -> dict[str, dict[float, float]]:
    """livepush's histograms now (`GET /metrics`, between measurements, never during
    one): by name, cumulative counts by upper bound in seconds."""
    found: dict[str, dict[float, float]] = {}
    for name, bound, count in HISTOGRAM_BUCKET.findall(await get(port, "/metrics")):
        found.setdefault(name.decode(), {})[float(bound)] = float(count)
    return found


@dataclass(frozen=True)
class HistogramWindow:
    """One of the server's histograms over a window: the difference of two scrapes."""

    count: int
    p99_bound_ms: float  # the upper bound of the bucket holding the 99th percentile
    max_bound_ms: float  # the upper bound of the highest bucket with a count in it

    @staticmethod
    def between(before: dict[float, float], after: dict[float, float]) -> HistogramWindow:
        bounds = sorted(after)
        cumulative = [after[b] - before.get(b, 0.0) for b in bounds]
        count = int(cumulative[-1]) if cumulative else 0
        if not count:
            return HistogramWindow(0, 0.0, 0.0)
        p99 = next(b for b, c in zip(bounds, cumulative, strict=True) if c >= 0.99 * count)
        below = [0.0, *cumulative[:-1]]
        top = max(b for b, c, lo in zip(bounds, cumulative, below, strict=True) if c > lo)
        return HistogramWindow(count, p99 * 1000, top * 1000)

    def bounds(self) -> str:
        def ms(bound: float) -> str:
            return "over the top bucket" if bound == float("inf") else f"<= {bound:g} ms"

        return f"p99 {ms(self.p99_bound_ms)}, max {ms(self.max_bound_ms)}"


@dataclass(frozen=True)
class ServerWindow:
    """What the server's own histograms say of a window."""

    loop_lag: HistogramWindow  # how late its 10 ms timer ran: its longest turns
    accept_to_write: HistogramWindow  # an entry's ingest to its fan-out's last write

    @staticmethod
    def between(
        before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]
    ) -> ServerWindow:
        def window(name: str) -> HistogramWindow:
            return HistogramWindow.between(before.get(name, {}), after.get(name, {}))

        return ServerWindow(window(LOOP_LAG), window(ACCEPT_TO_WRITE))

    def describe(self) -> str:
        return (
            f"server: loop lag {self.loop_lag.bounds()} ({self.loop_lag.count} ticks of "
            f"its 10 ms timer), accept to last write {self.accept_to_write.bounds()}"
        )


async def wait_idle(pid: int, within: float = 15.0, busy_pct: float = 5.0) -> float:
    """Until a server's process tree uses under busy_pct % of a core for 0.5 s (closing
    the sockets of a finished phase, collecting garbage), at most `within` s; returns
    the seconds waited. Without it the next phase would pay for the last one's ends."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        before = tree_cpu_exact(pid)
        await asyncio.sleep(0.5)
        after = tree_cpu_exact(pid)
        if before is None or after is None or (after - before) / 0.5 * 100 < busy_pct:
            break
    return time.monotonic() - started


def open_files(pid: int) -> list[int]:
    """Open descriptors of each process of a server's tree (its workers), largest first."""
    counts = []
    for proc in process_tree(pid):
        with contextlib.suppress(OSError):
            counts.append(len(os.listdir(f"/proc/{proc.pid}/fd")))
    return sorted(counts, reverse=True)
